"""Deformable DETR (Zhu et al., ICLR 2021) as a Detectron2 project.

Importing the package loads the compiled op (when built), registers the meta-architecture
`DeformableDETR`, the backbone builder, the neck and the transformer, and makes Detectron2's
DetectionCheckpointer read weights files without running code (see
checkpoint.install_safe_checkpoint_loading).

Data path, one line per module (shapes in the legend below):
    data/mapper.py               a dataset dict -> "image" (3, H, W) and "instances", augmented
    modeling/meta_arch.py        checks (input_checks.py), normalises, pads: (N, 3, H, W), mask
    backbone                     Detectron2's, or modeling/backbones/: named maps (N, C_f, ...)
    modeling/per_image.py        at inference: backbone and neck per image size, then padded
    modeling/neck.py             L maps (N, C, H_l, W_l) and padding masks (N, H_l, W_l)
    layers/position_encoding.py  L sine encodings (N, C, H_l, W_l)
    modeling/transformer.py      DeformableTransformer, through the five modules below:
    modeling/levels.py           src and pos (N, S, C), the level layout and valid sizes
    modeling/encoder_decoder.py  the encoder: memory (N, S, C)
    modeling/queries.py          queries (N, Q, C) and references; two-stage: two_stage.py's
                                 proposals, scored by the proposal heads
    modeling/encoder_decoder.py  the decoder, with heads.py after every layer: logits
                                 (J, N, Q, K) and boxes (J, N, Q, 4)
    modeling/criterion.py        training: matcher.py per layer, the weighted losses
    modeling/meta_arch.py        inference: the top R (query, class) pairs -> Instances

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
    from .predictor import DefaultPredictor

install_safe_checkpoint_loading()

__all__ = [
    "DefaultPredictor",
    "DeformableDETR",
    "MSDeformAttn",
    "add_deformable_detr_config",
    "get_config",
    "extension_available",
    "kernel_available",
    "ms_deform_attn",
    "ms_deform_attn_pytorch",
]
