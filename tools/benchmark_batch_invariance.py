#!/usr/bin/env python
"""Cost of batch-invariant inference: a batch of images of mixed sizes through ddetr_r50 on the
CPU, with MODEL.DEFORMABLE_DETR.BATCH_INVARIANT_INFERENCE on (backbone and neck per image, the
features padded) and off (the released padded batch), side by side in one process.

The sizes are the test-time resize of COCO-like aspect ratios (4:3, 3:4, 16:9, 1:1, ...) at
--short-side, so the padded batch is as wide and as tall as its largest members. Prints the median
time of each mode over --repeat alternating runs and their ratio, and how far the padded mode
moves each image's top-100 scores from its batch-1 scores (the invariant mode: by construction
within 1e-4). Randomly initialised weights: timing does not depend on them.

Usage: python tools/benchmark_batch_invariance.py [--batch 8] [--short-side 480] [--repeat 3]
"""

import argparse
import os
import statistics
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "projects", "DeformableDETR"))

import ddetr_malloc  # noqa: E402  (standard library only)

if __name__ == "__main__":  # on mimalloc (ddetr_malloc), before torch's import, which it repeats
    ddetr_malloc.reexec_with_mimalloc()

# deformable_detr first: it silences detectron2's import-time deprecation warning
from deformable_detr import get_config  # noqa: E402
from deformable_detr.data.augmentation import detr_resized_size  # noqa: E402

import torch  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402

# (height, width) of originals with COCO's common aspect ratios
ORIGINALS = [
    (480, 640),
    (640, 480),
    (360, 640),
    (500, 500),
    (427, 640),
    (640, 427),
    (480, 640),
    (333, 500),
]


def build(invariant: bool):
    cfg = get_config(
        os.path.join(REPO, "configs", "ddetr_r50.yaml"),
        ["MODEL.DEVICE", "cpu", "MODEL.DEFORMABLE_DETR.BATCH_INVARIANT_INFERENCE", str(invariant)],
    )
    torch.manual_seed(0)
    return build_model(cfg).eval()


def timed(model, inputs):
    start = time.perf_counter()
    with torch.no_grad():
        out = model(inputs)
    return time.perf_counter() - start, [o["instances"].scores for o in out]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--short-side", type=int, default=480)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    g = torch.Generator().manual_seed(0)
    sizes = [
        detr_resized_size(h, w, args.short_side, args.short_side * 1333 // 800)
        for h, w in (ORIGINALS * args.batch)[: args.batch]
    ]
    inputs = [{"image": torch.randint(0, 256, (3, h, w), generator=g).float()} for h, w in sizes]
    invariant, padded = build(True), build(False)
    padded.load_state_dict(invariant.state_dict())
    timed(invariant, inputs[:1])  # warm-up
    times = {"invariant": [], "padded": []}
    for _ in range(args.repeat):
        for name, model in (("invariant", invariant), ("padded", padded)):
            seconds, scores = timed(model, inputs)
            times[name].append(seconds)
            if name == "padded":
                padded_scores = scores
    alone = [timed(invariant, [x])[1][0] for x in inputs]
    moved = max((a - b).abs().max().item() for a, b in zip(alone, padded_scores))
    t_inv, t_pad = (statistics.median(times[k]) for k in ("invariant", "padded"))
    print(f"ddetr_r50, CPU, {torch.get_num_threads()} threads, batch {args.batch}, sizes {sizes}")
    print(
        f"invariant {t_inv:.2f} s, padded {t_pad:.2f} s per batch (median of {args.repeat}): "
        f"invariant / padded = {t_inv / t_pad:.2f}"
    )
    print(
        f"padded mode: largest change of an image's top-{len(alone[0])} scores against batch 1: "
        f"{moved:.3g}"
    )


if __name__ == "__main__":
    main()
