"""Deformable DETR (Zhu et al., ICLR 2021) as a Detectron2 project.

Importing the package loads the compiled op (when built), registers the meta-architecture
`DeformableDETR`, the backbone builder, the neck and the transformer, and makes Detectron2's
DetectionCheckpointer read weights files without running code (see
checkpoint.install_safe_checkpoint_loading).

Data path: mapper (data/) -> DeformableDETR (modeling/meta_arch.py: checks, normalises, pads)
-> backbone (Detectron2's, or modeling/backbones/) -> neck (L levels and masks) -> position
encoding -> DeformableTransformer (flatten_levels -> encoder -> ObjectQueries -> decoder, which
DetectionHeads reads out after every layer) -> SetCriterion (training) or top-k Instances.

Shape legend. Every module of the package writes shapes with these letters, one meaning each:
    N       images in a batch; G images of one size (modeling/per_image.py)
    H, W    an image's padded height and width; h_i, w_i image i's own size
    C       the transformer's width (d_model); C_f channels of backbone map f
    F       sine position features per coordinate
    L       feature levels; H_l, W_l level l's size; S = sum of H_l * W_l, all levels' pixels
    Q       object queries (in two-stage mode the kept proposals)
    Lq      the queries of one attention call: Q in the decoder, S in the encoder
    M       attention heads; D = C / M their width; P sampling points per head and level
    J       decoder layers
    K       classes
    T       targets of one image (T_i of image i); A matched (query, target) pairs of a batch
    R       detections kept per image (TEST.DETECTIONS_PER_IMAGE)
Boxes are (cx, cy, w, h) normalised by the image's own size, unless a docstring says xyxy in
pixels.
"""

import warnings

# detectron2 0.7 scripts a helper at import time, which torch 2.14 reports as deprecated: nothing
# for a user to act on. Silenced while this package imports detectron2 (first, when this package
# is imported first, as our scripts do), without touching the caller's warning filters.
with warnings.catch_warnings():
    warnings.filterwarnings(
        "ignore", message="`torch.jit.script` is deprecated", category=FutureWarning
    )
    from .checkpoint import install_safe_checkpoint_loading
    from .config import add_deformable_detr_config, get_config
    from .layers import (
        MSDeformAttn,
        extension_available,
        kernel_available,
        ms_deform_attn,
        ms_deform_attn_pytorch,
    )
    from .modeling import DeformableDETR

install_safe_checkpoint_loading()

__all__ = [
    "DeformableDETR",
    "MSDeformAttn",
    "add_deformable_detr_config",
    "get_config",
    "extension_available",
    "kernel_available",
    "ms_deform_attn",
    "ms_deform_attn_pytorch",
]
