"""Layers: the multi-scale deformable attention op (compiled kernels and reference) and module."""
from .ms_deform_attn import MSDeformAttn
from .ms_deform_attn_op import extension_available, kernel_available, ms_deform_attn
from .ms_deform_attn_ref import ms_deform_attn_pytorch

__all__ = [
    "MSDeformAttn",
    "extension_available",
    "kernel_available",
    "ms_deform_attn",
    "ms_deform_attn_pytorch",
]
