"""Export to an AOTInductor package (.pt2): one package gives the eager model's detections at
every size in its range, and runs without Detectron2.

Each released variant checked at four sizes from one package (the sample's, another aspect,
the smallest side it takes, a tall one): the multi-scale one's package made by export_model.py
--format aoti end to end, the others' by export_aoti, with random weights and the depth of
tests/deploy/test_export.py (1 encoder and 2 decoder layers), on CPU. Each test compiles C++
with Inductor (30-60 s on 2 cores), hence slow. run_aoti refuses an image outside the
package's range of sides (deformable_detr/export/aoti.py).
"""

import glob
import logging
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from deformable_detr.export import (
    SIDES_KEY,
    eager_detections,
    export_aoti,
    package_sides,
    run_aoti,
    second_size,
    symbolic_min_side,
)
from export_cases import SHALLOW, assert_agree, lossless_png, run_export_tool
from model_cases import BACKBONE_CONFIGS, NO_WEIGHTS, RELEASED_CONFIGS, build, image
from ms_deform_attn_cases import requires_extension

SIZE = (256, 320)

# Runs a package in a process where detectron2 and deformable_detr cannot be imported: the op's
# library, loaded by path, is all the package needs besides torch (library "" loads none).
RUN_WITHOUT_DETECTRON2 = """
import sys
import numpy as np
import torch

class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("detectron2", "deformable_detr"):
            raise ImportError("blocked: " + name)

sys.meta_path.insert(0, Block())
library, package, image, out = sys.argv[1:]
if library:
    torch.ops.load_library(library)
runner = torch._inductor.aoti_load_package(package)
with torch.no_grad():
    outputs = runner(torch.from_numpy(np.load(image)))
np.savez(out, *[o.numpy() for o in outputs])
"""


def _op_library():
    import deformable_detr

    (library,) = glob.glob(os.path.join(os.path.dirname(deformable_detr.__file__), "_C*.so"))
    return library


def _assert_runs_without_detectron2(path, img, expected, tmp_path, what):
    """The package at `path` gives `expected` on img in a process that cannot import Detectron2
    or this project, with the op's library loaded by path, and cannot load without it."""
    np.save(tmp_path / "image.npy", img.numpy())

    def run(library):
        return subprocess.run(
            [
                sys.executable,
                "-c",
                RUN_WITHOUT_DETECTRON2,
                library,
                path,
                str(tmp_path / "image.npy"),
                str(tmp_path / "out.npz"),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )

    # the package calls the compiled op: it cannot load without it
    result = run("")
    assert result.returncode != 0
    assert "Could not find schema for deformable_detr::ms_deform_attn" in result.stderr
    result = run(_op_library())
    assert result.returncode == 0, result.stderr
    with np.load(tmp_path / "out.npz") as out:
        actual = tuple(out[f"arr_{i}"] for i in range(3))
    assert_agree(expected, actual, f"{what} without detectron2")


@requires_extension
@pytest.mark.slow
# ddetr_r50.yaml's package: test_export_tool_aoti_matches_eager (one compile fewer)
@pytest.mark.parametrize("name", [n for n in RELEASED_CONFIGS if n != "ddetr_r50.yaml"])
def test_one_package_matches_eager_at_four_sizes(name, tmp_path):
    model = build(name, SHALLOW).eval()
    low = symbolic_min_side(model)
    img = image(*SIZE, 0)
    path = export_aoti(model, img, str(tmp_path / "model.pt2"))
    assert torch._inductor.aoti_load_package(path).get_metadata()[SIDES_KEY] == f"{low}-1333"
    for size in (SIZE, (224, 352), (low, 300), (400, 288)):
        other = image(*size, 1)
        assert_agree(eager_detections(model, other), run_aoti(path, other), f"{name} {size}")
    # the compiled code checks no size itself: outside its range, it would give wrong boxes
    for size in ((low - 1, 300), (300, 1334)):
        with pytest.raises(ValueError, match=rf"sides from {low} to 1333 pixels; got"):
            run_aoti(path, torch.zeros(3, *size))
    if name == "ddetr_r50_two_stage.yaml":
        expected = eager_detections(model, img)
        _assert_runs_without_detectron2(path, img, expected, tmp_path, "two-stage aoti")


@requires_extension
@pytest.mark.slow
def test_a_backbone_export_cannot_follow_gets_a_static_package(tmp_path, caplog):
    """Swin pads to its windows by sizes torch.export cannot prove valid over a range: the
    package is static, says so, and runs at its size only."""
    opts = (*BACKBONE_CONFIGS["ddetr_swin_t.yaml"], *NO_WEIGHTS, *SHALLOW)
    model = build("ddetr_swin_t.yaml", opts).eval()
    img = image(*SIZE, 0)
    with caplog.at_level(logging.WARNING, logger="deformable_detr.export.aoti"):
        path = export_aoti(model, img, str(tmp_path / "model.pt2"))
    assert "cannot keep the image size symbolic through SwinTransformer" in caplog.text
    assert package_sides(path) is None
    assert_agree(eager_detections(model, img), run_aoti(path, img), "swin aoti")
    with pytest.raises(ValueError, match=r"of 256x320 pixels and runs at that size only"):
        run_aoti(path, image(224, 352, 1))


@requires_extension
@pytest.mark.slow
def test_export_tool_aoti_matches_eager(tmp_path, capsys):
    """export_model.py --format aoti on the multi-scale variant, with weights from a file and a
    sample image at the test resize's own size: the tool finds its package agrees with the
    eager model (exit 0) at two sizes, so does the package at two more sizes (the smallest side
    it takes, a tall one) and run without Detectron2, and it refuses sizes out of its range."""
    model = build("ddetr_r50.yaml", SHALLOW).eval()
    sample = tmp_path / "sample.png"  # lossless: the tool reads exactly these pixels
    pixels = lossless_png(SIZE, 0, sample)
    code = run_export_tool(model, tmp_path, "aoti", sample, SIZE)
    assert code == 0
    out_text = capsys.readouterr().out
    assert f"aoti vs eager on {SIZE}: 100 detections" in out_text
    # dynamic up to the config's longest side, and checked at a second size by the tool
    assert f"aoti: dynamic, sides from 65 to {SIZE[1]} pixels" in out_text
    assert f"aoti vs eager on {second_size(SIZE, 65)}: 100 detections" in out_text
    path = str(tmp_path / "out" / "model.pt2")
    for size in ((65, 300), (SIZE[1], 224)):
        other = image(*size, 1)
        assert_agree(eager_detections(model, other), run_aoti(path, other), f"tool {size}")
    with pytest.raises(ValueError, match=rf"sides from 65 to {SIZE[1]} pixels; got 64x300"):
        run_aoti(path, torch.zeros(3, 64, 300))
    _assert_runs_without_detectron2(
        path, pixels, eager_detections(model, pixels), tmp_path, "multi-scale aoti"
    )
