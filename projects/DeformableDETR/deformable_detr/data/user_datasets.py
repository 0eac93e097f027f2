"""Your own COCO-format data from the command line: `--coco-dataset NAME JSON IMAGE_ROOT` of
train_net.py and demo.py, repeatable, registers NAME with Detectron2's register_coco_instances
before the config is read, so that the config (DATASETS.TRAIN / TEST, or a LazyConfig's
dataloader.train.dataset.names / dataloader.test.dataset.names) can name it. The json itself is
checked where a dataset is used (dataset_checks.check_datasets).
"""

import argparse
import os
from typing import List, Sequence

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_coco_instances

__all__ = ["add_coco_dataset_argument", "register_coco_datasets"]

FLAG = "--coco-dataset"


def add_coco_dataset_argument(parser: argparse.ArgumentParser, use: str) -> None:
    """Adds the repeatable --coco-dataset NAME JSON IMAGE_ROOT (args.coco_dataset, a list of
    [name, json_file, image_root]); `use` says, in its help, what the script does with them."""
    parser.add_argument(
        FLAG,
        nargs=3,
        action="append",
        default=[],
        metavar=("NAME", "JSON", "IMAGE_ROOT"),
        help=f"registers a dataset of COCO-format files (repeatable); {use}",
    )


def _register(name: str, json_file: str, image_root: str) -> None:
    given = f"{FLAG} {name} {json_file} {image_root}"
    if not os.path.isfile(json_file):
        raise FileNotFoundError(f"{given}: JSON {json_file!r} is not a file")
    if not os.path.isdir(image_root):
        raise FileNotFoundError(f"{given}: IMAGE_ROOT {image_root!r} is not a folder")
    json_file, image_root = os.path.abspath(json_file), os.path.abspath(image_root)
    if name in DatasetCatalog:
        metadata = MetadataCatalog.get(name)
        if (metadata.get("json_file", None), metadata.get("image_root", None)) == (
            json_file,
            image_root,
        ):
            return  # the same files again: in the process that launch runs main in, say
        raise ValueError(
            f"{given}: a dataset named {name!r} is already registered (with json_file "
            f"{metadata.get('json_file', None)!r}, e.g. one of Detectron2's builtin datasets or "
            f"an earlier {FLAG}): give this one another name"
        )
    register_coco_instances(name, {}, json_file, image_root)


def register_coco_datasets(entries: Sequence[Sequence[str]]) -> List[str]:
    """Registers each [name, json_file, image_root] of args.coco_dataset (idempotent for the
    same files) and returns the names. Raises FileNotFoundError for a missing file or folder and
    ValueError for a name registered with other files, each naming the flag's values."""
    for name, json_file, image_root in entries:
        _register(name, json_file, image_root)
    return [name for name, _, _ in entries]
