"""Deformable DETR (Zhu et al., ICLR 2021) as a Detectron2 project.

Importing the package loads the compiled op (when built) and registers the meta-architecture
`DeformableDETR`, the backbone builder, the neck and the transformer.
"""
from .config import add_deformable_detr_config
from .layers import (
    MSDeformAttn,
    extension_available,
    kernel_available,
    ms_deform_attn,
    ms_deform_attn_pytorch,
)
from .modeling import DeformableDETR

__all__ = [
    "DeformableDETR",
    "MSDeformAttn",
    "add_deformable_detr_config",
    "extension_available",
    "kernel_available",
    "ms_deform_attn",
    "ms_deform_attn_pytorch",
]
