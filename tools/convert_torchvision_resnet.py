#!/usr/bin/env python
"""Converts torchvision's ImageNet ResNet weights (resnet50-*.pth, a plain state dict) into a
Detectron2 checkpoint that initialises the backbone of this project's models.

The file is read with torch.load(weights_only=True); torchvision's names become Detectron2's under
"backbone." (conv1/bn1 -> stem.conv1(.norm), layer1..4 -> res2..res5, bnI -> convI.norm,
downsample -> shortcut(.norm)); fc.* and num_batches_tracked are dropped. Loaded as MODEL.WEIGHTS
it sets the backbone only: Detectron2 then warns that the neck, transformer and heads are missing
from the checkpoint, which is expected (they keep their initialisation and are trained).

Usage: python tools/convert_torchvision_resnet.py --input resnet50-0676ba61.pth \\
           --output output/r50_torchvision.pth
"""

import argparse
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "projects", "DeformableDETR"))

from deformable_detr.checkpoint import convert_torchvision_resnet_file  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--input", required=True, help="torchvision's resnet{50,101,152}-*.pth")
    parser.add_argument("--output", required=True, help="where to write the Detectron2 checkpoint")
    args = parser.parse_args(argv)
    try:
        depth = convert_torchvision_resnet_file(args.input, args.output)
    except (OSError, ValueError) as e:
        sys.exit(f"error: {e}")
    print(f"wrote: {args.output} (ResNet-{depth} backbone only)")
    extra = "" if depth == 50 else f" MODEL.RESNETS.DEPTH {depth}"
    print(
        f"use: MODEL.WEIGHTS {args.output}{extra} (the rest of the model is initialised as "
        f"configured; Detectron2 lists it as missing from the checkpoint)"
    )


if __name__ == "__main__":
    main()
