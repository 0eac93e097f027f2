"""The shipped configs carry the released training recipe, and train from the ImageNet start.

RELEASE is written from the release's own defaults (the authors' main.py arguments and run
scripts, summarised in shared/reference/official-facts.md), not from our YAML, so that a change
to a config fails here. Checked beyond the values: the augmentation built from the config draws
only the released sizes and crops; the optimizer gives each parameter group its released
learning rate and clips the whole model's gradient at 0.1; the schedule drops at epoch 40 and not
before; Detectron2's torchvision ImageNet file (a pickle of numpy arrays) loads through the safe
path into the backbone; train_net.py trains from configs/ddetr_r50.yaml with nothing but the
dataset, device, image size and iteration count overridden.
"""

import json
import math
import os
import pickle

import numpy as np
import pytest
import torch
from detectron2.data import transforms as T
from detectron2.solver import build_lr_scheduler

from checkpoint_cases import RecordingCheckpointer
from cli_cases import load_script
from deformable_detr.data import build_detr_augmentation
from deformable_detr.data.augmentation import detr_resized_size
from deformable_detr.solver import build_optimizer
from model_cases import RELEASED_CONFIGS, build, model_cfg
from repo_paths import CONFIG_DIR
from torchvision_cases import assert_same_features, random_resnet50, torchvision_features

COCO_TRAIN_IMAGES = 118287
BATCH = 2 * 16  # 2 images per GPU on 16 GPUs
# each GPU gets ceil(118287 / 16) = 7393 images and drops its last incomplete batch of 2
ITERS_PER_EPOCH = (-(-COCO_TRAIN_IMAGES // 16)) // 2
assert ITERS_PER_EPOCH == 3696

RELEASE = {
    "SOLVER.OPTIMIZER": "ADAMW",
    "SOLVER.BASE_LR": 2e-4,
    "SOLVER.BACKBONE_MULTIPLIER": 0.1,  # lr_backbone 2e-5
    "SOLVER.LINEAR_PROJ_MULTIPLIER": 0.1,
    "SOLVER.LINEAR_PROJ_NAMES": ["sampling_offsets", "reference_points"],
    "SOLVER.WEIGHT_DECAY": 1e-4,
    "SOLVER.IMS_PER_BATCH": BATCH,
    "SOLVER.MAX_ITER": 50 * ITERS_PER_EPOCH,
    "SOLVER.STEPS": (40 * ITERS_PER_EPOCH,),
    "SOLVER.GAMMA": 0.1,
    "SOLVER.WARMUP_ITERS": 0,
    "SOLVER.CLIP_GRADIENTS.ENABLED": True,
    "SOLVER.CLIP_GRADIENTS.CLIP_TYPE": "full_model",
    "SOLVER.CLIP_GRADIENTS.CLIP_VALUE": 0.1,
    "SOLVER.CLIP_GRADIENTS.NORM_TYPE": 2.0,
    "SOLVER.AMP.ENABLED": False,
    "INPUT.FORMAT": "RGB",
    "INPUT.RANDOM_FLIP": "horizontal",
    "INPUT.MIN_SIZE_TRAIN": tuple(range(480, 801, 32)),
    "INPUT.MIN_SIZE_TRAIN_SAMPLING": "choice",
    "INPUT.MAX_SIZE_TRAIN": 1333,
    "INPUT.RESIZE_BEFORE_CROP": [400, 500, 600],
    "INPUT.CROP.ENABLED": True,
    "INPUT.CROP.TYPE": "absolute_range",
    "INPUT.CROP.SIZE": [384, 600],
    "INPUT.MIN_SIZE_TEST": 800,
    "INPUT.MAX_SIZE_TEST": 1333,
    "DATALOADER.FILTER_EMPTY_ANNOTATIONS": False,
    "MODEL.WEIGHTS": "detectron2://ImageNetPretrained/torchvision/R-50.pkl",
    "MODEL.PIXEL_MEAN": [123.675, 116.28, 103.53],
    "MODEL.PIXEL_STD": [58.395, 57.12, 57.375],
    "MODEL.BACKBONE.FREEZE_AT": 2,
    "MODEL.RESNETS.DEPTH": 50,
    "MODEL.RESNETS.NORM": "FrozenBN",
    "MODEL.RESNETS.STRIDE_IN_1X1": False,
    "MODEL.DEFORMABLE_DETR.NUM_CLASSES": 80,
    "MODEL.DEFORMABLE_DETR.NUM_QUERIES": 300,
    "MODEL.DEFORMABLE_DETR.HIDDEN_DIM": 256,
    "MODEL.DEFORMABLE_DETR.NHEADS": 8,
    "MODEL.DEFORMABLE_DETR.ENC_LAYERS": 6,
    "MODEL.DEFORMABLE_DETR.DEC_LAYERS": 6,
    "MODEL.DEFORMABLE_DETR.DIM_FEEDFORWARD": 1024,
    "MODEL.DEFORMABLE_DETR.DROPOUT": 0.1,
    "MODEL.DEFORMABLE_DETR.ACTIVATION": "relu",
    "MODEL.DEFORMABLE_DETR.ENC_N_POINTS": 4,
    "MODEL.DEFORMABLE_DETR.DEC_N_POINTS": 4,
    "MODEL.DEFORMABLE_DETR.AUX_LOSS": True,
    "MODEL.DEFORMABLE_DETR.CLASS_LOSS_COEF": 2.0,
    "MODEL.DEFORMABLE_DETR.BBOX_LOSS_COEF": 5.0,
    "MODEL.DEFORMABLE_DETR.GIOU_LOSS_COEF": 2.0,
    "MODEL.DEFORMABLE_DETR.SET_COST_CLASS": 2.0,
    "MODEL.DEFORMABLE_DETR.SET_COST_BBOX": 5.0,
    "MODEL.DEFORMABLE_DETR.SET_COST_GIOU": 2.0,
    "MODEL.DEFORMABLE_DETR.FOCAL_ALPHA": 0.25,
    "MODEL.DEFORMABLE_DETR.TWO_STAGE_NUM_PROPOSALS": 300,
    "TEST.DETECTIONS_PER_IMAGE": 100,
}
# what tells the released variants apart
VARIANT = {
    "ddetr_r50_single_scale.yaml": {
        "MODEL.DEFORMABLE_DETR.NUM_FEATURE_LEVELS": 1,
        "MODEL.DEFORMABLE_DETR.IN_FEATURES": ["res5"],
        "MODEL.RESNETS.RES5_DILATION": 1,
    },
    "ddetr_r50_single_scale_dc5.yaml": {
        "MODEL.DEFORMABLE_DETR.NUM_FEATURE_LEVELS": 1,
        "MODEL.DEFORMABLE_DETR.IN_FEATURES": ["res5"],
        "MODEL.RESNETS.RES5_DILATION": 2,
    },
    "ddetr_r50.yaml": {
        "MODEL.DEFORMABLE_DETR.NUM_FEATURE_LEVELS": 4,
        "MODEL.DEFORMABLE_DETR.WITH_BOX_REFINE": False,
        "MODEL.DEFORMABLE_DETR.TWO_STAGE": False,
    },
    "ddetr_r50_box_refine.yaml": {
        "MODEL.DEFORMABLE_DETR.WITH_BOX_REFINE": True,
        "MODEL.DEFORMABLE_DETR.TWO_STAGE": False,
    },
    "ddetr_r50_two_stage.yaml": {
        "MODEL.DEFORMABLE_DETR.WITH_BOX_REFINE": True,
        "MODEL.DEFORMABLE_DETR.TWO_STAGE": True,
    },
}


def _get(cfg, key):
    for part in key.split("."):
        cfg = cfg[part]
    return cfg


@pytest.mark.parametrize("name", RELEASED_CONFIGS)
def test_released_configs_carry_the_released_recipe(name):
    cfg = model_cfg(name)
    expected = {**RELEASE, **VARIANT[name]}
    wrong = {
        k: (_get(cfg, k), v)
        for k, v in expected.items()
        if (list(_get(cfg, k)) if isinstance(v, (list, tuple)) else _get(cfg, k))
        != (list(v) if isinstance(v, (list, tuple)) else v)
    }
    assert not wrong, f"{name}: key: (config, released) {wrong}"


def _draw(augs, h, w):
    """One draw of the training augmentation on an (h, w) image: the flat list of transforms."""
    aug_input = T.AugInput(np.zeros((h, w, 3), dtype=np.uint8))
    transforms = T.AugmentationList(augs)(aug_input)
    return transforms.transforms, aug_input.image.shape[:2]


@pytest.mark.parametrize("h,w", [(480, 640), (640, 427), (1000, 700), (300, 1200)])
def test_augmentation_draws_only_the_released_sizes_and_crops(h, w):
    augs = build_detr_augmentation(model_cfg("ddetr_r50.yaml"), is_train=True)
    np.random.seed(0)
    scales, crops, plain = set(RELEASE["INPUT.MIN_SIZE_TRAIN"]), 0, 0
    for _ in range(120):
        transforms, out = _draw(augs, h, w)
        resizes = [t for t in transforms if isinstance(t, T.ResizeTransform)]
        cropped = [t for t in transforms if isinstance(t, T.CropTransform)]
        assert all(
            isinstance(t, (T.ResizeTransform, T.CropTransform, T.HFlipTransform, T.NoOpTransform))
            for t in transforms
        ), transforms
        last = resizes[-1]
        # the last resize gives one of the released shorter sides (longer side at most 1333)
        allowed = {detr_resized_size(last.h, last.w, s, 1333) for s in scales}
        assert (last.new_h, last.new_w) in allowed and tuple(out) == (last.new_h, last.new_w)
        if cropped:
            crops += 1
            first, crop = resizes[0], cropped[0]
            assert (first.new_h, first.new_w) in {
                detr_resized_size(h, w, s, 10**9) for s in (400, 500, 600)
            }
            # each side 384..600, or the whole side when the image is smaller than 384
            for side, full in ((crop.h, first.new_h), (crop.w, first.new_w)):
                assert min(384, full) <= side <= min(600, full)
        else:
            plain += 1
            assert len(resizes) == 1
    # half and half (binomial 120, 1/2: 38..82 is 4 standard deviations)
    assert 38 <= crops <= 82 and crops + plain == 120


def _parameter_names(model, group):
    ids = {id(p) for p in group["params"]}
    return [n for n, p in model.named_parameters() if id(p) in ids]


def test_optimizer_has_the_released_groups_and_full_model_clipping():
    cfg = model_cfg("ddetr_r50.yaml")
    model = build("ddetr_r50.yaml")
    optimizer = build_optimizer(cfg, model)
    seen = set()
    for group in optimizer.param_groups:
        assert group["weight_decay"] == 1e-4
        for name in _parameter_names(model, group):
            seen.add(name)
            if name.startswith("backbone."):
                expected = 2e-5
            elif "sampling_offsets" in name or "reference_points" in name:
                expected = 2e-5
            else:
                expected = 2e-4
            assert group["lr"] == pytest.approx(expected, rel=1e-12), name
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert seen == trainable
    assert not any(n.startswith(("backbone.stem.", "backbone.res2.")) for n in trainable)
    # clipping of the whole model's norm at 0.1 before the step
    params = [p for g in optimizer.param_groups for p in g["params"]]
    for p in params:
        p.grad = torch.full_like(p, 3.0)
    optimizer.step()
    # in float64: float32 sums of 40M squares lose 1e-3 of the norm
    total = torch.linalg.vector_norm(torch.stack([p.grad.double().norm() for p in params]))
    assert total == pytest.approx(0.1, rel=1e-5)


def test_schedule_drops_at_epoch_40_and_not_before():
    cfg = model_cfg("ddetr_r50.yaml")
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.AdamW([param], lr=cfg.SOLVER.BASE_LR)
    scheduler = build_lr_scheduler(cfg, optimizer)
    drop = 40 * ITERS_PER_EPOCH
    for iteration, factor in (
        (0, 1.0),
        (1, 1.0),
        (drop - 1, 1.0),
        (drop, 0.1),
        (50 * ITERS_PER_EPOCH - 1, 0.1),
    ):
        scheduler.last_epoch = iteration - 1
        scheduler.step()  # sets the learning rate of `iteration`
        assert optimizer.param_groups[0]["lr"] == pytest.approx(2e-4 * factor), iteration


def _detectron2_torchvision_name(name):
    """Detectron2's published layout of torchvision's ResNet (ImageNetPretrained/torchvision):
    layerK -> res(K+1), bnJ -> convJ.norm, downsample.0/1 -> shortcut / shortcut.norm, and
    everything outside the layers under "stem."."""
    if not name.startswith("layer"):
        name = "stem." + name
    for k in range(1, 5):
        name = name.replace(f"layer{k}.", f"res{k + 1}.")
    for j in range(1, 4):
        name = name.replace(f"bn{j}.", f"conv{j}.norm.")
    return name.replace("downsample.0.", "shortcut.").replace("downsample.1.", "shortcut.norm.")


def write_imagenet_pkl(path, seed=0):
    """A random torchvision ResNet-50 written as Detectron2 publishes R-50.pkl: a pickled dict of
    numpy arrays under "model", with "__author__" and "matching_heuristics". Returns the model."""
    reference = random_resnet50(seed)
    weights = {
        _detectron2_torchvision_name(k): v.numpy() for k, v in reference.state_dict().items()
    }
    with open(path, "wb") as f:
        pickle.dump({"model": weights, "__author__": "torchvision", "matching_heuristics": True}, f)
    return reference


def test_imagenet_pkl_loads_through_the_safe_path_into_every_backbone_weight(tmp_path, monkeypatch):
    path = tmp_path / "R-50.pkl"
    reference = write_imagenet_pkl(path)

    def refuse(*args, **kwargs):
        raise AssertionError("a weights file was read with plain pickle")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    model = build(
        "ddetr_r50.yaml", ["MODEL.RESNETS.OUT_FEATURES", ["res2", "res3", "res4", "res5"]]
    )
    checkpointer = RecordingCheckpointer(model)
    checkpointer.load(str(path))
    missing = set(checkpointer.incompatible.missing_keys)
    backbone = {k for k in model.state_dict() if k.startswith("backbone.")}
    assert not missing & backbone, sorted(missing & backbone)
    assert checkpointer.incompatible.incorrect_shapes == []
    # only torchvision's classifier and BatchNorm step counters are left over
    leftover = set(checkpointer.incompatible.unexpected_keys)
    assert leftover and all(
        k.startswith("stem.fc.") or k.endswith("num_batches_tracked") for k in leftover
    ), sorted(leftover)
    x = torch.randn(1, 3, 96, 128, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert_same_features(model.backbone(x), torchvision_features(reference, x))


@pytest.mark.slow
def test_train_net_trains_ddetr_r50_from_the_imagenet_file(builtin_datasets_env, tmp_path):
    """Two iterations of the released config (batch 32, AdamW, clipping, DETR's augmentation with
    its crop) starting from an ImageNet-layout file."""
    weights = tmp_path / "R-50.pkl"
    write_imagenet_pkl(weights)
    output = tmp_path / "out"
    load_script("train_net.py").cli(
        [
            "--config-file",
            os.path.join(CONFIG_DIR, "ddetr_r50.yaml"),
            "DATASETS.TRAIN",
            "('ddetr_shapes_train',)",
            "DATASETS.TEST",
            "()",
            "MODEL.DEFORMABLE_DETR.NUM_CLASSES",  # the built-in data's, as the data check asks
            "3",
            "MODEL.DEVICE",
            "cpu",
            "MODEL.WEIGHTS",
            str(weights),
            "INPUT.MIN_SIZE_TRAIN",
            "(64, 96)",
            "INPUT.MAX_SIZE_TRAIN",
            "128",
            "SOLVER.MAX_ITER",
            "2",
            "OUTPUT_DIR",
            str(output),
        ]
    )
    assert (output / "model_final.pth").is_file()
    metrics = [json.loads(line) for line in (output / "metrics.json").read_text().splitlines()]
    assert metrics[-1]["iteration"] == 1 and math.isfinite(metrics[-1]["total_loss"])
    assert metrics[-1]["lr"] == pytest.approx(2e-4)  # the base group: no warm-up
