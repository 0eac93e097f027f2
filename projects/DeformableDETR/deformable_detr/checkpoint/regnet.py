"""RegNet ImageNet weights -> Detectron2's RegNet under "backbone.", from either official layout:

pycls (facebookresearch/pycls, the .pyth files Detectron2's RegNet baselines start from, e.g.
RegNetY-4.0GF_dds_8gpu.pyth: {"model_state": state dict, "epoch", "optimizer_state", "cfg"}).
Detectron2's regnet.py is pycls' AnyNet with the same module names (stem.conv/bn;
s{k}.b{j}.proj/bn on the first block of a stage; f.a, f.a_bn, f.b (grouped 3x3), f.b_bn,
f.se.f_ex.0/.2 (the squeeze-excitation's 1x1 convs with bias), f.c, f.c_bn; head.fc), so names
stay as they are; head.fc.* (the classifier) and BN's num_batches_tracked are dropped.

torchvision (torchvision.models.regnet_{x,y}_*, a plain state dict), renamed:
  stem.0 -> stem.conv                          stem.1 -> stem.bn
  trunk_output.block{k}.block{k}-{j}.<part> -> s{k}.b{j+1}.<part>, with the parts
  proj.0 -> proj   proj.1 -> bn   f.{a,b,c}.0 -> f.{a,b,c}   f.{a,b,c}.1 -> f.{a,b,c}_bn
  f.se.fc1 -> f.se.f_ex.0   f.se.fc2 -> f.se.f_ex.2
  fc.* and num_batches_tracked -> dropped

Shapes: convolutions (C_out, C_in / groups, k, k), the SE's with bias (C_out,); norms (C,) weight,
bias, running_mean, running_var. Stage widths and depths follow from (depth, w_0, w_a, w_m,
group width) in both libraries. Detectron2's FrozenBatchNorm2d (eps 1e-5) computes what both
libraries' BatchNorm2d (eps 1e-5) computes in eval mode: no value is changed. pycls trained on BGR
images, torchvision on RGB: each variant's config keys say which (INPUT.FORMAT, PIXEL_MEAN/STD).
"""

import re
from functools import lru_cache
from typing import NamedTuple

import torch
import torchvision
from detectron2.modeling.backbone import RegNet
from detectron2.modeling.backbone.regnet import ResBottleneckBlock, SimpleStem
from torchvision.models.regnet import BlockParams

from .files import Layout
from .imagenet import BackboneFamily, BackboneVariant

__all__ = [
    "PYCLS_REGNET",
    "TORCHVISION_REGNET",
    "RegNetParams",
    "pycls_regnet_layout",
    "torchvision_regnet_layout",
    "torchvision_to_detectron2_regnet_name",
]

_TORCHVISION_BLOCK = re.compile(r"trunk_output\.block(\d+)\.block\1-(\d+)\.(.+)\.(\w+)")
_TORCHVISION_PARTS = {
    "proj.0": "proj",
    "proj.1": "bn",
    "f.se.fc1": "f.se.f_ex.0",
    "f.se.fc2": "f.se.f_ex.2",
    **{f"f.{x}.0": f"f.{x}" for x in "abc"},
    **{f"f.{x}.1": f"f.{x}_bn" for x in "abc"},
}
_TORCHVISION_STEM = {"stem.0": "stem.conv", "stem.1": "stem.bn"}


class RegNetParams(NamedTuple):
    depth: int
    w_0: int
    w_a: float
    w_m: float
    group_width: int
    se_ratio: float


def torchvision_to_detectron2_regnet_name(name: str) -> str:
    """Detectron2's name of a torchvision RegNet parameter, e.g. "trunk_output.block2.block2-0
    .f.se.fc1.weight" -> "s2.b1.f.se.f_ex.0.weight". ValueError for names outside the body."""
    module, _, leaf = name.rpartition(".")
    if module in _TORCHVISION_STEM:
        return f"{_TORCHVISION_STEM[module]}.{leaf}"
    match = _TORCHVISION_BLOCK.fullmatch(name)
    if match is None or match.group(3) not in _TORCHVISION_PARTS:
        raise ValueError(f"{name!r} is not a parameter of torchvision's RegNet body")
    stage, block, part, leaf = match.groups()
    return f"s{stage}.b{int(block) + 1}.{_TORCHVISION_PARTS[part]}.{leaf}"


def _shapes(module: torch.nn.Module) -> Layout:
    return {
        k: tuple(v.shape)
        for k, v in module.state_dict().items()
        if not k.startswith("fc.") and not k.endswith("num_batches_tracked")
    }


@lru_cache(maxsize=None)
def pycls_regnet_layout(params: RegNetParams) -> Layout:
    """Names and shapes of a pycls RegNet file without its dropped names: Detectron2's RegNet
    (pycls' names) with frozen BN, built on the meta device."""
    with torch.device("meta"):
        model = RegNet(
            stem_class=SimpleStem,
            stem_width=32,
            block_class=ResBottleneckBlock,
            depth=params.depth,
            w_a=params.w_a,
            w_0=params.w_0,
            w_m=params.w_m,
            group_width=params.group_width,
            se_ratio=params.se_ratio,
            norm="FrozenBN",
        )
    return _shapes(model)


@lru_cache(maxsize=None)
def torchvision_regnet_layout(params: RegNetParams) -> Layout:
    """Names and shapes of torchvision's RegNet body, as its builders make it: the widths from
    BlockParams.from_init_params, the model on the meta device."""
    blocks = BlockParams.from_init_params(
        depth=params.depth,
        w_0=params.w_0,
        w_a=params.w_a,
        w_m=params.w_m,
        group_width=params.group_width,
        se_ratio=params.se_ratio,
    )
    with torch.device("meta"):
        return _shapes(torchvision.models.RegNet(blocks))


_PYCLS_INPUT = (
    "INPUT.FORMAT",
    "BGR",
    "MODEL.PIXEL_MEAN",
    "[103.530,116.280,123.675]",
    "MODEL.PIXEL_STD",
    "[57.375,57.120,58.395]",
)
_TORCHVISION_INPUT = (
    "INPUT.FORMAT",
    "RGB",
    "MODEL.PIXEL_MEAN",
    "[123.675,116.280,103.530]",
    "MODEL.PIXEL_STD",
    "[58.395,57.120,57.375]",
)


def _variant(name, params, input_opts):
    opts = (
        "MODEL.BACKBONE.NAME",
        "build_deformable_detr_regnet_backbone",
        "MODEL.REGNET.STEM_WIDTH",
        "32",
        "MODEL.REGNET.DEPTH",
        str(params.depth),
        "MODEL.REGNET.W_0",
        str(params.w_0),
        "MODEL.REGNET.W_A",
        str(params.w_a),
        "MODEL.REGNET.W_M",
        str(params.w_m),
        "MODEL.REGNET.GROUP_WIDTH",
        str(params.group_width),
        "MODEL.REGNET.SE_RATIO",
        str(params.se_ratio),
        *input_opts,
    )
    return BackboneVariant(name, params, opts)


_DROPPED_BN = r".*\.num_batches_tracked"
# the files Detectron2's RegNet baselines name (pycls' dds_baselines)
PYCLS_REGNET = BackboneFamily(
    layout_name="a pycls RegNet checkpoint",
    dropped=re.compile(rf"head\.fc\..*|{_DROPPED_BN}"),
    rename=lambda name: name,
    layout=pycls_regnet_layout,
    variants={
        "regnety_4gf": _variant(
            "RegNetY-4.0GF (RegNetY-4.0GF_dds_8gpu)",
            RegNetParams(22, 96, 31.41, 2.24, 64, 0.25),
            _PYCLS_INPUT,
        ),
        "regnetx_4gf": _variant(
            "RegNetX-4.0GF (RegNetX-4.0GF_dds_8gpu)",
            RegNetParams(23, 96, 38.65, 2.43, 40, 0.0),
            _PYCLS_INPUT,
        ),
    },
    not_in_file="nothing: every parameter of the backbone is in the file",
    author="facebookresearch/pycls",
)

# torchvision.models.regnet: each builder's BlockParams.from_init_params arguments. Not here:
# regnet_y_800mf, regnet_y_8gf and regnet_x_400mf, whose widths torchvision rounds up to fit the
# group width (_make_divisible) where Detectron2's RegNet (as pycls) rounds to the nearest: from
# the same parameters it builds other widths (e.g. 128 for torchvision's 144 in y_800mf's stage 2)
_TORCHVISION = {
    "regnet_y_400mf": (16, 48, 27.89, 2.09, 8, 0.25),
    "regnet_y_1_6gf": (27, 48, 20.71, 2.65, 24, 0.25),
    "regnet_y_3_2gf": (21, 80, 42.63, 2.66, 24, 0.25),
    "regnet_y_16gf": (18, 200, 106.23, 2.48, 112, 0.25),
    "regnet_y_32gf": (20, 232, 115.89, 2.53, 232, 0.25),
    "regnet_y_128gf": (27, 456, 160.83, 2.52, 264, 0.25),
    "regnet_x_800mf": (16, 56, 35.73, 2.28, 16, 0.0),
    "regnet_x_1_6gf": (18, 80, 34.01, 2.25, 24, 0.0),
    "regnet_x_3_2gf": (25, 88, 26.31, 2.25, 48, 0.0),
    "regnet_x_8gf": (23, 80, 49.56, 2.88, 120, 0.0),
    "regnet_x_16gf": (22, 216, 55.59, 2.1, 128, 0.0),
    "regnet_x_32gf": (23, 320, 69.86, 2.0, 168, 0.0),
}
TORCHVISION_REGNET = BackboneFamily(
    layout_name="a torchvision RegNet state dict",
    dropped=re.compile(rf"fc\..*|{_DROPPED_BN}"),
    rename=torchvision_to_detectron2_regnet_name,
    layout=torchvision_regnet_layout,
    variants={
        name: _variant(f"torchvision {name}", RegNetParams(*args), _TORCHVISION_INPUT)
        for name, args in _TORCHVISION.items()
    },
    not_in_file="nothing: every parameter of the backbone is in the file",
    author="torchvision",
)
