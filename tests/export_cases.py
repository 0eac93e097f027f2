"""Shared pieces of the export tests: the shallow variants they export, the agreement check and
a run of export_model.py."""

import os

import torch
from PIL import Image

from deformable_detr.export import compare_detections
from cli_cases import load_script
from model_cases import image
from repo_paths import CONFIG_DIR, EXPORT_TOOL

# 1 encoder and 2 decoder layers keep exports fast; full depth was checked by hand (issue note)
SHALLOW = ("MODEL.DEFORMABLE_DETR.ENC_LAYERS", "1", "MODEL.DEFORMABLE_DETR.DEC_LAYERS", "2")


def assert_agree(expected, actual, what):
    """The export's detections are the eager model's 100 (scores 1e-4, boxes 1e-2 px)."""
    diff = compare_detections(expected, actual)
    assert diff["ok"], f"{what}: {diff}"
    assert diff["count"][0] == 100


def lossless_png(size, seed, path):
    """A random image (model_cases.image) of size (h, w) written to path as a PNG; returns its
    pixels (3, h, w) float, which a tool reading path gets exactly."""
    pixels = image(*size, seed).to(torch.uint8)
    Image.fromarray(pixels.permute(1, 2, 0).numpy()).save(path)
    return pixels.float()


def run_export_tool(model, tmp_path, fmt, sample, size, flags=(), opts=()):
    """export_model.py --format fmt on ddetr_r50.yaml on the CPU at SHALLOW depth (and opts), with
    model's weights from a file, the sample image file, the test resize set to size (h, w) and
    any other flags; writes into tmp_path/out and returns the tool's exit code."""
    weights = tmp_path / "weights.pth"
    torch.save({"model": model.state_dict()}, weights)
    config = os.path.join(CONFIG_DIR, "ddetr_r50.yaml")
    argv = ["--config-file", config, "--output", str(tmp_path / "out"), "--format", fmt]
    argv += [*flags, "--sample-image", str(sample), "MODEL.DEVICE", "cpu", *SHALLOW, *opts]
    argv += ["MODEL.WEIGHTS", str(weights), "INPUT.MIN_SIZE_TEST", str(size[0])]
    return load_script(EXPORT_TOOL).main([*argv, "INPUT.MAX_SIZE_TEST", str(size[1])])
