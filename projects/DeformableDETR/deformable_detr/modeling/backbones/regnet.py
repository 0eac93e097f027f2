"""RegNet (Radosavovic et al., 2020) as a Detectron2 backbone: Detectron2's RegNet (the layout of
pycls, which trained the ImageNet files Detectron2 publishes), from plain arguments
(regnet_backbone, e.g. in a LazyConfig) or from cfg.MODEL.REGNET (the registered builder), each
argument being the key of its name.

Shapes: see the legend in deformable_detr/__init__.py; stage k (1-4) gives "s{k}", (N, width of
stage k, H / 2^(k+1), W / 2^(k+1)).
"""

import math
from typing import Sequence

from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY
from detectron2.modeling.backbone import RegNet
from detectron2.modeling.backbone.regnet import (
    ResBottleneckBlock,
    SimpleStem,
    adjust_block_compatibility,
    generate_regnet_parameters,
)

from .common import check_norm, check_out_features, keys_of, require, require_int

__all__ = ["build_deformable_detr_regnet_backbone", "regnet_backbone"]

STAGES = ("s1", "s2", "s3", "s4")
WIDTH_QUANTUM = 8  # generate_regnet_parameters quantises the widths to multiples of it


def regnet_backbone(
    *,
    stem_width: int,
    depth: int,
    w_a: float,
    w_0: int,
    w_m: float,
    group_width: int,
    bottleneck_ratio: float,
    se_ratio: float,
    norm: str,
    out_features: Sequence[str],
    freeze_at: int,
) -> RegNet:
    """RegNet with the maps of out_features ("s1".."s4", strides 4 to 32), frozen up to freeze_at
    (MODEL.BACKBONE.FREEZE_AT: 0 none, 1 the stem, k + 1 stage k too); the other arguments are
    the MODEL.REGNET keys of their names (RegNetY-4.0GF: 32, 22, 31.41, 96, 2.24, 64, 1.0,
    0.25)."""
    require_int("depth (MODEL.REGNET.DEPTH)", depth)
    require_int("stem_width (MODEL.REGNET.STEM_WIDTH)", stem_width)
    require(
        w_0 > 0 and w_0 % WIDTH_QUANTUM == 0 and w_a >= 0 and w_m > 1,
        "w_0, w_a, w_m (MODEL.REGNET.W_0 / W_A / W_M)",
        f"w_0 > 0 a multiple of {WIDTH_QUANTUM}, w_a >= 0 and w_m > 1 (the width parameterisation)",
        (w_0, w_a, w_m),
    )
    widths = generate_regnet_parameters(w_a, w_0, w_m, depth)[0]
    require(
        len(widths) == len(STAGES),
        "depth, w_0, w_a, w_m (MODEL.REGNET keys)",
        f"a parameterisation with {len(STAGES)} stages (distinct quantised widths); these give "
        f"{len(widths)}: {widths}",
        (depth, w_0, w_a, w_m),
    )
    require_int("group_width (MODEL.REGNET.GROUP_WIDTH)", group_width)
    # Detectron2 rounds each width to whole groups of the bottleneck's width, which only works
    # out (its assertion) for a ratio 1 / k
    require(
        0 < bottleneck_ratio <= 1
        and math.isclose(1 / bottleneck_ratio, round(1 / bottleneck_ratio)),
        "bottleneck_ratio (MODEL.REGNET.BOTTLENECK_RATIO)",
        "1 / k for an integer k >= 1 (1.0, 0.5, 0.25...)",
        bottleneck_ratio,
    )
    require(
        se_ratio >= 0,
        "se_ratio (MODEL.REGNET.SE_RATIO)",
        ">= 0 (0: no squeeze-excitation)",
        se_ratio,
    )
    # the widths Detectron2 builds: each stage's rounded to a multiple of its group width
    widths = adjust_block_compatibility(
        widths, [bottleneck_ratio] * len(widths), [group_width] * len(widths)
    )[0]
    check_norm(
        "norm (MODEL.REGNET.NORM)",
        norm,
        [stem_width, *widths, *(round(w * bottleneck_ratio) for w in widths)],
    )
    require(
        0 <= freeze_at <= len(STAGES) + 1,
        "freeze_at (MODEL.BACKBONE.FREEZE_AT)",
        f"in [0, {len(STAGES) + 1}]",
        freeze_at,
    )
    check_out_features("out_features (MODEL.REGNET.OUT_FEATURES)", out_features, STAGES)
    return RegNet(
        stem_class=SimpleStem,
        stem_width=stem_width,
        block_class=ResBottleneckBlock,
        depth=depth,
        w_a=w_a,
        w_0=w_0,
        w_m=w_m,
        group_width=group_width,
        bottleneck_ratio=bottleneck_ratio,
        se_ratio=se_ratio,
        freeze_at=freeze_at,
        norm=norm,
        out_features=list(out_features),
    )


@BACKBONE_REGISTRY.register()
def build_deformable_detr_regnet_backbone(cfg, input_shape: ShapeSpec):
    """regnet_backbone from cfg.MODEL.REGNET and MODEL.BACKBONE.FREEZE_AT (the stem takes 3
    channels: RGB or BGR)."""
    require(
        input_shape.channels == 3,
        "the image channels (MODEL.PIXEL_MEAN's length)",
        "3 for Detectron2's RegNet stem",
        input_shape.channels,
    )
    return regnet_backbone(**keys_of(cfg.MODEL.REGNET), freeze_at=cfg.MODEL.BACKBONE.FREEZE_AT)
