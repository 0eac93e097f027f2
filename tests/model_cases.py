"""Shared builders for the model tests: configs, tiny batches with ground truth."""

import os

import torch
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances

from deformable_detr import get_config
from repo_paths import CONFIG_DIR

RELEASED_CONFIGS = (
    "ddetr_r50.yaml",
    "ddetr_r50_single_scale.yaml",
    "ddetr_r50_single_scale_dc5.yaml",
    "ddetr_r50_box_refine.yaml",
    "ddetr_r50_two_stage.yaml",
)
ALL_CONFIGS = RELEASED_CONFIGS + ("ddetr_r50_fpn.yaml",)
# H-Deformable-DETR's additions (issue 20): the "tricks" alone, and with hybrid matching
HDETR_CONFIGS = ("ddetr_r50_plus_12ep.yaml", "hdetr_r50_12ep.yaml")
# Mixed query selection gives the proposal of rank i the learned content i, so two proposals
# within rounding of each other (1e-6 apart among 300 of a small image's ~400, with random
# weights) may swap ranks between two computations of equal value, and their queries then differ
# by construction (in H-DETR's code too). Tests that compare two such computations keep 30
# one-to-one queries (and 150 one-to-many, H-DETR's ratio), whose scores lie further apart.
FEWER_QUERIES = (
    "MODEL.DEFORMABLE_DETR.TWO_STAGE_NUM_PROPOSALS",
    "30",
    "MODEL.DEFORMABLE_DETR.HYBRID_MATCHING.NUM_QUERIES_ONE2MANY",
    "150",
)
# The configs on Detectron2's newer backbones, with keys that shrink each backbone for fast tests
# (same structure: every stage, window attention, pooling, squeeze-excitation; fewer and narrower
# blocks) and need no ImageNet file.
BACKBONE_CONFIGS = {
    "ddetr_swin_t.yaml": [
        "MODEL.SWIN.EMBED_DIM",
        "32",
        "MODEL.SWIN.DEPTHS",
        "[1, 1, 2, 1]",
        "MODEL.SWIN.NUM_HEADS",
        "[1, 2, 2, 4]",
        "MODEL.SWIN.WINDOW_SIZE",
        "4",
    ],
    "ddetr_vit_b.yaml": [
        "MODEL.VIT.IMG_SIZE",
        "256",
        "INPUT.MAX_SIZE_TRAIN",
        "256",
        "INPUT.MAX_SIZE_TEST",
        "256",
        "MODEL.VIT.EMBED_DIM",
        "64",
        "MODEL.VIT.DEPTH",
        "3",
        "MODEL.VIT.NUM_HEADS",
        "2",
        "MODEL.VIT.WINDOW_SIZE",
        "4",
        "MODEL.VIT.WINDOW_BLOCK_INDEXES",
        "[0, 1]",
        "MODEL.VIT.OUT_CHANNELS",
        "64",
    ],
    "ddetr_mvitv2_t.yaml": [
        "MODEL.MVIT.EMBED_DIM",
        "32",
        "MODEL.MVIT.DEPTH",
        "5",
        "MODEL.MVIT.LAST_BLOCK_INDEXES",
        "[0, 1, 3, 4]",
    ],
    "ddetr_regnety_4gf.yaml": [
        "MODEL.REGNET.DEPTH",
        "5",
        "MODEL.REGNET.W_0",
        "16",
        "MODEL.REGNET.W_A",
        "24.0",
        "MODEL.REGNET.W_M",
        "2.0",
        "MODEL.REGNET.GROUP_WIDTH",
        "8",
        "MODEL.REGNET.STEM_WIDTH",
        "16",
    ],
}
NO_WEIGHTS = ("MODEL.WEIGHTS", "")


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
        {
            "image": image(64, 96, 0),
            "height": 64,
            "width": 96,
            "instances": instances(64, 96, [[4, 6, 40, 50], [50, 10, 90, 60]], [3, 17]),
        },
        {
            "image": image(48, 72, 1),
            "height": 48,
            "width": 72,
            "instances": instances(48, 72, [], []),
        },
    ]
