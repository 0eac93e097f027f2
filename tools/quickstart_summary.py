#!/usr/bin/env python
"""Prints what `make quickstart` produced: COCO AP of the last evaluation, the loss curve, where
the pictures are, and tiles the first pictures into one grid picture to open and look at. Reads
OUTPUT_DIR/metrics.json (Detectron2's JSONWriter) and OUTPUT_DIR/pictures (demo.py's output);
writes OUTPUT_DIR/grid.jpg.

Usage: python tools/quickstart_summary.py output/quickstart
"""

import json
import math
import os
import sys

import cv2
import numpy as np

GRID_COLUMNS = 5
GRID_PICTURES = 10  # the val images `make quickstart` draws: 00000.jpg .. 00009.jpg
GRID_GAP = 4  # white pixels between the pictures


def write_grid(paths, out, columns=GRID_COLUMNS, gap=GRID_GAP):
    """The pictures at paths tiled row by row into one image at out, on white, each in a cell of
    the largest picture's size."""
    pictures = []
    for path in paths:
        picture = cv2.imread(path, cv2.IMREAD_COLOR)
        if picture is None:
            raise ValueError(f"cannot read the picture {path!r}")
        pictures.append(picture)
    h = max(p.shape[0] for p in pictures)
    w = max(p.shape[1] for p in pictures)
    columns = min(columns, len(pictures))
    rows = math.ceil(len(pictures) / columns)
    grid = np.full((rows * (h + gap) - gap, columns * (w + gap) - gap, 3), 255, np.uint8)
    for i, picture in enumerate(pictures):
        y, x = (i // columns) * (h + gap), (i % columns) * (w + gap)
        grid[y : y + picture.shape[0], x : x + picture.shape[1]] = picture
    if not cv2.imwrite(out, grid):
        raise OSError(f"cannot write the grid picture to {out!r}")


def main(output_dir):
    path = os.path.join(output_dir, "metrics.json")
    if not os.path.exists(path):
        raise SystemExit(f"{path} does not exist: did the training run?")
    rows = [json.loads(line) for line in open(path) if line.strip()]
    losses = [(r["iteration"], r["total_loss"]) for r in rows if "total_loss" in r]
    evals = [r for r in rows if "bbox/AP50" in r]
    print("\n=== quickstart summary ===")
    if losses:
        step = max(1, len(losses) // 8)
        points = losses[::step] + ([losses[-1]] if (len(losses) - 1) % step else [])
        curve = ", ".join(f"{it + 1}: {loss:.2f}" for it, loss in points)
        print(f"total_loss by iteration: {curve}")
    if evals:
        last = evals[-1]
        print(
            f"COCO box AP on ddetr_shapes_val: AP {last['bbox/AP']:.1f}, "
            f"AP50 {last['bbox/AP50']:.1f}, AP75 {last['bbox/AP75']:.1f}"
        )
    else:
        print("no evaluation found in metrics.json")
    pictures = os.path.join(output_dir, "pictures")
    names = sorted(os.listdir(pictures)) if os.path.isdir(pictures) else []
    if names:
        print(f"pictures of the val predictions: {pictures}/ ({len(names)} files)")
        grid = os.path.join(output_dir, "grid.jpg")
        write_grid([os.path.join(pictures, n) for n in names[:GRID_PICTURES]], grid)
        print(f"the first {min(len(names), GRID_PICTURES)} in one picture: {grid}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "output/quickstart")
