"""MViTv2's official ImageNet checkpoints (facebookresearch/mvit, e.g. MViTv2_T_in1k.pyth) ->
Detectron2's MViT under "backbone.".

The layout, as mvit/models/mvit_model.py and attention.py of that repository build it with its
configs (configs/MVITv2_{T,S,B}.yaml: conv pooling of q, k and v with 3x3 kernels in every
block, relative positions, q stride 2 in the first block of stages 3-5 where width and heads
double, k/v strides adaptive from 4, no class token, no absolute positions, 224 px), saved by
mvit/utils/checkpoint.py as {"model_state": state dict, "epoch", "optimizer_state", "cfg"}.
C = 96; block i has width d_in -> d (d = 2 d_in in the first block of a stage, else d_in), h heads,
head width e = d / h (96 in every block), a token grid of side r (56, halved after each
stage's first block), q stride s_q, k/v stride s_kv:
  patch_embed.proj (C, 3, 7, 7) + bias
  blocks.{i}.norm1 (d_in,), .norm2 (d,), .attn.qkv (3d, d_in) + bias, .attn.proj (d, d) + bias
      .attn.pool_{q,k,v} (e, 1, 3, 3), .attn.norm_{q,k,v} (e,)
      .attn.rel_pos_h, .attn.rel_pos_w (2 max(r / s_q, r / s_kv) - 1, e)
      .mlp.fc1 (4d, d) + bias, .mlp.fc2 (d, 4d) + bias, .proj (d, d_in) + bias where d != d_in
  norm (8C,) the final norm; head.projection (classes, 8C) the ImageNet classifier

Names (official -> Detectron2): the same name for everything, except
  norm.* -> scale5_norm.* (Detectron2's norm of the last stage's output: the same place)
  head.projection.*, cls_token (only in files trained with a class token) -> dropped
Detectron2's scale2_norm, scale3_norm, scale4_norm have no counterpart: they keep their
initialisation (weight 1, bias 0). Detectron2 interpolates the relative positions to the input
size, as the detection configs of Detectron2's MViTv2 project do with these files.
"""

import re
from functools import lru_cache
from typing import NamedTuple, Tuple

from .files import Layout
from .imagenet import BackboneFamily, BackboneVariant, add_layer_norm, add_linear

__all__ = ["MVIT", "MViTParams", "mvit_layout", "mvit_to_detectron2_name"]

_POOLED = "qkv"


class MViTParams(NamedTuple):
    embed_dim: int
    num_heads: int
    depth: int
    last_block_indexes: Tuple[int, ...]  # the last block of each stage
    image_size: int = 224


def mvit_to_detectron2_name(name: str) -> str:
    """Detectron2's name of an official MViTv2 parameter that is not dropped."""
    return re.sub(r"^norm\.", "scale5_norm.", name)


@lru_cache(maxsize=None)
def mvit_layout(params: MViTParams) -> Layout:
    """Names and shapes of an official MViTv2 checkpoint without its dropped names."""
    width, heads = params.embed_dim, params.num_heads
    layout: Layout = {
        "patch_embed.proj.weight": (width, 3, 7, 7),
        "patch_embed.proj.bias": (width,),
    }
    side, kv_stride = params.image_size // 4, 4
    for i in range(params.depth):
        q_stride = 2 if i - 1 in params.last_block_indexes else 1
        width_in, width, heads = width, width * q_stride, heads * q_stride
        kv_stride = max(kv_stride // q_stride, 1)
        head_width = width // heads
        block = f"blocks.{i}"
        add_layer_norm(layout, f"{block}.norm1", width_in)
        add_linear(layout, f"{block}.attn.qkv", width_in, 3 * width)
        add_linear(layout, f"{block}.attn.proj", width, width)
        for x in _POOLED:
            layout[f"{block}.attn.pool_{x}.weight"] = (head_width, 1, 3, 3)
            add_layer_norm(layout, f"{block}.attn.norm_{x}", head_width)
        rel_pos = 2 * max(side // q_stride, side // kv_stride) - 1
        layout[f"{block}.attn.rel_pos_h"] = layout[f"{block}.attn.rel_pos_w"] = (
            rel_pos,
            head_width,
        )
        add_layer_norm(layout, f"{block}.norm2", width)
        add_linear(layout, f"{block}.mlp.fc1", width, 4 * width)
        add_linear(layout, f"{block}.mlp.fc2", 4 * width, width)
        if width != width_in:
            add_linear(layout, f"{block}.proj", width_in, width)
        side //= q_stride
    add_layer_norm(layout, "norm", width)
    return layout


def _variant(name, depth, last_block_indexes):
    opts = (
        "MODEL.BACKBONE.NAME",
        "build_deformable_detr_mvit_backbone",
        "MODEL.MVIT.EMBED_DIM",
        "96",
        "MODEL.MVIT.NUM_HEADS",
        "1",
        "MODEL.MVIT.DEPTH",
        str(depth),
        "MODEL.MVIT.LAST_BLOCK_INDEXES",
        str(list(last_block_indexes)).replace(" ", ""),
    )
    return BackboneVariant(name, MViTParams(96, 1, depth, last_block_indexes), opts)


# the stage ends are where the official configs double the width (DIM_MUL), less one
MVIT = BackboneFamily(
    layout_name="an MViTv2 checkpoint (facebookresearch/mvit)",
    dropped=re.compile(r"head\.projection\..*|cls_token"),
    rename=mvit_to_detectron2_name,
    layout=mvit_layout,
    variants={
        "mvitv2_t": _variant("MViTv2-T (MViTv2_T_in1k)", 10, (0, 2, 7, 9)),
        "mvitv2_s": _variant("MViTv2-S (MViTv2_S_in1k)", 16, (0, 2, 13, 15)),
        "mvitv2_b": _variant("MViTv2-B (MViTv2_B_in1k, MViTv2_B_in21k)", 24, (1, 4, 20, 23)),
    },
    not_in_file="backbone.scale2_norm.*, scale3_norm.*, scale4_norm.* (the norms of the outputs "
    "before the last: weight 1, bias 0); scale5_norm is the file's final norm",
    author="facebookresearch/mvit",
)
