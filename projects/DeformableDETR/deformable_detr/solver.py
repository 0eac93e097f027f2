"""The optimizer of the released models: AdamW with per-group learning rates (backbone, and the
layers that predict sampling locations, at multiples of the base rate) and clipping of the whole
model's gradient norm, and the check of the solver keys a training run reads."""
import math
from typing import Any, Dict, List, Type

import torch
from detectron2.solver.build import maybe_add_gradient_clipping

__all__ = ["build_optimizer", "check_solver_config", "param_groups"]

OPTIMIZERS = {"ADAMW": torch.optim.AdamW, "SGD": torch.optim.SGD}
CLIP_TYPES = ("full_model", "value", "norm")  # Detectron2's "value" and "norm", and ours


def _require(ok: bool, key: str, expected: str, value) -> None:
    if not ok:
        raise ValueError(f"SOLVER.{key} must be {expected}, got {value!r}")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_solver_config(cfg) -> None:
    """Raises ValueError naming the first cfg.SOLVER key that would make training fail deep inside
    (a division by MAX_ITER 0, fvcore's unnamed milestone errors) or train silently wrong (a
    negative or nan learning rate). Detectron2 already names a wrong LR_SCHEDULER_NAME or
    WARMUP_METHOD, and IMS_PER_BATCH not divisible by the number of processes."""
    s = cfg.SOLVER
    for key, minimum in (("MAX_ITER", 1), ("IMS_PER_BATCH", 1), ("CHECKPOINT_PERIOD", 1),
                         ("WARMUP_ITERS", 0)):
        _require(_is_int(s[key]) and s[key] >= minimum, key, f"an integer >= {minimum}", s[key])
    _require(_is_number(s.BASE_LR) and math.isfinite(s.BASE_LR) and s.BASE_LR > 0, "BASE_LR",
             "a finite number > 0", s.BASE_LR)
    for key in ("BACKBONE_MULTIPLIER", "LINEAR_PROJ_MULTIPLIER"):
        _require(_is_number(s[key]) and math.isfinite(s[key]) and s[key] >= 0, key,
                 "a finite number >= 0", s[key])
    steps = list(s.STEPS)
    # Detectron2 drops (with a warning) the steps beyond MAX_ITER, so shortened runs keep the
    # recipe's STEPS; fvcore then refuses a step at MAX_ITER itself
    _require(all(_is_int(x) and x > 0 and x != s.MAX_ITER for x in steps)
             and all(a < b for a, b in zip(steps, steps[1:])), "STEPS",
             f"increasing integers > 0 other than SOLVER.MAX_ITER ({s.MAX_ITER}); those beyond "
             f"it are ignored", s.STEPS)
    _require(s.OPTIMIZER in OPTIMIZERS, "OPTIMIZER", f"one of {list(OPTIMIZERS)}", s.OPTIMIZER)
    clip = s.CLIP_GRADIENTS
    if clip.ENABLED:
        _require(clip.CLIP_TYPE in CLIP_TYPES, "CLIP_GRADIENTS.CLIP_TYPE",
                 f"one of {list(CLIP_TYPES)}", clip.CLIP_TYPE)
        _require(_is_number(clip.CLIP_VALUE) and math.isfinite(clip.CLIP_VALUE)
                 and clip.CLIP_VALUE > 0, "CLIP_GRADIENTS.CLIP_VALUE", "a finite number > 0",
                 clip.CLIP_VALUE)
        _require(_is_number(clip.NORM_TYPE) and clip.NORM_TYPE > 0, "CLIP_GRADIENTS.NORM_TYPE",
                 "a number > 0 (inf: the largest absolute gradient)", clip.NORM_TYPE)


def param_groups(model: torch.nn.Module, base_lr: float, backbone_multiplier: float,
                 linear_proj_multiplier: float, linear_proj_names) -> List[Dict[str, Any]]:
    """Trainable parameters in three groups: the backbone's ("backbone." names), the sampling
    location predictors' (names containing one of linear_proj_names), and the rest. Parameters
    shared by several modules (the heads without refinement) appear once."""
    groups = {"base": [], "backbone": [], "linear_proj": []}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if name.startswith("backbone."):
            groups["backbone"].append(p)
        elif any(key in name for key in linear_proj_names):
            groups["linear_proj"].append(p)
        else:
            groups["base"].append(p)
    lrs = {"base": base_lr, "backbone": base_lr * backbone_multiplier,
           "linear_proj": base_lr * linear_proj_multiplier}
    return [{"params": ps, "lr": lrs[k], "name": k} for k, ps in groups.items() if ps]


def _with_full_model_clipping(optimizer_type: Type[torch.optim.Optimizer], max_norm: float,
                              norm_type: float) -> Type[torch.optim.Optimizer]:
    """optimizer_type whose step first clips the norm of all its gradients together."""

    class FullModelGradientClipping(optimizer_type):
        def step(self, closure=None):
            params = [p for group in self.param_groups for p in group["params"]]
            torch.nn.utils.clip_grad_norm_(params, max_norm, norm_type)
            return super().step(closure)

    FullModelGradientClipping.__name__ = optimizer_type.__name__ + "WithFullModelClipping"
    return FullModelGradientClipping


def build_optimizer(cfg, model: torch.nn.Module) -> torch.optim.Optimizer:
    """cfg.SOLVER.OPTIMIZER over param_groups, with cfg.SOLVER.CLIP_GRADIENTS. Checks the solver
    keys first (check_solver_config): Trainer.__init__ builds the optimizer before the data
    loader, the scheduler and the hooks, which read them."""
    check_solver_config(cfg)
    s = cfg.SOLVER
    groups = param_groups(model, s.BASE_LR, s.BACKBONE_MULTIPLIER, s.LINEAR_PROJ_MULTIPLIER,
                          s.LINEAR_PROJ_NAMES)
    # fused: one kernel per step instead of a handful of small ops per parameter, which dominate
    # the step of a small model on the CPU
    extra = {"fused": True} if s.OPTIMIZER == "ADAMW" else {"momentum": s.MOMENTUM}
    optimizer_type = OPTIMIZERS[s.OPTIMIZER]
    clip = s.CLIP_GRADIENTS
    if clip.ENABLED and clip.CLIP_TYPE == "full_model":
        optimizer_type = _with_full_model_clipping(optimizer_type, clip.CLIP_VALUE, clip.NORM_TYPE)
        return optimizer_type(groups, lr=s.BASE_LR, weight_decay=s.WEIGHT_DECAY, **extra)
    # Detectron2's own per-parameter "value" / "norm" clipping, or none
    return maybe_add_gradient_clipping(cfg, optimizer_type)(
        groups, lr=s.BASE_LR, weight_decay=s.WEIGHT_DECAY, **extra)
