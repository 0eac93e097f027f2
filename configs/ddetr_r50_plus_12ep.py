"""Deformable DETR, two-stage with box refinement, plus the "tricks" of H-Deformable-DETR (dropout
0, mixed query selection, look forward twice) on their 12-epoch recipe (their 47.0 box AP): the
LazyConfig twin of ddetr_r50_plus_12ep.yaml."""

from .ddetr_r50_two_stage import dataloader, lr_multiplier, model, optimizer, train

__all__ = ["dataloader", "lr_multiplier", "model", "optimizer", "train"]

model.transformer.dim_feedforward = 2048  # DEFORMABLE_DETR.DIM_FEEDFORWARD: their default
model.transformer.dropout = 0.0  # DEFORMABLE_DETR.DROPOUT
model.transformer.mixed_query_selection = True  # DEFORMABLE_DETR.MIXED_QUERY_SELECTION
model.transformer.look_forward_twice = True  # DEFORMABLE_DETR.LOOK_FORWARD_TWICE

# SOLVER.IMS_PER_BATCH: their 8 GPUs of 2 images, at the released learning rates
dataloader.train.total_batch_size = 16
# SOLVER.MAX_ITER: 12 epochs of COCO train2017, 7,393 iterations of 16 images each
train.max_iter = 88716
# SOLVER.STEPS: the rate x0.1 after epoch 11 (their lr_drop 11)
lr_multiplier.scheduler.milestones = [81323]
train.checkpointer.period = 7393  # SOLVER.CHECKPOINT_PERIOD: every epoch
train.eval_period = 29572  # TEST.EVAL_PERIOD: every 4 epochs, and after the last iteration
