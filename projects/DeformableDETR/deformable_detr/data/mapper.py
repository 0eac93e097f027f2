"""Detectron2's DatasetMapper with DETR's augmentation, and clear handling of bad inputs.

- A missing image file is an error that names it (usually a wrong image root).
- An image that cannot be decoded is skipped with a warning: the mapper returns None and
  Detectron2's dataset wrapper draws another sample.
- Boxes of zero size, or outside the image after clipping, are dropped (Detectron2's
  filter_empty_instances) and counted in a periodic warning.
- Images without objects are kept (they teach the model to predict nothing).
"""
import logging
import os

from detectron2.data import DatasetMapper
from detectron2.utils.logger import log_every_n_seconds

from .augmentation import build_detr_augmentation

__all__ = ["DetrDatasetMapper"]

logger = logging.getLogger(__name__)


class DetrDatasetMapper(DatasetMapper):
    """A DatasetMapper built as `DetrDatasetMapper(cfg, is_train)`: returns Detectron2's dict with
    "image" (3, H, W) uint8 in cfg.INPUT.FORMAT and, in training, "instances" (gt_boxes,
    gt_classes)."""

    def __init__(self, cfg, is_train: bool = True):
        super().__init__(cfg, is_train, augmentations=build_detr_augmentation(cfg, is_train))
        self.dropped_boxes = 0

    def __call__(self, dataset_dict):
        path = dataset_dict["file_name"]
        if not os.path.exists(path):
            raise FileNotFoundError(f"image {path!r} of the dataset does not exist")
        try:
            out = super().__call__(dataset_dict)
        except (OSError, ValueError, SyntaxError) as e:  # what PIL raises for broken files
            logger.warning(f"skipping image {path!r}, which cannot be read: {e}")
            return None
        if self.is_train and "annotations" in dataset_dict:
            given = sum(1 for a in dataset_dict["annotations"] if a.get("iscrowd", 0) == 0)
            self.dropped_boxes += given - len(out["instances"])
            if self.dropped_boxes:
                log_every_n_seconds(
                    logging.WARNING,
                    f"{self.dropped_boxes} boxes dropped so far for zero size or lying outside "
                    f"the image after augmentation (last: {path!r})", n=60, name=__name__)
        return out
