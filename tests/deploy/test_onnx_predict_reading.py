"""onnx_predict.py reads images with the package's reader (data/image_file.py, loaded by its path,
without torch): a 16-bit grayscale PNG as OpenCV reads it, where PIL's convert("RGB") clipped it
to white. The model is a tiny ONNX graph of export_model.py's interface (image (3, H, W) in;
boxes, scores, classes out) that detects nothing above the threshold, so the picture written is
the image as read."""

import cv2
import numpy as np
import pytest
from PIL import Image

from cli_cases import load_script
from repo_paths import PREDICT_TOOL

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")


def _no_detections_onnx(path, metadata=None):
    """image (3, h, w) float -> one box [0, 0, 1, 1] of score 0, class 0; metadata: the file's
    metadata_props."""
    from onnx import TensorProto, helper

    def constant(name, array):
        return helper.make_node("Constant", [], [name], value=helper.make_tensor(name, *array))

    graph = helper.make_graph(
        [
            constant("boxes", (TensorProto.FLOAT, [1, 4], [0, 0, 1, 1])),
            constant("scores", (TensorProto.FLOAT, [1], [0.0])),
            constant("classes", (TensorProto.INT64, [1], [0])),
        ],
        "no_detections",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [3, "height", "width"])],
        [
            helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [1, 4]),
            helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1]),
            helper.make_tensor_value_info("classes", TensorProto.INT64, [1]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    if metadata:
        helper.set_model_props(model, metadata)
    onnx.save(model, str(path))
    return str(path)


def test_onnx_predict_reads_16bit_grayscale_as_opencv_does(tmp_path, capsys):
    ramp = np.linspace(0, 65535, 40 * 56).reshape(40, 56).astype(np.uint16)
    image = str(tmp_path / "gray16.png")
    assert cv2.imwrite(image, ramp)
    argv = [
        "--model",
        _no_detections_onnx(tmp_path / "model.onnx"),
        "--input",
        image,
        "--output",
        str(tmp_path / "out"),
        "--min-size",
        "40",
        "--confidence-threshold",
        "1",
    ]
    assert load_script(PREDICT_TOOL).main(argv) == 0
    printed = capsys.readouterr().out
    assert "0 of 1 detections drawn" in printed
    # a file without export_model.py's metadata: the given size, and the released longest side
    assert (
        "test resize: min size 40 from --min-size, max size 1333 from the released default"
        in printed
    )
    with Image.open(tmp_path / "out" / "gray16.png") as picture:
        drawn = np.asarray(picture.convert("RGB"))
    np.testing.assert_array_equal(drawn, cv2.imread(image, cv2.IMREAD_COLOR)[:, :, ::-1])


@pytest.mark.parametrize(
    "metadata, flags, error",
    [
        (None, ["--min-size", "0"], r"--min-size must be >= 1, got 0 \(from --min-size\)"),
        ({"max_size_test": "0"}, [], r"--max-size must be >= 1, got 0 \(from the file's metadata"),
        ({"min_size_test": "big"}, [], r"metadata min_size_test must be an int, got 'big'"),
    ],
)
def test_onnx_predict_names_a_wrong_resize(tmp_path, metadata, flags, error):
    image = str(tmp_path / "x.png")
    Image.fromarray(np.zeros((40, 56, 3), np.uint8)).save(image)
    model = _no_detections_onnx(tmp_path / "model.onnx", metadata)
    argv = ["--model", model, "--input", image, "--output", str(tmp_path / "out"), *flags]
    with pytest.raises(ValueError, match=error):
        load_script(PREDICT_TOOL).main(argv)
