"""Shared by the LazyConfig tests: loading a config of configs/ and describing an augmentation."""

import os

from detectron2.data import transforms as T

from deformable_detr.lazy_engine import load_lazy_config
from repo_paths import CONFIG_DIR


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
