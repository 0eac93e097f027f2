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
from detectron2.layers import ShapeSpec, get_norm
from detectron2.modeling import BACKBONE_REGISTRY, Backbone, build_backbone
from torch import nn

from deformable_detr.engine import Trainer
from deformable_detr.modeling.backbones.common import NORMS
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


# (config, KEY VALUE, what the error says); each failed inside Detectron2 or torch (a bare
# KeyError, an assertion, a shape error or a division by zero) or built a wrong model silently
# (a negative drop-path rate, a zero-width MLP), naming no key
BAD_BACKBONE_KEYS = [
    (
        "ddetr_r50.yaml",
        "MODEL.RESNETS.DEPTH 19",
        r"DEPTH\) must be one of \[18, 34, 50, 101, 152\]",
    ),
    ("ddetr_r50.yaml", "MODEL.RESNETS.NORM Bogus", r"NORM\) must be one of \['FrozenBN', 'BN'"),
    ("ddetr_r50.yaml", "MODEL.RESNETS.RES5_DILATION 3", r"RES5_DILATION\) must be 1 or 2, got 3"),
    ("ddetr_r50.yaml", "MODEL.RESNETS.DEPTH 18", r"RES2_OUT_CHANNELS\) must be 64 for ResNet-18"),
    ("ddetr_r50.yaml", "MODEL.RESNETS.OUT_FEATURES ['res6']", r"OUT_FEATURES\) must be a non"),
    ("ddetr_r50.yaml", "MODEL.RESNETS.STEM_OUT_CHANNELS 0", r"STEM_OUT_CHANNELS\) must be an int"),
    ("ddetr_r50.yaml", "MODEL.RESNETS.WIDTH_PER_GROUP 0", r"RESNETS.WIDTH_PER_GROUP must be an"),
    ("ddetr_r50.yaml", "MODEL.RESNETS.DEFORM_ON_PER_STAGE [True]", r"STAGE must be 4 booleans"),
    (
        "ddetr_r50.yaml",
        "MODEL.RESNETS.NORM GN MODEL.RESNETS.STEM_OUT_CHANNELS 48",
        r"NORM\) must be a norm other than 'GN' for these widths \[48, 64, 256\]",
    ),
    ("ddetr_swin_t.yaml", "MODEL.SWIN.WINDOW_SIZE 0", r"\(MODEL.SWIN.WINDOW_SIZE\) must be an"),
    ("ddetr_swin_t.yaml", "MODEL.SWIN.EMBED_DIM 0", r"\(MODEL.SWIN.EMBED_DIM\) must be an int"),
    ("ddetr_swin_t.yaml", "MODEL.SWIN.MLP_RATIO 0.0", r"\(MODEL.SWIN.MLP_RATIO\) must be > 0"),
    ("ddetr_swin_t.yaml", "MODEL.SWIN.DROP_PATH_RATE -0.1", r"DROP_PATH_RATE\) must be a prob"),
    ("ddetr_swin_t.yaml", "MODEL.SWIN.DROP_PATH_RATE 1.5", r"DROP_PATH_RATE\) must be a prob"),
    ("ddetr_swin_t.yaml", "MODEL.SWIN.FROZEN_STAGES 6", r"FROZEN_STAGES\) must be in \[-1, 5\]"),
    ("ddetr_regnety_4gf.yaml", "MODEL.REGNET.GROUP_WIDTH 0", r"GROUP_WIDTH\) must be an int"),
    ("ddetr_regnety_4gf.yaml", "MODEL.REGNET.NORM Bogus", r"REGNET.NORM\) must be one of"),
    ("ddetr_regnety_4gf.yaml", "MODEL.REGNET.NORM GN", r"NORM\) must be a norm other than 'GN'"),
    ("ddetr_regnety_4gf.yaml", "MODEL.REGNET.STEM_WIDTH 0", r"STEM_WIDTH\) must be an int >= 1"),
    ("ddetr_regnety_4gf.yaml", "MODEL.REGNET.W_0 20", r"W_0 / W_A / W_M\) must be w_0 > 0 a mul"),
    ("ddetr_regnety_4gf.yaml", "MODEL.REGNET.BOTTLENECK_RATIO 0.3", r"RATIO\) must be 1 / k"),
    ("ddetr_regnety_4gf.yaml", "MODEL.REGNET.BOTTLENECK_RATIO 2.0", r"RATIO\) must be 1 / k"),
    ("ddetr_regnety_4gf.yaml", "MODEL.REGNET.SE_RATIO -0.5", r"SE_RATIO\) must be >= 0"),
    ("ddetr_mvitv2_t.yaml", "MODEL.MVIT.EMBED_DIM 0", r"\(MODEL.MVIT.EMBED_DIM\) must be an int"),
    ("ddetr_mvitv2_t.yaml", "MODEL.MVIT.NUM_HEADS 3", r"NUM_HEADS\) must be an int >= 1 dividing"),
    ("ddetr_mvitv2_t.yaml", "MODEL.MVIT.DROP_PATH_RATE 1.5", r"DROP_PATH_RATE\) must be a prob"),
    ("ddetr_mvitv2_t.yaml", "MODEL.MVIT.PRETRAIN_IMG_SIZE 8", r"IMG_SIZE\) must be an int >= 16"),
    ("ddetr_vit_b.yaml", "MODEL.VIT.EMBED_DIM 0", r"\(MODEL.VIT.EMBED_DIM\) must be an int >= 1"),
    ("ddetr_vit_b.yaml", "MODEL.VIT.NUM_HEADS 0", r"\(MODEL.VIT.NUM_HEADS\) must be an int >= 1"),
    ("ddetr_vit_b.yaml", "MODEL.VIT.OUT_CHANNELS 0", r"OUT_CHANNELS\) must be an int >= 1"),
    ("ddetr_vit_b.yaml", "MODEL.VIT.MLP_RATIO -1.0", r"\(MODEL.VIT.MLP_RATIO\) must be > 0"),
    ("ddetr_vit_b.yaml", "MODEL.VIT.DROP_PATH_RATE 1.5", r"DROP_PATH_RATE\) must be a prob"),
    ("ddetr_vit_b.yaml", "MODEL.VIT.WINDOW_SIZE -1", r"WINDOW_SIZE\) must be an int >= 0"),
    ("ddetr_vit_b.yaml", "MODEL.VIT.PRETRAIN_IMG_SIZE 8", r"IMG_SIZE\) must be an int >= 16"),
]


@pytest.mark.parametrize("config,opts,message", BAD_BACKBONE_KEYS)
def test_bad_backbone_keys_are_named_with_their_allowed_values(config, opts, message):
    """Checked as the backbone is built from the config, before Detectron2 reads the keys; the
    other families' keys shrink the backbone (BACKBONE_CONFIGS), so that a case takes no time."""
    small = BACKBONE_CONFIGS.get(config, [])
    with pytest.raises(ValueError, match=message):
        build_backbone(model_cfg(config, [*NO_WEIGHTS, *small, *opts.split()]))


@pytest.mark.parametrize("frozen,trainable", [(-1, 5), (1, 4), (2, 3), (5, 0)])
def test_swin_frozen_stages_count_as_the_config_says(frozen, trainable):
    """MODEL.SWIN.FROZEN_STAGES: -1 none, 0 or 1 the patch embedding, k >= 2 stages 0..k-2 too;
    trainable counts the patch embedding and the 4 stages that keep trainable parameters."""
    opts = [*NO_WEIGHTS, *BACKBONE_CONFIGS["ddetr_swin_t.yaml"], "MODEL.SWIN.FROZEN_STAGES"]
    swin = build_backbone(model_cfg("ddetr_swin_t.yaml", [*opts, str(frozen)]))
    parts = [swin.patch_embed, *swin.layers]
    assert sum(all(p.requires_grad for p in m.parameters()) for m in parts) == trainable
    assert sum(not any(p.requires_grad for p in m.parameters()) for m in parts) == 5 - trainable


@pytest.mark.parametrize("norm", NORMS)
def test_every_allowed_norm_is_one_detectron2_builds(norm):
    """The list the errors give is Detectron2's get_norm's: each name builds a layer (or none)."""
    layer = get_norm(norm, 64)
    assert (layer is None) == (norm == "")


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
