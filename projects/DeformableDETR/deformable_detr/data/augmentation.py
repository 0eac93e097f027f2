"""DETR's data augmentation for Detectron2's DatasetMapper, built from config keys
(build_detr_augmentation) or from plain arguments (detr_train_augmentation,
detr_test_augmentation, e.g. in a LazyConfig).

Training: horizontal flip; then, with probability 1/2 each, either a multi-scale resize, or a
resize to one of INPUT.RESIZE_BEFORE_CROP, a random crop (INPUT.CROP) and the multi-scale resize.
Test: a single resize (INPUT.MIN_SIZE_TEST / MAX_SIZE_TEST).
Resizes round as the release does (DetrResize), so that the same image gets the same size.
The INPUT keys (or the arguments) are checked once, here: a bad size is a config error naming the
key (or the argument), never an error blamed on the images later.
"""

import collections.abc
import functools
import numbers
import sys
from typing import Callable, Dict, List, Sequence, Tuple

import numpy as np
from detectron2.data import transforms as T
from PIL import Image

__all__ = [
    "DetrResize",
    "IMAGE_FORMATS",
    "RandomChoice",
    "build_detr_augmentation",
    "check_image_format",
    "check_input_config",
    "detr_resized_size",
    "detr_test_augmentation",
    "detr_train_augmentation",
]

IMAGE_FORMATS = ("RGB", "BGR", "L", "YUV-BT.601")
FLIPS = ("none", "horizontal", "vertical")
# argument of detr_train_augmentation / detr_test_augmentation -> the INPUT key the YAML path
# reads it from
_TRAIN_KEYS = {
    "min_size": "MIN_SIZE_TRAIN",
    "max_size": "MAX_SIZE_TRAIN",
    "random_flip": "RANDOM_FLIP",
    "crop": "CROP.ENABLED",
    "resize_before_crop": "RESIZE_BEFORE_CROP",
    "crop_type": "CROP.TYPE",
    "crop_size": "CROP.SIZE",
}
_TEST_KEYS = {"min_size": "MIN_SIZE_TEST", "max_size": "MAX_SIZE_TEST"}


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


def _is_pair(v) -> bool:
    # a LazyConfig passes lists as omegaconf ListConfig, a Sequence but no list
    return isinstance(v, collections.abc.Sequence) and not isinstance(v, str) and len(v) == 2


def _require(ok: bool, name: str, expected: str, got) -> None:
    if not ok:
        raise ValueError(f"{name} must be {expected}, got {got!r}")


def check_image_format(image_format, name: str) -> None:
    """Detectron2's read_image converts to these; any other name fails in PIL for every image,
    which the training mapper would take for unreadable images and skip them all."""
    _require(image_format in IMAGE_FORMATS, name, f"one of {IMAGE_FORMATS}", image_format)


def _check_sizes(name: str, sizes) -> None:
    _require(
        isinstance(sizes, collections.abc.Sequence)
        and not isinstance(sizes, str)
        and len(sizes) > 0
        and all(_is_positive_int(s) for s in sizes),
        name,
        "a non-empty list of positive ints (shorter-side lengths in pixels)",
        sizes,
    )


def _check_crop(name: Callable[[str], str], crop_type, crop_size) -> None:
    """The rules of Detectron2's RandomCrop for each type, which it checks only while cropping
    (an image smaller than the crop fails with "Shape computation in RandomCrop has bugs")."""
    types = ("relative_range", "relative", "absolute", "absolute_range")
    _require(crop_type in types, name("crop_type"), f"one of {types}", crop_type)
    size_name = name("crop_size")
    _require(_is_pair(crop_size), size_name, "2 numbers", crop_size)
    if crop_type.startswith("relative"):
        # relative_range draws each fraction from [size[i], 1]: above 1 the crop outgrows the image
        _require(
            all(_is_fraction(s) for s in crop_size),
            size_name,
            f"2 fractions of the image's (height, width) in (0, 1] for {name('crop_type')} "
            f"{crop_type!r} (pixel sizes need 'absolute' or 'absolute_range')",
            crop_size,
        )
    elif crop_type == "absolute":
        _require(
            all(_is_positive_int(s) for s in crop_size),
            size_name,
            f"2 positive ints, the crop's (height, width) in pixels, for {name('crop_type')} "
            f"'absolute'",
            crop_size,
        )
    else:
        _require(
            all(_is_positive_int(s) for s in crop_size) and crop_size[0] <= crop_size[1],
            size_name,
            f"2 positive ints (low, high) with low <= high, the range in pixels "
            f"of the crop's height and width, for {name('crop_type')} 'absolute_range'",
            crop_size,
        )


def _check_train(
    name: Callable[[str], str],
    *,
    min_size,
    max_size,
    random_flip,
    crop,
    resize_before_crop,
    crop_type,
    crop_size,
) -> None:
    """Raises ValueError naming (by name(argument)) the first wrong argument of
    detr_train_augmentation."""
    _check_sizes(name("min_size"), min_size)
    _require(_is_positive_int(max_size), name("max_size"), "a positive int", max_size)
    _require(random_flip in FLIPS, name("random_flip"), f"one of {FLIPS}", random_flip)
    if crop:
        _check_sizes(name("resize_before_crop"), resize_before_crop)
        _check_crop(name, crop_type, crop_size)


def _check_test(name: Callable[[str], str], *, min_size, max_size) -> None:
    _require(_is_positive_int(min_size), name("min_size"), "a positive int", min_size)
    _require(_is_positive_int(max_size), name("max_size"), "a positive int", max_size)


def _train_augmentation(
    *, min_size, max_size, random_flip, crop, resize_before_crop, crop_type, crop_size
) -> List[T.Augmentation]:
    resize = DetrResize(min_size, max_size)
    augs = []
    if random_flip != "none":
        augs.append(
            T.RandomFlip(horizontal=random_flip == "horizontal", vertical=random_flip == "vertical")
        )
    if not crop:
        return augs + [resize]
    crop_branch = [DetrResize(resize_before_crop), T.RandomCrop(crop_type, list(crop_size)), resize]
    return augs + [RandomChoice([[resize], crop_branch])]


def _test_augmentation(*, min_size, max_size) -> List[T.Augmentation]:
    return [DetrResize([min_size], max_size)]


def detr_train_augmentation(
    *,
    min_size: Sequence[int],
    max_size: int,
    random_flip: str,
    crop: bool,
    resize_before_crop: Sequence[int],
    crop_type: str,
    crop_size: Sequence,
) -> List[T.Augmentation]:
    """The training augmentation (see the module docstring) from plain arguments, each the INPUT
    key of _TRAIN_KEYS (e.g. in a LazyConfig). Raises ValueError naming a wrong argument."""
    args = dict(
        min_size=min_size,
        max_size=max_size,
        random_flip=random_flip,
        crop=crop,
        resize_before_crop=resize_before_crop,
        crop_type=crop_type,
        crop_size=crop_size,
    )
    _check_train(str, **args)
    return _train_augmentation(**args)


def detr_test_augmentation(*, min_size: int, max_size: int) -> List[T.Augmentation]:
    """The test resize from plain arguments (INPUT.MIN_SIZE_TEST, MAX_SIZE_TEST). Raises
    ValueError naming a wrong argument."""
    _check_test(str, min_size=min_size, max_size=max_size)
    return _test_augmentation(min_size=min_size, max_size=max_size)


def _input_args(cfg, is_train: bool) -> Dict[str, object]:
    """The explicit builders' arguments, read from cfg.INPUT."""
    keys = _TRAIN_KEYS if is_train else _TEST_KEYS
    return {arg: functools.reduce(getattr, key.split("."), cfg.INPUT) for arg, key in keys.items()}


def check_input_config(cfg, is_train: bool) -> None:
    """Raises ValueError naming the first INPUT key (of those the augmentation uses) that is
    wrong, with what it must be and what it is."""
    inp = cfg.INPUT
    check_image_format(inp.FORMAT, "INPUT.FORMAT")
    if is_train:
        _require(
            inp.MIN_SIZE_TRAIN_SAMPLING == "choice",
            "INPUT.MIN_SIZE_TRAIN_SAMPLING",
            "'choice' (DETR's augmentation picks sizes from a list)",
            inp.MIN_SIZE_TRAIN_SAMPLING,
        )
    keys = _TRAIN_KEYS if is_train else _TEST_KEYS
    (_check_train if is_train else _check_test)(
        lambda arg: "INPUT." + keys[arg], **_input_args(cfg, is_train)
    )


def build_detr_augmentation(cfg, is_train: bool) -> List[T.Augmentation]:
    """The augmentations of the released models (see the module docstring), from cfg.INPUT."""
    check_input_config(cfg, is_train)
    build = _train_augmentation if is_train else _test_augmentation
    return build(**_input_args(cfg, is_train))
