"""DETR's data augmentation, built from config keys, for Detectron2's DatasetMapper.

Training: horizontal flip; then, with probability 1/2 each, either a multi-scale resize, or a
resize to one of INPUT.RESIZE_BEFORE_CROP, a random crop (INPUT.CROP) and the multi-scale resize.
Test: a single resize (INPUT.MIN_SIZE_TEST / MAX_SIZE_TEST).
Resizes round as the release does (DetrResize), so that the same image gets the same size.
"""
import sys
from typing import List, Sequence, Tuple

import numpy as np
from detectron2.data import transforms as T
from PIL import Image

__all__ = ["DetrResize", "RandomChoice", "build_detr_augmentation", "detr_resized_size"]


def detr_resized_size(h: int, w: int, short: int, max_size: int) -> Tuple[int, int]:
    """(new_h, new_w): the shorter side becomes `short`, unless the longer would then exceed
    max_size, in which case the longer becomes max_size. Unlike Detectron2's ResizeShortestEdge
    (which rounds), the longer side is truncated, as in the released code: a 640x480 image
    becomes 1066x800, not 1067x800."""
    lo, hi = float(min(h, w)), float(max(h, w))
    if hi / lo * short > max_size:
        short = int(round(max_size * lo / hi))
    if min(h, w) == short:
        return h, w
    if w < h:
        return int(short * h / w), short
    return short, int(short * w / h)


class DetrResize(T.Augmentation):
    """Resizes the shorter side to one of short_edge_lengths (chosen at random), the longer to at
    most max_size, with the released rounding (see detr_resized_size); bilinear."""

    def __init__(self, short_edge_lengths: Sequence[int], max_size: int = sys.maxsize):
        super().__init__()
        self.short_edge_lengths = list(short_edge_lengths)
        self.max_size = max_size

    def get_transform(self, image):
        h, w = image.shape[:2]
        short = int(np.random.choice(self.short_edge_lengths))
        new_h, new_w = detr_resized_size(h, w, short, self.max_size)
        return T.ResizeTransform(h, w, new_h, new_w, Image.BILINEAR)


class RandomChoice(T.Augmentation):
    """Applies one of several augmentation lists, chosen uniformly at random."""

    def __init__(self, choices: Sequence[Sequence[T.Augmentation]]):
        super().__init__()
        if not choices:
            raise ValueError("RandomChoice needs at least one list of augmentations")
        self.choices = [T.AugmentationList(list(c)) for c in choices]

    def __call__(self, aug_input) -> T.Transform:
        # np.random, as Detectron2's own augmentations use, so seeding works the same way
        return self.choices[np.random.randint(len(self.choices))](aug_input)

    def __repr__(self):
        return f"RandomChoice({self.choices})"


def build_detr_augmentation(cfg, is_train: bool) -> List[T.Augmentation]:
    """The augmentations of the released models (see the module docstring)."""
    if not is_train:
        return [DetrResize([cfg.INPUT.MIN_SIZE_TEST], cfg.INPUT.MAX_SIZE_TEST)]
    if cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING != "choice":
        raise ValueError("DETR's augmentation picks sizes from a list: INPUT.MIN_SIZE_TRAIN_SAMPLING"
                         f" must be 'choice', got {cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING!r}")
    resize = DetrResize(cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN)
    augs = []
    if cfg.INPUT.RANDOM_FLIP != "none":
        augs.append(T.RandomFlip(horizontal=cfg.INPUT.RANDOM_FLIP == "horizontal",
                                 vertical=cfg.INPUT.RANDOM_FLIP == "vertical"))
    if not cfg.INPUT.CROP.ENABLED:
        return augs + [resize]
    crop_branch = [
        DetrResize(cfg.INPUT.RESIZE_BEFORE_CROP),
        T.RandomCrop(cfg.INPUT.CROP.TYPE, cfg.INPUT.CROP.SIZE),
        resize,
    ]
    return augs + [RandomChoice([[resize], crop_branch])]
