"""Backbones, one file per family: a function of plain arguments named after the family's config
keys (for LazyConfig) and a builder registered in Detectron2's BACKBONE_REGISTRY
(cfg.MODEL.BACKBONE.NAME) that passes it those keys (config.py). Each returns a Detectron2
Backbone: (N, 3, H, W) -> dict of feature maps, whose output_shape() names the maps the neck can
take (MODEL.DEFORMABLE_DETR.IN_FEATURES, high to low resolution)."""

from .mvit import build_deformable_detr_mvit_backbone, mvit_backbone
from .regnet import build_deformable_detr_regnet_backbone, regnet_backbone
from .resnet import build_deformable_detr_resnet_backbone, deformable_detr_resnet
from .swin import build_deformable_detr_swin_backbone, swin_backbone
from .vit import build_deformable_detr_vit_backbone, vit_backbone

__all__ = [
    "build_deformable_detr_mvit_backbone",
    "build_deformable_detr_regnet_backbone",
    "build_deformable_detr_resnet_backbone",
    "build_deformable_detr_swin_backbone",
    "build_deformable_detr_vit_backbone",
    "deformable_detr_resnet",
    "mvit_backbone",
    "regnet_backbone",
    "swin_backbone",
    "vit_backbone",
]
