"""Checks of the COCO json files behind registered datasets, run before training and evaluation.

Problems that pycocotools or the COCOEvaluator would otherwise report late (after training, or
after all of inference) or not at all are found when the dataset is loaded: the json must be an
object whose "images", "annotations" and "categories" are lists, with at least one category,
unique int category ids, a name for each category, and annotations whose category_id and
image_id exist and whose bbox is 4 numbers; a training set needs at least one object (an
annotation not marked iscrowd), since without any the box losses are 0 and nothing is learned.
A missing "info" is no problem: the evaluator fills it in (see engine.Trainer).

The categories' names, in the order of their ids, become the dataset's thing_classes in its
metadata, as Detectron2's load_coco_json sets them (its contiguous class ids follow that order,
whatever the json's ids), so that the class count is known before the dataset is loaded.

A file that passed is remembered, with its class names, by (path, size, modification time), so
a periodic evaluation does not read it again.
"""

import collections
import json
import numbers
import os
from typing import Dict, Iterable, List, Tuple

from detectron2.data import MetadataCatalog
from detectron2.utils.file_io import PathManager

__all__ = ["check_coco_datasets", "check_coco_json"]

SHOWN = 5  # offending entries named in an error
_passed: Dict[Tuple, List[str]] = {}  # file version -> its class names


def _is_number(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _listed(what: str, total: int, offending: List[str]) -> str:
    shown = ", ".join(offending[:SHOWN]) + (", ..." if len(offending) > SHOWN else "")
    return f"{len(offending)} of {total} {what}: {shown}"


def _class_names(categories: List[dict]) -> List[str]:
    """The categories' names in the order of their ids: Detectron2's thing_classes."""
    return [c["name"] for c in sorted(categories, key=lambda c: c["id"])]


def _problems(data, require_annotations: bool) -> List[str]:
    """What is wrong with the parsed json, one line per kind of problem."""
    if not isinstance(data, dict):
        return [
            f"the json must be an object with 'images', 'annotations' and 'categories', "
            f"got a {type(data).__name__}"
        ]
    # an unlabelled test set has no "annotations"; when there are some, they must be a list
    keys = [
        k
        for k in ("images", "annotations", "categories")
        if k != "annotations" or require_annotations or k in data
    ]
    wrong = [
        f"{k!r} must be a list, got {type(data.get(k)).__name__}"
        for k in keys
        if not isinstance(data.get(k), list)
    ]
    if wrong:
        return wrong
    images, categories = data["images"], data["categories"]
    annotations = data.get("annotations", [])
    problems = []
    if not categories:
        problems.append("'categories' is empty: the dataset needs at least one category")
    with_id = [isinstance(c, dict) and _is_int(c.get("id")) for c in categories]
    bad_categories = [repr(c) for c, ok in zip(categories, with_id) if not ok]
    if bad_categories:
        problems.append(_listed("categories have no int 'id'", len(categories), bad_categories))
    unnamed = [repr(c) for c in categories if isinstance(c, dict) and "name" not in c]
    if unnamed:
        problems.append(_listed("categories have no 'name'", len(categories), unnamed))
    category_ids = collections.Counter(c["id"] for c, ok in zip(categories, with_id) if ok)
    repeated = sorted(i for i, n in category_ids.items() if n > 1)
    if repeated:
        problems.append(f"category ids must be unique, repeated: {repeated}")
    image_ids = {im.get("id") for im in images if isinstance(im, dict)}
    known_categories = set(category_ids)
    bad_category, bad_image, bad_box = [], [], []
    for a in annotations:
        if not isinstance(a, dict):
            bad_box.append(repr(a))
            continue
        name = f"id {a.get('id')!r}"
        if a.get("category_id") not in known_categories:
            bad_category.append(f"{name} (category_id {a.get('category_id')!r})")
        if a.get("image_id") not in image_ids:
            bad_image.append(f"{name} (image_id {a.get('image_id')!r})")
        box = a.get("bbox")
        if not (isinstance(box, list) and len(box) == 4 and all(_is_number(v) for v in box)):
            bad_box.append(f"{name} (bbox {box!r})")
    if bad_category:
        problems.append(
            _listed(
                f"annotations have a category_id not among the categories' ids "
                f"{sorted(known_categories)}",
                len(annotations),
                bad_category,
            )
        )
    if bad_image:
        problems.append(
            _listed(
                "annotations have an image_id not among the images' ids",
                len(annotations),
                bad_image,
            )
        )
    if bad_box:
        problems.append(
            _listed("annotations have a bbox that is not 4 numbers", len(annotations), bad_box)
        )
    objects = [a for a in annotations if isinstance(a, dict) and not a.get("iscrowd", 0)]
    if require_annotations and not objects:
        crowd = f", all {len(annotations)} iscrowd" if annotations else ""
        problems.append(
            f"'annotations' holds no object{crowd}: a training set needs objects (without any, "
            f"the box losses are 0 and nothing is learned)"
        )
    return problems


def check_coco_json(
    dataset_name: str, json_file: str, require_annotations: bool = True
) -> List[str]:
    """The class names (thing_classes) of a usable COCO json. Raises FileNotFoundError if
    json_file is missing, ValueError naming the dataset, the file and the first offending
    entries if it is not a usable COCO json (with require_annotations, the default, for
    training: with at least one object). require_annotations=False accepts a json without
    "annotations" or objects (an unlabelled test set: predictions only)."""
    path = PathManager.get_local_path(json_file)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"dataset {dataset_name!r}: its COCO json {json_file!r} does not exist"
        )
    stat = os.stat(path)
    key = (os.path.realpath(path), stat.st_size, stat.st_mtime_ns, require_annotations)
    if key in _passed:
        return _passed[key]
    with open(path) as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(
                f"dataset {dataset_name!r}: {json_file!r} is not valid json: {e}"
            ) from e
    problems = _problems(data, require_annotations)
    if problems:
        raise ValueError(
            f"dataset {dataset_name!r}: the COCO json {json_file!r} has problems:\n"
            + "\n".join(f"- {p}" for p in problems)
        )
    _passed[key] = _class_names(data["categories"])
    return _passed[key]


def check_coco_datasets(dataset_names: Iterable[str], require_annotations: bool = True) -> None:
    """check_coco_json for each dataset whose MetadataCatalog entry has a json_file (as
    register_coco_instances records it), its class names set as its thing_classes where the
    metadata has none yet; other datasets are left alone."""
    for name in dataset_names:
        metadata = MetadataCatalog.get(name)
        json_file = metadata.get("json_file", None)
        if json_file is not None:
            names = check_coco_json(name, json_file, require_annotations)
            if metadata.get("thing_classes", None) is None:
                metadata.thing_classes = names
