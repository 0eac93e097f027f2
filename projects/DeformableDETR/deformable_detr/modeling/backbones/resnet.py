"""The ResNet of the released models, as a Detectron2 backbone, built from a config
(build_deformable_detr_resnet_backbone) or from plain arguments (deformable_detr_resnet, e.g. in
a LazyConfig), both through the first.

Detectron2's ResNet with STRIDE_IN_1X1 = False is torchvision's layout, except for the dilated
res5 (DC5): Detectron2 dilates the 3x3 conv of every res5 block, torchvision (and so the released
DC5 model) every block but the first. This builder restores torchvision's first block.

Shapes: see the legend in deformable_detr/__init__.py.
"""

import importlib.util
from typing import Sequence

from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY
from detectron2.modeling.backbone.resnet import ResNet, build_resnet_backbone

from .common import check_norm, check_out_features, require, require_int

__all__ = ["build_deformable_detr_resnet_backbone", "deformable_detr_resnet"]

DEPTHS = (18, 34, 50, 101, 152)  # those build_resnet_backbone has block counts for
BASIC_DEPTHS = (18, 34)  # of basic blocks, without bottleneck
STAGES = ("stem", "res2", "res3", "res4", "res5")
# the keys that deformable_detr_resnet takes as arguments
ARGUMENTS = "DEPTH NORM OUT_FEATURES RES5_DILATION STEM_OUT_CHANNELS RES2_OUT_CHANNELS".split()


def _name(key: str) -> str:
    """A MODEL.RESNETS key as errors name it, with deformable_detr_resnet's argument when it
    has one (LazyConfigs set that)."""
    full = f"MODEL.RESNETS.{key}"
    return f"{key.lower()} ({full})" if key in ARGUMENTS else full


def _check_keys(r) -> None:
    """The MODEL.RESNETS keys (r) that Detectron2's builder reads, checked with their allowed
    values: it would fail on them with a bare KeyError, an assertion or a convolution's shape
    error that names no key."""
    require(r.DEPTH in DEPTHS, _name("DEPTH"), f"one of {list(DEPTHS)}", r.DEPTH)
    for key in ("STEM_OUT_CHANNELS", "RES2_OUT_CHANNELS", "NUM_GROUPS", "WIDTH_PER_GROUP"):
        require_int(_name(key), r[key])
    require(r.RES5_DILATION in (1, 2), _name("RES5_DILATION"), "1 or 2", r.RES5_DILATION)
    check_out_features(_name("OUT_FEATURES"), r.OUT_FEATURES, STAGES)
    deform = list(r.DEFORM_ON_PER_STAGE)
    require(len(deform) == 4, _name("DEFORM_ON_PER_STAGE"), "4 booleans (res2-res5)", deform)
    if r.DEPTH in BASIC_DEPTHS:
        for key, value in (("RES2_OUT_CHANNELS", 64), ("RES5_DILATION", 1), ("NUM_GROUPS", 1)):
            require(r[key] == value, _name(key), f"{value} for ResNet-{r.DEPTH}", r[key])
        require(
            not any(deform),
            _name("DEFORM_ON_PER_STAGE"),
            f"all False for ResNet-{r.DEPTH} (deformable convolutions replace bottleneck ones)",
            deform,
        )
    widths = [r.STEM_OUT_CHANNELS, r.RES2_OUT_CHANNELS]
    if r.DEPTH not in BASIC_DEPTHS:
        widths.append(r.NUM_GROUPS * r.WIDTH_PER_GROUP)  # res2's bottleneck; later ones double
    check_norm(_name("NORM"), r.NORM, widths)
    require(
        not any(deform) or importlib.util.find_spec("detectron2._C") is not None,
        _name("DEFORM_ON_PER_STAGE"),
        "all False with this Detectron2, installed without its compiled ops (detectron2._C), "
        "which deformable convolutions need",
        deform,
    )


@BACKBONE_REGISTRY.register()
def build_deformable_detr_resnet_backbone(cfg, input_shape):
    """Detectron2's ResNet (cfg.MODEL.RESNETS), with torchvision's dilated res5 when
    RES5_DILATION > 1. Returns a Backbone: (N, 3, H, W) -> dict of feature maps. Raises
    ValueError naming the key of a depth, norm, width or output Detectron2 cannot build."""
    _check_keys(cfg.MODEL.RESNETS)
    backbone = build_resnet_backbone(cfg, input_shape)
    if cfg.MODEL.RESNETS.RES5_DILATION > 1:
        conv = backbone.res5[0].conv2  # the first res5 block's 3x3 conv
        conv.dilation, conv.padding = (1, 1), (1, 1)
    return backbone


def deformable_detr_resnet(
    *,
    depth: int,
    out_features: Sequence[str],
    freeze_at: int,
    norm: str,
    stride_in_1x1: bool,
    res5_dilation: int,
    stem_out_channels: int,
    res2_out_channels: int,
    in_channels: int = 3,
) -> ResNet:
    """build_deformable_detr_resnet_backbone from plain arguments: each is the MODEL.RESNETS key
    of its name (freeze_at: MODEL.BACKBONE.FREEZE_AT; in_channels: the image's channels), set on
    Detectron2's default config, so that Detectron2 keeps the one layout and its checks.
    Returns a Backbone: (N, in_channels, H, W) -> dict of feature maps."""
    cfg = get_cfg()
    cfg.MODEL.BACKBONE.FREEZE_AT = freeze_at
    r = cfg.MODEL.RESNETS
    r.DEPTH = depth
    r.OUT_FEATURES = list(out_features)
    r.NORM = norm
    r.STRIDE_IN_1X1 = stride_in_1x1
    r.RES5_DILATION = res5_dilation
    r.STEM_OUT_CHANNELS = stem_out_channels
    r.RES2_OUT_CHANNELS = res2_out_channels
    return build_deformable_detr_resnet_backbone(cfg, ShapeSpec(channels=in_channels))
