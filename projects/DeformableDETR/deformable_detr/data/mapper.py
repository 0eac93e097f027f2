"""Detectron2's DatasetMapper with DETR's augmentation, and clear handling of bad inputs.

- A missing image file is an error that names it (usually a wrong image root).
- Images are read by read_image: Detectron2's, through image_file.open_image (16-bit grayscale
  scaled to 8 bits, not clipped to white).
- An image that cannot be decoded is, in training, skipped with a warning that counts them: the
  mapper returns None and Detectron2's dataset wrapper draws another sample. In evaluation it is
  an error naming the file: a replacement would count another image's predictions twice. When
  no image of a training set can be read, the loader says so (NamedUnreadableDataset).
- Only reading the image is guarded: any other error (a config error, a bug) propagates.
- Malformed boxes (not 4 finite numbers, width or height <= 0 in their own bbox_mode) are
  dropped before any transform, never rewritten: Detectron2's transform_instance_annotations
  would turn XYWH [50, 10, -20, 20] into [30, 10, 50, 30] and clip an infinite side to the edge.
- Boxes that are empty or outside the image after augmentation are dropped (Detectron2's
  filter_empty_instances). Every dropped box is counted, per reason, in a periodic warning.
- Images without objects are kept (they teach the model to predict nothing).

Image: (3, H, W) uint8 in the mapper's image format (INPUT.FORMAT). Boxes: (4,) per annotation,
in its bbox_mode.
"""

import collections
import copy
import logging
import math
import numbers
import os

import numpy as np
import torch
from detectron2.config import configurable
from detectron2.data import DatasetMapper
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from detectron2.structures import BoxMode
from detectron2.utils.logger import log_every_n_seconds

from .augmentation import build_detr_augmentation, check_image_format
from .image_file import READ_ERRORS, open_image

__all__ = ["DetrDatasetMapper", "NamedUnreadableDataset", "read_image"]

logger = logging.getLogger(__name__)

NOT_FOUR_FINITE = "not 4 finite numbers"
NOT_POSITIVE = "width or height <= 0"
EMPTY_AFTER_AUG = "empty or outside the image after augmentation"
# random.sample's error, which Detectron2's MapDataset raises when every index it could draw has
# failed in the mapper; in a loader worker it is re-raised inside another ValueError's message
NO_SAMPLE_LEFT = "Sample larger than population"


def read_image(file_name: str, format: str = None) -> np.ndarray:
    """Detectron2's read_image: (H, W, C) uint8 in `format` (one of IMAGE_FORMATS; None: the
    file's own mode), through image_file.open_image, which scales 16-bit grayscale to 8 bits
    where Detectron2's clips it. Raises one of READ_ERRORS for a file that cannot be read."""
    return utils.convert_PIL_to_numpy(open_image(file_name), format)


class NamedUnreadableDataset:
    """A training loader over DetrDatasetMapper, iterated as it is, except that when the mapper
    has skipped every image of the dataset as unreadable (Detectron2's MapDataset then fails
    with random.sample's "Sample larger than population"), the error says so."""

    def __init__(self, loader):
        self.loader = loader

    def __iter__(self):
        try:
            yield from self.loader
        except ValueError as e:
            if NO_SAMPLE_LEFT not in str(e):
                raise
            raise ValueError(
                "no image of the training set can be read: the data mapper skipped each one it "
                "was given (the 'skipping image' warnings above name the files and why) until "
                "Detectron2's MapDataset had none left to draw; check that the files are "
                "images PIL can open (e.g. not truncated, not HEIC)"
            ) from e


def _box_problem(anno) -> str:
    """Why the annotation's box is malformed (one of the reasons above), or "" if it is not."""
    box = anno.get("bbox")
    if (
        not isinstance(box, (list, tuple, np.ndarray))
        or len(box) != 4
        or not all(
            isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)
            for v in box
        )
    ):
        return NOT_FOUR_FINITE
    mode = BoxMode(anno["bbox_mode"])
    if mode == BoxMode.XYWH_ABS:
        w, h = box[2], box[3]
    elif mode == BoxMode.XYXY_ABS:
        w, h = box[2] - box[0], box[3] - box[1]
    else:  # relative and rotated modes: Detectron2's transforms do not support them either
        raise ValueError(
            f"annotation bbox_mode must be BoxMode.XYWH_ABS or XYXY_ABS, got {mode!r}"
            f" (annotation {anno.get('id', '')!r})"
        )
    return NOT_POSITIVE if w <= 0 or h <= 0 else ""


class DetrDatasetMapper(DatasetMapper):
    """A DatasetMapper built as `DetrDatasetMapper(cfg, is_train)` (DETR's augmentation from
    cfg.INPUT) or, as Detectron2's, from arguments: `DetrDatasetMapper(is_train,
    augmentations=detr_train_augmentation(...), image_format="RGB")`. Returns Detectron2's dict
    with "image" (3, H, W) uint8 in the image format and, in training, "instances" (gt_boxes,
    gt_classes). Counts (per worker process) what it drops: `dropped` (boxes, per reason),
    `skipped_images`."""

    @configurable
    def __init__(self, is_train: bool = True, *, augmentations, image_format: str, **kwargs):
        """
        Args:
            is_train, augmentations, kwargs: as Detectron2's DatasetMapper.
            image_format: one of IMAGE_FORMATS, checked here.
        """
        check_image_format(image_format, "image_format")
        super().__init__(is_train, augmentations=augmentations, image_format=image_format, **kwargs)
        self.dropped = collections.Counter()
        self.skipped_images = 0

    @classmethod
    def from_config(cls, cfg, is_train: bool = True):
        # the INPUT keys are checked (by build_detr_augmentation) before Detectron2 reads them
        augmentations = build_detr_augmentation(cfg, is_train)
        return {**super().from_config(cfg, is_train), "augmentations": augmentations}

    @property
    def dropped_boxes(self) -> int:
        return sum(self.dropped.values())

    def dropped_summary(self) -> str:
        """The periodic warning's text: how many boxes were dropped so far, for which reason."""
        reasons = ", ".join(f"{n} {reason}" for reason, n in sorted(self.dropped.items()) if n)
        return f"{self.dropped_boxes} boxes dropped so far ({reasons})"

    def __call__(self, dataset_dict):
        # DatasetMapper.__call__ minus semantic segmentation and proposals (DETR uses neither),
        # so that the reading of the image alone is guarded
        path = dataset_dict["file_name"]
        if not os.path.exists(path):
            raise FileNotFoundError(f"image {path!r} of the dataset does not exist")
        try:
            image = read_image(path, format=self.image_format)
        except READ_ERRORS as e:
            if not self.is_train:
                raise ValueError(
                    f"image {path!r} cannot be read ({e}); evaluation does not skip images, "
                    f"since another image drawn in its place would be counted twice: repair "
                    f"the file or remove it from the dataset"
                ) from e
            self.skipped_images += 1
            logger.warning(
                f"skipping image {path!r}, which cannot be read ({e}); "
                f"{self.skipped_images} images skipped so far"
            )
            return None
        dataset_dict = copy.deepcopy(dataset_dict)  # the caller's dict stays as it was
        utils.check_image_size(dataset_dict, image)
        aug_input = T.AugInput(image)
        transforms = self.augmentations(aug_input)
        image = aug_input.image
        dataset_dict["image"] = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        annotations = dataset_dict.pop("annotations", None)
        if self.is_train and annotations is not None:
            self._map_annotations(dataset_dict, annotations, transforms, image.shape[:2])
        return dataset_dict

    def _map_annotations(self, dataset_dict, annotations, transforms, image_shape):
        """Drops malformed boxes, then has Detectron2 transform the rest into "instances"."""
        # crowd regions are left out by Detectron2 without being transformed
        objects = [a for a in annotations if a.get("iscrowd", 0) == 0]
        problems = [_box_problem(a) for a in objects]
        self.dropped.update(p for p in problems if p)
        kept = [a for a, p in zip(objects, problems) if not p]
        dataset_dict["annotations"] = kept
        self._transform_annotations(dataset_dict, transforms, image_shape)
        self.dropped[EMPTY_AFTER_AUG] += len(kept) - len(dataset_dict["instances"])
        if self.dropped_boxes:
            last = dataset_dict["file_name"]
            log_every_n_seconds(
                logging.WARNING,
                f"{self.dropped_summary()}; last image {last!r}",
                n=60,
                name=__name__,
            )
