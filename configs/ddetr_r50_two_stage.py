"""Two-stage Deformable DETR with iterative bounding box refinement (released: 46.9 box AP): the
LazyConfig twin of ddetr_r50_two_stage.yaml."""

from .ddetr_r50 import dataloader, lr_multiplier, model, optimizer, train

__all__ = ["dataloader", "lr_multiplier", "model", "optimizer", "train"]

model.transformer.with_box_refine = True  # DEFORMABLE_DETR.WITH_BOX_REFINE
model.transformer.two_stage = (
    True  # DEFORMABLE_DETR.TWO_STAGE: encoder proposals become the queries
)
model.transformer.two_stage_num_proposals = 300  # DEFORMABLE_DETR.TWO_STAGE_NUM_PROPOSALS
