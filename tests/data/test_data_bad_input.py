"""Bad input on the data path is refused or dropped and counted, never silently wrong: unreadable
images (refused in evaluation, skipped in training), malformed boxes, wrong INPUT keys, and
broken COCO json files (found when the Trainer is built, before training or inference)."""

import collections
import json
import math
import re

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_coco_instances
from detectron2.structures import BoxMode

from data_cases import H, W, coco_dataset, image_record, jpeg, truncated_jpeg
from deformable_detr.data import DetrDatasetMapper, build_detr_augmentation
from deformable_detr.data import coco_checks
from deformable_detr.engine import Trainer
from training_cases import quick_cfg_in

# --- unreadable images ---------------------------------------------------------------------


def test_unreadable_image_in_evaluation_is_an_error_naming_it(tmp_path, quick_cfg):
    records = [
        image_record(jpeg(tmp_path / "good.jpg")),
        image_record(truncated_jpeg(tmp_path / "cut.jpg"), image_id=2),
    ]
    DatasetCatalog.register("bad_input_eval", lambda: records)
    try:
        loader = Trainer.build_test_loader(quick_cfg(), "bad_input_eval")
        # Detectron2's wrapper would have drawn good.jpg again in place of cut.jpg
        with pytest.raises(ValueError, match=r"cut\.jpg.*cannot be read"):
            list(loader)
    finally:
        DatasetCatalog.remove("bad_input_eval")


def test_unreadable_image_in_training_is_skipped_and_counted(tmp_path, quick_cfg, caplog):
    mapper = DetrDatasetMapper(quick_cfg(), True)
    cut = truncated_jpeg(tmp_path / "cut.jpg")
    assert mapper(image_record(cut)) is None
    assert mapper(image_record(cut)) is None
    assert mapper.skipped_images == 2
    assert "cut.jpg" in caplog.text and "2 images skipped so far" in caplog.text


def test_errors_other_than_reading_the_image_are_not_skipped(tmp_path, quick_cfg):
    # the image reads fine; the record's size is wrong (Detectron2's SizeMismatchError)
    record = dict(image_record(jpeg(tmp_path / "a.jpg")), height=H + 1)
    with pytest.raises(ValueError, match=r"Mismatched image shape for image .*a\.jpg"):
        DetrDatasetMapper(quick_cfg(["INPUT.RANDOM_FLIP", "none"]), True)(record)


# --- malformed boxes -----------------------------------------------------------------------


def test_malformed_boxes_are_dropped_before_any_transform_and_counted(tmp_path, quick_cfg):
    xywh, xyxy = BoxMode.XYWH_ABS, BoxMode.XYXY_ABS
    record = image_record(
        jpeg(tmp_path / "a.jpg"),
        [
            {"bbox": [20, 30, 40, 50], "bbox_mode": xywh},  # valid: kept as is
            {"bbox": [50, 10, -20, 20], "bbox_mode": xywh},  # Detectron2: [30, 10, 50, 30]
            {"bbox": [60, 40, 30, 70], "bbox_mode": xyxy},  # x1 < x0
            {"bbox": [10, 10, math.inf, 20], "bbox_mode": xywh},  # Detectron2: to the image edge
            {"bbox": [10, math.nan, 20, 20], "bbox_mode": xywh},
            {"bbox": [10, 10, 20], "bbox_mode": xywh},
        ],
    )
    mapper = DetrDatasetMapper(quick_cfg(["INPUT.RANDOM_FLIP", "none"]), True)
    out = mapper(record)
    assert out["image"].shape == (3, H, W)
    assert torch.equal(out["instances"].gt_boxes.tensor, torch.tensor([[20.0, 30.0, 60.0, 80.0]]))
    assert mapper.dropped == collections.Counter(
        {"width or height <= 0": 2, "not 4 finite numbers": 3}
    )
    assert mapper.dropped_boxes == 5
    summary = mapper.dropped_summary()
    assert "5 boxes dropped" in summary and "2 width or height <= 0" in summary
    assert "3 not 4 finite numbers" in summary
    assert record["annotations"][1]["bbox"] == [50, 10, -20, 20]  # the caller's dict untouched


# --- INPUT keys ----------------------------------------------------------------------------

CROP = ["INPUT.CROP.ENABLED", "True"]


@pytest.mark.parametrize(
    "opts,is_train,key,got",
    [
        (["INPUT.MIN_SIZE_TRAIN", "(0,)"], True, "MIN_SIZE_TRAIN", "(0,)"),
        (["INPUT.MIN_SIZE_TRAIN", "()"], True, "MIN_SIZE_TRAIN", "()"),
        (["INPUT.MAX_SIZE_TRAIN", "0"], True, "MAX_SIZE_TRAIN", "0"),
        (["INPUT.MIN_SIZE_TEST", "0"], False, "MIN_SIZE_TEST", "0"),
        (["INPUT.MAX_SIZE_TEST", "-5"], False, "MAX_SIZE_TEST", "-5"),
        (["INPUT.RANDOM_FLIP", "diagonal"], True, "RANDOM_FLIP", "'diagonal'"),
        # PIL fails on the mode for every image: training would skip them all as unreadable
        (["INPUT.FORMAT", "rgb"], True, "FORMAT", "'rgb'"),
        (["INPUT.FORMAT", "RGBA"], False, "FORMAT", "'RGBA'"),
        (CROP + ["INPUT.RESIZE_BEFORE_CROP", "[0, 400]"], True, "RESIZE_BEFORE_CROP", "[0, 400]"),
        (CROP + ["INPUT.CROP.TYPE", "square"], True, "CROP.TYPE", "'square'"),
        # pixel sizes with Detectron2's default relative_range: "Shape computation in RandomCrop
        # has bugs"
        (
            CROP + ["INPUT.CROP.TYPE", "relative_range", "INPUT.CROP.SIZE", "[384, 600]"],
            True,
            "CROP.SIZE",
            "[384, 600]",
        ),
        (
            CROP + ["INPUT.CROP.TYPE", "relative", "INPUT.CROP.SIZE", "[0.0, 0.5]"],
            True,
            "CROP.SIZE",
            "[0.0, 0.5]",
        ),
        (
            CROP + ["INPUT.CROP.TYPE", "absolute", "INPUT.CROP.SIZE", "[0.5, 0.5]"],
            True,
            "CROP.SIZE",
            "[0.5, 0.5]",
        ),
        (
            CROP + ["INPUT.CROP.TYPE", "absolute_range", "INPUT.CROP.SIZE", "[600, 384]"],
            True,
            "CROP.SIZE",
            "[600, 384]",
        ),
        (CROP + ["INPUT.CROP.SIZE", "[0.5]"], True, "CROP.SIZE", "[0.5]"),
    ],
)
def test_wrong_input_keys_are_errors_naming_key_expected_and_got(
    opts, is_train, key, got, quick_cfg
):
    with pytest.raises(ValueError, match=rf"INPUT\.{key} must be .*, got {re.escape(got)}$"):
        build_detr_augmentation(quick_cfg(opts), is_train)


# --- COCO json -----------------------------------------------------------------------------


def _set(key, value):
    return lambda data: data.__setitem__(key, value)


def _without(key):
    return lambda data: data.__delitem__(key)


def _edit_annotation(key, value):
    return lambda data: data["annotations"][1].__setitem__(key, value)


BAD_JSON = [
    (lambda data: [data], r"the json must be an object .*, got a list"),
    (_without("categories"), r"'categories' must be a list, got NoneType"),
    (_set("images", {}), r"'images' must be a list, got dict"),
    (_set("categories", []), r"'categories' is empty"),
    (
        _set("categories", [{"id": 1, "name": "a"}, {"id": 1, "name": "b"}]),
        r"category ids must be unique, repeated: \[1\]",
    ),
    # Detectron2's load_coco_json raised KeyError: 'name'
    (
        _set("categories", [{"id": 1}, {"id": 2, "name": "b"}, {"id": 3, "name": "c"}]),
        r"1 of 3 categories have no 'name': \{'id': 1\}",
    ),
    (
        _edit_annotation("category_id", 7),
        r"1 of 3 annotations have a category_id not among the categories' ids \[1, 2, 3\]: "
        r"id 11 \(category_id 7\)",
    ),
    (
        _edit_annotation("image_id", 99),
        r"1 of 3 annotations have an image_id not among the "
        r"images' ids: id 11 \(image_id 99\)",
    ),
    (
        _edit_annotation("bbox", [1, 2, 3]),
        r"1 of 3 annotations have a bbox that is not 4 numbers: id 11 \(bbox \[1, 2, 3\]\)",
    ),
]
BAD_JSON_IDS = [
    "not-an-object",
    "no-categories-key",
    "images-not-a-list",
    "no-categories",
    "repeated-category-id",
    "unnamed-category",
    "unknown-category",
    "unknown-image",
    "bbox-of-3",
]


@pytest.mark.parametrize("change,message", BAD_JSON, ids=BAD_JSON_IDS)
@pytest.mark.parametrize("split", ["TRAIN", "TEST"])
def test_broken_coco_json_is_found_when_the_trainer_is_built(
    tmp_path, quick_cfg, registered, split, change, message
):
    bad = coco_dataset(tmp_path, f"bad_json_{split}", change)
    good = coco_dataset(tmp_path, f"good_json_{split}")
    registered += [bad, good]
    datasets = {"TRAIN": good, "TEST": good, split: bad}
    cfg = quick_cfg(
        ["DATASETS.TRAIN", f"('{datasets['TRAIN']}',)", "DATASETS.TEST", f"('{datasets['TEST']}',)"]
    )
    with pytest.raises(
        ValueError,
        match=rf"dataset '{bad}': the COCO json '.*{bad}\.json' has "
        rf"problems:\n(- .*\n)*- {message}",
    ):
        Trainer(cfg)


@pytest.mark.parametrize("change,message", BAD_JSON, ids=BAD_JSON_IDS)
def test_broken_coco_json_is_found_before_inference(
    tmp_path, quick_cfg, registered, monkeypatch, change, message
):
    registered.append(coco_dataset(tmp_path, "bad_json_eval", change))
    cfg = quick_cfg(["DATASETS.TEST", "('bad_json_eval',)"])

    def no_inference(*args):
        raise AssertionError("inference started on a broken dataset")

    monkeypatch.setattr(Trainer, "build_test_loader", no_inference)
    with pytest.raises(ValueError, match=message):
        Trainer.test(cfg, torch.nn.Identity())


def test_missing_coco_json_is_found_when_the_trainer_is_built(tmp_path, quick_cfg, registered):
    register_coco_instances("missing_json", {}, str(tmp_path / "none.json"), str(tmp_path))
    registered.append("missing_json")
    cfg = quick_cfg(["DATASETS.TRAIN", "('missing_json',)", "DATASETS.TEST", "()"])
    with pytest.raises(FileNotFoundError, match=r"dataset 'missing_json'.*none\.json"):
        Trainer(cfg)


def test_coco_json_without_info_evaluates_as_with_an_empty_one(tmp_path, quick_cfg, registered):
    # pycocotools 2.0.10's COCO.loadRes raises KeyError 'info' without it, after inference
    registered.append(coco_dataset(tmp_path / "no_info", "no_info", lambda data: data.pop("info")))
    registered.append(coco_dataset(tmp_path / "info", "with_info"))
    torch.manual_seed(0)
    model = Trainer.build_model(quick_cfg())
    results = {}
    for name in ("no_info", "with_info"):
        cfg = quick_cfg_in(tmp_path / name, ["DATASETS.TEST", f"('{name}',)"])
        results[name] = Trainer.test(cfg, model)["bbox"]
    assert "AP" in results["no_info"]
    np.testing.assert_equal(results["no_info"], results["with_info"])  # NaN: no object of a size


def test_a_checked_coco_json_is_read_again_only_when_it_changes(tmp_path, registered, monkeypatch):
    name = coco_dataset(tmp_path, "cached_json")
    registered.append(name)
    path = MetadataCatalog.get(name).json_file
    coco_checks.check_coco_datasets([name])
    reads = []
    real_load = json.load
    monkeypatch.setattr(coco_checks.json, "load", lambda f: reads.append(1) or real_load(f))
    coco_checks.check_coco_datasets([name])
    assert reads == []
    with open(path, "w") as f:  # a new version of the file: another size
        json.dump({"images": [], "annotations": [], "categories": []}, f)
    with pytest.raises(ValueError, match="'categories' is empty"):
        coco_checks.check_coco_datasets([name])
    assert reads == [1]
