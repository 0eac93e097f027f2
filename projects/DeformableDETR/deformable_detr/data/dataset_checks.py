"""The start-up checks of the datasets a config names, before a model is built or a loader runs:
each is registered, the COCO json behind each is sound (coco_checks.py), and each has as many
classes as the model predicts.

The class count is the length of the dataset's thing_classes: Detectron2 maps any category ids
(e.g. 1, 5, 9) to contiguous classes 0..K-1. A model with more classes than the training set
would train without a word, one with fewer would fail at its first iteration inside the
criterion, and an evaluation on a test set with fewer categories fails after all of inference
(the COCOEvaluator's assertion): each is refused here, naming both numbers and the key to set.
"""

import difflib
from typing import NamedTuple, Optional, Sequence

from detectron2.data import DatasetCatalog, MetadataCatalog

from .coco_checks import check_coco_datasets

__all__ = ["LAZY_KEYS", "YACS_KEYS", "ConfigKeys", "check_datasets", "check_num_classes"]


class ConfigKeys(NamedTuple):
    """Where a config of one kind names the training and test datasets and the class count."""

    train: str
    test: str
    num_classes: str


YACS_KEYS = ConfigKeys("DATASETS.TRAIN", "DATASETS.TEST", "MODEL.DEFORMABLE_DETR.NUM_CLASSES")
# configs/common/model.py: the criterion and the heads take the transformer's count
LAZY_KEYS = ConfigKeys(
    "dataloader.train.dataset.names",
    "dataloader.test.dataset.names",
    "model.transformer.num_classes",
)


def _check_registered(names: Sequence[str], key: str) -> None:
    for name in names:
        if name in DatasetCatalog:
            continue
        close = difflib.get_close_matches(name, DatasetCatalog.list(), n=3)
        hint = f" (registered names close to it: {close})" if close else ""
        raise ValueError(
            f"{key} names the dataset {name!r}, which is not registered{hint}: register your "
            f"own COCO-format data with --coco-dataset NAME JSON IMAGE_ROOT (train_net.py, "
            f"demo.py) or in code with detectron2.data.datasets.register_coco_instances"
        )


def check_num_classes(names: Sequence[str], num_classes: int, key: str) -> None:
    """Raises ValueError unless each dataset whose metadata has thing_classes has num_classes
    of them; `key` is the config key of num_classes, named in the error."""
    for name in names:
        classes = MetadataCatalog.get(name).get("thing_classes", None)
        if classes is None or len(classes) == num_classes:
            continue
        shown = list(classes[:10]) + (["..."] if len(classes) > 10 else [])
        raise ValueError(
            f"{key} is {num_classes}, but the dataset {name!r} has {len(classes)} categories "
            f"{shown}: set {key} to {len(classes)} (the model predicts one score per category)"
        )


def check_datasets(
    train: Sequence[str], test: Sequence[str], num_classes: Optional[int], keys: ConfigKeys
) -> None:
    """The checks of the module's docstring for the training and the test datasets of a config
    of the kind `keys` describes (num_classes None: the class count is not checked). The test
    sets' json may lack annotations (predictions only); a training set needs objects."""
    _check_registered(train, keys.train)
    _check_registered(test, keys.test)
    # a broken test json would otherwise surface at the first evaluation, after training
    check_coco_datasets(train)
    check_coco_datasets(test, require_annotations=False)
    if num_classes is not None:
        check_num_classes([*train, *test], num_classes, keys.num_classes)
