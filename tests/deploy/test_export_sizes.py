"""The image sizes an ONNX export takes (deformable_detr/export/sizes.py), checked where the file
is written (export_onnx, export_model.py) and where it runs (onnx_predict.py).

A two-stage model's smallest side is checked against the levels its backbone and neck really
give and against ONNX Runtime itself; MViTv2's export is static, and export_model.py's check at a
second size is shown to catch a file that declares dynamic sizes but fails at them. Shallow
models with random weights, as in test_export.py.
"""

import os

import numpy as np
import pytest
import torch
from PIL import Image

import deformable_detr.export.exporting as exporting
from deformable_detr.export import (
    ONNX_MIN_SIDE_KEY,
    eager_detections,
    export_onnx,
    min_image_side,
    onnx_bytes,
    run_onnx,
)
from cli_cases import load_script
from export_cases import SHALLOW, assert_agree
from model_cases import BACKBONE_CONFIGS, NO_WEIGHTS, build, image
from repo_paths import CONFIG_DIR, EXPORT_TOOL, PREDICT_TOOL

onnx = pytest.importorskip("onnx")
onnxruntime = pytest.importorskip("onnxruntime")

SIZE = (128, 160)  # the exports' sample size
TWO_STAGE = (
    "MODEL.DEFORMABLE_DETR.TWO_STAGE",
    "True",
    "MODEL.DEFORMABLE_DETR.WITH_BOX_REFINE",
    "True",
)
MVIT = ("ddetr_mvitv2_t.yaml", (*BACKBONE_CONFIGS["ddetr_mvitv2_t.yaml"], *NO_WEIGHTS, *SHALLOW))


def _encoder_positions(model, side):
    """S of a side x side image, from the levels the model's backbone and neck give it."""
    images, mask = model.preprocess_image([{"image": image(side, side, 0)}])
    with torch.no_grad():
        srcs, _ = model.neck(model.backbone(images.tensor), mask)
    return sum(s.shape[-2] * s.shape[-1] for s in srcs)


@pytest.mark.parametrize(
    "name, opts",
    [
        ("ddetr_r50_two_stage.yaml", ()),
        # Swin pads to a multiple of 32, which the minimum must count
        ("ddetr_swin_t.yaml", (*BACKBONE_CONFIGS["ddetr_swin_t.yaml"], *TWO_STAGE)),
    ],
)
def test_min_side_is_where_the_proposals_fit(name, opts):
    model = build(name, (*opts, *NO_WEIGHTS, *SHALLOW)).eval()
    side, proposals = min_image_side(model), model.transformer.queries.num_queries
    assert _encoder_positions(model, side - 1) < proposals <= _encoder_positions(model, side)


def test_one_stage_takes_any_side():
    """It has no top-k over the encoder's positions."""
    assert min_image_side(build("ddetr_r50.yaml", SHALLOW)) == 1


@pytest.fixture(scope="module")
def two_stage_file(tmp_path_factory):
    """(model, path) of the two-stage variant exported at SIZE."""
    model = build("ddetr_r50_two_stage.yaml", SHALLOW).eval()
    path = str(tmp_path_factory.mktemp("two_stage") / "model.onnx")
    export_onnx(model, image(*SIZE, 0), path)
    return model, path


def test_two_stage_onnx_takes_its_min_side_and_not_less(two_stage_file):
    """The minimum is ONNX Runtime's own: at min_side it runs (and agrees with the eager model),
    one pixel less fails in its TopK; the file's metadata carries it."""
    model, path = two_stage_file
    side = min_image_side(model)
    meta = {p.key: p.value for p in onnx.load(path).metadata_props}
    assert meta == {ONNX_MIN_SIDE_KEY: str(side)}
    img = image(side, side, 1)
    assert_agree(eager_detections(model, img), run_onnx(path, img.numpy()), "at min side")
    with pytest.raises(onnxruntime.capi.onnxruntime_pybind11_state.Fail, match="TopK"):
        run_onnx(path, image(side - 1, side - 1, 1).numpy())


def test_export_onnx_refuses_a_wrong_test_resize(tmp_path):
    """The resize written into the file's metadata must be two sizes of at least one pixel."""
    model = build("ddetr_r50.yaml", SHALLOW).eval()
    for wrong in [(0, 1333), (800,), (800.0, 1333), (800, 1333, 1)]:
        with pytest.raises(ValueError, match=r"test_resize must be .* two ints >= 1"):
            export_onnx(model, image(*SIZE, 0), str(tmp_path / "x.onnx"), test_resize=wrong)
    assert not os.path.exists(tmp_path / "x.onnx")


def test_a_two_stage_sample_below_min_side_is_refused():
    """Its trace would keep fewer proposals at every size."""
    model = build("ddetr_r50_two_stage.yaml", SHALLOW).eval()
    side = min_image_side(model)
    with pytest.raises(ValueError, match=rf"sample image is 100x200.* at least {side} pixels"):
        onnx_bytes(model, image(100, 200, 0))


def _png(path, h, w):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    rgb = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(path)
    return str(path)


def _predict(model_path, inputs, out, min_size, max_size=1333):
    argv = ["--model", model_path, "--input", *inputs, "--output", str(out)]
    sizes = ["--min-size", str(min_size), "--max-size", str(max_size)]
    return load_script(PREDICT_TOOL).main([*argv, *sizes, "--confidence-threshold", "0"])


def test_onnx_predict_refuses_an_image_below_the_min_side(two_stage_file, tmp_path):
    model, path = two_stage_file
    png = _png(tmp_path / "small.png", 120, 150)
    side = min_image_side(model)
    with pytest.raises(ValueError, match=rf"small.png: .* image 64x80.* at least {side} pixels"):
        _predict(path, [png], tmp_path / "out", min_size=64)


def test_onnx_predict_keeps_images_of_one_name_apart(two_stage_file, tmp_path, capsys):
    """a/x.png and b/x.png become OUT/a/x.png and OUT/b/x.png, as in demo.py."""
    _, path = two_stage_file
    inputs = [_png(tmp_path / "in" / d / "x.png", 120, 150) for d in ("a", "b")]
    assert _predict(path, inputs, tmp_path / "out", *SIZE) == 0
    for d in ("a", "b"):
        with Image.open(tmp_path / "out" / d / "x.png") as picture:
            assert picture.size == (150, 120)
    assert capsys.readouterr().out.count("100 of 100 detections drawn") == 2


def test_mvit_onnx_is_static_and_onnx_predict_refuses_other_sizes(tmp_path):
    """Detectron2's MViT traces its sizes as constants: the file declares the sample's size, runs
    there as the eager model does, and onnx_predict.py names both sizes for any other."""
    model = build(*MVIT).eval()
    path = str(tmp_path / "model.onnx")
    img = image(*SIZE, 0)
    export_onnx(model, img, path)
    dims = onnx.load(path).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims] == [3, *SIZE]
    assert_agree(eager_detections(model, img), run_onnx(path, img.numpy()), "mvit onnx")
    same = _png(tmp_path / "same.png", 120, 150)  # resizes to 128x160
    assert _predict(path, [same], tmp_path / "out", *SIZE) == 0
    other = _png(tmp_path / "other.png", 100, 200)  # resizes to 80x160
    with pytest.raises(ValueError, match=r"other.png: .* for 128x160 images only.* image 80x160"):
        _predict(path, [other], tmp_path / "out", *SIZE)


def _export_tool(tmp_path, name, opts):
    tool = load_script(EXPORT_TOOL)
    sizes = ["INPUT.MIN_SIZE_TEST", str(SIZE[0]), "INPUT.MAX_SIZE_TEST", str(SIZE[1])]
    argv = ["--config-file", os.path.join(CONFIG_DIR, name), "--output", str(tmp_path)]
    return tool.main([*argv, "--format", "onnx", "MODEL.DEVICE", "cpu", *opts, *sizes])


def test_export_tool_checks_a_dynamic_file_at_a_second_size(tmp_path, capsys, monkeypatch):
    """export_model.py on MViTv2 writes a static file; made to declare dynamic sizes (as it did),
    the file passes at the sample's size and the check at a second size fails it."""
    assert _export_tool(tmp_path / "static", *MVIT) == 0
    # the random sample, 480x640, resizes to 120x160
    assert "onnx: static, valid at 120x160 only" in capsys.readouterr().out
    monkeypatch.setattr(exporting, "fixed_size_reason", lambda model: None)
    monkeypatch.setattr(load_script(EXPORT_TOOL), "fixed_size_reason", lambda model: None)
    assert _export_tool(tmp_path / "dynamic", *MVIT) == 1
    out, err = capsys.readouterr()
    assert "onnx vs eager on (120, 160): 100 detections" in out
    assert "declares dynamic height and width but fails (" in err and "at 90x140" in err
