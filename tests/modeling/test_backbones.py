"""Detectron2's newer backbones under Deformable DETR: Swin, ViTDet's ViT with a simple feature
pyramid, MViTv2 and RegNetY (modeling/backbones/), and a user's own registered backbone.

Each config gives the neck three maps of strides 8, 16 and 32; its backbone trunk has the
parameter count its paper gives for the ImageNet model, less the classifier; a shrunken variant
(model_cases.BACKBONE_CONFIGS) trains a step reaching every backbone parameter and evaluates on
the built-in data. Batch invariance and the padding tests run on them in test_batch_invariance.py
and test_model_padding.py.
"""

import pytest
import torch
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, Backbone
from torch import nn

from deformable_detr.engine import Trainer
from model_cases import BACKBONE_CONFIGS, NO_WEIGHTS, build, image, model_cfg, training_batch

# ImageNet parameter counts in millions, as published (Swin Table 1, MViTv2 Table 2, RegNet's
# model zoo, ViT-B/16), less the 1000-class classifier of the trunk's final width.
PUBLISHED_M = {
    "ddetr_swin_t.yaml": (28.3, 768),
    "ddetr_vit_b.yaml": (86.6, 768),
    "ddetr_mvitv2_t.yaml": (24.2, 768),
    "ddetr_regnety_4gf.yaml": (20.6, 1088),
}


def _trunk(backbone):
    """The ImageNet model's part of the backbone: without ViTDet's pyramid and the per-output
    norms that Detectron2 adds (the ImageNet models have one final norm)."""
    net = getattr(backbone, "net", backbone)
    return sum(
        p.numel()
        for n, p in net.named_parameters()
        if not n.startswith("norm")
        and not n.endswith(("_norm.weight", "_norm.bias"))
        and "rel_pos" not in n
    )


@pytest.mark.parametrize("name", sorted(BACKBONE_CONFIGS))
def test_levels_and_parameter_count(name):
    model = build(name, NO_WEIGHTS)
    shapes = model.backbone.output_shape()
    features = model_cfg(name).MODEL.DEFORMABLE_DETR.IN_FEATURES
    assert [shapes[f].stride for f in features] == [8, 16, 32]
    published, width = PUBLISHED_M[name]
    expected = published * 1e6 - (1000 * width + 1000)
    # ViT-B's published count includes its (1, 197, C) position table; ours is the same shape
    assert abs(_trunk(model.backbone) - expected) / expected < 0.02, _trunk(model.backbone)


def _tiny(name):
    return [
        *BACKBONE_CONFIGS[name],
        *NO_WEIGHTS,
        "MODEL.DEFORMABLE_DETR.ENC_LAYERS",
        "1",
        "MODEL.DEFORMABLE_DETR.DEC_LAYERS",
        "1",
    ]


@pytest.mark.parametrize("name", sorted(BACKBONE_CONFIGS))
def test_a_training_step_reaches_every_backbone_parameter(name):
    model = build(name, _tiny(name))
    model.train()
    losses = model(training_batch())
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    trainable = [(n, p) for n, p in model.backbone.named_parameters() if p.requires_grad]
    assert trainable
    missing = [n for n, p in trainable if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, missing


@pytest.fixture
def shapes_val_8(shapes_val_subset):
    """The first 8 images of the built-in validation set, as a dataset of their own."""
    name, _, _ = shapes_val_subset(8)
    return name


@pytest.mark.parametrize("name", sorted(BACKBONE_CONFIGS))
def test_trains_and_evaluates_on_the_built_in_data(name, shapes_val_8, tmp_path):
    cfg = model_cfg(
        name,
        [
            *_tiny(name),
            "OUTPUT_DIR",
            str(tmp_path),
            "SOLVER.MAX_ITER",
            "1",
            "SOLVER.IMS_PER_BATCH",
            "2",
            "DATALOADER.NUM_WORKERS",
            "0",
            "DATASETS.TRAIN",
            "('ddetr_shapes_train',)",
            "DATASETS.TEST",
            f"('{shapes_val_8}',)",
            "TEST.EVAL_PERIOD",
            "0",
            "MODEL.DEFORMABLE_DETR.NUM_CLASSES",
            "3",
            "INPUT.MIN_SIZE_TRAIN",
            "(128,)",
            "INPUT.MIN_SIZE_TEST",
            "128",
            "INPUT.CROP.ENABLED",
            "False",
        ],
    )
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    assert trainer.iter == 1 and torch.isfinite(
        torch.tensor(trainer.storage.history("total_loss").latest())
    )
    results = Trainer.test(cfg, trainer.model)["bbox"]
    assert 0 <= results["AP"] <= 100 and "AP-circle" in results


def test_errors_name_the_key():
    with pytest.raises(ValueError, match=r"num_heads \(MODEL.SWIN.NUM_HEADS\) must be one head"):
        build("ddetr_swin_t.yaml", [*NO_WEIGHTS, "MODEL.SWIN.NUM_HEADS", "[3, 6, 12]"])
    with pytest.raises(ValueError, match=r"\(MODEL.SWIN.OUT_FEATURES\) must be in the backbone"):
        build("ddetr_swin_t.yaml", [*NO_WEIGHTS, "MODEL.SWIN.OUT_FEATURES", '["p3", "p2"]'])
    with pytest.raises(ValueError, match=r"INPUT.MAX_SIZE_TEST must be <= MODEL.VIT.IMG_SIZE 1024"):
        build("ddetr_vit_b.yaml", [*NO_WEIGHTS, "INPUT.MAX_SIZE_TEST", "1333"])
    with pytest.raises(ValueError, match=r"\(MODEL.MVIT.LAST_BLOCK_INDEXES\) must be"):
        build("ddetr_mvitv2_t.yaml", [*NO_WEIGHTS, "MODEL.MVIT.LAST_BLOCK_INDEXES", "[0, 2, 7]"])
    with pytest.raises(ValueError, match=r"\(MODEL.REGNET.OUT_FEATURES\) must be a non-empty"):
        build("ddetr_regnety_4gf.yaml", [*NO_WEIGHTS, "MODEL.REGNET.OUT_FEATURES", '["s5"]'])


def test_an_image_larger_than_the_vit_square_is_refused():
    """Detectron2's padding to the square would crop it silently."""
    model = build("ddetr_vit_b.yaml", _tiny("ddetr_vit_b.yaml")).eval()
    with pytest.raises(ValueError, match=r"larger than the backbone's input square 256"):
        model([{"image": image(128, 300, 0)}])


class ToyBackbone(Backbone):
    """A user's own backbone: three stride-2 stages after a stride-4 stem, no pretrained file."""

    def __init__(self, width: int = 16):
        super().__init__()
        self.stem = nn.Conv2d(3, width, 4, stride=4)
        self.stages = nn.ModuleList(
            nn.Conv2d(width * 2**i, width * 2 ** (i + 1), 3, 2, 1) for i in range(3)
        )

    def forward(self, x):  # (N, 3, H, W) -> "c3" (N, 2w, H/8, W/8) ... "c5" (N, 8w, H/32, W/32)
        x, out = torch.relu(self.stem(x)), {}
        for i, stage in enumerate(self.stages):
            x = out[f"c{i + 3}"] = torch.relu(stage(x))
        return out

    def output_shape(self):
        return {
            f"c{i + 3}": ShapeSpec(channels=16 * 2 ** (i + 1), stride=2 ** (i + 3))
            for i in range(3)
        }


def build_toy_backbone(cfg, input_shape):
    return ToyBackbone()


def test_a_registered_user_backbone_trains_and_evaluates(shapes_val_8, quick_cfg):
    """The recipe of docs/backbones.md: register a builder, name it in MODEL.BACKBONE.NAME and
    the neck's IN_FEATURES; nothing else changes."""
    if "build_toy_backbone" not in BACKBONE_REGISTRY:
        BACKBONE_REGISTRY.register(build_toy_backbone)
    cfg = quick_cfg(
        [
            "MODEL.BACKBONE.NAME",
            "build_toy_backbone",
            "MODEL.DEFORMABLE_DETR.IN_FEATURES",
            '["c3", "c4", "c5"]',
            "SOLVER.MAX_ITER",
            "2",
            "DATASETS.TEST",
            f"('{shapes_val_8}',)",
        ]
    )
    trainer = Trainer(cfg)
    assert isinstance(trainer.model.backbone, ToyBackbone)
    before = trainer.model.backbone.stem.weight.detach().clone()
    trainer.train()
    assert not torch.equal(before, trainer.model.backbone.stem.weight)
    assert "AP" in Trainer.test(cfg, trainer.model)["bbox"]
