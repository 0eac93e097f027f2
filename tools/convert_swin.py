#!/usr/bin/env python
"""Converts Swin Transformer's official ImageNet checkpoints (microsoft/Swin-Transformer:
swin_{tiny,small,base,large}_patch4_window7_224[_22k].pth, swin_{base,large}_patch4_window12_384
[_22k].pth) into a Detectron2 checkpoint that initialises the Swin backbone of this project's
models.

The file is read without running code (torch.load(weights_only=True)); every name is checked
against the variant's layout and kept (norm -> norm3), the classifier and the attention masks are
dropped (deformable_detr/checkpoint/swin.py lists the names). The variant is the one the file
holds unless --variant names the one the model is built as; the tool prints the config keys that
build it.

Usage: python tools/convert_swin.py --input swin_tiny_patch4_window7_224.pth \\
           --output weights/imagenet_swin_t.pth
"""

import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "projects", "DeformableDETR"))

from deformable_detr.checkpoint import SWIN, run_converter  # noqa: E402


def main(argv=None):
    run_converter([SWIN], __doc__.split("\n\n")[0], "Swin's swin_*_patch4_window*.pth", argv)


if __name__ == "__main__":
    main()
