"""Swin Transformer (Liu et al., 2021) as a Detectron2 backbone: Detectron2's SwinTransformer,
from plain arguments (swin_backbone, e.g. in a LazyConfig) or from cfg.MODEL.SWIN (the registered
builder), each argument being the key of its name.

Shapes: see the legend in deformable_detr/__init__.py; stage i (0-3) gives "p{i}", (N, EMBED_DIM *
2^i, H / 2^(i+2), W / 2^(i+2)), sides rounded up (Swin pads to its patch and window sizes inside).
"""

from typing import Sequence

from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY
from detectron2.modeling.backbone import SwinTransformer

from .common import check_out_features, keys_of, require, require_int, require_rate

__all__ = ["build_deformable_detr_swin_backbone", "swin_backbone"]


def swin_backbone(
    *,
    embed_dim: int,
    depths: Sequence[int],
    num_heads: Sequence[int],
    window_size: int,
    mlp_ratio: float,
    drop_path_rate: float,
    out_features: Sequence[str],
    frozen_stages: int,
    in_channels: int = 3,
) -> SwinTransformer:
    """Swin with the maps of out_features ("p0".."p3", strides 4 to 32); each argument is the
    MODEL.SWIN key of its name (Swin-T: 96, [2, 2, 6, 2], [3, 6, 12, 24], 7)."""
    depths, heads = list(depths), list(num_heads)
    require_int("embed_dim (MODEL.SWIN.EMBED_DIM)", embed_dim)
    # Detectron2 asserts "shift_size must in 0-window_size" on a window below 1
    require_int("window_size (MODEL.SWIN.WINDOW_SIZE)", window_size)
    require(mlp_ratio > 0, "mlp_ratio (MODEL.SWIN.MLP_RATIO)", "> 0", mlp_ratio)
    require_rate("drop_path_rate (MODEL.SWIN.DROP_PATH_RATE)", drop_path_rate)
    require(
        len(depths) >= 1 and all(isinstance(d, int) and d >= 1 for d in depths),
        "depths (MODEL.SWIN.DEPTHS)",
        "a non-empty list of block counts >= 1",
        depths,
    )
    require(
        len(heads) == len(depths),
        "num_heads (MODEL.SWIN.NUM_HEADS)",
        f"one head count per stage ({len(depths)}, as depths)",
        heads,
    )
    for i, h in enumerate(heads):
        width = embed_dim * 2**i
        require(
            isinstance(h, int) and h >= 1 and width % h == 0,
            "num_heads (MODEL.SWIN.NUM_HEADS)",
            f"head counts dividing each stage's width (stage {i}: {width})",
            heads,
        )
    require(
        isinstance(frozen_stages, int) and -1 <= frozen_stages <= len(depths) + 1,
        "frozen_stages (MODEL.SWIN.FROZEN_STAGES)",
        f"in [-1, {len(depths) + 1}] (-1 none, 0 or 1 the patch embedding, k >= 2 stages 0 to "
        f"k - 2 too)",
        frozen_stages,
    )
    available = [f"p{i}" for i in range(len(depths))]
    check_out_features("out_features (MODEL.SWIN.OUT_FEATURES)", out_features, available)
    backbone = SwinTransformer(
        pretrain_img_size=224,
        patch_size=4,
        in_chans=in_channels,
        embed_dim=embed_dim,
        depths=tuple(depths),
        num_heads=tuple(heads),
        window_size=window_size,
        mlp_ratio=mlp_ratio,
        drop_path_rate=drop_path_rate,
        out_indices=tuple(available.index(f) for f in out_features),
        frozen_stages=frozen_stages,
    )
    # Detectron2 0.7.2 stores it as `_size_devisibility` (sic), and its size_divisibility
    # property then raises AttributeError: 32, the stride of the last stage, as intended
    backbone._size_divisibility = 32
    return backbone


@BACKBONE_REGISTRY.register()
def build_deformable_detr_swin_backbone(cfg, input_shape: ShapeSpec):
    """swin_backbone from cfg.MODEL.SWIN: Swin-T by default; -S and -B by keys."""
    return swin_backbone(**keys_of(cfg.MODEL.SWIN), in_channels=input_shape.channels)
