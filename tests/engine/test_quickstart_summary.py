"""tools/quickstart_summary.py, run as `make quickstart` runs it: the AP of the last evaluation,
the loss curve, and one grid picture of the first 10 drawn pictures, each in its cell."""

import json
import os
import subprocess
import sys

import cv2
import numpy as np

from repo_paths import REPO

SUMMARY = os.path.join(REPO, "tools", "quickstart_summary.py")


def _write_run(folder, colours, size=(24, 30)):
    """A run's metrics.json (two iterations, one evaluation) and one picture of a single colour
    per entry of colours, named as demo.py names them."""
    rows = [
        {"iteration": 0, "total_loss": 8.5},
        {"iteration": 1, "total_loss": 7.25},
        {"iteration": 1, "bbox/AP": 51.68, "bbox/AP50": 74.45, "bbox/AP75": 61.11},
    ]
    (folder / "metrics.json").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "pictures").mkdir()
    for i, colour in enumerate(colours):
        picture = np.full((*size, 3), colour, np.uint8)
        assert cv2.imwrite(str(folder / "pictures" / f"{i:05d}.png"), picture)


def test_summary_prints_ap_and_tiles_the_first_ten_pictures(tmp_path):
    rng = np.random.default_rng(0)
    colours = [tuple(int(c) for c in rng.integers(0, 200, 3)) for _ in range(12)]
    _write_run(tmp_path, colours)
    run = subprocess.run(
        [sys.executable, SUMMARY, str(tmp_path)], capture_output=True, text=True, check=True
    )
    assert "total_loss by iteration: 1: 8.50, 2: 7.25" in run.stdout
    assert "AP 51.7, AP50 74.5, AP75 61.1" in run.stdout
    grid_path = str(tmp_path / "grid.jpg")
    assert f"the first 10 in one picture: {grid_path}" in run.stdout

    grid = cv2.imread(grid_path).astype(int)
    h, w, gap = 24, 30, 4  # 5 columns, 2 rows, white gaps between the cells
    assert grid.shape == (2 * h + gap, 5 * w + 4 * gap, 3)
    for i, colour in enumerate(colours[:10]):
        y, x = (i // 5) * (h + gap), (i % 5) * (w + gap)
        cell = grid[y + 2 : y + h - 2, x + 2 : x + w - 2]  # JPEG blurs the cells' edges
        assert np.abs(cell - colour).max() <= 8, i
    assert (grid[h + 1, :] > 240).all() and (grid[:, w + 1] > 240).all()


def test_summary_without_a_training_run_says_so(tmp_path):
    run = subprocess.run([sys.executable, SUMMARY, str(tmp_path)], capture_output=True, text=True)
    assert run.returncode != 0
    assert f"{tmp_path / 'metrics.json'} does not exist: did the training run?" in run.stderr
