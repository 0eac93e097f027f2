"""The optimizer of the released models: AdamW with per-group learning rates (backbone, and the
layers that predict sampling locations, at multiples of the base rate) and clipping of the whole
model's gradient norm, built from the SOLVER keys (build_optimizer) or from plain arguments
(make_optimizer over param_groups, as a LazyConfig does); and the checks of the solver values a
training run reads, in either kind of config.
"""

import math
from typing import Any, Dict, List, Tuple, Type

import torch
from detectron2.config import CfgNode
from detectron2.solver.build import maybe_add_gradient_clipping
from omegaconf import OmegaConf

__all__ = [
    "AMP_PRECISIONS",
    "build_optimizer",
    "check_lazy_solver",
    "check_solver_config",
    "make_optimizer",
    "param_groups",
]

OPTIMIZERS = {"ADAMW": torch.optim.AdamW, "SGD": torch.optim.SGD}
CLIP_TYPES = ("full_model", "value", "norm")  # Detectron2's "value" and "norm", and ours
# the autocast dtypes of mixed-precision training (SOLVER.AMP.PRECISION, train.amp.precision)
AMP_PRECISIONS = {"float16": torch.float16, "bfloat16": torch.bfloat16}


def _require(ok: bool, key: str, expected: str, value) -> None:
    if not ok:
        raise ValueError(f"{key} must be {expected}, got {value!r}")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_int(key: str, value, minimum: int) -> None:
    _require(_is_int(value) and value >= minimum, key, f"an integer >= {minimum}", value)


def _check_rate(key: str, value, *, zero_ok: bool) -> None:
    _require(
        _is_number(value) and math.isfinite(value) and (value > 0 or zero_ok and value == 0),
        key,
        f"a finite number {'>=' if zero_ok else '>'} 0",
        value,
    )


def _check_steps(key: str, steps, max_iter_key: str, max_iter: int, beyond_ok: bool) -> None:
    """Increasing positive iterations; fvcore refuses a step at max_iter, and (without
    beyond_ok) beyond it."""
    values = list(steps)
    ok = all(
        _is_int(x) and x > 0 and x != max_iter and (beyond_ok or x < max_iter) for x in values
    ) and all(a < b for a, b in zip(values, values[1:]))
    where = (
        f"other than {max_iter_key} ({max_iter}); those beyond it are ignored"
        if beyond_ok
        else f"below {max_iter_key} ({max_iter}): shorten them with the run"
    )
    _require(ok, key, f"increasing integers > 0 {where}", steps)


def _check_optimizer(key: str, name) -> None:
    _require(name in OPTIMIZERS, key, f"one of {list(OPTIMIZERS)}", name)


def _check_precision(key: str, precision) -> None:
    ok = isinstance(precision, str) and precision in AMP_PRECISIONS
    _require(ok, key, f"one of {list(AMP_PRECISIONS)}", precision)


def _check_clipping(keys: Tuple[str, str, str], clip_type, clip_value, norm_type) -> None:
    """keys: the names of (clip type, clip value, norm type) in errors."""
    _require(clip_type in CLIP_TYPES, keys[0], f"one of {list(CLIP_TYPES)}", clip_type)
    _check_rate(keys[1], clip_value, zero_ok=False)
    _require(
        _is_number(norm_type) and norm_type > 0,
        keys[2],
        "a number > 0 (inf: the largest absolute gradient)",
        norm_type,
    )


def check_solver_config(cfg) -> None:
    """Raises ValueError naming the first cfg.SOLVER key that would make training fail deep inside
    (a division by MAX_ITER 0, fvcore's unnamed milestone errors) or train silently wrong (a
    negative or nan learning rate). Detectron2 already names a wrong LR_SCHEDULER_NAME or
    WARMUP_METHOD, and IMS_PER_BATCH not divisible by the number of processes."""
    s = cfg.SOLVER
    for key, minimum in (
        ("MAX_ITER", 1),
        ("IMS_PER_BATCH", 1),
        ("CHECKPOINT_PERIOD", 1),
        ("WARMUP_ITERS", 0),
    ):
        _check_int(f"SOLVER.{key}", s[key], minimum)
    _check_rate("SOLVER.BASE_LR", s.BASE_LR, zero_ok=False)
    for key in ("BACKBONE_MULTIPLIER", "LINEAR_PROJ_MULTIPLIER"):
        _check_rate(f"SOLVER.{key}", s[key], zero_ok=True)
    # Detectron2 drops (with a warning) the steps beyond MAX_ITER, so shortened runs keep the
    # recipe's STEPS
    _check_steps("SOLVER.STEPS", s.STEPS, "SOLVER.MAX_ITER", s.MAX_ITER, beyond_ok=True)
    _check_optimizer("SOLVER.OPTIMIZER", s.OPTIMIZER)
    _check_precision("SOLVER.AMP.PRECISION", s.AMP.PRECISION)
    clip = s.CLIP_GRADIENTS
    if clip.ENABLED:
        _check_clipping(
            (
                "SOLVER.CLIP_GRADIENTS.CLIP_TYPE",
                "SOLVER.CLIP_GRADIENTS.CLIP_VALUE",
                "SOLVER.CLIP_GRADIENTS.NORM_TYPE",
            ),
            clip.CLIP_TYPE,
            clip.CLIP_VALUE,
            clip.NORM_TYPE,
        )


_ABSENT = object()


def _check_fraction(key: str, value) -> None:
    _require(
        _is_number(value) and 0 <= value <= 1,
        key,
        "a number in [0, 1] (a fraction of train.max_iter)",
        value,
    )


def check_lazy_solver(cfg) -> None:
    """check_solver_config's checks on a LazyConfig laid out as configs/common/ (make_optimizer,
    param_groups, fvcore's MultiStepParamScheduler in Detectron2's WarmupParamScheduler), with
    errors naming the lazy key, e.g. "train.max_iter must be an integer >= 1, got 0". The
    schedule's milestones must lie below train.max_iter (fvcore refuses the others). Keys a
    config does not have (its own optimizer or schedule) are left to what it builds."""
    max_iter = OmegaConf.select(cfg, "train.max_iter", default=_ABSENT)
    _check_int("train.max_iter", max_iter, 1)
    checks = (
        ("train.checkpointer.period", lambda key, v: _check_int(key, v, 1)),
        ("dataloader.train.total_batch_size", lambda key, v: _check_int(key, v, 1)),
        ("optimizer.lr", lambda key, v: _check_rate(key, v, zero_ok=False)),
        ("optimizer.params.backbone_multiplier", lambda key, v: _check_rate(key, v, zero_ok=True)),
        (
            "optimizer.params.linear_proj_multiplier",
            lambda key, v: _check_rate(key, v, zero_ok=True),
        ),
        ("lr_multiplier.warmup_length", _check_fraction),
        (
            "lr_multiplier.scheduler.milestones",
            lambda key, v: _check_steps(key, v, "train.max_iter", max_iter, beyond_ok=False),
        ),
        ("optimizer.name", _check_optimizer),
        ("train.amp.precision", _check_precision),
    )
    for key, check in checks:
        value = OmegaConf.select(cfg, key, default=_ABSENT)
        if value is not _ABSENT:
            check(key, OmegaConf.to_container(value) if OmegaConf.is_config(value) else value)
    if OmegaConf.select(cfg, "optimizer.clip_enabled", default=False):
        keys = ("optimizer.clip_type", "optimizer.clip_value", "optimizer.norm_type")
        _check_clipping(keys, *(OmegaConf.select(cfg, key) for key in keys))


def param_groups(
    model: torch.nn.Module,
    base_lr: float,
    backbone_multiplier: float,
    linear_proj_multiplier: float,
    linear_proj_names,
) -> List[Dict[str, Any]]:
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
    lrs = {
        "base": base_lr,
        "backbone": base_lr * backbone_multiplier,
        "linear_proj": base_lr * linear_proj_multiplier,
    }
    return [{"params": ps, "lr": lrs[k], "name": k} for k, ps in groups.items() if ps]


def _with_full_model_clipping(
    optimizer_type: Type[torch.optim.Optimizer], max_norm: float, norm_type: float
) -> Type[torch.optim.Optimizer]:
    """optimizer_type whose step first clips the norm of all its gradients together."""

    class FullModelGradientClipping(optimizer_type):
        def step(self, closure=None):
            params = [p for group in self.param_groups for p in group["params"]]
            torch.nn.utils.clip_grad_norm_(params, max_norm, norm_type)
            return super().step(closure)

    FullModelGradientClipping.__name__ = optimizer_type.__name__ + "WithFullModelClipping"
    return FullModelGradientClipping


def make_optimizer(
    params,
    *,
    name: str,
    lr: float,
    weight_decay: float,
    momentum: float,
    clip_enabled: bool,
    clip_type: str,
    clip_value: float,
    norm_type: float,
) -> torch.optim.Optimizer:
    """The optimizer `name` (a key of OPTIMIZERS) over params (e.g. param_groups(...)), clipping
    the gradients when clip_enabled: "full_model" clips the norm of all of them together before
    each step, "value" and "norm" are Detectron2's per-parameter clipping. Each argument is the
    SOLVER key of its name (momentum: SGD's only). The values are checked where a run starts
    (check_solver_config, check_lazy_solver)."""
    # fused: one kernel per step instead of a handful of small ops per parameter, which dominate
    # the step of a small model on the CPU
    extra = {"fused": True} if name == "ADAMW" else {"momentum": momentum}
    optimizer_type = OPTIMIZERS[name]
    if clip_enabled and clip_type == "full_model":
        optimizer_type = _with_full_model_clipping(optimizer_type, clip_value, norm_type)
    elif clip_enabled:
        clip = {
            "ENABLED": True,
            "CLIP_TYPE": clip_type,
            "CLIP_VALUE": clip_value,
            "NORM_TYPE": norm_type,
        }
        optimizer_type = maybe_add_gradient_clipping(
            CfgNode({"SOLVER": {"CLIP_GRADIENTS": clip}}), optimizer_type
        )
    return optimizer_type(params, lr=lr, weight_decay=weight_decay, **extra)


def build_optimizer(cfg, model: torch.nn.Module) -> torch.optim.Optimizer:
    """make_optimizer over param_groups, from cfg.SOLVER. Checks the solver keys first
    (check_solver_config): Trainer.__init__ builds the optimizer before the data loader, the
    scheduler and the hooks, which read them."""
    check_solver_config(cfg)
    s = cfg.SOLVER
    clip = s.CLIP_GRADIENTS
    groups = param_groups(
        model, s.BASE_LR, s.BACKBONE_MULTIPLIER, s.LINEAR_PROJ_MULTIPLIER, s.LINEAR_PROJ_NAMES
    )
    return make_optimizer(
        groups,
        name=s.OPTIMIZER,
        lr=s.BASE_LR,
        weight_decay=s.WEIGHT_DECAY,
        momentum=s.MOMENTUM,
        clip_enabled=clip.ENABLED,
        clip_type=clip.CLIP_TYPE,
        clip_value=clip.CLIP_VALUE,
        norm_type=clip.NORM_TYPE,
    )
