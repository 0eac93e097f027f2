#!/usr/bin/env python
"""Converts a released Deformable DETR checkpoint (fundamentalvision/Deformable-DETR,
*-checkpoint.pth) into a Detectron2 checkpoint of this project and prints the config to use.

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

from deformable_detr.checkpoint import RELEASED_VARIANTS, convert_official_checkpoint  # noqa: E402

EPILOG = (
    "released variants (name: config, COCO val box AP):\n"
    + "\n".join(f"  {v.name}: configs/{v.config}, {v.box_ap}" for v in RELEASED_VARIANTS)
    + """

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
        choices=[v.name for v in RELEASED_VARIANTS],
        help="the released variant; needed for a single-scale file without "
        "stored args, otherwise checked against the file",
    )
    args = parser.parse_args(argv)
    try:
        variant = convert_official_checkpoint(args.input, args.output, args.variant)
    except (OSError, ValueError) as e:
        sys.exit(f"error: {e}")
    config = f"configs/{variant.config}"
    print(f"variant: {variant.name} (released COCO val box AP {variant.box_ap})")
    print(f"wrote: {args.output}")
    print(f"config: {config}")
    print(
        f"evaluate (from {REPO}): python train_net.py --config-file {config} --eval-only "
        f"MODEL.WEIGHTS {os.path.abspath(args.output)}"
    )


if __name__ == "__main__":
    main()
