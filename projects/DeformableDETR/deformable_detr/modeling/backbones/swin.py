"""Swin Transformer (Liu et al., 2021) as a Detectron2 backbone: Detectron2's SwinTransformer,
configured by cfg.MODEL.SWIN.

Shapes: N batch, H x W image; stage i (0-3) gives "p{i}", (N, EMBED_DIM * 2^i, H / 2^(i+2),
W / 2^(i+2)), sides rounded up (Swin pads to its patch and window sizes inside).
"""
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY
from detectron2.modeling.backbone import SwinTransformer

from .common import check_out_features, require

__all__ = ["build_deformable_detr_swin_backbone"]


@BACKBONE_REGISTRY.register()
def build_deformable_detr_swin_backbone(cfg, input_shape: ShapeSpec):
    """Swin-T by default; -S and -B by cfg.MODEL.SWIN keys. Returns a Backbone with the maps of
    cfg.MODEL.SWIN.OUT_FEATURES ("p0".."p3", strides 4 to 32)."""
    s = cfg.MODEL.SWIN
    depths, heads = list(s.DEPTHS), list(s.NUM_HEADS)
    require(len(depths) >= 1 and all(isinstance(d, int) and d >= 1 for d in depths),
            "MODEL.SWIN.DEPTHS", "a non-empty list of block counts >= 1", depths)
    require(len(heads) == len(depths), "MODEL.SWIN.NUM_HEADS", f"one head count per stage "
            f"({len(depths)}, as MODEL.SWIN.DEPTHS)", heads)
    for i, h in enumerate(heads):
        width = s.EMBED_DIM * 2 ** i
        require(isinstance(h, int) and h >= 1 and width % h == 0, "MODEL.SWIN.NUM_HEADS",
                f"head counts dividing each stage's width (stage {i}: {width})", heads)
    available = [f"p{i}" for i in range(len(depths))]
    check_out_features("MODEL.SWIN.OUT_FEATURES", s.OUT_FEATURES, available)
    backbone = SwinTransformer(
        pretrain_img_size=224, patch_size=4, in_chans=input_shape.channels,
        embed_dim=s.EMBED_DIM, depths=tuple(depths), num_heads=tuple(heads),
        window_size=s.WINDOW_SIZE, mlp_ratio=s.MLP_RATIO, drop_path_rate=s.DROP_PATH_RATE,
        out_indices=tuple(available.index(f) for f in s.OUT_FEATURES),
        frozen_stages=s.FROZEN_STAGES)
    # Detectron2 0.7.2 stores it as `_size_devisibility` (sic), and its size_divisibility
    # property then raises AttributeError: 32, the stride of the last stage, as intended
    backbone._size_divisibility = 32
    return backbone
