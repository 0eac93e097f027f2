"""The ResNet of the released models, as a Detectron2 backbone.

Detectron2's ResNet with STRIDE_IN_1X1 = False is torchvision's layout, except for the dilated
res5 (DC5): Detectron2 dilates the 3x3 conv of every res5 block, torchvision (and so the released
DC5 model) every block but the first. This builder restores torchvision's first block.

Shapes: N batch, C channels, H x W image.
"""
from detectron2.modeling import BACKBONE_REGISTRY
from detectron2.modeling.backbone.resnet import build_resnet_backbone

__all__ = ["build_deformable_detr_resnet_backbone"]


@BACKBONE_REGISTRY.register()
def build_deformable_detr_resnet_backbone(cfg, input_shape):
    """Detectron2's ResNet (cfg.MODEL.RESNETS), with torchvision's dilated res5 when
    RES5_DILATION > 1. Returns a Backbone: (N, 3, H, W) -> dict of feature maps."""
    backbone = build_resnet_backbone(cfg, input_shape)
    if cfg.MODEL.RESNETS.RES5_DILATION > 1:
        conv = backbone.res5[0].conv2  # the first res5 block's 3x3 conv
        conv.dilation, conv.padding = (1, 1), (1, 1)
    return backbone
