"""The ResNet of the released models, as a Detectron2 backbone, built from a config
(build_deformable_detr_resnet_backbone) or from plain arguments (deformable_detr_resnet, e.g. in
a LazyConfig), both through the first.

Detectron2's ResNet with STRIDE_IN_1X1 = False is torchvision's layout, except for the dilated
res5 (DC5): Detectron2 dilates the 3x3 conv of every res5 block, torchvision (and so the released
DC5 model) every block but the first. This builder restores torchvision's first block.

Shapes: see the legend in deformable_detr/__init__.py.
"""

from typing import Sequence

from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY
from detectron2.modeling.backbone.resnet import ResNet, build_resnet_backbone

__all__ = ["build_deformable_detr_resnet_backbone", "deformable_detr_resnet"]


@BACKBONE_REGISTRY.register()
def build_deformable_detr_resnet_backbone(cfg, input_shape):
    """Detectron2's ResNet (cfg.MODEL.RESNETS), with torchvision's dilated res5 when
    RES5_DILATION > 1. Returns a Backbone: (N, 3, H, W) -> dict of feature maps."""
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
