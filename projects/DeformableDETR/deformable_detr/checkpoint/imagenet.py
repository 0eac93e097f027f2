"""What the converters of ImageNet backbone weights (swin.py, mvit.py, vit.py, regnet.py) share:
taking the state dict out of its container, telling which layout a file holds (so that another
family's file is refused by name), choosing and checking the variant, and the command line of
tools/convert_{swin,mvit,vit,regnet}.py.

A family (BackboneFamily) is one official layout: its names, the names it drops (no counterpart
in Detectron2's backbone), its name table to Detectron2 and its variants (BackboneVariant: the
official layout's parameters and the config KEY VALUE pairs that build the matching model).
Legend: a layout maps names to shapes (tuples of ints), as in files.py.
"""

import argparse
import re
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Dict, Hashable, Mapping, Optional, Pattern, Sequence, Tuple

import torch

from .files import Layout, check_layout, convert_weights_file

__all__ = [
    "BackboneFamily",
    "BackboneVariant",
    "add_layer_norm",
    "add_linear",
    "convert_backbone",
    "convert_backbone_file",
    "identify_layout",
    "run_converter",
]

# Layouts told apart by their names, first match wins (MViT's blocks also hold attn.qkv).
KNOWN_LAYOUTS = (
    ("a Detectron2 checkpoint (names under 'backbone.': converted already?)", r"backbone\."),
    ("a released Deformable DETR checkpoint", r"transformer\.(encoder|decoder)\."),
    ("a torchvision ResNet state dict", r"layer[1-4]\.\d+\.conv"),
    ("a torchvision RegNet state dict", r"trunk_output\.block\d"),
    ("a pycls RegNet checkpoint", r"s\d+\.b\d+\."),
    ("a Swin Transformer checkpoint (microsoft/Swin-Transformer)", r"layers\.\d+\.blocks\.\d+\."),
    ("an MViTv2 checkpoint (facebookresearch/mvit)", r"blocks\.\d+\.attn\.pool_[qkv]\."),
    ("a ViT checkpoint (MAE or DeiT)", r"blocks\.\d+\.attn\.qkv\."),
)
# where the official files keep their state dict: {"model": ...} (Swin, MAE, DeiT) or
# {"model_state": ...} (pycls, mvit); torchvision saves it bare
_CONTAINERS = ("model", "model_state")


@dataclass(frozen=True)
class BackboneVariant:
    """One official model: `params` define its layout (a hashable tuple the family's `layout`
    takes), `opts` the config KEY VALUE pairs that build the matching Detectron2 backbone."""

    name: str
    params: Hashable
    opts: Tuple[str, ...]


@dataclass(frozen=True)
class BackboneFamily:
    """One official layout and its conversion. `dropped` matches the names without counterpart,
    `rename` maps every other name to the model's, `layout(params)` gives the official names and
    shapes that remain after dropping, `not_in_file` names the model's backbone parameters the
    file leaves at their initialisation."""

    layout_name: str
    dropped: Pattern
    rename: Callable[[str], str]
    layout: Callable[[Hashable], Layout]
    variants: Mapping[str, BackboneVariant]
    not_in_file: str
    author: str


def add_linear(layout: Layout, name: str, n_in: int, n_out: int, bias: bool = True) -> None:
    """nn.Linear(n_in, n_out) as `name`: weight (n_out, n_in), bias (n_out,)."""
    layout[f"{name}.weight"] = (n_out, n_in)
    if bias:
        layout[f"{name}.bias"] = (n_out,)


def add_layer_norm(layout: Layout, name: str, n: int) -> None:
    """nn.LayerNorm(n) as `name`: weight and bias (n,)."""
    layout[f"{name}.weight"] = layout[f"{name}.bias"] = (n,)


def identify_layout(state_dict: Mapping) -> Optional[str]:
    """Which of KNOWN_LAYOUTS the names of `state_dict` show, or None."""
    names = [k for k in state_dict if isinstance(k, str)]
    for description, pattern in KNOWN_LAYOUTS:
        if any(re.match(pattern, k) for k in names):
            return description
    return None


def _state_dict_in(
    checkpoint: Any, families: Sequence[BackboneFamily]
) -> Tuple[Mapping, BackboneFamily]:
    wanted = " or ".join(f.layout_name for f in families)
    if not isinstance(checkpoint, Mapping):
        raise ValueError(
            f"expected {wanted}: a dict of tensors (possibly under "
            f"{' or '.join(map(repr, _CONTAINERS))}), got {type(checkpoint).__name__}"
        )
    for key in _CONTAINERS:
        if isinstance(checkpoint.get(key), Mapping):
            checkpoint = checkpoint[key]
            break
    found = identify_layout(checkpoint)
    family = next((f for f in families if f.layout_name == found), None)
    if family is None:
        what = found or (
            f"none of the layouts these converters know (its names start with "
            f"{[str(k) for k in list(checkpoint)[:4]]})"
        )
        raise ValueError(f"this is {what}, not {wanted}")
    return checkpoint, family


def _check_variant(
    body: Mapping, family: BackboneFamily, requested: Optional[str]
) -> BackboneVariant:
    """The variant `requested` (None: the one the file holds, else the closest) after checking
    every name and shape of `body` against it; a ValueError names each problem and, when the file
    holds another variant, that variant and the config keys that build it."""
    variants = family.variants
    if requested is not None and requested not in variants:
        raise ValueError(
            f"variant must be one of {sorted(variants)} for {family.layout_name}, got {requested!r}"
        )
    shapes = {k: tuple(v.shape) for k, v in body.items() if isinstance(v, torch.Tensor)}
    layouts = {key: family.layout(v.params) for key, v in variants.items()}
    held = next(
        (key for key, layout in layouts.items() if layout == shapes and len(shapes) == len(body)),
        None,
    )
    chosen = (
        requested
        or held
        or max(layouts, key=lambda key: sum(shapes.get(k) == s for k, s in layouts[key].items()))
    )
    try:
        check_layout(body, layouts[chosen], f"{family.layout_name} as {variants[chosen].name}")
    except ValueError as e:
        if held is not None:
            hint = (
                f"The file holds {variants[held].name}: convert it as variant {held!r} and "
                f"build the model with {' '.join(variants[held].opts)}"
            )
        else:
            hint = (
                f"The file is none of the variants this converter knows "
                f"({', '.join(v.name for v in variants.values())})"
            )
        raise ValueError(f"{e}. {hint}") from None
    return variants[chosen]


def convert_backbone(
    checkpoint: Any, families: Sequence[BackboneFamily], variant: Optional[str] = None
) -> Tuple[Dict[str, torch.Tensor], BackboneVariant, BackboneFamily]:
    """An official checkpoint (the state dict, or a dict holding it under "model" or
    "model_state") of one of `families` -> ({"backbone.<model name>": tensor}, the variant, the
    family). Names without counterpart are dropped; a file of another layout, unknown or missing
    names, and shapes other than the variant's are refused with a ValueError naming them."""
    state_dict, family = _state_dict_in(checkpoint, families)
    body = {
        k: v
        for k, v in state_dict.items()
        if not (isinstance(k, str) and family.dropped.fullmatch(k))
    }
    chosen = _check_variant(body, family, variant)
    converted = OrderedDict((f"backbone.{family.rename(k)}", v) for k, v in body.items())
    return converted, chosen, family


def convert_backbone_file(
    input_path: str,
    output_path: str,
    families: Sequence[BackboneFamily],
    variant: Optional[str] = None,
) -> Tuple[BackboneVariant, BackboneFamily]:
    """Reads the official file without running code (files.read_weights_file), converts it with
    convert_backbone and writes a Detectron2 checkpoint of the backbone only. Loaded as
    MODEL.WEIGHTS, it initialises the backbone; Detectron2 lists the rest of the model as missing.
    Returns the variant and the family; errors name the input file."""

    def convert(checkpoint):
        converted, chosen, family = convert_backbone(checkpoint, families, variant)
        return converted, family.author, (chosen, family)

    return convert_weights_file(input_path, output_path, convert)


def run_converter(
    families: Sequence[BackboneFamily],
    description: str,
    input_help: str,
    argv: Optional[Sequence[str]] = None,
) -> None:
    """The command line of tools/convert_<family>.py: --input, --output, --variant; prints what
    was written and the config to use, or exits with the error."""
    variants = sorted(key for family in families for key in family.variants)
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--input", required=True, help=input_help)
    parser.add_argument("--output", required=True, help="where to write the Detectron2 checkpoint")
    parser.add_argument(
        "--variant",
        choices=variants,
        default=None,
        help="the variant the model is built as (default: the one the file "
        "holds); a file of another variant is refused",
    )
    args = parser.parse_args(argv)
    try:
        chosen, family = convert_backbone_file(args.input, args.output, families, args.variant)
    except (OSError, ValueError) as e:
        raise SystemExit(f"error: {e}") from None
    print(f"wrote: {args.output} ({chosen.name} backbone only, from {family.layout_name})")
    print(f"not in the file, left at their initialisation: {family.not_in_file}")
    print(
        f"use: MODEL.WEIGHTS {args.output} {' '.join(chosen.opts)} (Detectron2 lists the rest "
        f"of the model as missing from the checkpoint)"
    )
