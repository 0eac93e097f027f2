"""Deformable DETR with iterative bounding box refinement (released: 46.2 box AP): the
LazyConfig twin of ddetr_r50_box_refine.yaml."""

from .ddetr_r50 import dataloader, lr_multiplier, model, optimizer, train

__all__ = ["dataloader", "lr_multiplier", "model", "optimizer", "train"]

model.transformer.with_box_refine = True  # DEFORMABLE_DETR.WITH_BOX_REFINE
