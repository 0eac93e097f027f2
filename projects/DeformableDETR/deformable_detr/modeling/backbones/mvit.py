"""MViTv2 (Li et al., 2022) as a Detectron2 backbone: Detectron2's MViT with pooling attention and
relative positions, configured by cfg.MODEL.MVIT.

Shapes: N batch, H x W image; stage k (2-5) gives "scale{k}", (N, EMBED_DIM * 2^(k-2), H / 2^k,
W / 2^k), sides rounded up (pooling convolutions and windows pad inside). Relative positions are
interpolated to the input size, so any size works, and an image's features depend on its own
pixels and size only.
"""
from functools import partial

from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY
from detectron2.modeling.backbone import MViT
from torch import nn

from .common import check_out_features, require

__all__ = ["build_deformable_detr_mvit_backbone"]

STAGES = ("scale2", "scale3", "scale4", "scale5")


@BACKBONE_REGISTRY.register()
def build_deformable_detr_mvit_backbone(cfg, input_shape: ShapeSpec):
    """MViTv2-T by default; -S and -B by cfg.MODEL.MVIT keys. Returns a Backbone with the maps of
    cfg.MODEL.MVIT.OUT_FEATURES ("scale2".."scale5", strides 4 to 32)."""
    m = cfg.MODEL.MVIT
    last = list(m.LAST_BLOCK_INDEXES)
    require(len(last) == len(STAGES) and last == sorted(set(last)) and last[0] >= 0
            and last[-1] == m.DEPTH - 1, "MODEL.MVIT.LAST_BLOCK_INDEXES",
            f"the index of each of the 4 stages' last block, increasing, the last DEPTH - 1 = "
            f"{m.DEPTH - 1}", last)
    check_out_features("MODEL.MVIT.OUT_FEATURES", m.OUT_FEATURES, STAGES)
    return MViT(
        img_size=m.PRETRAIN_IMG_SIZE, in_chans=input_shape.channels, embed_dim=m.EMBED_DIM,
        depth=m.DEPTH, num_heads=m.NUM_HEADS, last_block_indexes=tuple(last),
        residual_pooling=True, drop_path_rate=m.DROP_PATH_RATE,
        norm_layer=partial(nn.LayerNorm, eps=1e-6), use_abs_pos=False, use_rel_pos=True,
        pretrain_img_size=m.PRETRAIN_IMG_SIZE, out_features=tuple(m.OUT_FEATURES))
