"""Training and evaluation from a LazyConfig (a configs/*.py file), as Detectron2's
tools/lazyconfig_train_net.py does them, with this project's DistributedDataParallel (CPU too),
checkpointer (WeightsCheckpointer) and checks of the COCO json and of the solver values.

A LazyConfig for train_net.py defines, at its top level (Detectron2's layout; configs/common/):
  model                                  instantiates to the model
  dataloader.train, .test, .evaluator    the training and test loaders, the test's evaluator
  optimizer                              its `params.model` is set to the model here
  lr_multiplier                          an fvcore ParamScheduler, the learning rate's factor
  train                                  output_dir, init_checkpoint, max_iter, amp.enabled
                                         (amp.precision: "float16", as Detectron2's
                                         AMPTrainer, when absent), ddp, checkpointer (period,
                                         max_to_keep), eval_period, log_period, device (and
                                         seed, read by default_setup)
Overrides are Hydra's key=value, as for Detectron2's LazyConfig tools; a key the config does
not have is refused unless written +key=value (Hydra's addition).
"""

import logging
import os
from typing import Dict, List, Sequence, Tuple

import torch
from detectron2.config import LazyConfig, instantiate
from detectron2.engine import default_writers, hooks
from detectron2.evaluation import inference_on_dataset, print_csv_format
from detectron2.utils import comm
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

from .data.dataset_checks import LAZY_KEYS, check_datasets
from .engine import WeightsCheckpointer, make_trainer, wrap_distributed
from .modeling.fine_tuning import dataset_class_names
from .solver import check_lazy_solver

__all__ = ["build_model", "dataset_names", "do_test", "do_train", "evaluate", "load_lazy_config"]

logger = logging.getLogger(__name__)

# what train_net.py reads from a LazyConfig
REQUIRED_KEYS = (
    "model",
    "dataloader.train",
    "dataloader.test",
    "dataloader.evaluator",
    "optimizer",
    "lr_multiplier",
    "train.output_dir",
    "train.init_checkpoint",
    "train.max_iter",
    "train.amp.enabled",
    "train.ddp",
    "train.checkpointer",
    "train.eval_period",
    "train.log_period",
    "train.device",
)
_ABSENT = object()


def _has(cfg, key: str) -> bool:
    return OmegaConf.select(cfg, key, default=_ABSENT) is not _ABSENT


def _check_overrides(cfg: DictConfig, overrides: Sequence[str], path: str) -> None:
    """Refuses an override that is not key=value, or whose key the config lacks (Detectron2's
    apply_overrides would add it, unread: a typo would be ignored)."""
    parser = OverridesParser.create()
    for line in overrides:
        if "=" not in line:
            raise ValueError(
                f"overrides of a LazyConfig (.py) are key=value, e.g. "
                f"train.max_iter=100; got {line!r}"
            )
        (override,) = parser.parse_overrides([line])
        key = override.key_or_group
        if override.is_add() or _has(cfg, key):
            continue
        # the longest start of the key that the config has, and what it holds
        parent = key
        while parent and not _has(cfg, parent):
            parent = parent.rpartition(".")[0]
        node = OmegaConf.select(cfg, parent) if parent else cfg
        known = sorted(node.keys()) if OmegaConf.is_dict(node) else []
        raise ValueError(
            f"override {line!r}: {key!r} is not a key of {path!r} "
            f"({parent or 'its top level'} has {known}); +{key}=... adds a new key"
        )


def load_lazy_config(path: str, overrides: Sequence[str] = ()) -> DictConfig:
    """The LazyConfig of `path` with the key=value overrides, checked: the keys train_net.py
    reads (REQUIRED_KEYS) exist, and the solver values are sound (solver.check_lazy_solver).
    Raises FileNotFoundError or ValueError naming the file, the override or the key."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config_file {path!r} does not exist")
    cfg = LazyConfig.load(path)
    _check_overrides(cfg, overrides, path)
    cfg = LazyConfig.apply_overrides(cfg, list(overrides))
    missing = [key for key in REQUIRED_KEYS if not _has(cfg, key)]
    if missing:
        raise ValueError(
            f"LazyConfig {path!r} lacks {missing}; train_net.py needs "
            f"{list(REQUIRED_KEYS)} (see configs/common/)"
        )
    check_lazy_solver(cfg)
    return cfg


def dataset_names(cfg: DictConfig) -> Tuple[List[str], List[str]]:
    """The training and test dataset names of the loaders' `dataset.names` (loaders built
    otherwise name none)."""

    def names(key):
        value = OmegaConf.select(cfg, key, default=())
        return [value] if isinstance(value, str) else list(value)

    return names("dataloader.train.dataset.names"), names("dataloader.test.dataset.names")


def num_classes(cfg: DictConfig):
    """The model's class count (model.transformer.num_classes, configs/common/model.py), None
    for a model laid out otherwise."""
    return OmegaConf.select(cfg, LAZY_KEYS.num_classes, default=None)


def do_test(cfg: DictConfig, model) -> Dict:
    """COCO evaluation of the model on dataloader.test, after the checks of its dataset (its
    json once per file version). Returns the evaluator's results: {"bbox": {"AP": ...}}."""
    check_datasets((), dataset_names(cfg)[1], num_classes(cfg), LAZY_KEYS)
    results = inference_on_dataset(
        model, instantiate(cfg.dataloader.test), instantiate(cfg.dataloader.evaluator)
    )
    if comm.is_main_process():
        print_csv_format(results)
    return results


def _described(value) -> str:
    if OmegaConf.is_dict(value) or isinstance(value, dict):
        return f"a dict without '_target_' (keys: {sorted(value.keys())})"
    return f"a {type(value).__module__}.{type(value).__qualname__}"


def build_model(cfg: DictConfig) -> torch.nn.Module:
    """instantiate(cfg.model), with model.class_names set from the training (else test)
    dataset's metadata when the config leaves them None. Raises TypeError when that is not a
    torch module (a plain dict instantiates to itself, which would fail later with omegaconf's
    "Missing key to")."""
    if OmegaConf.select(cfg, "model.class_names", default="") is None:
        train_names, test_names = dataset_names(cfg)
        cfg.model.class_names = dataset_class_names(train_names or test_names, num_classes(cfg))
    model = instantiate(cfg.model)
    if not isinstance(model, torch.nn.Module):
        raise TypeError(
            f"the LazyConfig's `model` must instantiate to a torch.nn.Module: a LazyCall of the "
            f"model's class (e.g. model = L(DeformableDETR)(...), as in configs/common/model.py), "
            f"got {_described(model)}"
        )
    return model


def evaluate(cfg: DictConfig, resume: bool) -> Dict:
    """--eval-only: the model with train.init_checkpoint (or, with resume, the last checkpoint
    of train.output_dir), evaluated by do_test."""
    model = build_model(cfg)
    model.to(cfg.train.device)
    WeightsCheckpointer(model, save_dir=cfg.train.output_dir).resume_or_load(
        cfg.train.init_checkpoint, resume=resume
    )
    return do_test(cfg, model)


def do_train(cfg: DictConfig, resume: bool) -> None:
    """Trains to train.max_iter with Detectron2's SimpleTrainer (with train.amp.enabled,
    engine.AutocastTrainer in train.amp.precision) and the hooks of its DefaultTrainer: iteration
    timer, learning-rate schedule, periodic checkpoints, periodic and final evaluation, metric
    writers."""
    check_datasets(*dataset_names(cfg), num_classes(cfg), LAZY_KEYS)
    model = build_model(cfg)
    logger.info(f"Model:\n{model}")
    model.to(cfg.train.device)
    cfg.optimizer.params.model = model
    optimizer = instantiate(cfg.optimizer)
    train_loader = instantiate(cfg.dataloader.train)
    model = wrap_distributed(model, **cfg.train.ddp)
    # Detectron2's LazyConfigs have no train.amp.precision: AMPTrainer's float16 then
    precision = OmegaConf.select(cfg, "train.amp.precision", default="float16")
    trainer = make_trainer(
        model, train_loader, optimizer, amp=cfg.train.amp.enabled, precision=precision
    )
    checkpointer = WeightsCheckpointer(model, cfg.train.output_dir, trainer=trainer)
    main = comm.is_main_process()
    trainer.register_hooks(
        [
            hooks.IterationTimer(),
            hooks.LRScheduler(scheduler=instantiate(cfg.lr_multiplier)),
            hooks.PeriodicCheckpointer(checkpointer, **cfg.train.checkpointer) if main else None,
            hooks.EvalHook(cfg.train.eval_period, lambda: do_test(cfg, model)),
            hooks.PeriodicWriter(
                default_writers(cfg.train.output_dir, cfg.train.max_iter),
                period=cfg.train.log_period,
            )
            if main
            else None,
        ]
    )
    checkpointer.resume_or_load(cfg.train.init_checkpoint, resume=resume)
    # a checkpoint holds the iteration it finished
    start_iter = trainer.iter + 1 if resume and checkpointer.has_checkpoint() else 0
    trainer.train(start_iter, cfg.train.max_iter)
