#!/usr/bin/env python
"""Prints what `make quickstart` produced: COCO AP of the last evaluation, the loss curve, the
training time and where the pictures are. Reads OUTPUT_DIR/metrics.json (Detectron2's
JSONWriter).

Usage: python tools/quickstart_summary.py output/quickstart
"""

import json
import os
import sys


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
    if os.path.isdir(pictures):
        print(f"pictures of the val predictions: {pictures}/ ({len(os.listdir(pictures))} files)")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "output/quickstart")
