#!/usr/bin/env python
"""Converts RegNet ImageNet weights, pycls' (the .pyth files Detectron2's RegNet baselines name:
RegNetY-4.0GF_dds_8gpu.pyth, RegNetX-4.0GF_dds_8gpu.pyth) or torchvision's (regnet_{x,y}_*.pth),
into a Detectron2 checkpoint that initialises the RegNet backbone of this project's models.

The file is read without running code (torch.load(weights_only=True)); pycls' names are
Detectron2's, torchvision's are renamed (deformable_detr/checkpoint/regnet.py lists them); the
classifier and BN's batch counters are dropped. The tool prints the config keys that build the
variant, with the input format and pixel statistics the weights were trained with (pycls: BGR,
torchvision: RGB).

Usage: python tools/convert_regnet.py --input RegNetY-4.0GF_dds_8gpu.pyth \\
           --output weights/imagenet_regnety_4gf.pth
"""

import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "projects", "DeformableDETR"))

from deformable_detr.checkpoint import PYCLS_REGNET, TORCHVISION_REGNET, run_converter  # noqa: E402


def main(argv=None):
    run_converter(
        [PYCLS_REGNET, TORCHVISION_REGNET],
        __doc__.split("\n\n")[0],
        "pycls' RegNet*_dds_8gpu.pyth or torchvision's regnet_*.pth",
        argv,
    )


if __name__ == "__main__":
    main()
