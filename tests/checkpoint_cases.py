"""Shared builders for the checkpoint tests: fake released Deformable DETR checkpoints in the
authors' exact layout, filled with random values, and files whose unpickling would run code.

The released layout is rebuilt here from module trees that mirror the authors' code
(fundamentalvision/Deformable-DETR: models/deformable_detr.py, deformable_transformer.py,
backbone.py, ops/modules/ms_deform_attn.py), independently of the converter's own table
(deformable_detr.checkpoint.official_layout), so that each checks the other; H-Deformable-DETR's
(HDETR/H-Deformable-DETR) from their run's args, as their build(args) does. Nothing is downloaded.

Shapes: C = 256, 91 class rows indexed by COCO category id, 300 queries, L levels.
"""

import argparse
import math
import os
import shlex
import subprocess
import sys
from collections import OrderedDict

import pytest
import torch
import torchvision
from detectron2.checkpoint import DetectionCheckpointer
from torch import nn

from repo_paths import REPO

# name -> (the authors' args that define the variant, this project's config)
RELEASES = {
    "single_scale": (
        dict(num_feature_levels=1, dilation=False, with_box_refine=False, two_stage=False),
        "ddetr_r50_single_scale.yaml",
    ),
    "single_scale_dc5": (
        dict(num_feature_levels=1, dilation=True, with_box_refine=False, two_stage=False),
        "ddetr_r50_single_scale_dc5.yaml",
    ),
    "multi_scale": (
        dict(num_feature_levels=4, dilation=False, with_box_refine=False, two_stage=False),
        "ddetr_r50.yaml",
    ),
    "box_refine": (
        dict(num_feature_levels=4, dilation=False, with_box_refine=True, two_stage=False),
        "ddetr_r50_box_refine.yaml",
    ),
    "two_stage": (
        dict(num_feature_levels=4, dilation=False, with_box_refine=True, two_stage=True),
        "ddetr_r50_two_stage.yaml",
    ),
}
# H-Deformable-DETR's R50 releases (HDETR/H-Deformable-DETR, a fork of the authors' code): name ->
# the arguments of their run (their configs/two_stage/*/12eps/r50_*.sh); their model is built
# from the args (hdetr_tree), as their build(args) does
_HDETR_RUN = dict(
    with_box_refine=True,
    two_stage=True,
    dim_feedforward=2048,
    num_queries_one2one=300,
    num_queries_one2many=0,
    k_one2many=0,
    epochs=12,
    lr_drop=11,
)
_TRICKS = dict(dropout=0.0, mixed_selection=True, look_forward_twice=True)
HDETR_RELEASES = {
    "hdetr_baseline": _HDETR_RUN,
    "hdetr_tricks": dict(_HDETR_RUN, **_TRICKS),
    "hdetr_hybrid": dict(
        _HDETR_RUN, num_queries_one2many=1500, k_one2many=6, lambda_one2many=1.0, **_TRICKS
    ),
}
# their main.py's other arguments (defaults), which every file of theirs stores
_HDETR_MAIN = dict(
    num_feature_levels=4,
    dilation=False,
    dim_feedforward=2048,
    dropout=0.1,
    num_queries_one2one=300,
    num_queries_one2many=0,
    mixed_selection=False,
    look_forward_twice=False,
    k_one2many=5,
    lambda_one2many=1.0,
    topk=100,
    pretrained_backbone_path="./swin_tiny_patch4_window7_224.pkl",
    drop_path_rate=0.2,
    eval_in_training_set=False,
    use_fp16=False,
    use_checkpoint=False,
    use_wandb=False,
)
CLASS_ROWS = 91
HEAD_OFFSET = 1000.0  # class head h holds row i filled with the value i + h * HEAD_OFFSET


def _deform_attn(levels):
    m = nn.Module()
    m.sampling_offsets = nn.Linear(256, 8 * levels * 4 * 2)
    m.attention_weights = nn.Linear(256, 8 * levels * 4)
    m.value_proj = nn.Linear(256, 256)
    m.output_proj = nn.Linear(256, 256)
    return m


def _ffn_and_norms(m, norms, ffn):
    m.linear1 = nn.Linear(256, ffn)
    m.linear2 = nn.Linear(ffn, 256)
    for name in norms:
        setattr(m, name, nn.LayerNorm(256))
    return m


def _encoder_layer(levels, ffn):
    m = nn.Module()
    m.self_attn = _deform_attn(levels)
    return _ffn_and_norms(m, ("norm1", "norm2"), ffn)


def _decoder_layer(levels, ffn):
    m = nn.Module()
    m.cross_attn = _deform_attn(levels)
    m.self_attn = nn.MultiheadAttention(256, 8)
    return _ffn_and_norms(m, ("norm1", "norm2", "norm3"), ffn)


def _box_mlp():
    m = nn.Module()
    m.layers = nn.ModuleList([nn.Linear(256, 256), nn.Linear(256, 256), nn.Linear(256, 4)])
    return m


def released_tree(
    num_feature_levels,
    dilation,
    with_box_refine,
    two_stage,
    dim_feedforward=1024,
    content_queries=0,
):
    """The released model's module tree on the meta device (names and shapes only); H-DETR's with
    its FFN width and, with mixed query selection, its learned content queries."""
    levels = num_feature_levels
    with torch.device("meta"):
        root = nn.Module()
        body = torchvision.models.resnet50(
            replace_stride_with_dilation=[False, False, dilation],
            norm_layer=torchvision.ops.FrozenBatchNorm2d,
        )
        del body.fc  # IntermediateLayerGetter stops at layer4
        joiner = nn.Module()
        joiner.body = body
        root.backbone = nn.ModuleList([joiner])  # backbone.1, the sine encoding, has no weights

        channels = [512, 1024, 2048] if levels > 1 else [2048]
        projections = [nn.Sequential(nn.Conv2d(c, 256, 1), nn.GroupNorm(32, 256)) for c in channels]
        in_channels = channels[-1]
        for _ in range(levels - len(channels)):
            projections.append(
                nn.Sequential(
                    nn.Conv2d(in_channels, 256, 3, stride=2, padding=1), nn.GroupNorm(32, 256)
                )
            )
            in_channels = 256
        root.input_proj = nn.ModuleList(projections)

        transformer = root.transformer = nn.Module()
        transformer.level_embed = nn.Parameter(torch.empty(levels, 256))
        transformer.encoder = nn.Module()
        transformer.encoder.layers = nn.ModuleList(
            _encoder_layer(levels, dim_feedforward) for _ in range(6)
        )
        transformer.decoder = nn.Module()
        transformer.decoder.layers = nn.ModuleList(
            _decoder_layer(levels, dim_feedforward) for _ in range(6)
        )
        if two_stage:
            transformer.enc_output = nn.Linear(256, 256)
            transformer.enc_output_norm = nn.LayerNorm(256)
            transformer.pos_trans = nn.Linear(512, 512)
            transformer.pos_trans_norm = nn.LayerNorm(512)
            if content_queries:  # H-DETR's mixed selection: one row per query, both groups
                root.query_embed = nn.Embedding(content_queries, 256)
        else:
            transformer.reference_points = nn.Linear(256, 2)
            root.query_embed = nn.Embedding(300, 512)

        num_heads = 7 if two_stage else 6
        if with_box_refine:
            root.class_embed = nn.ModuleList(nn.Linear(256, CLASS_ROWS) for _ in range(num_heads))
            root.bbox_embed = nn.ModuleList(_box_mlp() for _ in range(num_heads))
            transformer.decoder.bbox_embed = root.bbox_embed
        else:
            class_head, box_head = nn.Linear(256, CLASS_ROWS), _box_mlp()
            root.class_embed = nn.ModuleList([class_head] * num_heads)
            root.bbox_embed = nn.ModuleList([box_head] * num_heads)
        if two_stage:
            transformer.decoder.class_embed = root.class_embed
    return root


def hdetr_tree(args):
    """H-DETR's model as their build(args) makes it (models/deformable_detr.py): the authors' tree
    with args.dim_feedforward and, two-stage with args.mixed_selection, the content queries
    query_embed of num_queries_one2one + num_queries_one2many rows (the one-to-many queries have
    no other module)."""
    mixed = args.two_stage and args.mixed_selection
    rows = args.num_queries_one2one + args.num_queries_one2many
    return released_tree(
        args.num_feature_levels,
        args.dilation,
        args.with_box_refine,
        args.two_stage,
        args.dim_feedforward,
        rows if mixed else 0,
    )


def _tree(name, **overrides):
    if name in RELEASES:
        return released_tree(**RELEASES[name][0])
    return hdetr_tree(released_args(name, **overrides))


def released_meta_state_dict(name, **overrides):
    """The released state dict of a variant on the meta device: names and shapes, no values
    (H-DETR's: of their run's args with `overrides`)."""
    return _tree(name, **overrides).state_dict()


def released_shapes(name):
    """{released name: shape} of a variant."""
    return OrderedDict((k, tuple(v.shape)) for k, v in released_meta_state_dict(name).items())


def random_value(name, shape, generator):
    """A random value for the parameter `name` of `shape`: traceable rows for class heads,
    variances in [0.5, 1.5], weights scaled by their fan-in, small vectors."""
    if "class_embed." in name:  # row i = i (+ offset of head h): traceable rows
        head = int(name.split("class_embed.")[1].split(".")[0])
        rows = torch.arange(shape[0], dtype=torch.float32) + head * HEAD_OFFSET
        return rows.view(-1, *[1] * (len(shape) - 1)).expand(shape).clone()
    if name.endswith("running_var"):
        return torch.rand(shape, generator=generator).add_(0.5)
    if len(shape) >= 2:  # scaled so that a forward pass stays finite
        fan_in = math.prod(shape[1:])
        return torch.randn(shape, generator=generator).div_(math.sqrt(fan_in))
    return torch.randn(shape, generator=generator).mul_(0.1)


def released_args(name, **overrides):
    """An argparse.Namespace as the authors' main.py stores it (a representative subset); H-DETR's
    (HDETR_RELEASES) as theirs does: their arguments in place of num_queries."""
    fields = dict(
        lr=2e-4,
        lr_backbone_names=["backbone.0"],
        lr_backbone=2e-5,
        lr_linear_proj_names=["reference_points", "sampling_offsets"],
        lr_linear_proj_mult=0.1,
        batch_size=2,
        weight_decay=1e-4,
        epochs=50,
        lr_drop=40,
        lr_drop_epochs=None,
        clip_max_norm=0.1,
        sgd=False,
        frozen_weights=None,
        backbone="resnet50",
        position_embedding="sine",
        position_embedding_scale=2 * math.pi,
        enc_layers=6,
        dec_layers=6,
        dim_feedforward=1024,
        hidden_dim=256,
        dropout=0.1,
        nheads=8,
        num_queries=300,
        dec_n_points=4,
        enc_n_points=4,
        masks=False,
        aux_loss=True,
        focal_alpha=0.25,
        dataset_file="coco",
        coco_path="./data/coco",
        output_dir="exps/r50",
        device="cuda",
        seed=42,
        resume="",
        start_epoch=0,
        eval=False,
        num_workers=2,
        cache_mode=False,
        distributed=True,
        rank=0,
        world_size=8,
        gpu=0,
        dist_url="env://",
        dist_backend="nccl",
    )
    if name in RELEASES:
        fields.update(RELEASES[name][0])
    else:
        del fields["num_queries"]
        fields.update(_HDETR_MAIN, output_dir=f"exps/{name}", **HDETR_RELEASES[name])
    fields.update(overrides)
    return argparse.Namespace(**fields)


def released_checkpoint(name, seed=0, with_args=True, **overrides):
    """A checkpoint dict in the released layout: "model" (random values; modules registered under
    several names hold the same tensor, as in the authors' files), "optimizer", "lr_scheduler",
    "epoch" and (optionally) "args" (H-DETR's: their run's with `overrides`, and the model
    built from them)."""
    generator = torch.Generator().manual_seed(seed)
    tree = _tree(name, **overrides)
    by_module_tensor, model = {}, OrderedDict()
    for key, meta in tree.state_dict(keep_vars=True).items():
        if id(meta) not in by_module_tensor:
            by_module_tensor[id(meta)] = random_value(key, tuple(meta.shape), generator)
        model[key] = by_module_tensor[id(meta)]
    checkpoint = {
        "model": model,
        "optimizer": {
            "state": {0: {"step": 1000, "exp_avg": torch.zeros(3), "exp_avg_sq": torch.zeros(3)}},
            "param_groups": [
                {
                    "lr": 2e-5,
                    "betas": (0.9, 0.999),
                    "eps": 1e-8,
                    "weight_decay": 1e-4,
                    "amsgrad": False,
                    "params": [0],
                    "initial_lr": 2e-4,
                }
            ],
        },
        "lr_scheduler": {
            "step_size": 40,
            "gamma": 0.1,
            "base_lrs": [2e-4, 2e-5],
            "last_epoch": 50,
            "_step_count": 51,
            "_last_lr": [2e-5, 2e-6],
        },
        "epoch": 49,
    }
    if with_args:
        checkpoint["args"] = released_args(name, **overrides)
    return checkpoint


class CodeRunningPayload:
    """Unpickling this runs a shell command that creates `marker` (harmless, but proof that code
    ran)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(self.marker)}",)


def write_code_running_file(path, marker, wrap=lambda payload: {"model": {}, "args": payload}):
    """Writes a torch file whose unpickling would create `marker`."""
    torch.save(wrap(CodeRunningPayload(str(marker))), path)


class RecordingCheckpointer(DetectionCheckpointer):
    """Detectron2's checkpointer, keeping the incompatible keys of its last load in
    `incompatible` (missing_keys, unexpected_keys, incorrect_shapes)."""

    def _load_model(self, checkpoint):
        self.incompatible = super()._load_model(checkpoint)
        return self.incompatible


def assert_bad_file_refused(convert, tmp_path, content, message):
    """A converter `convert(source, target)` given a torch file holding `content` refuses it
    with a ValueError that matches `message` and names the file, and writes no output."""
    path = tmp_path / "bad.pth"
    torch.save(content, path)
    with pytest.raises(ValueError, match=message) as error:
        convert(str(path), str(tmp_path / "out.pth"))
    assert str(path) in str(error.value)
    assert not (tmp_path / "out.pth").exists()


def run_tool(script, *args):
    """Runs tools/<script> with this interpreter from the repository root."""
    return subprocess.run(
        [sys.executable, os.path.join(REPO, "tools", script), *map(str, args)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
