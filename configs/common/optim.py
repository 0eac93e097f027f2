"""The released optimizer, as a LazyConfig: the SOLVER keys of Base-DeformableDETR.yaml (each
argument below is the key named in its comment). train_net.py sets `optimizer.params.model`."""

from detectron2.config import LazyCall as L

from deformable_detr.solver import make_optimizer, param_groups

optimizer = L(make_optimizer)(
    params=L(param_groups)(
        base_lr="${..lr}",  # SOLVER.BASE_LR
        # SOLVER.BACKBONE_MULTIPLIER: the backbone at 2e-5 (released lr_backbone)
        backbone_multiplier=0.1,
        # SOLVER.LINEAR_PROJ_MULTIPLIER: the layers predicting sampling locations at 2e-5
        # (released lr_linear_proj_mult), matched by these substrings of the parameter names
        # (SOLVER.LINEAR_PROJ_NAMES)
        linear_proj_multiplier=0.1,
        linear_proj_names=["sampling_offsets", "reference_points"],
    ),
    name="ADAMW",  # SOLVER.OPTIMIZER: AdamW, as released
    lr=2e-4,  # SOLVER.BASE_LR: released lr, at 32 images per iteration
    weight_decay=1e-4,  # SOLVER.WEIGHT_DECAY: on every parameter, as released
    momentum=0.9,  # SOLVER.MOMENTUM: SGD's only
    # SOLVER.CLIP_GRADIENTS: the whole model's gradient norm clipped at 0.1 (released
    # clip_max_norm)
    clip_enabled=True,  # ENABLED
    clip_type="full_model",  # CLIP_TYPE: "full_model", or Detectron2's "value" / "norm"
    clip_value=0.1,  # CLIP_VALUE
    norm_type=2.0,  # NORM_TYPE
)
