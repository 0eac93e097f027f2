"""The released learning-rate schedule, as a LazyConfig: 50 epochs of COCO at 32 images per
iteration, the rate x0.1 after epoch 40, no warm-up (SOLVER.MAX_ITER is train.max_iter; each
argument below is the key named in its comment)."""

from detectron2.config import LazyCall as L
from detectron2.solver import WarmupParamScheduler
from fvcore.common.param_scheduler import MultiStepParamScheduler

lr_multiplier = L(WarmupParamScheduler)(
    scheduler=L(MultiStepParamScheduler)(
        values=[1.0, 0.1],  # SOLVER.GAMMA 0.1 at each step
        # SOLVER.STEPS: epoch 40 of 3,696 iterations (released lr_drop 40); each must lie below
        # train.max_iter: shorten them with the run
        milestones=[147840],
        num_updates="${train.max_iter}",  # SOLVER.MAX_ITER: the milestones' scale
    ),
    warmup_length=0.0,  # SOLVER.WARMUP_ITERS / MAX_ITER: no warm-up, as released
    warmup_factor=0.001,  # SOLVER.WARMUP_FACTOR (no effect without warm-up)
    warmup_method="linear",  # SOLVER.WARMUP_METHOD
)
