"""Backbone builders registered in Detectron2's BACKBONE_REGISTRY (cfg.MODEL.BACKBONE.NAME), one
file per family, each reading its own keys (config.py). Each returns a Detectron2 Backbone:
(N, 3, H, W) -> dict of feature maps, whose output_shape() names the maps the neck can take
(MODEL.DEFORMABLE_DETR.IN_FEATURES, high to low resolution)."""
from .mvit import build_deformable_detr_mvit_backbone
from .regnet import build_deformable_detr_regnet_backbone
from .resnet import build_deformable_detr_resnet_backbone
from .swin import build_deformable_detr_swin_backbone
from .vit import build_deformable_detr_vit_backbone

__all__ = [
    "build_deformable_detr_mvit_backbone",
    "build_deformable_detr_regnet_backbone",
    "build_deformable_detr_resnet_backbone",
    "build_deformable_detr_swin_backbone",
    "build_deformable_detr_vit_backbone",
]
