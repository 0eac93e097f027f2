"""Export to TorchScript and ONNX: the exported files give the eager model's detections.

Every released variant is exported with random weights and 1 encoder and 2 decoder layers (a
layer exports the same way however many there are; the released depth, 6 and 6, takes three
times as long and agreed as closely when checked by hand), on CPU. Detections are compared with
deformable_detr.export.compare_detections: position by position, or paired by an assignment
when near-equal scores come out of top-k in another order.
"""

import io
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from deformable_detr.export import (
    ONNX_OPSET,
    compare_detections,
    eager_detections,
    export_torchscript,
    onnx_bytes,
    register_ms_deform_attn_symbolic,
    run_onnx,
    run_torchscript,
)
from deformable_detr.layers import ms_deform_attn
from cli_cases import load_script
from export_cases import SHALLOW, assert_agree
from model_cases import RELEASED_CONFIGS, build, image
from repo_paths import CONFIG_DIR, EXPORT_TOOL, PREDICT_TOOL, REPO

onnx = pytest.importorskip("onnx")
onnxruntime = pytest.importorskip("onnxruntime")

SIZES = ((256, 320), (224, 352))  # the traced size, then another for the dynamic ONNX graph


def _domains(graph):
    """Domains of every node, subgraphs included."""
    for node in graph.node:
        yield node.domain
        for attr in node.attribute:
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                yield from _domains(sub)


@pytest.mark.parametrize(
    "name",
    [RELEASED_CONFIGS[0]] + [pytest.param(n, marks=pytest.mark.slow) for n in RELEASED_CONFIGS[1:]],
)
def test_exports_match_eager(name, tmp_path):
    model = build(name, SHALLOW).eval()
    images = [image(h, w, seed) for seed, (h, w) in enumerate(SIZES)]
    expected = [eager_detections(model, img) for img in images]

    ts_path = str(tmp_path / "model.ts")
    export_torchscript(model, images[0], ts_path)
    assert_agree(expected[0], run_torchscript(ts_path, images[0]), f"{name} torchscript")

    model_bytes = onnx_bytes(model, images[0])
    for img, exp in zip(images, expected):
        assert_agree(exp, run_onnx(model_bytes, img.numpy()), f"{name} onnx {tuple(img.shape)}")
    graph = onnx.load_from_string(model_bytes).graph
    assert set(_domains(graph)) <= {"", "ai.onnx"}


def test_symbolic_matches_op():
    """The decomposition alone, on odd level sizes and points outside [0, 1]; one file runs
    other level sizes, queries and batch, since the sizes are read from spatial_shapes."""
    register_ms_deform_attn_symbolic(ONNX_OPSET)

    class Op(torch.nn.Module):
        def forward(self, *inputs):
            return torch.ops.deformable_detr.ms_deform_attn(*inputs)

    def inputs(shapes, n, lq, seed, heads=3, dim=4, points=2):
        g = torch.Generator().manual_seed(seed)
        shapes = torch.tensor(shapes)
        start = torch.cat([shapes.new_zeros(1), shapes.prod(1).cumsum(0)[:-1]])
        value = torch.randn(n, int(shapes.prod(1).sum()), heads, dim, generator=g)
        locations = torch.rand(n, lq, heads, len(shapes), points, 2, generator=g) * 1.6 - 0.3
        weights = torch.rand(n, lq, heads, len(shapes), points, generator=g)
        return value, shapes, start, locations, weights

    names = ["value", "shapes", "start", "locations", "weights"]
    buffer = io.BytesIO()
    # the TorchScript-based exporter is the one with custom symbolics (its notice is expected)
    with pytest.warns(DeprecationWarning):
        torch.onnx.export(
            Op(),
            inputs([[7, 5], [3, 9], [1, 1]], 2, 6, 0),
            buffer,
            dynamo=False,
            opset_version=ONNX_OPSET,
            input_names=names,
            dynamic_axes={
                "value": {0: "n", 1: "s"},
                "locations": {0: "n", 1: "q"},
                "weights": {0: "n", 1: "q"},
            },
        )
    session = onnxruntime.InferenceSession(buffer.getvalue(), providers=["CPUExecutionProvider"])
    cases = (inputs([[7, 5], [3, 9], [1, 1]], 2, 6, 1), inputs([[11, 3], [5, 13], [2, 1]], 1, 9, 2))
    # NaN as in the op (issue 22): a NaN weight, a NaN or an infinite location; far but finite
    # samples zero
    value, shapes, start, locations, weights = inputs([[7, 5], [3, 9], [1, 1]], 2, 6, 3)
    weights[0, 1, 0, 0, 0] = math.nan
    locations[0, 2, 1, 1, 1, 0] = math.nan
    locations[1, 3, 2, 2, 0, 1] = -math.inf
    locations[1, 4, 0, 0, 1] = torch.tensor([1e30, 0.5])
    cases += ((value, shapes, start, locations, weights),)
    for case in cases:
        (out,) = session.run(None, {n: t.numpy() for n, t in zip(names, case)})
        # NaN where the op has NaN, and only there (assert_allclose's equal_nan)
        np.testing.assert_allclose(out, ms_deform_attn(*case).numpy(), rtol=0, atol=1e-5)
    assert np.isnan(out).reshape(2, 6, 3, 4).any(-1).sum() == 3
    assert set(_domains(onnx.load_from_string(buffer.getvalue()).graph)) <= {"", "ai.onnx"}


@pytest.mark.parametrize(
    "options, opts, error, match",
    [
        (["--format", "onnx"], ["INPUT.FORMAT", "BGR"], ValueError, "INPUT.FORMAT must be 'RGB'"),
        ([], ["MODEL.META_ARCHITECTURE", "GeneralizedRCNN"], ValueError, "META_ARCHITECTURE"),
        (["--sample-image", "missing.jpg"], [], FileNotFoundError, "missing.jpg"),
    ],
)
def test_export_tool_bad_requests(options, opts, error, match, tmp_path):
    tool = load_script(EXPORT_TOOL)
    with pytest.raises(error, match=match):
        tool.main(
            [
                "--config-file",
                os.path.join(CONFIG_DIR, RELEASED_CONFIGS[0]),
                "--output",
                str(tmp_path),
                *options,
                "MODEL.DEVICE",
                "cpu",
                *opts,
            ]
        )


def test_export_tool_unknown_format(tmp_path, capsys):
    tool = load_script(EXPORT_TOOL)
    with pytest.raises(SystemExit):
        tool.main(
            [
                "--config-file",
                os.path.join(CONFIG_DIR, RELEASED_CONFIGS[0]),
                "--output",
                str(tmp_path),
                "--format",
                "caffe2",
            ]
        )
    assert "invalid choice: 'caffe2'" in capsys.readouterr().err


@pytest.mark.slow
def test_export_tool_onnx_and_predict(tmp_path, capsys):
    """The tool writes an ONNX file that agrees with the eager model on a JPEG (exit 0), with
    the config's test resize in its metadata; onnx_predict.py (onnxruntime, numpy, Pillow only)
    resizes with that, unasked, and draws its detections on that JPEG."""
    jpeg = str(tmp_path / "sample.jpg")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (120, 150, 3), dtype=np.uint8)).save(jpeg)
    tool = load_script(EXPORT_TOOL)
    out = tmp_path / "out"
    # small, to keep the test short: the exports' agreement is tested above
    size = ["INPUT.MIN_SIZE_TEST", "128", "INPUT.MAX_SIZE_TEST", "160"]
    code = tool.main(
        [
            "--config-file",
            os.path.join(CONFIG_DIR, RELEASED_CONFIGS[0]),
            "--output",
            str(out),
            "--format",
            "onnx",
            "--export-method",
            "tracing",
            "--sample-image",
            jpeg,
            "MODEL.DEVICE",
            "cpu",
            "MODEL.WEIGHTS",
            "",
            *SHALLOW,
            *size,
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "onnx vs eager on (128, 160): 100 detections" in printed
    # a dynamic file is also checked at a second size
    assert "onnx: dynamic\n" in printed and "onnx vs eager on (96, 140): 100 detections" in printed
    assert printed.count("classes agree: True") == 2
    pictures = tmp_path / "pictures"
    result = subprocess.run(
        [
            sys.executable,
            os.path.join(REPO, PREDICT_TOOL),
            "--model",
            str(out / "model.onnx"),
            "--input",
            jpeg,
            "--output",
            str(pictures),
            "--confidence-threshold",
            "0",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": ""},
    )
    assert result.returncode == 0, result.stderr
    metadata = "min size 128 from the file's metadata, max size 160 from the file's metadata"
    assert metadata in result.stdout
    assert "100 of 100 detections drawn" in result.stdout
    with Image.open(pictures / "sample.jpg") as picture:
        assert picture.size == (150, 120)


def test_compare_detections_forgives_reordered_ties_only():
    boxes = np.array([[0, 0, 10, 10], [5, 5, 20, 20], [1, 2, 3, 4]], np.float32)
    scores = np.array([0.9, 0.5, 0.5 - 1e-6], np.float32)
    classes = np.array([1, 2, 3])
    swapped = [0, 2, 1]
    diff = compare_detections(
        (boxes, scores, classes), (boxes[swapped], scores[swapped], classes[swapped])
    )
    assert diff["ok"] and diff["max_score_diff"] == 0 and diff["max_box_diff"] == 0
    same_class = classes.copy()
    same_class[2] = 2  # two detections of one class, near-tied: their boxes swap places
    diff = compare_detections(
        (boxes, scores, same_class), (boxes[swapped], scores[swapped], same_class[swapped])
    )
    assert diff["ok"] and diff["max_box_diff"] == 0
    moved = boxes.copy()
    moved[2, 0] += 0.5
    assert not compare_detections((boxes, scores, classes), (moved, scores, classes))["ok"]
    assert not compare_detections((boxes, scores, classes), (boxes[:2], scores[:2], classes[:2]))[
        "ok"
    ]


def test_onnx_predict_resize_is_the_test_resize():
    """onnx_predict.py repeats detr_resized_size (it may not import torch): the same sizes."""
    from deformable_detr.data.augmentation import detr_resized_size

    predict = load_script(PREDICT_TOOL)
    sizes = [
        (480, 640, 800, 1333),
        (640, 480, 800, 1333),
        (300, 1200, 800, 1333),
        (240, 300, 224, 352),
        (800, 800, 800, 1333),
        (333, 517, 600, 1000),
    ]
    for h, w, short, max_size in sizes:
        expected = detr_resized_size(h, w, short, max_size)
        assert predict.resized_size(h, w, short, max_size) == expected


def test_onnx_predict_imports_neither_torch_nor_detectron2():
    import ast

    with open(os.path.join(REPO, PREDICT_TOOL)) as f:
        tree = ast.parse(f.read())
    modules = {
        alias.name.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    }
    modules |= {
        node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
    }
    allowed = {"argparse", "importlib", "math", "os", "sys", "numpy", "onnxruntime", "PIL"}
    assert modules <= allowed, modules
