"""Deformable DETR on Detectron2's ResNet-50 + FPN: the neck projects P3-P5 and adds the 4th level
by a stride-2 conv, as on the plain ResNet. Not a released model: the LazyConfig twin of
ddetr_r50_fpn.yaml, trained with the released recipe; the ImageNet file fills the FPN's bottom-up
ResNet, the FPN's own layers start from scratch."""

from detectron2.config import LazyCall as L
from detectron2.layers import ShapeSpec
from detectron2.modeling.backbone.fpn import FPN, LastLevelMaxPool

from .ddetr_r50 import dataloader, lr_multiplier, model, optimizer, train

__all__ = ["dataloader", "lr_multiplier", "model", "optimizer", "train"]

# MODEL.BACKBONE.NAME "build_resnet_fpn_backbone", with MODEL.FPN
model.backbone = L(FPN)(
    bottom_up=model.backbone,  # the ResNet-50 of the base config, C3-C5
    in_features=["res3", "res4", "res5"],  # FPN.IN_FEATURES
    out_channels=256,  # FPN.OUT_CHANNELS
    norm="",  # FPN.NORM: none
    top_block=L(LastLevelMaxPool)(),  # P6 by max pooling, as Detectron2's builder adds
    fuse_type="sum",  # FPN.FUSE_TYPE
)
# P3-P6, 256 channels each
model.neck.input_shape = {f"p{k}": ShapeSpec(channels=256, stride=2**k) for k in range(3, 7)}
model.neck.in_features = ["p3", "p4", "p5"]  # DEFORMABLE_DETR.IN_FEATURES
