"""The built-in dataset: synthetic shapes on textured backgrounds, in COCO format.

A deterministic generator writes the images (JPEG) and a COCO json per split once to a cache
folder; the splits are then registered with Detectron2's own COCO loader, so training, the
COCOEvaluator and the visualizer run on real files, as with any user dataset.

Image: H x W x 3 uint8 RGB. Boxes: COCO (x, y, w, h) in pixels.
"""

import json
import math
import os
import shutil
import tempfile

import numpy as np
from detectron2.data import DatasetCatalog
from detectron2.data.datasets import register_coco_instances
from PIL import Image, ImageDraw

__all__ = [
    "SHAPE_CLASSES",
    "SPLITS",
    "generate_shapes_split",
    "register_shapes_datasets",
    "shapes_root",
]

SHAPE_CLASSES = ("circle", "square", "triangle")
# split name -> (number of images, seed)
SPLITS = {"ddetr_shapes_train": (1200, 0), "ddetr_shapes_val": (100, 1)}
IMAGE_SIZE = (128, 160)  # (H, W)
SIZE_RANGE = (16, 56)  # side of a shape's box, pixels
MAX_SHAPES = 5
MAX_OVERLAP = 0.3  # intersection over the smaller box between two shapes of an image
FORMAT_VERSION = 2  # bump when the generator changes, so caches are rebuilt


def shapes_root():
    """The cache folder: $DETECTRON2_DATASETS/ddetr_shapes (Detectron2's convention)."""
    return os.path.join(os.getenv("DETECTRON2_DATASETS", "datasets"), "ddetr_shapes")


def _background(rng, h, w):
    """Low-frequency colour blobs plus fine noise: a texture the shapes must be told from."""
    coarse = rng.uniform(40, 200, size=(h // 16 + 2, w // 16 + 2, 3)).astype(np.float32)
    blobs = np.asarray(
        Image.fromarray(coarse.astype(np.uint8)).resize((w, h), Image.BICUBIC), dtype=np.float32
    )
    noise = rng.normal(0, 12, size=(h, w, 3))
    stripes = 15 * np.sin(np.arange(w)[None, :, None] * rng.uniform(0.2, 0.8) + rng.uniform(0, 6))
    return np.clip(blobs + noise + stripes, 0, 255).astype(np.uint8)


def _overlap(a, b):
    """Intersection of two (x0, y0, x1, y1) boxes over the smaller one's area."""
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    smaller = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return iw * ih / smaller


def _draw(draw, cls, box, colour):
    x0, y0, x1, y1 = box
    if cls == 0:
        draw.ellipse(box, fill=colour)
    elif cls == 1:
        draw.rectangle(box, fill=colour)
    else:  # an upright triangle touching all four sides of its box
        draw.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=colour)


def _image(rng):
    """One image and its annotations [(class, (x0, y0, x1, y1))], boxes in pixel corners."""
    h, w = IMAGE_SIZE
    img = Image.fromarray(_background(rng, h, w))
    draw = ImageDraw.Draw(img)
    objects = []
    for _ in range(int(rng.integers(1, MAX_SHAPES + 1))):
        for _attempt in range(20):
            side = int(rng.integers(*SIZE_RANGE))
            aspect = rng.uniform(0.75, 1.33) if rng.random() < 0.5 else 1.0
            bw, bh = side, max(8, int(round(side * aspect)))
            x0, y0 = int(rng.integers(0, w - bw)), int(rng.integers(0, h - bh))
            box = (x0, y0, x0 + bw, y0 + bh)
            if all(_overlap(box, other) <= MAX_OVERLAP for _, other in objects):
                break
        else:
            continue
        cls = int(rng.integers(len(SHAPE_CLASSES)))
        # saturated colours, far from the muted background
        hue = rng.uniform(0, 2 * math.pi)
        colour = tuple(int(127 + 127 * math.cos(hue + k * 2 * math.pi / 3)) for k in range(3))
        _draw(draw, cls, (box[0], box[1], box[2] - 1, box[3] - 1), colour)
        objects.append((cls, box))
    return img, objects


def generate_shapes_split(folder, num_images, seed):
    """Writes num_images JPEGs and annotations.json (COCO) into folder."""
    rng = np.random.default_rng(seed)
    images, annotations = [], []
    os.makedirs(os.path.join(folder, "images"), exist_ok=True)
    for i in range(num_images):
        img, objects = _image(rng)
        name = f"{i:05d}.jpg"
        img.save(os.path.join(folder, "images", name), quality=92)
        images.append({"id": i + 1, "file_name": name, "height": img.height, "width": img.width})
        for cls, (x0, y0, x1, y1) in objects:
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": i + 1,
                    "category_id": cls + 1,
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "area": (x1 - x0) * (y1 - y0),
                    "iscrowd": 0,
                }
            )
    categories = [{"id": k + 1, "name": n} for k, n in enumerate(SHAPE_CLASSES)]
    with open(os.path.join(folder, "annotations.json"), "w") as f:
        json.dump(
            {
                "images": images,
                "annotations": annotations,
                "categories": categories,
                "info": {"version": FORMAT_VERSION},
            },
            f,
        )


def _split_ready(folder, num_images):
    path = os.path.join(folder, "annotations.json")
    if not os.path.exists(path):
        return False
    with open(path) as f:
        data = json.load(f)
    return (
        data.get("info", {}).get("version") == FORMAT_VERSION and len(data["images"]) == num_images
    )


def register_shapes_datasets(root=None):
    """Writes the splits under root (default shapes_root()) unless already there, and registers
    them as COCO-format datasets "ddetr_shapes_train" and "ddetr_shapes_val". Idempotent."""
    root = root or shapes_root()
    for name, (num_images, seed) in SPLITS.items():
        folder = os.path.join(root, name)
        if not _split_ready(folder, num_images):
            # written aside, then moved in one step: concurrent writers never leave half a split
            os.makedirs(root, exist_ok=True)
            tmp = tempfile.mkdtemp(dir=root, prefix=f".{name}-")
            generate_shapes_split(tmp, num_images, seed)
            shutil.rmtree(folder, ignore_errors=True)
            os.replace(tmp, folder)
        if name not in DatasetCatalog.list():
            # class names now, not only once the json is loaded: the demo never loads it
            register_coco_instances(
                name,
                {"thing_classes": list(SHAPE_CLASSES)},
                os.path.join(folder, "annotations.json"),
                os.path.join(folder, "images"),
            )
