"""Tests of the neck on real Detectron2 backbones (ResNet-50 C3-C5, C5, dilated C5, FPN): level
count, channels and sizes, the first extra level fed by the raw last backbone map, masks equal to
an independent nearest-neighbour downsampling, the released parameter names and initialisation,
the registry, and input checks.

Backbones have random weights and tiny inputs; only shapes, wiring and masks matter here.
"""

import math

import pytest
import torch
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_backbone

from deformable_detr.config import get_config
from deformable_detr.modeling.neck import NECK_REGISTRY, DeformableDETRNeck, build_neck


def make_cfg(
    backbone="build_resnet_backbone",
    in_features=("res3", "res4", "res5"),
    num_feature_levels=4,
    res5_dilation=1,
):
    """A config with the release's ResNet-50 settings (pytorch-style stride in the 3x3 conv,
    frozen BN) and the given neck settings."""
    cfg = get_config()
    cfg.MODEL.BACKBONE.NAME = backbone
    cfg.MODEL.RESNETS.DEPTH = 50
    cfg.MODEL.RESNETS.STRIDE_IN_1X1 = False
    cfg.MODEL.RESNETS.NORM = "FrozenBN"
    cfg.MODEL.RESNETS.RES5_DILATION = res5_dilation
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res3", "res4", "res5"]
    cfg.MODEL.FPN.IN_FEATURES = ["res3", "res4", "res5"]
    cfg.MODEL.DEFORMABLE_DETR.IN_FEATURES = list(in_features)
    cfg.MODEL.DEFORMABLE_DETR.NUM_FEATURE_LEVELS = num_feature_levels
    return cfg


# name -> (config arguments, image size, expected strides and input channels per level).
# ResNet inputs are deliberately not multiples of 32, so levels are not exact fractions of the
# image (70 x 100 -> 9 x 13, 5 x 7, 3 x 4, 2 x 2); FPN needs multiples of 32.
CASES = {
    "resnet_c3_c5": (dict(), (70, 100), [8, 16, 32, 64], [512, 1024, 2048, 2048]),
    "resnet_c3_c5_two_extra": (
        dict(num_feature_levels=5),
        (70, 100),
        [8, 16, 32, 64, 128],
        [512, 1024, 2048, 2048, 256],
    ),
    "resnet_c5": (dict(in_features=["res5"], num_feature_levels=1), (70, 100), [32], [2048]),
    "resnet_dilated_c5": (
        dict(in_features=["res5"], num_feature_levels=1, res5_dilation=2),
        (70, 100),
        [16],
        [2048],
    ),
    "fpn_p3_p5": (
        dict(
            backbone="build_resnet_fpn_backbone",
            in_features=["p3", "p4", "p5"],
            num_feature_levels=5,
        ),
        (64, 96),
        [8, 16, 32, 64, 128],
        [256, 256, 256, 256, 256],
    ),
}

_backbones = {}


def backbone_for(cfg):
    """Builds each distinct backbone once; they are only run, never changed."""
    key = (cfg.MODEL.BACKBONE.NAME, cfg.MODEL.RESNETS.RES5_DILATION)
    if key not in _backbones:
        torch.manual_seed(0)
        _backbones[key] = build_backbone(cfg).eval()
    return _backbones[key]


def image_mask(size):
    """Two images padded to `size`: the first 50 x 70 (padding on both sides), the second full."""
    mask = torch.zeros(2, *size, dtype=torch.bool)
    mask[0, 50:, :] = True
    mask[0, :, 70:] = True
    return mask


def nearest_reference(mask, size):
    """Nearest downsampling written out: output pixel (i, j) of an h x w level takes image pixel
    (floor(i * H / h), floor(j * W / w))."""
    _, H, W = mask.shape
    h, w = size
    rows = torch.tensor([i * H // h for i in range(h)])
    cols = torch.tensor([j * W // w for j in range(w)])
    return mask[:, rows][:, :, cols]


@pytest.fixture(scope="module", params=list(CASES))
def case(request):
    cfg_args, size, strides, in_channels = CASES[request.param]
    cfg = make_cfg(**cfg_args)
    backbone = backbone_for(cfg)
    torch.manual_seed(0)
    neck = build_neck(cfg, backbone.output_shape())
    images = torch.randn(2, 3, *size)
    mask = image_mask(size)
    with torch.no_grad():
        features = backbone(images)
        srcs, masks = neck(features, mask)
    return dict(
        cfg=cfg,
        backbone=backbone,
        neck=neck,
        size=size,
        strides=strides,
        in_channels=in_channels,
        features=features,
        mask=mask,
        srcs=srcs,
        masks=masks,
    )


def test_levels_channels_and_sizes(case):
    neck, cfg, strides = case["neck"], case["cfg"], case["strides"]
    in_features = cfg.MODEL.DEFORMABLE_DETR.IN_FEATURES
    L = len(strides)
    assert isinstance(neck, DeformableDETRNeck)
    assert neck.num_feature_levels == L == len(neck.input_proj)
    assert len(case["srcs"]) == len(case["masks"]) == L
    shapes = case["backbone"].output_shape()
    H, W = case["size"]
    for lvl, (src, stride) in enumerate(zip(case["srcs"], strides)):
        assert src.shape[:2] == (2, 256)
        if lvl < len(in_features):
            f = in_features[lvl]
            assert shapes[f].stride == stride
            assert src.shape[-2:] == case["features"][f].shape[-2:]
            # the backbone's conv arithmetic rounds sizes up at each stride-2 step
            assert src.shape[-2:] == (math.ceil(H / stride), math.ceil(W / stride))
        else:
            prev = case["srcs"][lvl - 1].shape[-2:]
            assert src.shape[-2:] == (math.ceil(prev[0] / 2), math.ceil(prev[1] / 2))


def test_masks_are_the_nearest_downsampled_image_mask(case):
    for src, m in zip(case["srcs"], case["masks"]):
        assert m.dtype == torch.bool and m.shape == (2, *src.shape[-2:])
        assert torch.equal(m, nearest_reference(case["mask"], src.shape[-2:]))
        assert not m[1].any()  # the unpadded image stays unpadded at every level
    assert case["masks"][0][0].any()


def test_wiring_of_levels(case):
    """Backbone levels project their own map; the first extra level the raw last backbone map,
    the following extras the previous projected level."""
    neck, features, srcs = case["neck"], case["features"], case["srcs"]
    in_features = case["cfg"].MODEL.DEFORMABLE_DETR.IN_FEATURES
    with torch.no_grad():
        for lvl in range(neck.num_feature_levels):
            if lvl < len(in_features):
                x = features[in_features[lvl]]
            elif lvl == len(in_features):
                x = features[in_features[-1]]
            else:
                x = srcs[lvl - 1]
            torch.testing.assert_close(neck.input_proj[lvl](x), srcs[lvl], rtol=0, atol=0)


def test_parameter_names_match_release(case):
    L = case["neck"].num_feature_levels
    expected = {
        f"input_proj.{lvl}.{i}.{p}" for lvl in range(L) for i in (0, 1) for p in ("weight", "bias")
    }
    assert {name for name, _ in case["neck"].named_parameters()} == expected


def test_layers_and_initialisation(case):
    n_in = len(case["cfg"].MODEL.DEFORMABLE_DETR.IN_FEATURES)
    for lvl, (proj, c_in) in enumerate(zip(case["neck"].input_proj, case["in_channels"])):
        conv, gn = proj[0], proj[1]
        k = 1 if lvl < n_in else 3
        assert (conv.in_channels, conv.out_channels) == (c_in, 256)
        assert conv.kernel_size == (k, k)
        assert conv.stride == ((1, 1) if lvl < n_in else (2, 2))
        assert conv.padding == ((0, 0) if lvl < n_in else (1, 1))
        assert isinstance(gn, torch.nn.GroupNorm) and gn.num_groups == 32
        assert torch.count_nonzero(conv.bias) == 0
        bound = math.sqrt(6.0 / ((c_in + 256) * k * k))  # Xavier-uniform, gain 1
        assert conv.weight.abs().max() <= bound
        # the std of U(-b, b) is b / sqrt(3); >= 65,536 draws put it within 2%
        assert abs(conv.weight.std().item() - bound / math.sqrt(3)) < 0.02 * bound
        assert torch.all(gn.weight == 1) and torch.count_nonzero(gn.bias) == 0


def test_registry():
    assert NECK_REGISTRY.get("DeformableDETRNeck") is DeformableDETRNeck
    cfg = make_cfg()
    cfg.MODEL.DEFORMABLE_DETR.NECK_NAME = "NoSuchNeck"
    with pytest.raises(KeyError, match="NoSuchNeck"):
        build_neck(cfg, {})


SHAPES = {"res3": ShapeSpec(channels=64, stride=8), "res4": ShapeSpec(channels=64, stride=16)}


def test_plain_arguments():
    neck = DeformableDETRNeck(
        input_shape=SHAPES, in_features=["res3", "res4"], hidden_dim=64, num_feature_levels=3
    )
    feats = {"res3": torch.randn(1, 64, 8, 8), "res4": torch.randn(1, 64, 4, 4)}
    srcs, masks = neck(feats, torch.zeros(1, 64, 64, dtype=torch.bool))
    assert [tuple(s.shape) for s in srcs] == [(1, 64, 8, 8), (1, 64, 4, 4), (1, 64, 2, 2)]
    assert [tuple(m.shape) for m in masks] == [(1, 8, 8), (1, 4, 4), (1, 2, 2)]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(in_features=["res3", "res6"]), r"\['res6'\].*available: \['res3', 'res4'\]"),
        (dict(in_features=[]), "in_features"),
        (dict(num_feature_levels=1), "num_feature_levels must be an int >= len"),
        (dict(hidden_dim=48), "hidden_dim must be a positive multiple of 32"),
    ],
)
def test_constructor_checks(kwargs, message):
    args = dict(
        input_shape=SHAPES, in_features=["res3", "res4"], hidden_dim=64, num_feature_levels=2
    )
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        DeformableDETRNeck(**args)


def test_config_checks():
    cfg = make_cfg(in_features=["res3", "res9"])
    with pytest.raises(ValueError, match="res9"):
        build_neck(cfg, SHAPES)
    cfg = make_cfg(in_features=["res3", "res4"], num_feature_levels=1)
    with pytest.raises(ValueError, match="num_feature_levels"):
        build_neck(cfg, SHAPES)


def test_forward_checks():
    neck = DeformableDETRNeck(
        input_shape=SHAPES, in_features=["res3", "res4"], hidden_dim=32, num_feature_levels=2
    )
    feats = {"res3": torch.randn(2, 64, 8, 8), "res4": torch.randn(2, 64, 4, 4)}
    mask = torch.zeros(2, 64, 64, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"features lack \['res4'\]"):
        neck({"res3": feats["res3"]}, mask)
    with pytest.raises(ValueError, match="batch size 2, got 1"):
        neck(feats, mask[:1])
    with pytest.raises(ValueError, match=r"mask must be \(N, H, W\)"):
        neck(feats, mask[:, None])
    with pytest.raises(TypeError, match="bool"):
        neck(feats, mask.float())
