"""The model: backbone builder, neck, deformable transformer, heads, matcher, criterion and the
meta-architecture. Importing this package registers them in Detectron2's and this project's
registries."""

from .backbones import build_deformable_detr_resnet_backbone
from .criterion import SetCriterion
from .hybrid_matching import HybridMatchingCriterion
from .matcher import HungarianMatcher
from .meta_arch import DeformableDETR
from .neck import NECK_REGISTRY, DeformableDETRNeck, build_neck
from .transformer import TRANSFORMER_REGISTRY, DeformableTransformer, build_transformer

__all__ = [
    "DeformableDETR",
    "DeformableDETRNeck",
    "DeformableTransformer",
    "HungarianMatcher",
    "HybridMatchingCriterion",
    "NECK_REGISTRY",
    "SetCriterion",
    "TRANSFORMER_REGISTRY",
    "build_deformable_detr_resnet_backbone",
    "build_neck",
    "build_transformer",
]
