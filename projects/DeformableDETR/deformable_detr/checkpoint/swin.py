"""Swin Transformer's official ImageNet checkpoints (microsoft/Swin-Transformer, e.g.
swin_tiny_patch4_window7_224.pth) -> Detectron2's SwinTransformer under "backbone.".

The layout, as models/swin_transformer.py of that repository builds it and its training script
saves it ({"model": state dict}). C = embed dim, stage i (0-3) of width d = C * 2^i with h_i heads,
window w, R_i = (image side / 4) / 2^i tokens a side:
  patch_embed.proj (C, 3, 4, 4) + bias, patch_embed.norm (C,)
  layers.{i}.blocks.{j}.norm1, .norm2 (d,)
      .attn.qkv (3d, d) + bias, .attn.proj (d, d) + bias, .mlp.fc1 (4d, d), .mlp.fc2 (d, 4d)
      .attn.relative_position_bias_table ((2w - 1)^2, h_i), .attn.relative_position_index (w^2, w^2)
      .attn_mask ((R_i / w)^2, w^2, w^2): a buffer of the shifted blocks (odd j) of the stages
          wider than a window, for the 224 or 384 px input only
  layers.{i}.downsample.reduction (2d, 4d), .downsample.norm (4d,) for i < 3 (the patch merging
      at the end of stage i, where Detectron2 has it too)
  norm (8C,) the final norm, after stage 3; head (classes, 8C) the ImageNet classifier

Names (official -> Detectron2): the same name for everything, except
  norm.* -> norm3.* (Detectron2's norm of the stage-3 output "p3": the same place)
  head.*, layers.*.attn_mask -> dropped (the classifier; Detectron2 computes the masks for each
      input size)
Detectron2's norm1, norm2 (of outputs p1, p2) have no counterpart: they keep their
initialisation (weight 1, bias 0), as in Detectron2's and mmdetection's use of these files.
LayerNorm eps is PyTorch's 1e-5 on both sides; no value is changed.
"""

import re
from functools import lru_cache
from typing import NamedTuple, Tuple

from .files import Layout
from .imagenet import BackboneFamily, BackboneVariant, add_layer_norm, add_linear

__all__ = ["SWIN", "SwinParams", "swin_layout", "swin_to_detectron2_name"]


class SwinParams(NamedTuple):
    embed_dim: int
    depths: Tuple[int, ...]
    num_heads: Tuple[int, ...]
    window_size: int


def swin_to_detectron2_name(name: str) -> str:
    """Detectron2's name of an official Swin parameter that is not dropped."""
    return re.sub(r"^norm\.", "norm3.", name)


@lru_cache(maxsize=None)
def swin_layout(params: SwinParams) -> Layout:
    """Names and shapes of an official Swin checkpoint without its dropped names."""
    c, window = params.embed_dim, params.window_size
    layout: Layout = {"patch_embed.proj.weight": (c, 3, 4, 4), "patch_embed.proj.bias": (c,)}
    add_layer_norm(layout, "patch_embed.norm", c)
    last = len(params.depths) - 1
    for i, (depth, heads) in enumerate(zip(params.depths, params.num_heads)):
        d = c * 2**i
        for j in range(depth):
            block = f"layers.{i}.blocks.{j}"
            add_layer_norm(layout, f"{block}.norm1", d)
            layout[f"{block}.attn.relative_position_bias_table"] = ((2 * window - 1) ** 2, heads)
            layout[f"{block}.attn.relative_position_index"] = (window**2, window**2)
            add_linear(layout, f"{block}.attn.qkv", d, 3 * d)
            add_linear(layout, f"{block}.attn.proj", d, d)
            add_layer_norm(layout, f"{block}.norm2", d)
            add_linear(layout, f"{block}.mlp.fc1", d, 4 * d)
            add_linear(layout, f"{block}.mlp.fc2", 4 * d, d)
        if i < last:
            add_linear(layout, f"layers.{i}.downsample.reduction", 4 * d, 2 * d, bias=False)
            add_layer_norm(layout, f"layers.{i}.downsample.norm", 4 * d)
    add_layer_norm(layout, "norm", c * 2**last)
    return layout


def _variant(name, embed_dim, depths, num_heads, window_size):
    opts = (
        "MODEL.BACKBONE.NAME",
        "build_deformable_detr_swin_backbone",
        "MODEL.SWIN.EMBED_DIM",
        str(embed_dim),
        "MODEL.SWIN.DEPTHS",
        str(list(depths)).replace(" ", ""),
        "MODEL.SWIN.NUM_HEADS",
        str(list(num_heads)).replace(" ", ""),
        "MODEL.SWIN.WINDOW_SIZE",
        str(window_size),
    )
    return BackboneVariant(name, SwinParams(embed_dim, depths, num_heads, window_size), opts)


_BASE = dict(embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32))
_LARGE = dict(embed_dim=192, depths=(2, 2, 18, 2), num_heads=(6, 12, 24, 48))
# the files of the repository's model zoo (ImageNet-1k, and -22k where named so)
SWIN = BackboneFamily(
    layout_name="a Swin Transformer checkpoint (microsoft/Swin-Transformer)",
    dropped=re.compile(r"head\..*|layers\.\d+\.blocks\.\d+\.attn_mask"),
    rename=swin_to_detectron2_name,
    layout=swin_layout,
    variants={
        "swin_t": _variant(
            "Swin-T (swin_tiny_patch4_window7_224)", 96, (2, 2, 6, 2), (3, 6, 12, 24), 7
        ),
        "swin_s": _variant(
            "Swin-S (swin_small_patch4_window7_224)", 96, (2, 2, 18, 2), (3, 6, 12, 24), 7
        ),
        "swin_b": _variant("Swin-B (swin_base_patch4_window7_224[_22k])", window_size=7, **_BASE),
        "swin_b_384": _variant(
            "Swin-B 384 (swin_base_patch4_window12_384[_22k])", window_size=12, **_BASE
        ),
        "swin_l": _variant("Swin-L (swin_large_patch4_window7_224_22k)", window_size=7, **_LARGE),
        "swin_l_384": _variant(
            "Swin-L 384 (swin_large_patch4_window12_384_22k)", window_size=12, **_LARGE
        ),
    },
    not_in_file="backbone.norm1.*, backbone.norm2.* (the norms of outputs p1, p2: weight 1, "
    "bias 0); norm3 is the file's final norm",
    author="microsoft/Swin-Transformer",
)
