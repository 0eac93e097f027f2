"""Training and evaluation on Detectron2's DefaultTrainer: this project's optimizer, data mapper
and COCO evaluation, DistributedDataParallel and mixed-precision training that also work for a
model on the CPU (gloo, CPU autocast), and a checkpointer that refuses weights matching nothing
in the model. The LazyConfig path (lazy_engine.py) shares the last three."""

import logging
import os
import time
import weakref

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import build_detection_test_loader, build_detection_train_loader
from detectron2.engine import AMPTrainer, DefaultTrainer, SimpleTrainer, TrainerBase
from detectron2.evaluation import COCOEvaluator
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger
from torch.nn.parallel import DistributedDataParallel

from .checkpoint import load_detectron2_checkpoint
from .data import DetrDatasetMapper
from .data.dataset_checks import YACS_KEYS, check_datasets
from .data.mapper import NamedUnreadableDataset
from .solver import AMP_PRECISIONS, build_optimizer

__all__ = [
    "AutocastTrainer",
    "Trainer",
    "WeightsCheckpointer",
    "coco_evaluator",
    "make_trainer",
    "wrap_distributed",
]

logger = logging.getLogger(__name__)


def wrap_distributed(
    model: torch.nn.Module, *, broadcast_buffers: bool = False, find_unused_parameters: bool = False
) -> torch.nn.Module:
    """DistributedDataParallel (with these two of its arguments) when there are several
    processes. Named apart from Detectron2's create_ddp_model, which behaves otherwise: here a
    model on the CPU gets no device_ids (Detectron2's passes the local rank, which DDP rejects
    there)."""
    if comm.get_world_size() == 1:
        return model
    on_gpu = next(model.parameters()).device.type == "cuda"
    return DistributedDataParallel(
        model,
        device_ids=[comm.get_local_rank()] if on_gpu else None,
        broadcast_buffers=broadcast_buffers,
        find_unused_parameters=find_unused_parameters,
    )


class AutocastTrainer(AMPTrainer):
    """Detectron2's AMPTrainer on the CPU as on the GPU: the forward and the loss under
    torch.autocast of the model's device, where AMPTrainer asserts CUDA. float16 scales the loss
    (torch.amp.GradScaler of that device; on a GPU, what AMPTrainer does); bfloat16 has float32's
    exponent range, so its scaler is disabled (scale, unscale_, step and update pass through).
    The model returns a dict of losses; AMPTrainer's zero_grad_before_forward, log_grad_scaler
    and async_write_metrics keep their defaults."""

    def __init__(self, model, data_loader, optimizer, precision: torch.dtype):
        device_type = next(model.parameters()).device.type
        scaler = torch.amp.GradScaler(device_type, enabled=precision == torch.float16)
        super().__init__(model, data_loader, optimizer, grad_scaler=scaler, precision=precision)
        self.device_type = device_type

    def run_step(self):
        assert self.model.training, "[AutocastTrainer] model was changed to eval mode!"
        start = time.perf_counter()
        data = next(self._data_loader_iter)
        data_time = time.perf_counter() - start
        with torch.autocast(self.device_type, dtype=self.precision):
            loss_dict = self.model(data)
            losses = sum(loss_dict.values())
        self.optimizer.zero_grad()
        self.grad_scaler.scale(losses).backward()
        # Gradients divided by the scale before anything reads them: the optimizer's clipping
        # would otherwise clip scaled gradients, since GradScaler.step leaves the unscaling of
        # a fused AdamW (the default here) to its kernel, after the clipping.
        self.grad_scaler.unscale_(self.optimizer)
        self.after_backward()
        self._write_metrics(loss_dict, data_time)
        self.grad_scaler.step(self.optimizer)
        self.grad_scaler.update()

    def load_state_dict(self, state_dict):
        # A checkpoint of float32 training has no loss scale, one of bfloat16 an empty one;
        # AMPTrainer's raises KeyError or RuntimeError there. The scale starts afresh instead.
        if not state_dict.get("grad_scaler"):
            state_dict = {**state_dict, "grad_scaler": self.grad_scaler.state_dict()}
        super().load_state_dict(state_dict)


def make_trainer(model, data_loader, optimizer, *, amp: bool, precision: str) -> SimpleTrainer:
    """SimpleTrainer, or with amp an AutocastTrainer in `precision` (a key of AMP_PRECISIONS,
    checked with the other solver values: check_solver_config, check_lazy_solver), drawing from
    data_loader (an error saying so when none of its images can be read)."""
    data_loader = NamedUnreadableDataset(data_loader)
    if not amp:
        return SimpleTrainer(model, data_loader, optimizer)
    return AutocastTrainer(model, data_loader, optimizer, AMP_PRECISIONS[precision])


def coco_evaluator(dataset_name: str, output_dir: str) -> COCOEvaluator:
    """Detectron2's COCOEvaluator, writing its results to output_dir, for a json without "info".

    pycocotools >= 2.0.7 copies the ground truth's "info" into the results (COCO.loadRes) and
    raises KeyError without one, after all of inference; nothing reads it, and many COCO json
    files (which Detectron2 loads fine) have none, so an empty one is correct."""
    evaluator = COCOEvaluator(dataset_name, output_dir=output_dir)
    evaluator._coco_api.dataset.setdefault("info", {})
    return evaluator


class WeightsCheckpointer(DetectionCheckpointer):
    """DetectionCheckpointer that reads every file with load_detectron2_checkpoint (no code in
    a .pkl or .pth runs; files that are not checkpoints, or damaged, raise ValueError) and raises
    when a weights file shares no parameter with the model (the wrong file, or a checkpoint that
    needs conversion); partial matches load with Detectron2's warnings. A file with other
    classes loads with the class heads fitted to the model (modeling/fine_tuning.py), and the
    checkpoints it writes store the model's class names, which that fitting matches by name."""

    def save(self, name: str, **kwargs) -> None:
        class_names = getattr(self.model, "class_names", None)
        if class_names is not None:
            kwargs.setdefault("class_names", list(class_names))
        super().save(name, **kwargs)

    def _load_file(self, filename):
        # explicit, not only through install_safe_checkpoint_loading's process-wide patch: this
        # checkpointer stays safe even where that patch was undone or overridden
        return load_detectron2_checkpoint(self, filename)

    def _load_model(self, checkpoint):
        incompatible = super()._load_model(checkpoint)
        # fvcore never reports BatchNorm's step counters as missing
        expected = {k for k in self.model.state_dict() if not k.endswith("num_batches_tracked")}
        wrong_shape = {k for k, _, _ in incompatible.incorrect_shapes}
        if expected and not expected - set(incompatible.missing_keys) - wrong_shape:
            raise ValueError(
                f"the weights file matches none of the model's {len(expected)} parameters and "
                f"buffers (it has {sorted(incompatible.unexpected_keys)[:5]}...); released "
                f"Deformable DETR checkpoints need tools/convert_official_checkpoint.py first"
            )
        return incompatible


class Trainer(DefaultTrainer):
    """DefaultTrainer with this project's optimizer, mapper, evaluator and DDP; the datasets
    (registered, their COCO json, their class count against NUM_CLASSES) are checked
    (data/dataset_checks.py) before anything is built or run."""

    def __init__(self, cfg):
        # DefaultTrainer.__init__, except for the DDP wrapper (see wrap_distributed).
        TrainerBase.__init__(self)
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):
            setup_logger()
        check_datasets(
            cfg.DATASETS.TRAIN, cfg.DATASETS.TEST, cfg.MODEL.DEFORMABLE_DETR.NUM_CLASSES, YACS_KEYS
        )
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())
        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)
        model = wrap_distributed(model)
        amp = cfg.SOLVER.AMP
        self._trainer = make_trainer(
            model, data_loader, optimizer, amp=amp.ENABLED, precision=amp.PRECISION
        )
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = WeightsCheckpointer(model, cfg.OUTPUT_DIR, trainer=weakref.proxy(self))
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

    @classmethod
    def build_optimizer(cls, cfg, model):
        return build_optimizer(cfg, model)

    @classmethod
    def build_train_loader(cls, cfg):
        return build_detection_train_loader(cfg, mapper=DetrDatasetMapper(cfg, True))

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        return build_detection_test_loader(cfg, dataset_name, mapper=DetrDatasetMapper(cfg, False))

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        return coco_evaluator(dataset_name, output_folder)

    @classmethod
    def test(cls, cfg, model, evaluators=None):
        """DefaultTrainer.test, after checking the test datasets (their COCO json once per file
        version: a periodic evaluation does not read it again)."""
        check_datasets((), cfg.DATASETS.TEST, cfg.MODEL.DEFORMABLE_DETR.NUM_CLASSES, YACS_KEYS)
        return super().test(cfg, model, evaluators)
