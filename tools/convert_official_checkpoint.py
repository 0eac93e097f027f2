#!/usr/bin/env python
"""Converts a released Deformable DETR checkpoint (fundamentalvision/Deformable-DETR,
*-checkpoint.pth, or H-Deformable-DETR's R50 files of the same layout) into a Detectron2
checkpoint of this project and prints the config to use.

The file is read with torch.load(weights_only=True), only argparse.Namespace (the stored args)
allowed; the variant is detected from the weights and the args; every key is checked and renamed,
the 91 class rows (by COCO category id) become Detectron2's 80 classes; optimizer, lr_scheduler,
epoch and args are dropped. Load the output as MODEL.WEIGHTS: no key is missing or unexpected.

Usage: python tools/convert_official_checkpoint.py --input r50_deformable_detr-checkpoint.pth \\
           --output output/ddetr_r50_official.pth [--variant multi_scale]
"""

import argparse
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "projects", "DeformableDETR"))

from deformable_detr.checkpoint import (  # noqa: E402
    KNOWN_VARIANTS,
    convert_official_checkpoint,
)


def _config(variant) -> str:
    return " ".join([f"configs/{variant.config}", *variant.opts])


EPILOG = (
    "released variants (name: config, COCO val box AP; H-DETR's at 12 epochs):\n"
    + "\n".join(f"  {v.name}: {_config(v)}, {v.box_ap}" for v in KNOWN_VARIANTS)
    + """

H-Deformable-DETR's files (HDETR/H-Deformable-DETR: two-stage, refined, FFN 2048; the "tricks"
add learned content queries, 300 rows, and hybrid matching 1,500 more) are told apart by their
weights. Their 36-epoch files convert alike (49.0 and 50.0 AP for tricks and hybrid).

The variant is read from the weights (levels, two-stage, box refinement) and the stored args
(args.dilation tells DC5). A single-scale file without args needs --variant, since DC5 changes no
weight; a multi-scale file without args is taken as undilated (as every released one is).

Weights released before 2020-12-07 predate the authors' fix of the sampling-offset
normalisation in MSDeformAttn (their docs/changelog.md). They convert, but they were trained
with the old normalisation and this project computes the fixed one, so expect a lower AP: use the
files re-released on that date.
"""
)


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--input", required=True, help="the released *-checkpoint.pth")
    parser.add_argument("--output", required=True, help="where to write the Detectron2 checkpoint")
    parser.add_argument(
        "--variant",
        choices=[v.name for v in KNOWN_VARIANTS],
        help="the released variant; needed for a single-scale file without "
        "stored args, otherwise checked against the file",
    )
    args = parser.parse_args(argv)
    try:
        variant = convert_official_checkpoint(args.input, args.output, args.variant)
    except (OSError, ValueError) as e:
        sys.exit(f"error: {e}")
    print(
        f"variant: {variant.name} of {variant.source} (released COCO val box AP {variant.box_ap})"
    )
    print(f"wrote: {args.output}")
    print(f"config: {_config(variant)}")
    print(
        f"evaluate (from {REPO}): python train_net.py --config-file configs/{variant.config} "
        f"--eval-only " + " ".join(["MODEL.WEIGHTS", os.path.abspath(args.output), *variant.opts])
    )


if __name__ == "__main__":
    main()
