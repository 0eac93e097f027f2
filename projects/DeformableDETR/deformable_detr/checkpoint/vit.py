"""Plain ViT ImageNet checkpoints as ViTDet starts from them (MAE's mae_pretrain_vit_base.pth,
facebookresearch/mae; or a supervised DeiT/timm file such as deit_base_patch16_224) ->
Detectron2's ViT inside the SimpleFeaturePyramid, under "backbone.net.".

The layout, as facebookresearch/mae builds its encoder (models_mae.py, models_vit.py on timm's
Block: norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2) and saves it ({"model": state dict};
main_finetune.py reads it from there). C = width, P = patch side, n = (224 / P)^2 patches:
  cls_token (1, 1, C); pos_embed (1, n + 1, C), the class token's position first
  patch_embed.proj (C, 3, P, P) + bias
  blocks.{i}.norm1, .norm2 (C,), .attn.qkv (3C, C) + bias, .attn.proj (C, C) + bias,
      .mlp.fc1 (4C, C) + bias, .mlp.fc2 (C, 4C) + bias
  norm (C,) in the pre-training file and DeiT's; fc_norm (C,) and head (classes, C) in the
      fine-tuned ones; decoder_*, mask_token in a full MAE training checkpoint

Names (official -> Detectron2): net.<the same name> for pos_embed, patch_embed.* and blocks.*;
  pos_embed stays (1, n + 1, C): ViT(pretrain_use_cls_token=True) holds it so and drops the class
  token's position when it interpolates to the input size;
  cls_token, norm.*, fc_norm.*, head.*, decoder_*, mask_token -> dropped (Detectron2's ViT has no
  class token, final norm or classifier).
Not in the file: every block's attn.rel_pos_h / rel_pos_w (relative positions, which ViTDet adds:
they start at zero, as in ViTDet) and the pyramid's own layers (backbone.simfp_*), trained from
their initialisation. The number of heads is not in the weights: MAE's and DeiT's ViT-B has 12,
ViT-L 16.
"""

import re
from functools import lru_cache
from typing import NamedTuple

from .files import Layout
from .imagenet import BackboneFamily, BackboneVariant, add_layer_norm, add_linear

__all__ = ["VIT", "ViTParams", "vit_layout", "vit_to_detectron2_name"]


class ViTParams(NamedTuple):
    embed_dim: int
    depth: int
    patch_size: int = 16
    image_size: int = 224


def vit_to_detectron2_name(name: str) -> str:
    """Detectron2's name of an official ViT parameter that is not dropped (under the pyramid)."""
    return f"net.{name}"


@lru_cache(maxsize=None)
def vit_layout(params: ViTParams) -> Layout:
    """Names and shapes of an official ViT checkpoint without its dropped names."""
    c, patch = params.embed_dim, params.patch_size
    layout: Layout = {
        "pos_embed": (1, (params.image_size // patch) ** 2 + 1, c),
        "patch_embed.proj.weight": (c, 3, patch, patch),
        "patch_embed.proj.bias": (c,),
    }
    for i in range(params.depth):
        block = f"blocks.{i}"
        add_layer_norm(layout, f"{block}.norm1", c)
        add_linear(layout, f"{block}.attn.qkv", c, 3 * c)
        add_linear(layout, f"{block}.attn.proj", c, c)
        add_layer_norm(layout, f"{block}.norm2", c)
        add_linear(layout, f"{block}.mlp.fc1", c, 4 * c)
        add_linear(layout, f"{block}.mlp.fc2", 4 * c, c)
    return layout


def _variant(name, embed_dim, depth, num_heads, window_block_indexes):
    opts = (
        "MODEL.BACKBONE.NAME",
        "build_deformable_detr_vit_backbone",
        "MODEL.VIT.PATCH_SIZE",
        "16",
        "MODEL.VIT.EMBED_DIM",
        str(embed_dim),
        "MODEL.VIT.DEPTH",
        str(depth),
        "MODEL.VIT.NUM_HEADS",
        str(num_heads),
        "MODEL.VIT.WINDOW_BLOCK_INDEXES",
        str(list(window_block_indexes)).replace(" ", ""),
    )
    return BackboneVariant(name, ViTParams(embed_dim, depth), opts)


def _windowed(depth, global_every):
    """ViTDet's choice: window attention everywhere but in every `global_every`-th block."""
    return tuple(i for i in range(depth) if (i + 1) % global_every)


VIT = BackboneFamily(
    layout_name="a ViT checkpoint (MAE or DeiT)",
    dropped=re.compile(r"cls_token|mask_token|(fc_)?norm\..*|head\..*|decoder_.*"),
    rename=vit_to_detectron2_name,
    layout=vit_layout,
    variants={
        "vit_b": _variant(
            "ViT-B/16 (mae_pretrain_vit_base, deit_base_patch16_224)", 768, 12, 12, _windowed(12, 3)
        ),
        "vit_l": _variant("ViT-L/16 (mae_pretrain_vit_large)", 1024, 24, 16, _windowed(24, 6)),
    },
    not_in_file="backbone.net.blocks.*.attn.rel_pos_h / rel_pos_w (relative positions: zeros, "
    "as ViTDet starts them) and the pyramid's layers (backbone.simfp_*)",
    author="facebookresearch/mae",
)
