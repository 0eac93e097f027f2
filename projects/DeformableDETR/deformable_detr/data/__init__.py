"""Data: DETR's augmentation, the dataset mapper and image reading, the built-in synthetic shapes
dataset, and the start-up checks of datasets."""

from .augmentation import (
    RandomChoice,
    build_detr_augmentation,
    detr_test_augmentation,
    detr_train_augmentation,
)
from .dataset_checks import check_datasets, check_num_classes
from .mapper import DetrDatasetMapper, read_image
from .shapes import register_shapes_datasets

__all__ = [
    "DetrDatasetMapper",
    "RandomChoice",
    "build_detr_augmentation",
    "check_datasets",
    "check_num_classes",
    "detr_test_augmentation",
    "detr_train_augmentation",
    "read_image",
    "register_shapes_datasets",
]
