"""Official ImageNet checkpoints of Swin, MViTv2, ViT (MAE) and pycls' RegNet, rebuilt for the
tests as module trees that mirror the authors' code (microsoft/Swin-Transformer
models/swin_transformer.py; facebookresearch/mvit mvit/models/{mvit_model,attention}.py with the
notation of its configs; facebookresearch/mae models_mae.py on timm's Block;
facebookresearch/pycls pycls/models/anynet.py), independently of the converters' own tables
(deformable_detr/checkpoint/{swin,mvit,vit,regnet}.py), so that each checks the other. Built on
the meta device for names and shapes, or filled with random values. Nothing is downloaded.
CASES: each family's converter case, as tests/checkpoint/test_checkpoint_backbones.py runs it.
"""

import dataclasses
import re
from typing import Callable, Dict, NamedTuple

import torch
from detectron2.modeling.backbone.regnet import (
    adjust_block_compatibility,
    generate_regnet_parameters,
)
from torch import nn

from checkpoint_cases import random_value
from deformable_detr.checkpoint import MVIT, PYCLS_REGNET, SWIN, VIT, BackboneVariant
from deformable_detr.checkpoint.mvit import MViTParams
from deformable_detr.checkpoint.regnet import RegNetParams
from deformable_detr.checkpoint.swin import SwinParams
from deformable_detr.checkpoint.vit import ViTParams


def _mlp(d_in, d_hidden, d_out):
    m = nn.Module()
    m.fc1, m.fc2 = nn.Linear(d_in, d_hidden), nn.Linear(d_hidden, d_out)
    return m


def official_swin(embed_dim, depths, num_heads, window, image=224, classes=1000):
    """SwinTransformer(img_size=image, embed_dim, depths, num_heads, window_size=window)."""
    root = nn.Module()
    root.patch_embed = nn.Module()
    root.patch_embed.proj = nn.Conv2d(3, embed_dim, 4, 4)
    root.patch_embed.norm = nn.LayerNorm(embed_dim)
    root.layers = nn.ModuleList()
    side = image // 4
    for i, (depth, heads) in enumerate(zip(depths, num_heads)):
        dim, layer = embed_dim * 2**i, nn.Module()
        layer.blocks = nn.ModuleList()
        for j in range(depth):
            block = nn.Module()
            block.norm1, block.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
            block.attn = nn.Module()
            block.attn.relative_position_bias_table = nn.Parameter(
                torch.zeros((2 * window - 1) ** 2, heads)
            )
            block.attn.register_buffer(
                "relative_position_index",
                torch.randint(0, (2 * window - 1) ** 2, (window**2, window**2)),
            )
            block.attn.qkv, block.attn.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
            block.mlp = _mlp(dim, 4 * dim, dim)
            shifted = j % 2 == 1 and side > window  # a window as large as the map: no shift
            block.register_buffer(
                "attn_mask",
                torch.zeros((side // window) ** 2, window**2, window**2) if shifted else None,
            )
            layer.blocks.append(block)
        if i < len(depths) - 1:
            layer.downsample = nn.Module()
            layer.downsample.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
            layer.downsample.norm = nn.LayerNorm(4 * dim)
        root.layers.append(layer)
        side //= 2
    last = embed_dim * 2 ** (len(depths) - 1)
    root.norm, root.head = nn.LayerNorm(last), nn.Linear(last, classes)
    return root


def official_mvit(depth, dim_mul_blocks, embed_dim=96, num_heads=1, image=224, classes=1000):
    """MViT of the mvit repository's configs: DIM_MUL = HEAD_MUL = [[b, 2.0] for b in
    dim_mul_blocks], POOL_Q_STRIDE 2 at those blocks (1 elsewhere), POOL_KV_STRIDE_ADAPTIVE
    [4, 4], POOL_KVQ_KERNEL [3, 3], DIM_MUL_IN_ATT, REL_POS_SPATIAL, no class token."""
    root = nn.Module()
    root.patch_embed = nn.Module()
    root.patch_embed.proj = nn.Conv2d(3, embed_dim, 7, 4, 3)
    root.blocks = nn.ModuleList()
    dim, heads, side, kv_stride = embed_dim, num_heads, image // 4, 4
    for i in range(depth):
        q_stride = 2 if i in dim_mul_blocks else 1
        dim_out, heads = dim * q_stride, heads * q_stride
        kv_stride = max(kv_stride // q_stride, 1)
        head_dim = dim_out // heads
        block = nn.Module()
        block.norm1, block.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim_out)
        attn = block.attn = nn.Module()
        attn.qkv, attn.proj = nn.Linear(dim, 3 * dim_out), nn.Linear(dim_out, dim_out)
        for x in "qkv":
            setattr(
                attn,
                f"pool_{x}",
                nn.Conv2d(head_dim, head_dim, 3, padding=1, groups=head_dim, bias=False),
            )
            setattr(attn, f"norm_{x}", nn.LayerNorm(head_dim))
        rel = 2 * max(side // q_stride, side // kv_stride) - 1
        attn.rel_pos_h = nn.Parameter(torch.zeros(rel, head_dim))
        attn.rel_pos_w = nn.Parameter(torch.zeros(rel, head_dim))
        block.mlp = _mlp(dim_out, 4 * dim_out, dim_out)
        if dim_out != dim:
            block.proj = nn.Linear(dim, dim_out)
        root.blocks.append(block)
        side, dim = side // q_stride, dim_out
    root.norm = nn.LayerNorm(dim)
    root.head = nn.Module()
    root.head.projection = nn.Linear(dim, classes)
    return root


def official_vit(embed_dim, depth, patch=16, image=224, final="norm", classes=0):
    """MAE's ViT encoder as its files hold it: `final` "norm" (pre-training) or "fc_norm"
    (fine-tuned with global pooling); a head of `classes` rows if any."""
    root = nn.Module()
    root.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
    root.pos_embed = nn.Parameter(torch.zeros(1, (image // patch) ** 2 + 1, embed_dim))
    root.patch_embed = nn.Module()
    root.patch_embed.proj = nn.Conv2d(3, embed_dim, patch, patch)
    root.blocks = nn.ModuleList()
    for _ in range(depth):
        block = nn.Module()
        block.norm1, block.norm2 = nn.LayerNorm(embed_dim), nn.LayerNorm(embed_dim)
        block.attn = nn.Module()
        block.attn.qkv = nn.Linear(embed_dim, 3 * embed_dim)
        block.attn.proj = nn.Linear(embed_dim, embed_dim)
        block.mlp = _mlp(embed_dim, 4 * embed_dim, embed_dim)
        root.blocks.append(block)
    setattr(root, final, nn.LayerNorm(embed_dim))
    if classes:
        root.head = nn.Linear(embed_dim, classes)
    return root


def _conv_bn(parent, conv, bn, w_in, w_out, k=1, stride=1, groups=1):
    setattr(parent, conv, nn.Conv2d(w_in, w_out, k, stride, k // 2, groups=groups, bias=False))
    setattr(parent, bn, nn.BatchNorm2d(w_out))


def pycls_regnet(depth, w_0, w_a, w_m, group_width, se_ratio, stem=32, classes=1000):
    """pycls' RegNet (AnyNet with a simple stem and bottleneck blocks, bottleneck ratio 1), its
    stage widths by pycls' rule (Detectron2's copy of its two functions)."""
    widths, depths = generate_regnet_parameters(w_a, w_0, w_m, depth)[:2]
    widths, _, groups = adjust_block_compatibility(
        widths, [1.0] * len(widths), [group_width] * len(widths)
    )
    root = nn.Module()
    root.stem = nn.Module()
    _conv_bn(root.stem, "conv", "bn", 3, stem, 3, 2)
    w_in = stem
    for k, (d, w, g) in enumerate(zip(depths, widths, groups), start=1):
        stage = nn.Module()
        for j in range(1, d + 1):
            block = nn.Module()
            if j == 1:
                _conv_bn(block, "proj", "bn", w_in, w, 1, 2)
            f = block.f = nn.Module()
            _conv_bn(f, "a", "a_bn", w_in, w)
            _conv_bn(f, "b", "b_bn", w, w, 3, 2 if j == 1 else 1, w // g)
            if se_ratio:
                f.se = nn.Module()
                w_se = int(round(w_in * se_ratio))
                f.se.f_ex = nn.Sequential(nn.Conv2d(w, w_se, 1), nn.ReLU(), nn.Conv2d(w_se, w, 1))
            _conv_bn(f, "c", "c_bn", w, w)
            setattr(stage, f"b{j}", block)
            w_in = w
        setattr(root, f"s{k}", stage)
    root.head = nn.Module()
    root.head.fc = nn.Linear(w_in, classes)
    return root


def random_state_dict(tree, seed):
    """tree's state dict with random values (checkpoint_cases.random_value); integer buffers
    kept."""
    generator = torch.Generator().manual_seed(seed)
    return {
        name: random_value(name, tuple(t.shape), generator) if t.is_floating_point() else t.clone()
        for name, t in tree.state_dict().items()
    }


# one converter case per family: the file's layout, the config that builds its variant, and
# what the converter renames, drops and leaves out
class Case(NamedTuple):
    family: object
    config: str
    default: str  # the variant of the config, built at real size
    real_tree: Callable  # the official tree of `default`
    small_tree: Callable
    small: BackboneVariant  # the converter's variant for small_tree, with the model's keys
    wrap: Callable  # the file's container
    prefix: str  # where the backbone's names start in the model
    renamed: Dict[str, str]  # official -> model names that change beyond the prefix
    dropped: str  # official names without counterpart
    not_in_file: str  # model names the file does not fill


def _model_state(sd):
    return {"model": sd}


def _pycls_state(sd):  # as pycls and mvit save: the training state around the weights
    return {"epoch": 100, "model_state": sd, "optimizer_state": {}, "cfg": "MODEL:\n  TYPE: x\n"}


SMALL_SWIN = """
MODEL.SWIN.EMBED_DIM 32
MODEL.SWIN.DEPTHS [2,2,2,2]
MODEL.SWIN.NUM_HEADS [1,2,2,4]
MODEL.SWIN.WINDOW_SIZE 7
""".split()
SMALL_MVIT = """
MODEL.MVIT.EMBED_DIM 32
MODEL.MVIT.DEPTH 5
MODEL.MVIT.LAST_BLOCK_INDEXES [0,1,3,4]
""".split()
SMALL_VIT = """
MODEL.VIT.IMG_SIZE 256
INPUT.MAX_SIZE_TRAIN 256
INPUT.MAX_SIZE_TEST 256
MODEL.VIT.EMBED_DIM 64
MODEL.VIT.DEPTH 3
MODEL.VIT.NUM_HEADS 2
MODEL.VIT.WINDOW_SIZE 4
MODEL.VIT.WINDOW_BLOCK_INDEXES [0,1]
MODEL.VIT.OUT_CHANNELS 64
""".split()
SMALL_REGNET = """
MODEL.REGNET.DEPTH 8
MODEL.REGNET.W_0 24
MODEL.REGNET.W_A 24.0
MODEL.REGNET.W_M 2.0
MODEL.REGNET.GROUP_WIDTH 8
""".split()  # 4 stages

CASES = {
    "swin": Case(
        SWIN,
        "ddetr_swin_t.yaml",
        "swin_t",
        lambda: official_swin(96, (2, 2, 6, 2), (3, 6, 12, 24), 7),
        lambda: official_swin(32, (2, 2, 2, 2), (1, 2, 2, 4), 7),
        BackboneVariant("small", SwinParams(32, (2, 2, 2, 2), (1, 2, 2, 4), 7), tuple(SMALL_SWIN)),
        _model_state,
        "backbone.",
        {"norm.weight": "norm3.weight", "norm.bias": "norm3.bias"},
        r"head\..*|layers\.\d\.blocks\.\d\.attn_mask",
        r"backbone\.norm[12]\..*",
    ),
    "mvit": Case(
        MVIT,
        "ddetr_mvitv2_t.yaml",
        "mvitv2_t",
        lambda: official_mvit(10, (1, 3, 8)),
        lambda: official_mvit(5, (1, 2, 4), embed_dim=32),
        BackboneVariant("small", MViTParams(32, 1, 5, (0, 1, 3, 4)), tuple(SMALL_MVIT)),
        _pycls_state,
        "backbone.",
        {"norm.weight": "scale5_norm.weight", "norm.bias": "scale5_norm.bias"},
        r"head\..*",
        r"backbone\.scale[234]_norm\..*",
    ),
    "vit": Case(
        VIT,
        "ddetr_vit_b.yaml",
        "vit_b",
        lambda: official_vit(768, 12),
        lambda: official_vit(64, 3),
        BackboneVariant("small", ViTParams(64, 3), tuple(SMALL_VIT)),
        _model_state,
        "backbone.net.",
        {},
        r"cls_token|norm\..*",
        r"backbone\.net\.blocks\.\d+\.attn\.rel_pos_[hw]|backbone\.simfp_.*",
    ),
    "regnet": Case(
        PYCLS_REGNET,
        "ddetr_regnety_4gf.yaml",
        "regnety_4gf",
        lambda: pycls_regnet(22, 96, 31.41, 2.24, 64, 0.25),
        lambda: pycls_regnet(8, 24, 24.0, 2.0, 8, 0.25),
        BackboneVariant("small", RegNetParams(8, 24, 24.0, 2.0, 8, 0.25), tuple(SMALL_REGNET)),
        _pycls_state,
        "backbone.",
        {},
        r"head\..*|.*num_batches_tracked",
        r"$^",
    ),
}


def expected_names(case, official):
    """The model name of every official name that is kept, by the case's own table."""
    return {
        k: case.prefix + case.renamed.get(k, k)
        for k in official
        if not re.fullmatch(case.dropped, k)
    }


def meta_state_dict(tree):
    with torch.device("meta"):
        return tree().state_dict()


def small_family(case):
    return dataclasses.replace(case.family, variants={"small": case.small})
