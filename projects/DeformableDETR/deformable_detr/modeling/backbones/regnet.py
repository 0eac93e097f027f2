"""RegNet (Radosavovic et al., 2020) as a Detectron2 backbone: Detectron2's RegNet (the layout of
pycls, which trained the ImageNet files Detectron2 publishes), configured by cfg.MODEL.REGNET.

Shapes: N batch, H x W image; stage k (1-4) gives "s{k}", (N, width of stage k, H / 2^(k+1),
W / 2^(k+1)).
"""
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY
from detectron2.modeling.backbone import RegNet
from detectron2.modeling.backbone.regnet import (ResBottleneckBlock, SimpleStem,
                                                 generate_regnet_parameters)

from .common import check_out_features, require

__all__ = ["build_deformable_detr_regnet_backbone"]

STAGES = ("s1", "s2", "s3", "s4")


@BACKBONE_REGISTRY.register()
def build_deformable_detr_regnet_backbone(cfg, input_shape: ShapeSpec):
    """RegNetY-4.0GF by default (any RegNetX/Y by cfg.MODEL.REGNET keys), frozen up to
    MODEL.BACKBONE.FREEZE_AT (0 none, 1 the stem, k + 1 stage k too). Returns a Backbone with the
    maps of cfg.MODEL.REGNET.OUT_FEATURES ("s1".."s4", strides 4 to 32)."""
    r = cfg.MODEL.REGNET
    require(isinstance(r.DEPTH, int) and r.DEPTH >= 1, "MODEL.REGNET.DEPTH", "an int >= 1",
            r.DEPTH)
    require(r.W_0 > 0 and r.W_A >= 0 and r.W_M > 1, "MODEL.REGNET.W_0 / W_A / W_M",
            "W_0 > 0, W_A >= 0 and W_M > 1 (the width parameterisation)",
            (r.W_0, r.W_A, r.W_M))
    require(0 <= cfg.MODEL.BACKBONE.FREEZE_AT <= len(STAGES) + 1, "MODEL.BACKBONE.FREEZE_AT",
            f"in [0, {len(STAGES) + 1}]", cfg.MODEL.BACKBONE.FREEZE_AT)
    check_out_features("MODEL.REGNET.OUT_FEATURES", r.OUT_FEATURES, STAGES)
    widths = generate_regnet_parameters(r.W_A, r.W_0, r.W_M, r.DEPTH)[0]
    require(len(widths) == len(STAGES), "MODEL.REGNET.DEPTH / W_0 / W_A / W_M",
            f"a parameterisation with {len(STAGES)} stages (distinct quantised widths); these give "
            f"{len(widths)}: {widths}", (r.DEPTH, r.W_0, r.W_A, r.W_M))
    return RegNet(
        stem_class=SimpleStem, stem_width=r.STEM_WIDTH, block_class=ResBottleneckBlock,
        depth=r.DEPTH, w_a=r.W_A, w_0=r.W_0, w_m=r.W_M, group_width=r.GROUP_WIDTH,
        bottleneck_ratio=r.BOTTLENECK_RATIO, se_ratio=r.SE_RATIO,
        freeze_at=cfg.MODEL.BACKBONE.FREEZE_AT, norm=r.NORM, out_features=list(r.OUT_FEATURES))
