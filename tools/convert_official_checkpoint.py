#!/usr/bin/env python
"""Converts a released Deformable DETR checkpoint (fundamentalvision/Deformable-DETR,
*-checkpoint.pth, or H-Deformable-DETR's R50 files of the same layout) into a Detectron2
checkpoint of this project and prints the config to use (with the keys it needs, if any).

The file is read with torch.load(weights_only=True), only argparse.Namespace (the stored args)
allowed; the variant is detected from the weights and the args; every key is checked and renamed,
the 91 class rows (by COCO category id) become Detectron2's 80 classes; optimizer, lr_scheduler,
epoch and args are dropped. Load the output as MODEL.WEIGHTS: no key is missing or unexpected.

Usage: python tools/convert_official_checkpoint.py --input r50_deformable_detr-checkpoint.pth \\
           --output output/ddetr_r50_official.pth [--variant multi_scale]
       python tools/convert_official_checkpoint.py --output output/hdetr_r50_36ep.pth \\
           --input r50_hybrid_branch_lambda1_group6_t1500_dp0_mqs_lft_[...]_two_stage_36eps.pth
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


def _published(variant) -> str:
    return ", ".join(f"{ap} at {epochs} epochs" for epochs, ap in variant.published)


def _box_ap(variant) -> str:
    if variant.box_ap is None:
        return (
            "no published AP for this very run: its stored args differ from the release's, or "
            f"are absent; the release's: {_published(variant)}"
        )
    if variant.epochs is not None:
        return f"their COCO val box AP {variant.box_ap}, {variant.epochs} epochs"
    return f"released COCO val box AP {variant.box_ap}"


EPILOG = (
    "released variants (name: config, COCO val box AP):\n"
    + "\n".join(
        f"  {v.name}: {_config(v)}, {_published(v) if v.published else v.box_ap}"
        for v in KNOWN_VARIANTS
    )
    + """

The variant is read from the weights (levels, two-stage, box refinement) and the stored args
(args.dilation tells DC5). A single-scale file without args needs --variant, since DC5 changes no
weight; a multi-scale file without args is taken as undilated (as every released one is).

H-Deformable-DETR's R50 files (HDETR/H-Deformable-DETR; two-stage, refined, FFN 2048; "tricks":
dropout 0, look forward twice and 300 learned content queries; "hybrid": 1,500 one-to-many
queries more) are told apart by their weights. Their stored args pick the config of their
schedule (the *_36ep twin for 36 epochs) and the keys a run of other settings needs (e.g.
MODEL.DEFORMABLE_DETR.HYBRID_MATCHING.NUM_QUERIES_ONE2MANY 900 for a 300 + 900 run); args that
disagree with the weights are refused. Their Swin files are not read.

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
    print(f"variant: {variant.name} of {variant.source} ({_box_ap(variant)})")
    print(f"wrote: {args.output}")
    print(f"config: {_config(variant)}")
    print(
        f"evaluate (from {REPO}): python train_net.py --config-file configs/{variant.config} "
        f"--eval-only " + " ".join(["MODEL.WEIGHTS", os.path.abspath(args.output), *variant.opts])
    )


if __name__ == "__main__":
    main()
