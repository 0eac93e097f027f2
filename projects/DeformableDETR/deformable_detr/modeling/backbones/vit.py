"""ViTDet's backbone (Li et al., 2022) for Deformable DETR: Detectron2's plain ViT with window
attention and a SimpleFeaturePyramid, from plain arguments (vit_backbone, e.g. in a LazyConfig)
or from cfg.MODEL.VIT (the registered builder), each argument being the key of its name.

The ViT works at one input size: every image is padded to the square img_size (as in ViTDet), at
any batch size, so an image's features never depend on its companions; its own pixels must fit in
the square (INPUT.MAX_SIZE_TRAIN and MAX_SIZE_TEST <= IMG_SIZE; the model refuses larger images).

Shapes: see the legend in deformable_detr/__init__.py; here Z = img_size and p = patch_size. The
ViT gives (N, embed_dim, Z / p, Z / p); the pyramid scales it by each of scale_factors into
"p{k}" maps (N, out_channels, Z / 2^k, Z / 2^k), 2^k = p / factor.
"""

from functools import partial
from typing import Sequence

from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY
from detectron2.modeling.backbone import SimpleFeaturePyramid, ViT
from torch import nn

from .common import keys_of, require, require_int, require_rate

__all__ = ["build_deformable_detr_vit_backbone", "vit_backbone"]

SCALE_FACTORS = (4.0, 2.0, 1.0, 0.5)  # those SimpleFeaturePyramid implements


def vit_backbone(
    *,
    img_size: int,
    patch_size: int,
    embed_dim: int,
    depth: int,
    num_heads: int,
    mlp_ratio: float,
    drop_path_rate: float,
    window_size: int,
    window_block_indexes: Sequence[int],
    use_rel_pos: bool,
    pretrain_img_size: int,
    scale_factors: Sequence[float],
    out_channels: int,
    in_channels: int = 3,
) -> SimpleFeaturePyramid:
    """ViT with ViTDet's window attention and simple pyramid, whose maps are
    "p{log2(patch_size / factor)}" for each of scale_factors (p3-p5 for 2, 1, 0.5) and whose
    padding_constraints ask for the img_size square. Each argument is the MODEL.VIT key of its
    name (ViT-B/16: 768 wide, 12 blocks, 12 heads)."""
    for name, value in (
        ("img_size (MODEL.VIT.IMG_SIZE)", img_size),
        ("embed_dim (MODEL.VIT.EMBED_DIM)", embed_dim),
        ("depth (MODEL.VIT.DEPTH)", depth),
        ("num_heads (MODEL.VIT.NUM_HEADS)", num_heads),
        ("out_channels (MODEL.VIT.OUT_CHANNELS)", out_channels),
    ):
        require_int(name, value)
    # 0: global attention in the blocks of window_block_indexes too (Detectron2's ViT)
    require_int("window_size (MODEL.VIT.WINDOW_SIZE)", window_size, 0)
    require(mlp_ratio > 0, "mlp_ratio (MODEL.VIT.MLP_RATIO)", "> 0", mlp_ratio)
    require_rate("drop_path_rate (MODEL.VIT.DROP_PATH_RATE)", drop_path_rate)
    require(
        isinstance(patch_size, int) and patch_size >= 1 and img_size % patch_size == 0,
        "patch_size (MODEL.VIT.PATCH_SIZE)",
        f"a positive int dividing img_size {img_size}",
        patch_size,
    )
    # the ImageNet file's position embedding: one per patch of its image
    require_int("pretrain_img_size (MODEL.VIT.PRETRAIN_IMG_SIZE)", pretrain_img_size, patch_size)
    require(
        embed_dim % num_heads == 0,
        "num_heads (MODEL.VIT.NUM_HEADS)",
        f"a divisor of embed_dim {embed_dim}",
        num_heads,
    )
    require(
        all(0 <= i < depth for i in window_block_indexes),
        "window_block_indexes (MODEL.VIT.WINDOW_BLOCK_INDEXES)",
        f"block indexes in [0, {depth})",
        list(window_block_indexes),
    )
    factors = list(scale_factors)
    require(
        bool(factors)
        and all(f in SCALE_FACTORS for f in factors)
        and factors == sorted(set(factors), reverse=True),
        "scale_factors (MODEL.VIT.SCALE_FACTORS)",
        f"distinct values among {SCALE_FACTORS}, decreasing (high to low resolution)",
        factors,
    )
    net = ViT(
        img_size=img_size,
        patch_size=patch_size,
        in_chans=in_channels,
        embed_dim=embed_dim,
        depth=depth,
        num_heads=num_heads,
        mlp_ratio=mlp_ratio,
        qkv_bias=True,
        drop_path_rate=drop_path_rate,
        norm_layer=partial(nn.LayerNorm, eps=1e-6),
        use_abs_pos=True,
        use_rel_pos=use_rel_pos,
        window_size=window_size,
        window_block_indexes=list(window_block_indexes),
        residual_block_indexes=[],
        pretrain_img_size=pretrain_img_size,
        pretrain_use_cls_token=True,
        out_feature="last_feat",
    )
    return SimpleFeaturePyramid(
        net=net,
        in_feature="last_feat",
        out_channels=out_channels,
        scale_factors=tuple(factors),
        top_block=None,
        norm="LN",
        square_pad=img_size,
    )


@BACKBONE_REGISTRY.register()
def build_deformable_detr_vit_backbone(cfg, input_shape: ShapeSpec):
    """vit_backbone from cfg.MODEL.VIT, after checking that the resized images fit its square."""
    for key in ("MAX_SIZE_TRAIN", "MAX_SIZE_TEST"):
        # a larger image cannot be padded to the square: Detectron2 would crop it
        require(
            cfg.INPUT[key] <= cfg.MODEL.VIT.IMG_SIZE,
            f"INPUT.{key}",
            f"<= MODEL.VIT.IMG_SIZE {cfg.MODEL.VIT.IMG_SIZE} (the ViT pads every image to "
            f"that square)",
            cfg.INPUT[key],
        )
    return vit_backbone(**keys_of(cfg.MODEL.VIT), in_channels=input_shape.channels)
