"""The start-up checks of the datasets a config names (data/dataset_checks.py), through the
Trainer and its evaluation: a training set without objects, a class count other than the
dataset's (category ids need not be contiguous), a name that is not registered, and a training
set none of whose images can be read."""

import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog

from data_cases import coco_dataset, image_record, truncated_jpeg
from deformable_detr.engine import Trainer

NO_TEST = ["DATASETS.TEST", "()"]


def _no_objects(data):
    data["annotations"] = []


def _crowd_only(data):
    for a in data["annotations"]:
        a["iscrowd"] = 1


@pytest.mark.parametrize(
    "change,holds",
    [(_no_objects, "holds no object"), (_crowd_only, "holds no object, all 3 iscrowd")],
)
def test_training_set_without_objects_is_refused(tmp_path, quick_cfg, registered, change, holds):
    # without objects, training ran with the box losses at 0 and exited 0
    registered.append(coco_dataset(tmp_path, "no_objects", change))
    cfg = quick_cfg(["DATASETS.TRAIN", "('no_objects',)", *NO_TEST])
    with pytest.raises(
        ValueError,
        match=rf"dataset 'no_objects': .*\n- 'annotations' {holds}.*: a training set needs "
        r"objects \(without any, the box losses are 0",
    ):
        Trainer(cfg)


class _Inference(Exception):
    """Raised in place of building the test loader: the checks before it passed."""


def _no_inference(*args):
    raise _Inference


def test_test_set_without_objects_is_accepted(tmp_path, quick_cfg, registered, monkeypatch):
    # an unlabelled test set gives predictions only
    registered.append(coco_dataset(tmp_path, "unlabelled", _no_objects))
    monkeypatch.setattr(Trainer, "build_test_loader", _no_inference)
    with pytest.raises(_Inference):
        Trainer.test(quick_cfg(["DATASETS.TEST", "('unlabelled',)"]), torch.nn.Identity())


def _ids_1_5_9(data):
    """Category ids 9, 1, 5 (listed out of order) for names c, a, b: Detectron2 maps them to
    classes 0, 1, 2 = a, b, c."""
    new_id = {1: 1, 2: 5, 3: 9}
    data["categories"] = [{"id": 9, "name": "c"}, {"id": 1, "name": "a"}, {"id": 5, "name": "b"}]
    for a in data["annotations"]:
        a["category_id"] = new_id[a["category_id"]]


@pytest.mark.parametrize("num_classes", [10, 2])
def test_num_classes_other_than_the_training_categories_is_refused(
    tmp_path, quick_cfg, registered, num_classes
):
    # 10 trained without a word; 2 failed at the first iteration, inside the criterion
    registered.append(coco_dataset(tmp_path, "ids_1_5_9", _ids_1_5_9))
    key = "MODEL.DEFORMABLE_DETR.NUM_CLASSES"
    cfg = quick_cfg(["DATASETS.TRAIN", "('ids_1_5_9',)", *NO_TEST, key, str(num_classes)])
    with pytest.raises(
        ValueError,
        match=rf"^{key} is {num_classes}, but the dataset 'ids_1_5_9' has 3 categories "
        rf"\['a', 'b', 'c'\]: set {key} to 3 ",
    ):
        Trainer(cfg)


@pytest.mark.parametrize("num_classes", [10, 2])
def test_num_classes_other_than_the_test_categories_is_refused_before_inference(
    tmp_path, quick_cfg, registered, monkeypatch, num_classes
):
    # the COCOEvaluator asserted after all of inference (a class id beyond the dataset's)
    registered.append(coco_dataset(tmp_path, "ids_1_5_9", _ids_1_5_9))
    monkeypatch.setattr(Trainer, "build_test_loader", _no_inference)
    cfg = quick_cfg(
        ["DATASETS.TEST", "('ids_1_5_9',)", "MODEL.DEFORMABLE_DETR.NUM_CLASSES", str(num_classes)]
    )
    with pytest.raises(ValueError, match=rf"NUM_CLASSES is {num_classes}, .* has 3 categories"):
        Trainer.test(cfg, torch.nn.Identity())


def test_categories_with_ids_1_5_9_are_3_classes_in_detectron2s_order(
    tmp_path, quick_cfg, registered
):
    name = coco_dataset(tmp_path, "ids_1_5_9", _ids_1_5_9)
    registered.append(name)
    Trainer(quick_cfg(["DATASETS.TRAIN", f"('{name}',)", *NO_TEST]))  # NUM_CLASSES 3: accepted
    # set from the json at the check, before Detectron2 loaded the dataset
    assert MetadataCatalog.get(name).thing_classes == ["a", "b", "c"]
    DatasetCatalog.get(name)  # Detectron2's load_coco_json sets them again: equal or it raises
    assert MetadataCatalog.get(name).thing_dataset_id_to_contiguous_id == {1: 0, 5: 1, 9: 2}


@pytest.mark.parametrize("split", ["TRAIN", "TEST"])
def test_unregistered_dataset_name_is_refused_with_the_close_names(quick_cfg, shapes_root, split):
    cfg = quick_cfg([f"DATASETS.{split}", "('ddetr_shapes_trian',)"])
    with pytest.raises(
        ValueError,
        match=rf"DATASETS\.{split} names the dataset 'ddetr_shapes_trian', which is not "
        r"registered \(registered names close to it: \['ddetr_shapes_train'.*--coco-dataset",
    ):
        Trainer(cfg)


def test_training_set_of_unreadable_images_is_an_error_saying_so(
    tmp_path, quick_cfg, registered, caplog
):
    # Detectron2's MapDataset failed with random.sample's "Sample larger than population"
    records = [image_record(truncated_jpeg(tmp_path / f"{i}.jpg"), image_id=i) for i in range(3)]
    DatasetCatalog.register("all_unreadable", lambda: records)
    registered.append("all_unreadable")
    cfg = quick_cfg(["DATASETS.TRAIN", "('all_unreadable',)", *NO_TEST, "SOLVER.MAX_ITER", "2"])
    trainer = Trainer(cfg)
    with pytest.raises(ValueError, match="^no image of the training set can be read: "):
        trainer.train()
    skipped = [r for r in caplog.records if r.getMessage().startswith("skipping image")]
    assert len(skipped) == 3
