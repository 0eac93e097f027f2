"""The int8 AOTInductor package (deformable_detr/export/int8.py): every convolution and linear
layer is quantised, and the compiled package computes what its quantised graph computes when run
eagerly (the quantize/dequantize reference, in float32), at two sizes from one package; made
through export_model.py --format aoti --int8 end to end; bad calibration input refused by name.

The package is compared with its reference on a model of 30 queries and 3 classes: top-k then
takes all 90 (query, class) pairs, so no near tie (the rule with random weights, whose scores lie
within 0.04 of each other) decides which detections are in. Tolerances: boxes 0.05 px (measured
3e-5 px; float32's boxes are 2.1-2.4 px from int8's), scores 2e-3 (measured 7e-4: oneDNN
accumulates exactly in int32 where the reference multiplies dequantised values in float32). How
far int8 is from float32 is measured as AP (tools/benchmark_int8.py: 54.1 -> 53.9 on the
built-in data), not tested.
"""

import os

import pytest
import torch
from torch.export import Dim

from deformable_detr.export import (
    INT8_KEY,
    DetectionExportWrapper,
    compare_detections,
    export_aoti,
    quantize_int8,
    quantized_layers,
    run_aoti,
)
from cli_cases import load_script
from export_cases import SHALLOW, lossless_png, run_export_tool
from model_cases import build, image
from repo_paths import CONFIG_DIR, EXPORT_TOOL
from ms_deform_attn_cases import requires_extension

pytest.importorskip("torchao", reason="the int8 package needs torchao (requirements.txt)")

SIZE = (256, 320)
SCORE_TOLERANCE, BOX_TOLERANCE_PX = 2e-3, 0.05
# every (query, class) pair is a detection: 90 of TEST.DETECTIONS_PER_IMAGE's 100
ALL_PAIRS = ("MODEL.DEFORMABLE_DETR.NUM_QUERIES", "30", "MODEL.DEFORMABLE_DETR.NUM_CLASSES", "3")


def _layers(model):
    return sum(isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)) for m in model.modules())


def _reference(model, calibration, max_side=SIZE[1]):
    """The quantised graph of the package export_aoti builds from the same images (dynamic,
    sides 65 to max_side), to run eagerly."""
    side = (Dim(n, min=65, max=max_side) for n in ("height", "width"))
    exported = torch.export.export(
        DetectionExportWrapper(model),
        (calibration[0],),
        dynamic_shapes={"image": dict(zip((1, 2), side))},
    )
    return quantize_int8(exported.module(), calibration)


def _in_self_attention(node):
    return list(node.meta["nn_module_stack"].values())[-1][1].endswith("MultiheadAttention")


@requires_extension
def test_every_convolution_and_linear_layer_is_quantised():
    """Detectron2's Conv2d included (the ResNet's 53 convolutions), which the quantizer's own
    matching by module class misses: each layer's node takes a dequantised uint8 input and int8
    weights of one scale per output channel. Left float32: the op and its inputs, and the
    decoder's self-attention (nn.MultiheadAttention's in- and out-projections, over the queries
    only)."""
    model = build("ddetr_r50.yaml", SHALLOW).eval()
    quantized = _reference(model, [image(128, 160, 0)])
    aten, decomposed = torch.ops.aten, torch.ops.quantized_decomposed
    layers = [
        n for n in quantized.graph.nodes if n.target in (aten.conv2d.default, aten.linear.default)
    ]
    int8 = [n for n in layers if not _in_self_attention(n)]
    # convolutions: the ResNet's 53, the input projections' 4; linear nodes: the encoder
    # layer's 6, each decoder layer's cross-attention 4 and FFN 2, the reference points' 1, the
    # shared heads (class 1, box MLP 3) once per decoder layer; the modules less the two
    # out-projections, plus the heads' second use
    assert len(int8) == _layers(model) - 2 + 4 == 53 + 4 + 6 + 2 * 6 + 1 + 2 * 4
    for node in int8:
        assert node.args[0].target is decomposed.dequantize_per_tensor.default, node
        assert node.args[1].target is decomposed.dequantize_per_channel.default, node
    assert quantized_layers(quantized) == len(int8)
    assert len(layers) - len(int8) == 2 * 4  # q, k, v and out per decoder layer
    op = torch.ops.deformable_detr.ms_deform_attn.default
    calls = [n for n in quantized.graph.nodes if n.target is op]
    assert len(calls) == 3  # 1 encoder and 2 decoder layers
    inputs = [a for n in calls for a in n.all_input_nodes]
    assert {a.meta["val"].dtype for a in inputs} == {torch.float32, torch.int64}  # + the sizes
    assert not any("quantize" in str(a.target) for a in inputs)


@requires_extension
@pytest.mark.slow
def test_export_tool_int8_package_computes_its_quantised_graph(tmp_path, capsys):
    """export_model.py --format aoti --int8 on the multi-scale variant: the package is dynamic
    and int8, the tool reports its differences from float32 and exits 0, and the package gives
    its quantised graph's detections at the sample's size and another."""
    model = build("ddetr_r50.yaml", (*SHALLOW, *ALL_PAIRS)).eval()
    # lossless files at the test resize's size, read back exactly; the first is the sample too
    files = [tmp_path / f"{seed}.png" for seed in range(3)]
    calibration = [lossless_png(SIZE, seed, f) for seed, f in enumerate(files)]
    flags = ("--int8", *map(str, files))
    code = run_export_tool(model, tmp_path, "aoti", files[0], SIZE, flags, ALL_PAIRS)
    assert code == 0
    text = capsys.readouterr().out
    assert f"aoti int8 vs eager on {SIZE}: 90 detections" in text
    assert "int8: calibrated on 3 images; not held to float32's tolerances" in text
    path = str(tmp_path / "out" / "model.pt2")
    assert torch._inductor.aoti_load_package(path).get_metadata()[INT8_KEY] == "3"
    reference = _reference(model, calibration)
    for size in (SIZE, (224, 288)):
        img = image(*size, 5)
        with torch.no_grad():
            expected = tuple(o.numpy() for o in reference(img))
        diff = compare_detections(expected, run_aoti(path, img), SCORE_TOLERANCE, BOX_TOLERANCE_PX)
        assert diff["ok"] and diff["count"] == (90, 90), f"int8 at {size}: {diff}"


def test_calibration_images_are_checked_before_quantising(tmp_path):
    model = build("ddetr_r50.yaml", SHALLOW).eval()
    path = str(tmp_path / "model.pt2")
    with pytest.raises(ValueError, match="an int8 package needs calibration images; got none"):
        export_aoti(model, image(*SIZE, 0), path, max_side=SIZE[1], calibration=[])
    with pytest.raises(ValueError, match=r"calibration image 1: .* sides from 65 to 320 pixels"):
        export_aoti(
            model,
            image(*SIZE, 0),
            path,
            max_side=SIZE[1],
            calibration=[image(*SIZE, 1), image(256, 400, 2)],
        )


def test_export_tool_int8_needs_aoti_and_existing_files(tmp_path):
    tool = load_script(EXPORT_TOOL)
    base = ["--config-file", os.path.join(CONFIG_DIR, "ddetr_r50.yaml"), "--output", str(tmp_path)]
    with pytest.raises(ValueError, match="--int8 makes an int8 AOTInductor package: it needs "):
        tool.main([*base, "--format", "onnx", "--int8", "a.png", "MODEL.DEVICE", "cpu"])
    with pytest.raises(FileNotFoundError, match=r"--int8 images do not exist: \['missing.png'\]$"):
        tool.main([*base, "--format", "aoti", "--int8", "missing.png", "--sample-image", "x.png"])
    # KEY VALUE overrides after the images are taken for images: the error says so
    with pytest.raises(FileNotFoundError, match=r"the config overrides were read as --int8 images"):
        tool.main([*base, "--format", "aoti", "--int8", "missing.png", "MODEL.DEVICE", "cpu"])
