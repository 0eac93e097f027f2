#!/usr/bin/env python
"""Converts plain ViT ImageNet checkpoints as ViTDet starts from them (facebookresearch/mae:
mae_pretrain_vit_base.pth, mae_pretrain_vit_large.pth, or MAE's fine-tuned and DeiT's supervised
ViT-B/16 files) into a Detectron2 checkpoint that initialises the ViT of this project's ViTDet
backbone.

The file is read without running code (torch.load(weights_only=True)); its "model" is checked
against the variant's layout and kept under net. (pos_embed as it is, 1 + 14 x 14 positions);
the class token, final norm, classifier and MAE's decoder are dropped
(deformable_detr/checkpoint/vit.py lists the names). The relative positions and the feature
pyramid are not in the file: they start from their initialisation, as in ViTDet. The tool prints
the config keys that build the variant.

Usage: python tools/convert_vit.py --input mae_pretrain_vit_base.pth \\
           --output weights/imagenet_vit_b_mae.pth
"""

import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "projects", "DeformableDETR"))

from deformable_detr.checkpoint import VIT, run_converter  # noqa: E402


def main(argv=None):
    run_converter(
        [VIT],
        __doc__.split("\n\n")[0],
        "MAE's mae_pretrain_vit_*.pth or DeiT's deit_base_patch16_224-*.pth",
        argv,
    )


if __name__ == "__main__":
    main()
