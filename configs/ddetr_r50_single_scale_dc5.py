"""Single-scale Deformable DETR on a dilated C5 (stride 16) (released: 41.5 box AP): the
LazyConfig twin of ddetr_r50_single_scale_dc5.yaml."""

from .ddetr_r50_single_scale import dataloader, lr_multiplier, model, optimizer, train

__all__ = ["dataloader", "lr_multiplier", "model", "optimizer", "train"]

model.backbone.res5_dilation = 2  # RESNETS.RES5_DILATION: torchvision's dilated res5
model.neck.input_shape.res5.stride = 16  # what the dilated C5 outputs
