"""The optimizer of the released models: AdamW with per-group learning rates (backbone, and the
layers that predict sampling locations, at multiples of the base rate) and clipping of the whole
model's gradient norm."""
from typing import Any, Dict, List, Type

import torch
from detectron2.solver.build import maybe_add_gradient_clipping

__all__ = ["build_optimizer", "param_groups"]


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
    """cfg.SOLVER.OPTIMIZER over param_groups, with cfg.SOLVER.CLIP_GRADIENTS."""
    s = cfg.SOLVER
    groups = param_groups(model, s.BASE_LR, s.BACKBONE_MULTIPLIER, s.LINEAR_PROJ_MULTIPLIER,
                          s.LINEAR_PROJ_NAMES)
    # fused: one kernel per step instead of a handful of small ops per parameter, which dominate
    # the step of a small model on the CPU
    kinds = {"ADAMW": (torch.optim.AdamW, {"fused": True}),
             "SGD": (torch.optim.SGD, {"momentum": s.MOMENTUM})}
    if s.OPTIMIZER not in kinds:
        raise ValueError(f"SOLVER.OPTIMIZER must be one of {sorted(kinds)}, got {s.OPTIMIZER!r}")
    optimizer_type, extra = kinds[s.OPTIMIZER]
    clip = s.CLIP_GRADIENTS
    if clip.ENABLED and clip.CLIP_TYPE == "full_model":
        optimizer_type = _with_full_model_clipping(optimizer_type, clip.CLIP_VALUE, clip.NORM_TYPE)
        return optimizer_type(groups, lr=s.BASE_LR, weight_decay=s.WEIGHT_DECAY, **extra)
    # Detectron2's own per-parameter "value" / "norm" clipping, or none
    return maybe_add_gradient_clipping(cfg, optimizer_type)(
        groups, lr=s.BASE_LR, weight_decay=s.WEIGHT_DECAY, **extra)
