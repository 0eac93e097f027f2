"""Shared builders for the model tests: configs, tiny batches with ground truth."""
import os

import torch
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances

from deformable_detr import get_config

CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
RELEASED_CONFIGS = (
    "ddetr_r50.yaml",
    "ddetr_r50_single_scale.yaml",
    "ddetr_r50_single_scale_dc5.yaml",
    "ddetr_r50_box_refine.yaml",
    "ddetr_r50_two_stage.yaml",
)
ALL_CONFIGS = RELEASED_CONFIGS + ("ddetr_r50_fpn.yaml",)


def model_cfg(name, opts=()):
    return get_config(os.path.join(CONFIG_DIR, name), ["MODEL.DEVICE", "cpu", *opts])


def build(name, opts=(), seed=0):
    torch.manual_seed(seed)
    return build_model(model_cfg(name, opts))


def image(h, w, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (3, h, w), generator=g).float()


def instances(h, w, boxes, classes):
    inst = Instances((h, w))
    inst.gt_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).view(-1, 4))
    inst.gt_classes = torch.tensor(classes, dtype=torch.long)
    return inst


def training_batch():
    """Two images of different sizes, the second with no objects."""
    return [
        {"image": image(64, 96, 0), "height": 64, "width": 96,
         "instances": instances(64, 96, [[4, 6, 40, 50], [50, 10, 90, 60]], [3, 17])},
        {"image": image(48, 72, 1), "height": 48, "width": 72,
         "instances": instances(48, 72, [], [])},
    ]
