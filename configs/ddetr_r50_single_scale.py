"""Single-scale Deformable DETR: C5 only, one feature level (released: 39.4 box AP): the
LazyConfig twin of ddetr_r50_single_scale.yaml."""

from .ddetr_r50 import dataloader, lr_multiplier, model, optimizer, train

__all__ = ["dataloader", "lr_multiplier", "model", "optimizer", "train"]

model.backbone.out_features = ["res5"]  # RESNETS.OUT_FEATURES
model.neck.in_features = ["res5"]  # DEFORMABLE_DETR.IN_FEATURES
model.neck.input_shape = {"res5": model.neck.input_shape.res5}  # what the backbone outputs
model.neck.num_feature_levels = 1  # DEFORMABLE_DETR.NUM_FEATURE_LEVELS
