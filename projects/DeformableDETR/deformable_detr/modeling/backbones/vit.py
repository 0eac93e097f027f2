"""ViTDet's backbone (Li et al., 2022) for Deformable DETR: Detectron2's plain ViT with window
attention and a SimpleFeaturePyramid, configured by cfg.MODEL.VIT.

The ViT works at one input size: every image is padded to the square MODEL.VIT.IMG_SIZE (as in
ViTDet), at any batch size, so an image's features never depend on its companions; its own pixels
must fit in the square (INPUT.MAX_SIZE_TRAIN and MAX_SIZE_TEST <= IMG_SIZE).

Shapes: N batch, S = IMG_SIZE, P = PATCH_SIZE; the ViT gives (N, EMBED_DIM, S / P, S / P); the
pyramid scales it by each of SCALE_FACTORS into "p{k}" maps (N, OUT_CHANNELS, S / 2^k, S / 2^k),
2^k = P / factor.
"""
from functools import partial

from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY
from detectron2.modeling.backbone import SimpleFeaturePyramid, ViT
from torch import nn

from .common import require

__all__ = ["build_deformable_detr_vit_backbone"]

SCALE_FACTORS = (4.0, 2.0, 1.0, 0.5)  # those SimpleFeaturePyramid implements


def _check(cfg) -> None:
    v = cfg.MODEL.VIT
    require(isinstance(v.PATCH_SIZE, int) and v.PATCH_SIZE >= 1 and v.IMG_SIZE % v.PATCH_SIZE == 0,
            "MODEL.VIT.PATCH_SIZE", f"a positive int dividing MODEL.VIT.IMG_SIZE {v.IMG_SIZE}",
            v.PATCH_SIZE)
    require(v.EMBED_DIM % v.NUM_HEADS == 0, "MODEL.VIT.NUM_HEADS",
            f"a divisor of MODEL.VIT.EMBED_DIM {v.EMBED_DIM}", v.NUM_HEADS)
    require(all(0 <= i < v.DEPTH for i in v.WINDOW_BLOCK_INDEXES),
            "MODEL.VIT.WINDOW_BLOCK_INDEXES", f"block indexes in [0, {v.DEPTH})",
            v.WINDOW_BLOCK_INDEXES)
    factors = list(v.SCALE_FACTORS)
    require(bool(factors) and all(f in SCALE_FACTORS for f in factors)
            and factors == sorted(set(factors), reverse=True), "MODEL.VIT.SCALE_FACTORS",
            f"distinct values among {SCALE_FACTORS}, decreasing (high to low resolution)",
            factors)
    for key in ("MAX_SIZE_TRAIN", "MAX_SIZE_TEST"):
        # a larger image cannot be padded to the square: Detectron2 would crop it
        require(cfg.INPUT[key] <= v.IMG_SIZE, f"INPUT.{key}",
                f"<= MODEL.VIT.IMG_SIZE {v.IMG_SIZE} (the ViT pads every image to that square)",
                cfg.INPUT[key])


@BACKBONE_REGISTRY.register()
def build_deformable_detr_vit_backbone(cfg, input_shape: ShapeSpec):
    """ViT-B/16 with ViTDet's window attention by default. Returns a SimpleFeaturePyramid whose
    maps are "p{log2(PATCH_SIZE / factor)}" for each of MODEL.VIT.SCALE_FACTORS (p3-p5 for
    2, 1, 0.5), and whose padding_constraints ask for the IMG_SIZE square."""
    _check(cfg)
    v = cfg.MODEL.VIT
    net = ViT(
        img_size=v.IMG_SIZE, patch_size=v.PATCH_SIZE, in_chans=input_shape.channels,
        embed_dim=v.EMBED_DIM, depth=v.DEPTH, num_heads=v.NUM_HEADS, mlp_ratio=v.MLP_RATIO,
        qkv_bias=True, drop_path_rate=v.DROP_PATH_RATE,
        norm_layer=partial(nn.LayerNorm, eps=1e-6), use_abs_pos=True, use_rel_pos=v.USE_REL_POS,
        window_size=v.WINDOW_SIZE, window_block_indexes=list(v.WINDOW_BLOCK_INDEXES),
        residual_block_indexes=[], pretrain_img_size=v.PRETRAIN_IMG_SIZE,
        pretrain_use_cls_token=True, out_feature="last_feat")
    return SimpleFeaturePyramid(
        net=net, in_feature="last_feat", out_channels=v.OUT_CHANNELS,
        scale_factors=tuple(v.SCALE_FACTORS), top_block=None, norm="LN", square_pad=v.IMG_SIZE)
