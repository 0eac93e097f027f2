"""Data: DETR's augmentation, the dataset mapper, and the built-in synthetic shapes dataset."""

from .augmentation import (
    RandomChoice,
    build_detr_augmentation,
    detr_test_augmentation,
    detr_train_augmentation,
)
from .mapper import DetrDatasetMapper
from .shapes import register_shapes_datasets

__all__ = [
    "DetrDatasetMapper",
    "RandomChoice",
    "build_detr_augmentation",
    "detr_test_augmentation",
    "detr_train_augmentation",
    "register_shapes_datasets",
]
