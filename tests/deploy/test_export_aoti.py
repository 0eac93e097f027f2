"""Export to an AOTInductor package (.pt2): the package gives the eager model's detections, and
runs without Detectron2.

The two-stage variant through export_aoti, and the multi-scale one through export_model.py
--format aoti end to end, with random weights and the depth of tests/deploy/test_export.py (1
encoder and 2 decoder layers), on CPU. Each test compiles C++ with Inductor (about 1.5 minutes on 2
cores), hence slow.
The package is static: it is checked at the size it was exported at (deformable_detr/export/
aoti.py says why), and run_aoti refuses another.
"""

import glob
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from deformable_detr.export import eager_detections, export_aoti, run_aoti
from cli_cases import load_script
from export_cases import SHALLOW, assert_agree
from model_cases import build, image
from repo_paths import CONFIG_DIR, EXPORT_TOOL
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
def test_two_stage_aoti_package_matches_eager(tmp_path):
    model = build("ddetr_r50_two_stage.yaml", SHALLOW).eval()
    img = image(*SIZE, 0)
    expected = eager_detections(model, img)
    path = export_aoti(model, img, str(tmp_path / "model.pt2"))
    assert_agree(expected, run_aoti(path, img), "two-stage aoti")
    # the compiled code would return no detections for a smaller image, without an error
    with pytest.raises(ValueError, match=r"of 256x320 pixels .* got an image of shape \(3, 224"):
        run_aoti(path, image(224, 352, 1))
    _assert_runs_without_detectron2(path, img, expected, tmp_path, "two-stage aoti")


@requires_extension
@pytest.mark.slow
def test_export_tool_aoti_matches_eager(tmp_path, capsys):
    """export_model.py --format aoti on the multi-scale variant, with weights from a file and a
    sample image at the test resize's own size: the tool finds its package agrees with the
    eager model (exit 0), and so does the package run without Detectron2."""
    model = build("ddetr_r50.yaml", SHALLOW).eval()
    weights = tmp_path / "weights.pth"
    torch.save({"model": model.state_dict()}, weights)
    pixels = image(*SIZE, 0).to(torch.uint8)
    sample = tmp_path / "sample.png"  # lossless: the tool reads exactly these pixels
    Image.fromarray(pixels.permute(1, 2, 0).numpy()).save(sample)
    tool = load_script(EXPORT_TOOL)
    out = tmp_path / "out"
    code = tool.main(
        [
            "--config-file",
            os.path.join(CONFIG_DIR, "ddetr_r50.yaml"),
            "--output",
            str(out),
            "--format",
            "aoti",
            "--sample-image",
            str(sample),
            "MODEL.DEVICE",
            "cpu",
            *SHALLOW,
            "MODEL.WEIGHTS",
            str(weights),
            "INPUT.MIN_SIZE_TEST",
            str(SIZE[0]),
            "INPUT.MAX_SIZE_TEST",
            str(SIZE[1]),
        ]
    )
    assert code == 0
    assert f"aoti vs eager on {SIZE}: 100 detections" in capsys.readouterr().out
    img = pixels.float()
    _assert_runs_without_detectron2(
        str(out / "model.pt2"), img, eager_detections(model, img), tmp_path, "multi-scale aoti"
    )
