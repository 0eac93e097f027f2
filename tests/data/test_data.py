"""The data path: the built-in dataset, DETR's augmentation and resize rounding, and bad inputs
(missing or corrupt images, zero-size and out-of-image boxes, unknown datasets and keys)."""

import copy
import json
import logging
import os

import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode

from deformable_detr.data import DetrDatasetMapper, build_detr_augmentation
from deformable_detr.data.augmentation import RandomChoice, detr_resized_size
from deformable_detr.data.shapes import SHAPE_CLASSES, SPLITS


def test_builtin_dataset_files_and_registration(shapes_root):
    for name, (num_images, _) in SPLITS.items():
        dicts = DatasetCatalog.get(name)
        assert len(dicts) == num_images
        assert all(os.path.exists(d["file_name"]) for d in dicts[:20])
        meta = MetadataCatalog.get(name)
        assert meta.thing_classes == list(SHAPE_CLASSES)
        assert os.path.exists(meta.json_file)  # what COCOEvaluator reads
    train = DatasetCatalog.get("ddetr_shapes_train")
    counts = np.bincount([a["category_id"] for d in train for a in d["annotations"]])
    assert len(counts) == len(SHAPE_CLASSES) and counts.min() > 0.2 * counts.sum() / 3


def test_builtin_dataset_is_deterministic_and_cached(shapes_root, tmp_path):
    from deformable_detr.data.shapes import generate_shapes_split

    generate_shapes_split(str(tmp_path / "a"), 5, seed=1)
    generate_shapes_split(str(tmp_path / "b"), 5, seed=1)
    a = json.load(open(tmp_path / "a" / "annotations.json"))
    b = json.load(open(tmp_path / "b" / "annotations.json"))
    assert a == b
    # the registered val split is the same generator with the same seed
    val = json.load(open(os.path.join(shapes_root, "ddetr_shapes_val", "annotations.json")))
    assert val["annotations"][: len(a["annotations"])] == a["annotations"]


@pytest.mark.parametrize(
    "h,w,short,max_size,expected",
    [
        (480, 640, 800, 1333, (800, 1066)),  # Detectron2's rounding would give 1067
        (375, 500, 800, 1333, (800, 1066)),
        (426, 640, 800, 1333, (800, 1201)),
        (100, 1000, 800, 1333, (133, 1330)),  # the longer side caps the size
        (800, 600, 800, 1333, (1066, 800)),
        (600, 800, 600, 1333, (600, 800)),  # already the size: unchanged
    ],
)
def test_resize_rounds_as_released(h, w, short, max_size, expected):
    assert detr_resized_size(h, w, short, max_size) == expected


def test_training_augmentation_is_flip_then_one_of_two_branches(quick_cfg):
    cfg = quick_cfg(["INPUT.CROP.ENABLED", "True"])
    augs = build_detr_augmentation(cfg, is_train=True)
    assert type(augs[0]).__name__ == "RandomFlip" and isinstance(augs[1], RandomChoice)
    np.random.seed(0)
    image = np.zeros((480, 640, 3), np.uint8)
    from detectron2.data import transforms as T

    shapes = set()
    for _ in range(40):
        inp = T.AugInput(image.copy())
        T.AugmentationList(augs)(inp)
        shapes.add(inp.image.shape[:2])
    assert len(shapes) > 2  # both branches, several sizes


def _mapper_input(shapes_root, **changes):
    d = copy.deepcopy(DatasetCatalog.get("ddetr_shapes_val")[0])
    d.update(changes)
    return d


def test_missing_image_is_an_error_naming_it(shapes_root, tmp_path, quick_cfg):
    mapper = DetrDatasetMapper(quick_cfg(), True)
    with pytest.raises(FileNotFoundError, match="nope.jpg"):
        mapper(_mapper_input(shapes_root, file_name=str(tmp_path / "nope.jpg")))


def test_corrupt_image_is_skipped_with_a_warning(shapes_root, tmp_path, quick_cfg, caplog):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"this is not a jpeg")
    mapper = DetrDatasetMapper(quick_cfg(), True)
    with caplog.at_level(logging.WARNING):
        assert mapper(_mapper_input(shapes_root, file_name=str(bad))) is None
    assert "bad.jpg" in caplog.text and "cannot be read" in caplog.text


def test_zero_size_and_outside_boxes_are_dropped_and_counted(shapes_root, quick_cfg):
    d = _mapper_input(shapes_root)
    good = d["annotations"][0]
    d["annotations"] = [
        good,
        {**good, "bbox": [10, 10, 0, 5]},  # zero width
        {**good, "bbox": [500, 500, 20, 20]},  # outside the 160x128 image
    ]
    cfg = quick_cfg(["INPUT.RANDOM_FLIP", "none"])
    mapper = DetrDatasetMapper(cfg, True)
    out = mapper(d)
    assert len(out["instances"]) == 1
    assert mapper.dropped_boxes == 2
    assert good["bbox_mode"] == BoxMode.XYWH_ABS


def test_unknown_dataset_and_config_key_are_clear_errors(shapes_root, quick_cfg):
    with pytest.raises(KeyError, match="no_such_dataset"):
        DatasetCatalog.get("no_such_dataset")
    # yacs names the key: an AssertionError from the command line, a KeyError from a file
    with pytest.raises(AssertionError, match="Non-existent key: MODEL.DEFORMABLE_DETR.NO_SUCH_KEY"):
        quick_cfg(["MODEL.DEFORMABLE_DETR.NO_SUCH_KEY", "1"])


def test_non_choice_size_sampling_is_refused(quick_cfg):
    cfg = quick_cfg(
        ["INPUT.MIN_SIZE_TRAIN_SAMPLING", "range", "INPUT.MIN_SIZE_TRAIN", "(100, 200)"]
    )
    with pytest.raises(ValueError, match="MIN_SIZE_TRAIN_SAMPLING"):
        build_detr_augmentation(cfg, is_train=True)
