"""torchvision's ResNet names -> Detectron2's ResNet names, and the conversion of torchvision's
ImageNet weights (resnet50-*.pth, a plain state dict) into a checkpoint that initialises the
backbone of this project's models.

Names (torchvision -> Detectron2, k = 1..4, j = block, i = 1..3):
  conv1 -> stem.conv1                        bn1 -> stem.conv1.norm
  layer{k}.{j}.conv{i} -> res{k+1}.{j}.conv{i}   layer{k}.{j}.bn{i} -> res{k+1}.{j}.conv{i}.norm
  layer{k}.{j}.downsample.0 -> res{k+1}.{j}.shortcut   .downsample.1 -> .shortcut.norm
Shapes: convolutions (C_out, C_in, kh, kw); norms (C,) weight, bias, running_mean, running_var.
Detectron2's FrozenBatchNorm2d (eps 1e-5) computes what torchvision's BatchNorm2d does in eval
mode; fc.* (the ImageNet classifier) and num_batches_tracked have no counterpart and are dropped.
"""

import re
from collections import OrderedDict
from typing import Dict, Mapping

import torch
import torchvision

from .files import Layout, check_layout, convert_weights_file

__all__ = [
    "convert_torchvision_resnet",
    "convert_torchvision_resnet_file",
    "torchvision_resnet_layout",
    "torchvision_to_detectron2_name",
]

# blocks of layer3 -> depth (torchvision's bottleneck ResNets)
_DEPTH_BY_LAYER3_BLOCKS = {6: 50, 23: 101, 36: 152}
_BLOCK_PART = re.compile(r"layer([1-4])\.(\d+)\.(conv[1-3]|bn[1-3]|downsample\.[01])\.(\w+)")


def torchvision_to_detectron2_name(name: str) -> str:
    """Name of a torchvision ResNet parameter or buffer in Detectron2's ResNet, e.g.
    "layer1.0.bn2.running_var" -> "res2.0.conv2.norm.running_var". Raises ValueError for names
    outside the ResNet body (such as fc.weight)."""
    head, _, leaf = name.partition(".")
    if head == "conv1" and leaf:
        return f"stem.conv1.{leaf}"
    if head == "bn1" and leaf:
        return f"stem.conv1.norm.{leaf}"
    match = _BLOCK_PART.fullmatch(name)
    if match is None:
        raise ValueError(f"{name!r} is not a parameter of torchvision's ResNet body")
    layer, block, part, leaf = match.groups()
    if part == "downsample.0":
        module = "shortcut"
    elif part == "downsample.1":
        module = "shortcut.norm"
    elif part.startswith("bn"):
        module = f"conv{part[-1]}.norm"
    else:
        module = part
    return f"res{int(layer) + 1}.{block}.{module}.{leaf}"


def torchvision_resnet_layout(depth: int = 50) -> Layout:
    """Names and shapes of torchvision's ResNet-`depth` body with frozen BN (the release's
    backbone): every parameter and buffer but fc.* and num_batches_tracked."""
    builders = {
        50: torchvision.models.resnet50,
        101: torchvision.models.resnet101,
        152: torchvision.models.resnet152,
    }
    if depth not in builders:
        raise ValueError(f"depth must be one of {sorted(builders)}, got {depth!r}")
    with torch.device("meta"):  # shapes only, nothing allocated
        model = builders[depth](weights=None)
    return {
        k: tuple(v.shape)
        for k, v in model.state_dict().items()
        if not k.startswith("fc.") and not k.endswith("num_batches_tracked")
    }


def _dropped(name) -> bool:
    return isinstance(name, str) and (
        name.startswith("fc.") or name.endswith("num_batches_tracked")
    )


def _depth(state_dict: Mapping) -> int:
    blocks = {
        k.split(".")[1]
        for k in state_dict
        if isinstance(k, str) and k.startswith("layer3.") and k.count(".") >= 2
    }
    if len(blocks) not in _DEPTH_BY_LAYER3_BLOCKS:
        raise ValueError(
            f"not a torchvision ResNet-50/101/152 state dict: layer3 has {len(blocks)} blocks "
            f"(expected one of {sorted(_DEPTH_BY_LAYER3_BLOCKS)}); keys start with "
            f"{[str(k) for k in list(state_dict)[:4]]}"
        )
    return _DEPTH_BY_LAYER3_BLOCKS[len(blocks)]


def convert_torchvision_resnet(state_dict: Mapping) -> Dict[str, torch.Tensor]:
    """torchvision ResNet-50/101/152 state dict -> {"backbone.<Detectron2 name>": tensor}, the
    names of this project's backbone (and of any Detectron2 ResNet under `backbone`). fc.* and
    num_batches_tracked are dropped; anything else unknown, missing or misshapen is refused with a
    ValueError."""
    if not isinstance(state_dict, Mapping):
        raise ValueError(
            f"expected a state dict (a dict of tensors, as torchvision saves its weights), got "
            f"{type(state_dict).__name__}"
        )
    body = {k: v for k, v in state_dict.items() if not _dropped(k)}
    depth = _depth(body)
    check_layout(body, torchvision_resnet_layout(depth), f"torchvision ResNet-{depth} state dict")
    return OrderedDict(
        (f"backbone.{torchvision_to_detectron2_name(k)}", v) for k, v in body.items()
    )


def convert_torchvision_resnet_file(input_path: str, output_path: str) -> int:
    """Converts torchvision's weights file (a plain state dict) to a Detectron2 checkpoint holding
    the backbone only. Loaded as MODEL.WEIGHTS, it initialises the backbone; Detectron2 reports
    the other parameters (neck, transformer, heads) as missing and keeps their initialisation.
    Returns the ResNet depth (set MODEL.RESNETS.DEPTH to it)."""
    return convert_weights_file(
        input_path,
        output_path,
        lambda state_dict: (
            convert_torchvision_resnet(state_dict),
            "torchvision",
            _depth(state_dict),
        ),
    )
