"""Data: DETR's augmentation, the dataset mapper and image reading, the built-in synthetic shapes
dataset, your own COCO files from the command line, and the start-up checks of datasets."""

from .augmentation import (
    RandomChoice,
    build_detr_augmentation,
    detr_test_augmentation,
    detr_train_augmentation,
)
from .dataset_checks import check_datasets, check_num_classes
from .mapper import DetrDatasetMapper, read_image
from .shapes import register_shapes_datasets
from .user_datasets import add_coco_dataset_argument, register_coco_datasets

__all__ = [
    "DetrDatasetMapper",
    "RandomChoice",
    "add_coco_dataset_argument",
    "build_detr_augmentation",
    "check_datasets",
    "check_num_classes",
    "detr_test_augmentation",
    "detr_train_augmentation",
    "read_image",
    "register_coco_datasets",
    "register_shapes_datasets",
]
