"""MViTv2 (Li et al., 2022) as a Detectron2 backbone: Detectron2's MViT with pooling attention and
relative positions, from plain arguments (mvit_backbone, e.g. in a LazyConfig) or from
cfg.MODEL.MVIT (the registered builder), each argument being the key of its name.

Shapes: see the legend in deformable_detr/__init__.py; stage k (2-5) gives "scale{k}", (N, embed_dim
* 2^(k-2), H / 2^k, W / 2^k), sides rounded up (pooling convolutions and windows pad inside).
Relative positions are interpolated to the input size, so any size works, and an image's features
depend on its own pixels and size only.
"""

from functools import partial
from typing import Sequence

from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY
from detectron2.modeling.backbone import MViT
from torch import nn

from .common import check_out_features, keys_of, require, require_int, require_rate

__all__ = ["build_deformable_detr_mvit_backbone", "mvit_backbone"]

STAGES = ("scale2", "scale3", "scale4", "scale5")


def mvit_backbone(
    *,
    embed_dim: int,
    depth: int,
    num_heads: int,
    last_block_indexes: Sequence[int],
    drop_path_rate: float,
    pretrain_img_size: int,
    out_features: Sequence[str],
    in_channels: int = 3,
) -> MViT:
    """MViTv2 with the maps of out_features ("scale2".."scale5", strides 4 to 32); each argument
    is the MODEL.MVIT key of its name (MViTv2-T: 96 wide, 10 blocks, stages ending at blocks
    0, 2, 7, 9)."""
    require_int("embed_dim (MODEL.MVIT.EMBED_DIM)", embed_dim)
    # the heads double with the width at each stage: dividing the first stage's divides all
    require(
        isinstance(num_heads, int) and num_heads >= 1 and embed_dim % num_heads == 0,
        "num_heads (MODEL.MVIT.NUM_HEADS)",
        f"an int >= 1 dividing embed_dim {embed_dim}",
        num_heads,
    )
    require_rate("drop_path_rate (MODEL.MVIT.DROP_PATH_RATE)", drop_path_rate)
    # below it, the relative-position tables of the stride-32 stage have no entry
    require_int("pretrain_img_size (MODEL.MVIT.PRETRAIN_IMG_SIZE)", pretrain_img_size, 16)
    last = list(last_block_indexes)
    require(
        len(last) == len(STAGES)
        and last == sorted(set(last))
        and last[0] >= 0
        and last[-1] == depth - 1,
        "last_block_indexes (MODEL.MVIT.LAST_BLOCK_INDEXES)",
        f"the index of each of the 4 stages' last block, increasing, the last depth - 1 = "
        f"{depth - 1}",
        last,
    )
    check_out_features("out_features (MODEL.MVIT.OUT_FEATURES)", out_features, STAGES)
    return MViT(
        img_size=pretrain_img_size,
        in_chans=in_channels,
        embed_dim=embed_dim,
        depth=depth,
        num_heads=num_heads,
        last_block_indexes=tuple(last),
        residual_pooling=True,
        drop_path_rate=drop_path_rate,
        norm_layer=partial(nn.LayerNorm, eps=1e-6),
        use_abs_pos=False,
        use_rel_pos=True,
        pretrain_img_size=pretrain_img_size,
        out_features=tuple(out_features),
    )


@BACKBONE_REGISTRY.register()
def build_deformable_detr_mvit_backbone(cfg, input_shape: ShapeSpec):
    """mvit_backbone from cfg.MODEL.MVIT: MViTv2-T by default; -S and -B by keys."""
    return mvit_backbone(**keys_of(cfg.MODEL.MVIT), in_channels=input_shape.channels)
