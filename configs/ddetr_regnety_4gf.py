"""Multi-scale Deformable DETR on RegNetY-4.0GF, with the released recipe: the LazyConfig twin of
ddetr_regnety_4gf.yaml. Not a released model; other RegNets by the arguments of regnet_backbone
(the MODEL.REGNET keys of their names)."""

from detectron2.config import LazyCall as L
from detectron2.layers import ShapeSpec

from deformable_detr.modeling.backbones import regnet_backbone

from .ddetr_r50 import dataloader, lr_multiplier, model, optimizer, train

__all__ = ["dataloader", "lr_multiplier", "model", "optimizer", "train"]

# MODEL.BACKBONE.NAME "build_deformable_detr_regnet_backbone"
model.backbone = L(regnet_backbone)(
    stem_width=32,  # MODEL.REGNET.STEM_WIDTH
    depth=22,  # MODEL.REGNET.DEPTH: blocks over all stages
    w_a=31.41,  # MODEL.REGNET.W_A / W_0 / W_M: the width parameterisation
    w_0=96,
    w_m=2.24,
    group_width=64,  # MODEL.REGNET.GROUP_WIDTH: channels per group of the 3x3 convolutions
    bottleneck_ratio=1.0,  # MODEL.REGNET.BOTTLENECK_RATIO
    se_ratio=0.25,  # MODEL.REGNET.SE_RATIO: squeeze-excitation (RegNetY)
    norm="FrozenBN",  # MODEL.REGNET.NORM
    out_features=["s2", "s3", "s4"],  # MODEL.REGNET.OUT_FEATURES: strides 8, 16, 32
    freeze_at=2,  # MODEL.BACKBONE.FREEZE_AT: stem and the first stage frozen
)
# the stages' widths, as RegNetY-4.0GF's parameters give them (with group-width rounding)
model.neck.input_shape = {
    "s2": ShapeSpec(channels=192, stride=8),
    "s3": ShapeSpec(channels=512, stride=16),
    "s4": ShapeSpec(channels=1088, stride=32),
}
model.neck.in_features = ["s2", "s3", "s4"]  # DEFORMABLE_DETR.IN_FEATURES
# MODEL.PIXEL_MEAN / PIXEL_STD and INPUT.FORMAT: pycls trained on BGR images with these
model.pixel_mean = [103.530, 116.280, 123.675]
model.pixel_std = [57.375, 57.120, 58.395]
dataloader.train.mapper.image_format = "BGR"
# MODEL.WEIGHTS: pycls' ImageNet file, converted with tools/convert_regnet.py
train.init_checkpoint = "weights/imagenet_regnety_4gf.pth"
