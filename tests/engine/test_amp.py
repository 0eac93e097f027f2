"""Mixed precision on the CPU (SOLVER.AMP.ENABLED / PRECISION, train.amp.enabled / precision):
one iteration's losses in float16 and bfloat16 against float32, the op in the half dtype under
autocast, the loss scale and the clipping, train_net.py's runs in each precision, and the
error for a precision that does not exist. The code is the GPU user's; only the device
differs."""

import json
import math
import re
from itertools import repeat

import pytest
import torch
from detectron2.utils.events import EventStorage
from torch.utils._python_dispatch import TorchDispatchMode

from cli_cases import load_script
from deformable_detr.engine import AutocastTrainer, Trainer, make_trainer
from deformable_detr.solver import AMP_PRECISIONS, make_optimizer
from lazy_cases import QUICK_RUN, QUICKSTART_PY, lazy_cfg
from model_cases import build, training_batch
from ms_deform_attn_cases import requires_extension
from repo_paths import QUICKSTART

PRECISIONS = tuple(AMP_PRECISIONS)
# the released model and box refinement (every decoder layer's own heads, boxes fed forward).
# Not two-stage: its queries are the encoder's proposals in the order of their scores, which
# near ties let rounding permute, so that a fixed matching would pair other queries. Dropout
# off, so that the float32 and the half run need not draw the same masks in different dtypes.
VARIANTS = ("ddetr_r50.yaml", "ddetr_r50_box_refine.yaml")
NO_DROPOUT = ["MODEL.DEFORMABLE_DETR.DROPOUT", "0.0"]
OPS = ("ms_deform_attn", "ms_deform_attn_backward")


class _FixedMatching(torch.nn.Module):
    """The criterion's matcher (SetCriterion takes any callable): records a run's assignments,
    and gives them back in order once `replay` is set. Randomly initialised queries are nearly
    tied in cost, so half-precision rounding can hand a target to another query, a discrete
    change of several percent in loss_ce that is no rounding error of the losses."""

    def __init__(self, matcher):
        super().__init__()
        self.matcher, self.recorded, self.replay = matcher, [], None

    def forward(self, outputs, targets):
        if self.replay is not None:
            return next(self.replay)
        self.recorded.append(self.matcher(outputs, targets))
        return self.recorded[-1]


class _OpDtypes(TorchDispatchMode):
    """The dtypes of (value, sampling locations, attention weights) at every call of the
    project's operators (forward and backward), as the kernels receive them."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.namespace == "deformable_detr":
            value, _, _, locations, weights = args[:5]
            self.calls.append((func._schema.name, value.dtype, locations.dtype, weights.dtype))
        return func(*args, **(kwargs or {}))


@pytest.fixture(scope="module", params=VARIANTS)
def float32_run(request):
    """(model in training mode, its matcher recording, float32 losses of training_batch())."""
    model = build(request.param, NO_DROPOUT)
    model.train()
    model.criterion.matcher = _FixedMatching(model.criterion.matcher)
    with torch.no_grad():
        losses = {k: v.item() for k, v in model(training_batch()).items()}
    return model, model.criterion.matcher, losses


@requires_extension
@pytest.mark.parametrize("precision", PRECISIONS)
def test_losses_under_autocast_are_those_of_float32(float32_run, precision):
    model, matching, expected = float32_run
    dtype = AMP_PRECISIONS[precision]
    matching.replay = iter(matching.recorded)
    ops = _OpDtypes()
    with ops:
        with torch.autocast("cpu", dtype=dtype):
            losses = model(training_batch())
        # outside autocast, as the trainer does; bfloat16's only: float16 matrix products have
        # no fast CPU kernel (8 s here), and the op's backward is the same code in both
        if precision == "bfloat16":
            sum(losses.values()).backward()
            model.zero_grad(set_to_none=True)
    # the op in the half dtype, with float32 locations and weights (layers/ms_deform_attn_op.py)
    ops_called = OPS if precision == "bfloat16" else OPS[:1]
    assert {name for name, *_ in ops.calls} == {f"deformable_detr::{op}" for op in ops_called}
    assert {tuple(dtypes) for _, *dtypes in ops.calls} == {(dtype, torch.float32, torch.float32)}
    actual = {k: v.item() for k, v in losses.items()}
    assert actual.keys() == expected.keys() and "loss_giou_0" in actual
    relative = {k: abs(actual[k] - v) / abs(v) for k, v in expected.items()}
    print(precision, {k: f"{v:.1e}" for k, v in relative.items()})
    # 1e-2 relative, the bound: bfloat16 keeps 8 significant bits (a rounding of 2e-3
    # per value) through 6 encoder and 6 decoder layers; measured: up to 2.3e-3 (float16 6e-4)
    assert max(relative.values()) < 1e-2, relative
    # and autocast did run: float32's rounding would leave them within 1e-5
    assert max(relative.values()) > 1e-5, relative


def _tiny_step(precision, amp=True):
    """make_trainer after one step on a linear model whose gradient has a norm of about 0.5
    (65536 times that when scaled, within float16's range), with the project's AdamW (fused)
    and its clipping of the full model's norm to 0.1."""
    torch.manual_seed(0)
    model = torch.nn.Linear(64, 64, bias=False)
    # the loss in float32, as the criterion's (65536 itself is beyond float16's range)
    model.forward = lambda data: {"loss": 10 * model.weight.matmul(data.T).float().mean()}
    optimizer = make_optimizer(
        model.parameters(),
        name="ADAMW",
        lr=1e-4,
        weight_decay=0.0,
        momentum=0.9,
        clip_enabled=True,
        clip_type="full_model",
        clip_value=0.1,
        norm_type=2.0,
    )
    data = repeat(torch.rand(4, 64) * 0.1)
    trainer = make_trainer(model, data, optimizer, amp=amp, precision=precision)
    with EventStorage():
        trainer.run_step()
    return trainer


@pytest.mark.parametrize("precision", PRECISIONS)
def test_clipping_sees_unscaled_gradients(precision, monkeypatch):
    """GradScaler.step leaves a fused AdamW's unscaling to its kernel, after the clipping of
    its step (solver.py): unscaled before, it would clip gradients 65536 times too large."""
    norms = []
    clip = torch.nn.utils.clip_grad_norm_
    monkeypatch.setattr(
        torch.nn.utils, "clip_grad_norm_", lambda *a, **k: norms.append(clip(*a, **k).item())
    )
    trainer = _tiny_step(precision)
    assert isinstance(trainer, AutocastTrainer) and trainer.precision == AMP_PRECISIONS[precision]
    # float16 scales the loss (2 ** 16 at first), bfloat16 does not
    assert trainer.grad_scaler.is_enabled() == (precision == "float16")
    _tiny_step(precision, amp=False)
    assert len(norms) == 2 and norms[0] == pytest.approx(norms[1], rel=1e-2)


def test_resuming_the_trainer_state_of_another_precision():
    """float16 resumes float32's trainer state (no loss scale) and bfloat16's (an empty one),
    where Detectron2's AMPTrainer raises KeyError and RuntimeError; bfloat16 resumes float32's."""
    float32 = _tiny_step("float16", amp=False).state_dict()
    bfloat16 = _tiny_step("bfloat16").state_dict()
    assert "grad_scaler" not in float32 and bfloat16["grad_scaler"] == {}
    for precision, saved in (("float16", float32), ("float16", bfloat16), ("bfloat16", float32)):
        trainer = _tiny_step(precision)
        trainer.iter = 7
        trainer.load_state_dict(saved)
        assert trainer.iter == saved["iteration"]


# train_net.py

# 2 iterations of 2 images, no test set (evaluation is not what is tested here)
YAML_RUN = [
    "SOLVER.MAX_ITER",
    "2",
    "SOLVER.IMS_PER_BATCH",
    "2",
    "DATALOADER.NUM_WORKERS",
    "0",
    "DATASETS.TEST",
    "()",
]


def _argv(kind, precision, output):
    """train_net.py's arguments for 2 iterations under AMP in `precision`, from a yacs or a
    LazyConfig."""
    if kind == "yaml":
        amp = ["SOLVER.AMP.ENABLED", "True", "SOLVER.AMP.PRECISION", precision]
        return ["--config-file", QUICKSTART, *YAML_RUN, *amp, "OUTPUT_DIR", str(output)]
    amp = ["train.amp.enabled=True", f"train.amp.precision={precision}"]
    return ["--config-file", QUICKSTART_PY, *QUICK_RUN, *amp, f"train.output_dir={output}"]


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("kind", ["yaml", "py"])
def test_train_net_trains_under_amp(
    kind, precision, shapes_val_subset, builtin_datasets_env, tmp_path
):
    shapes_val_subset(4)  # QUICK_RUN's test set
    output = tmp_path / "out"
    load_script("train_net.py").cli(_argv(kind, precision, output))
    # the writers' last line: every loss of the last iteration
    lines = (output / "metrics.json").read_text().splitlines()
    last = [m for m in map(json.loads, lines) if "total_loss" in m][-1]
    losses = {k: v for k, v in last.items() if k.startswith("loss_") or k == "total_loss"}
    assert last["iteration"] == 1 and {"total_loss", "loss_ce", "loss_giou_0"} <= set(losses)
    assert all(math.isfinite(v) for v in losses.values()), losses
    # the loss scale is in the checkpoint: float16's, or bfloat16's disabled scaler's (empty)
    state = torch.load(output / "model_final.pth", weights_only=True)["trainer"]
    scaler = state.get("_trainer", state)["grad_scaler"]  # DefaultTrainer's nests it
    assert ("scale" in scaler) == (precision == "float16")


def test_unknown_precision_is_named_with_the_choices(quick_cfg, shapes_root):
    choices = re.escape(str(list(AMP_PRECISIONS)))
    with pytest.raises(
        ValueError, match=rf"^SOLVER\.AMP\.PRECISION must be one of {choices}, got 'float32'$"
    ):
        Trainer(quick_cfg(["SOLVER.AMP.ENABLED", "True", "SOLVER.AMP.PRECISION", "float32"]))
    with pytest.raises(
        ValueError, match=rf"^train\.amp\.precision must be one of {choices}, got 'fp16'$"
    ):
        lazy_cfg("quickstart.py", ["train.amp.enabled=True", "train.amp.precision=fp16"])
