"""Backbone builders registered in Detectron2's BACKBONE_REGISTRY (cfg.MODEL.BACKBONE.NAME), one
file per family. Each returns a Detectron2 Backbone: (N, 3, H, W) -> dict of feature maps, whose
output_shape() names the maps the neck can take (MODEL.DEFORMABLE_DETR.IN_FEATURES)."""
from .resnet import build_deformable_detr_resnet_backbone

__all__ = ["build_deformable_detr_resnet_backbone"]
