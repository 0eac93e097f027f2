#!/usr/bin/env python
"""Converts MViTv2's official ImageNet checkpoints (facebookresearch/mvit: MViTv2_T_in1k.pyth,
MViTv2_S_in1k.pyth, MViTv2_B_in1k.pyth, MViTv2_B_in21k.pyth) into a Detectron2 checkpoint that
initialises the MViT backbone of this project's models.

The file is read without running code (torch.load(weights_only=True)); its "model_state" is
checked against the variant's layout and kept (norm -> scale5_norm), the classifier is dropped
(deformable_detr/checkpoint/mvit.py lists the names). The variant is the one the file holds
unless --variant names the one the model is built as; the tool prints the config keys that build
it.

Usage: python tools/convert_mvit.py --input MViTv2_T_in1k.pyth \\
           --output weights/imagenet_mvitv2_t.pth
"""

import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "projects", "DeformableDETR"))

from deformable_detr.checkpoint import MVIT, run_converter  # noqa: E402


def main(argv=None):
    run_converter([MVIT], __doc__.split("\n\n")[0], "MViTv2's MViTv2_*.pyth", argv)


if __name__ == "__main__":
    main()
