"""Layers: the multi-scale deformable attention op (compiled kernels and reference), its module,
and the sine position encoding."""

from .ms_deform_attn import MSDeformAttn
from .ms_deform_attn_op import (
    extension_available,
    kernel_available,
    kernel_backend,
    ms_deform_attn,
    triton_available,
)
from .ms_deform_attn_ref import ms_deform_attn_pytorch
from .position_encoding import PositionEmbeddingSine, sine_embedding

__all__ = [
    "MSDeformAttn",
    "PositionEmbeddingSine",
    "extension_available",
    "kernel_available",
    "kernel_backend",
    "ms_deform_attn",
    "ms_deform_attn_pytorch",
    "sine_embedding",
    "triton_available",
]
