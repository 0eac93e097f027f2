"""Shared by the LazyConfig tests: loading a config of configs/, a quick run of the quickstart's
twin, and describing an augmentation."""

import os

from detectron2.data import transforms as T

from deformable_detr.lazy_engine import load_lazy_config
from repo_paths import CONFIG_DIR

QUICKSTART_PY = os.path.join(CONFIG_DIR, "quickstart.py")
SMALL_VAL = "ddetr_shapes_val_4"  # the conftest's shapes_val_subset(4)
# overrides of QUICKSTART_PY for a quick run: 2 iterations of 2 images, evaluated on the 4 images
# of SMALL_VAL
QUICK_RUN = [
    "train.max_iter=2",
    "lr_multiplier.scheduler.milestones=[1]",
    "dataloader.train.total_batch_size=2",
    "dataloader.train.num_workers=0",
    f"dataloader.test.dataset.names={SMALL_VAL}",
    "dataloader.test.num_workers=0",
]


def lazy_cfg(name, overrides=()):
    """configs/<name> through load_lazy_config, with the checked overrides."""
    return load_lazy_config(os.path.join(CONFIG_DIR, name), overrides)


def describe_augmentation(aug):
    """An augmentation as nested (type, its settings), comparable across instances."""
    if isinstance(aug, T.AugmentationList):
        return [describe_augmentation(a) for a in aug.augs]
    if hasattr(aug, "choices"):
        return (type(aug).__name__, [describe_augmentation(c) for c in aug.choices])
    return (
        type(aug).__name__,
        {k: list(v) if isinstance(v, (list, tuple)) else v for k, v in vars(aug).items()},
    )
