"""ddetr_r50_plus_12ep.py on H-Deformable-DETR's 36-epoch schedule (their 49.0 box AP): the
LazyConfig twin of ddetr_r50_plus_36ep.yaml."""

from .ddetr_r50_plus_12ep import dataloader, lr_multiplier, model, optimizer, train

__all__ = ["dataloader", "lr_multiplier", "model", "optimizer", "train"]

train.max_iter = 266148  # SOLVER.MAX_ITER: 36 epochs of 7,393 iterations
lr_multiplier.scheduler.milestones = [221790]  # SOLVER.STEPS: after epoch 30 (their lr_drop 30)
train.eval_period = 44358  # TEST.EVAL_PERIOD: every 6 epochs, and after the last iteration
