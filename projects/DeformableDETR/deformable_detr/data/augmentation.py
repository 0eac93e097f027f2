"""DETR's data augmentation, built from config keys, for Detectron2's DatasetMapper.

Training: horizontal flip; then, with probability 1/2 each, either a multi-scale resize, or a
resize to one of INPUT.RESIZE_BEFORE_CROP, a random crop (INPUT.CROP) and the multi-scale resize.
Test: a single resize (INPUT.MIN_SIZE_TEST / MAX_SIZE_TEST).
Resizes round as the release does (DetrResize), so that the same image gets the same size.
The INPUT keys are checked once, here: a bad size is a config error naming the key, never an
error blamed on the images later.
"""
import numbers
import sys
from typing import List, Sequence, Tuple

import numpy as np
from detectron2.data import transforms as T
from PIL import Image

__all__ = ["DetrResize", "RandomChoice", "build_detr_augmentation", "check_input_config",
           "detr_resized_size"]


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


def _is_positive_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool) and v > 0


def _is_fraction(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and 0 < v <= 1


def _require(ok: bool, key: str, expected: str, got) -> None:
    if not ok:
        raise ValueError(f"INPUT.{key} must be {expected}, got {got!r}")


def _check_sizes(key: str, sizes) -> None:
    _require(isinstance(sizes, (list, tuple)) and len(sizes) > 0
             and all(_is_positive_int(s) for s in sizes),
             key, "a non-empty list of positive ints (shorter-side lengths in pixels)", sizes)


def _check_crop(crop) -> None:
    """The rules of Detectron2's RandomCrop for each type, which it checks only while cropping
    (an image smaller than the crop fails with "Shape computation in RandomCrop has bugs")."""
    types = ("relative_range", "relative", "absolute", "absolute_range")
    _require(crop.TYPE in types, "CROP.TYPE", f"one of {types}", crop.TYPE)
    size = crop.SIZE
    _require(isinstance(size, (list, tuple)) and len(size) == 2, "CROP.SIZE", "2 numbers", size)
    if crop.TYPE.startswith("relative"):
        # relative_range draws each fraction from [SIZE[i], 1]: above 1 the crop outgrows the image
        _require(all(_is_fraction(s) for s in size), "CROP.SIZE",
                 f"2 fractions of the image's (height, width) in (0, 1] for CROP.TYPE "
                 f"{crop.TYPE!r} (pixel sizes need CROP.TYPE 'absolute' or 'absolute_range')", size)
    elif crop.TYPE == "absolute":
        _require(all(_is_positive_int(s) for s in size), "CROP.SIZE",
                 "2 positive ints, the crop's (height, width) in pixels, for CROP.TYPE 'absolute'",
                 size)
    else:
        _require(all(_is_positive_int(s) for s in size) and size[0] <= size[1], "CROP.SIZE",
                 "2 positive ints (low, high) with low <= high, the range in pixels of the crop's "
                 "height and width, for CROP.TYPE 'absolute_range'", size)


def check_input_config(cfg, is_train: bool) -> None:
    """Raises ValueError naming the first INPUT key (of those the augmentation uses) that is
    wrong, with what it must be and what it is."""
    inp = cfg.INPUT
    # Detectron2's read_image converts to these; any other name fails in PIL for every image,
    # which the training mapper would take for unreadable images and skip them all
    formats = ("RGB", "BGR", "L", "YUV-BT.601")
    _require(inp.FORMAT in formats, "FORMAT", f"one of {formats}", inp.FORMAT)
    if not is_train:
        _require(_is_positive_int(inp.MIN_SIZE_TEST), "MIN_SIZE_TEST", "a positive int",
                 inp.MIN_SIZE_TEST)
        _require(_is_positive_int(inp.MAX_SIZE_TEST), "MAX_SIZE_TEST", "a positive int",
                 inp.MAX_SIZE_TEST)
        return
    _require(inp.MIN_SIZE_TRAIN_SAMPLING == "choice", "MIN_SIZE_TRAIN_SAMPLING",
             "'choice' (DETR's augmentation picks sizes from a list)", inp.MIN_SIZE_TRAIN_SAMPLING)
    _check_sizes("MIN_SIZE_TRAIN", inp.MIN_SIZE_TRAIN)
    _require(_is_positive_int(inp.MAX_SIZE_TRAIN), "MAX_SIZE_TRAIN", "a positive int",
             inp.MAX_SIZE_TRAIN)
    flips = ("none", "horizontal", "vertical")
    _require(inp.RANDOM_FLIP in flips, "RANDOM_FLIP", f"one of {flips}", inp.RANDOM_FLIP)
    if inp.CROP.ENABLED:
        _check_sizes("RESIZE_BEFORE_CROP", inp.RESIZE_BEFORE_CROP)
        _check_crop(inp.CROP)


def build_detr_augmentation(cfg, is_train: bool) -> List[T.Augmentation]:
    """The augmentations of the released models (see the module docstring)."""
    check_input_config(cfg, is_train)
    if not is_train:
        return [DetrResize([cfg.INPUT.MIN_SIZE_TEST], cfg.INPUT.MAX_SIZE_TEST)]
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
