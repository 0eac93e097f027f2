"""Shared by the data tests: small images and records, and COCO datasets of real files, each
registered under a name the caller removes (the conftest fixture `registered`)."""

import json

import numpy as np
from detectron2.data.datasets import register_coco_instances
from PIL import Image

H, W = 128, 160  # quick_cfg_in resizes the shorter side to 128: these images keep their size
# as many categories as quick_cfg_in's model has classes
CATEGORIES = [{"id": i, "name": name} for i, name in enumerate("abc", 1)]


def jpeg(path, seed=0):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (H, W, 3), dtype=np.uint8)).save(path, quality=90)
    return str(path)


def truncated_jpeg(path):
    jpeg(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # the header survives: PIL opens it, decoding fails
    return str(path)


def image_record(file_name, annotations=(), image_id=1):
    """A Detectron2 dataset dict of an H x W image."""
    return {
        "file_name": file_name,
        "image_id": image_id,
        "height": H,
        "width": W,
        "annotations": [dict(a, category_id=0, iscrowd=0) for a in annotations],
    }


def coco_dataset(folder, name, change=None):
    """Writes two real images and name.json (CATEGORIES, each with an object) into folder and
    registers them as the COCO dataset `name`; change(data) edits the json first (in place, or
    returning the new one). Returns name."""
    folder.mkdir(parents=True, exist_ok=True)
    images = [{"id": i, "file_name": f"{i}.jpg", "height": H, "width": W} for i in (1, 2)]
    for i in (1, 2):
        jpeg(folder / f"{i}.jpg", seed=i)
    boxes = [(1, 1, [5, 5, 30, 40]), (2, 2, [50, 20, 60, 30]), (2, 3, [10, 60, 40, 40])]
    annotations = [
        {
            "id": 10 + k,
            "image_id": image_id,
            "category_id": category_id,
            "bbox": box,
            "area": box[2] * box[3],
            "iscrowd": 0,
        }
        for k, (image_id, category_id, box) in enumerate(boxes)
    ]
    data = {
        "info": {},
        "images": images,
        "categories": [dict(c) for c in CATEGORIES],
        "annotations": annotations,
    }
    if change:
        data = change(data) or data
    path = folder / f"{name}.json"
    path.write_text(json.dumps(data))
    register_coco_instances(name, {}, str(path), str(folder))
    return name
