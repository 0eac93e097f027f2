"""The released Deformable DETR checkpoints (fundamentalvision/Deformable-DETR): their five
variants, how to tell them apart, and the exact layout (names and shapes) of their state dicts as
the authors' code builds them. H-Deformable-DETR's R50 checkpoints (HDETR/H-Deformable-DETR, a
fork with the same names) are three more variants (their settings: hdetr_layout.py): F = 2048,
and with mixed query selection a learned content query_embed (Q_c, C) in two-stage mode,
Q_c = Q_1 one-to-one + Q_2 one-to-many queries, which own no other weight (no "_one2many" name).

Shapes: C = 256 model width, F = 1024 FFN width, M = 8 heads, P = 4 sampling points, L feature
levels (1 or 4), Q = 300 queries, K = 91 class rows (row i = COCO category id i; row 0 and the
ten unused ids are never trained), D = 6 decoder layers, E = 6 encoder layers.

Names: backbone.0.body.* is torchvision's ResNet-50 body (frozen BN: weight, bias, running_mean,
running_var); input_proj.{l}.{0: conv, 1: GroupNorm}; transformer.*; query_embed (not two-stage);
class_embed.{i} / bbox_embed.{i}.layers.{0,1,2}, i < D (+1 two-stage: the proposal head).
Shared heads (no box refinement) are stored as equal copies under every index; with box
refinement transformer.decoder.bbox_embed.* and with two-stage transformer.decoder.class_embed.*
repeat the heads (the same modules, registered twice).
"""

from dataclasses import dataclass
from typing import Mapping, Optional, Tuple

from . import hdetr_layout
from .files import Layout
from .torchvision_resnet import torchvision_resnet_layout

__all__ = [
    "ALIAS_PREFIXES",
    "BACKBONE_PREFIX",
    "CLASS_ROWS",
    "DEC_LAYERS",
    "HDETR_VARIANTS",
    "KNOWN_VARIANTS",
    "RELEASED_VARIANTS",
    "Variant",
    "detect_variant",
    "released_layout",
]

C, F, M, P, Q, CLASS_ROWS, DEC_LAYERS, ENC_LAYERS = 256, 1024, 8, 4, 300, 91, 6, 6
BACKBONE_PREFIX = "backbone.0.body."
ALIAS_PREFIXES = ("transformer.decoder.class_embed.", "transformer.decoder.bbox_embed.")
_BACKBONE_CHANNELS = {1: (2048,), 4: (512, 1024, 2048)}  # C5 only, or C3-C5
_FIELDS = (
    "num_feature_levels",
    "dilation",
    "with_box_refine",
    "two_stage",
    "dim_feedforward",
    "content_queries",
)


@dataclass(frozen=True)
class Variant:
    """A released model: its name, this project's config, and the authors' args that define it.
    H-DETR's (hdetr_layout.resolve) add the config keys their file needs, its schedule when the
    stored args tell it, and their published AP."""

    name: str
    config: str  # file name in configs/
    num_feature_levels: int
    dilation: bool  # DC5
    with_box_refine: bool
    two_stage: bool
    box_ap: Optional[float]  # released COCO val box AP of this very model; None: not published
    dim_feedforward: int = F  # the FFN width (linear1's rows)
    content_queries: int = 0  # Q_c rows of the learned content queries (mixed query selection)
    source: str = "fundamentalvision/Deformable-DETR"
    opts: Tuple[str, ...] = ()  # config keys to add to `config`
    epochs: Optional[int] = None  # the training schedule, where it matters (H-DETR's)
    published: Tuple[Tuple[int, float], ...] = ()  # H-DETR's (epochs, AP) of this release

    @property
    def num_heads(self) -> int:
        """Class (and box) heads: one per decoder layer, plus the proposal head in two-stage."""
        return DEC_LAYERS + (1 if self.two_stage else 0)


RELEASED_VARIANTS = (
    Variant("single_scale", "ddetr_r50_single_scale.yaml", 1, False, False, False, 39.4),
    Variant("single_scale_dc5", "ddetr_r50_single_scale_dc5.yaml", 1, True, False, False, 41.5),
    Variant("multi_scale", "ddetr_r50.yaml", 4, False, False, False, 44.5),
    Variant("box_refine", "ddetr_r50_box_refine.yaml", 4, False, True, False, 46.2),
    Variant("two_stage", "ddetr_r50_two_stage.yaml", 4, False, True, True, 46.9),
)


def _hdetr_variant(fields: dict, dim_feedforward: int, content_queries: int) -> Variant:
    """An H-DETR model (two-stage with box refinement on 4 levels, as all of theirs)."""
    return Variant(
        fields["name"],
        fields["config"],
        *(4, False, True, True),
        fields["box_ap"],
        dim_feedforward,
        content_queries,
        hdetr_layout.SOURCE,
        fields["opts"],
        fields["epochs"],
        fields["published"],
    )


def _hdetr_release(release: hdetr_layout.Release) -> Variant:
    """A release of theirs, 12 epochs, as their main.py stores its args."""
    settings = release.settings
    rows = settings["num_queries_one2one"] + settings["num_queries_one2many"]
    weights = {
        "dim_feedforward": settings["dim_feedforward"],
        "content_queries": rows if settings["mixed_selection"] else 0,
    }
    fields = hdetr_layout.resolve(weights, {**settings, "epochs": 12})
    return _hdetr_variant(fields, **weights)


HDETR_VARIANTS = tuple(_hdetr_release(r) for r in hdetr_layout.HDETR_RELEASES)
KNOWN_VARIANTS = RELEASED_VARIANTS + HDETR_VARIANTS
_BY_NAME = {v.name: v for v in KNOWN_VARIANTS}


def _linear(prefix: str, fan_in: int, fan_out: int) -> Layout:
    return {f"{prefix}.weight": (fan_out, fan_in), f"{prefix}.bias": (fan_out,)}


def _norm(prefix: str, channels: int) -> Layout:
    return {f"{prefix}.weight": (channels,), f"{prefix}.bias": (channels,)}


def _deform_attn(prefix: str, levels: int) -> Layout:
    return {
        **_linear(f"{prefix}.sampling_offsets", C, M * levels * P * 2),
        **_linear(f"{prefix}.attention_weights", C, M * levels * P),
        **_linear(f"{prefix}.value_proj", C, C),
        **_linear(f"{prefix}.output_proj", C, C),
    }


def _ffn(prefix: str, ffn: int) -> Layout:
    return {**_linear(f"{prefix}.linear1", C, ffn), **_linear(f"{prefix}.linear2", ffn, C)}


def _encoder_layer(prefix: str, levels: int, ffn: int) -> Layout:
    return {
        **_deform_attn(f"{prefix}.self_attn", levels),
        **_norm(f"{prefix}.norm1", C),
        **_ffn(prefix, ffn),
        **_norm(f"{prefix}.norm2", C),
    }


def _decoder_layer(prefix: str, levels: int, ffn: int) -> Layout:
    # self_attn is torch.nn.MultiheadAttention: packed q, k, v input projection
    return {
        **_deform_attn(f"{prefix}.cross_attn", levels),
        **_norm(f"{prefix}.norm1", C),
        f"{prefix}.self_attn.in_proj_weight": (3 * C, C),
        f"{prefix}.self_attn.in_proj_bias": (3 * C,),
        **_linear(f"{prefix}.self_attn.out_proj", C, C),
        **_norm(f"{prefix}.norm2", C),
        **_ffn(prefix, ffn),
        **_norm(f"{prefix}.norm3", C),
    }


def _input_proj(levels: int) -> Layout:
    layout, channels = {}, _BACKBONE_CHANNELS[levels]
    for level, in_channels in enumerate(channels):
        layout[f"input_proj.{level}.0.weight"] = (C, in_channels, 1, 1)
        layout[f"input_proj.{level}.0.bias"] = (C,)
        layout.update(_norm(f"input_proj.{level}.1", C))
    in_channels = channels[-1]
    for level in range(len(channels), levels):  # extra levels: stride-2 3x3 convolutions
        layout[f"input_proj.{level}.0.weight"] = (C, in_channels, 3, 3)
        layout[f"input_proj.{level}.0.bias"] = (C,)
        layout.update(_norm(f"input_proj.{level}.1", C))
        in_channels = C
    return layout


def _heads(prefix: str, count: int, with_class: bool = True, with_box: bool = True) -> Layout:
    layout = {}
    for i in range(count):
        if with_class:
            layout.update(_linear(f"{prefix}class_embed.{i}", C, CLASS_ROWS))
        if with_box:
            for j, (fan_in, fan_out) in enumerate(((C, C), (C, C), (C, 4))):
                layout.update(_linear(f"{prefix}bbox_embed.{i}.layers.{j}", fan_in, fan_out))
    return layout


def released_layout(variant: Variant) -> Layout:
    """Every name in the released state dict of `variant`, with its shape."""
    levels = variant.num_feature_levels
    layout = {BACKBONE_PREFIX + k: s for k, s in torchvision_resnet_layout(50).items()}
    layout.update(_input_proj(levels))
    layout["transformer.level_embed"] = (levels, C)
    ffn = variant.dim_feedforward
    for n in range(ENC_LAYERS):
        layout.update(_encoder_layer(f"transformer.encoder.layers.{n}", levels, ffn))
    for n in range(DEC_LAYERS):
        layout.update(_decoder_layer(f"transformer.decoder.layers.{n}", levels, ffn))
    if variant.two_stage:
        layout.update(
            {
                **_linear("transformer.enc_output", C, C),
                **_norm("transformer.enc_output_norm", C),
                **_linear("transformer.pos_trans", 2 * C, 2 * C),
                **_norm("transformer.pos_trans_norm", 2 * C),
            }
        )
        if variant.content_queries:
            layout["query_embed.weight"] = (variant.content_queries, C)
    else:
        layout.update(_linear("transformer.reference_points", C, 2))
        layout["query_embed.weight"] = (Q, 2 * C)
    layout.update(_heads("", variant.num_heads))
    layout.update(
        _heads(
            "transformer.decoder.",
            variant.num_heads,
            with_class=variant.two_stage,
            with_box=variant.with_box_refine,
        )
    )
    return layout


def _arg(args, name: str):
    if isinstance(args, Mapping):
        return args.get(name)
    return getattr(args, name, None)


def _from_keys(state_dict: Mapping) -> dict:
    level_embed = state_dict.get("transformer.level_embed")
    if getattr(level_embed, "ndim", 0) == 2:
        levels = level_embed.shape[0]
    else:
        levels = len(
            {
                k.split(".")[1]
                for k in state_dict
                if isinstance(k, str) and k.startswith("input_proj.") and k.count(".") >= 2
            }
        )
    if levels == 0:
        raise ValueError(
            "not a Deformable DETR state dict: it has neither transformer.level_embed nor "
            f"input_proj.* (keys start with {[str(k) for k in list(state_dict)[:4]]})"
        )
    two_stage = "transformer.enc_output.weight" in state_dict
    linear1 = state_dict.get("transformer.encoder.layers.0.linear1.weight")
    query_embed = state_dict.get("query_embed.weight")
    return {
        "num_feature_levels": levels,
        "two_stage": two_stage,
        "with_box_refine": any(
            isinstance(k, str) and k.startswith(ALIAS_PREFIXES[1]) for k in state_dict
        ),
        "dim_feedforward": linear1.shape[0] if getattr(linear1, "ndim", 0) == 2 else F,
        # two-stage with mixed query selection: the learned content queries
        "content_queries": (
            query_embed.shape[0] if two_stage and getattr(query_embed, "ndim", 0) == 2 else 0
        ),
    }


def _from_args(args) -> dict:
    """The fields the stored args state: the authors' and H-DETR's main.py arguments (H-DETR's
    mixed_selection and query counts give query_embed's rows in two-stage mode)."""
    found = {field: _arg(args, field) for field in _FIELDS if field != "content_queries"}
    mixed, one2one = _arg(args, "mixed_selection"), _arg(args, "num_queries_one2one")
    if mixed is not None and one2one is not None and _arg(args, "two_stage"):
        one2many = _arg(args, "num_queries_one2many") or 0
        found["content_queries"] = one2one + one2many if mixed else 0
    return {k: v for k, v in found.items() if v is not None}


def _is_hdetr(found: dict, args) -> bool:
    """H-DETR's file: their args (num_queries_one2one, which the authors' main.py lacks), or
    weights of none of the authors' models (a wider FFN, learned content queries in two-stage)."""
    return (
        (args is not None and _arg(args, "num_queries_one2one") is not None)
        or found["dim_feedforward"] != F
        or found["content_queries"] > 0
    )


def _detect_hdetr(found: dict, args, variant: Optional[str]) -> Variant:
    backbone = None if args is None else _arg(args, "backbone")
    if backbone not in (None, "resnet50"):
        raise ValueError(
            f"an H-Deformable-DETR file on {backbone!r}: only their ResNet-50 files are read "
            f"(not yet their Swin ones)"
        )
    shape = dict(num_feature_levels=4, dilation=False, with_box_refine=True, two_stage=True)
    if any(found.get(field, value) != value for field, value in shape.items()):
        raise ValueError(
            "H-Deformable-DETR's files are read for two-stage models with box refinement on 4 "
            f"levels, as all their releases; this one has {found}"
        )
    fields = hdetr_layout.resolve(found, args)
    if variant is not None and variant != fields["name"]:
        raise ValueError(
            f"variant {variant!r} was given, but the checkpoint is H-Deformable-DETR's "
            f"{fields['name']!r} (dim_feedforward={found['dim_feedforward']}, "
            f"content_queries={found['content_queries']})"
        )
    return _hdetr_variant(fields, found["dim_feedforward"], found["content_queries"])


def detect_variant(state_dict: Mapping, args=None, variant: Optional[str] = None) -> Variant:
    """The released variant a state dict belongs to.

    The keys tell the number of levels (transformer.level_embed), two-stage
    (transformer.enc_output), box refinement (the transformer.decoder.bbox_embed aliases), the
    FFN width (linear1) and, two-stage, learned content queries (query_embed, H-DETR's mixed
    selection). The authors' args (argparse.Namespace or dict, optional) add `dilation` (DC5),
    which no key shows, and must agree with the keys. `variant` (a name of KNOWN_VARIANTS) is a
    choice by the user: it must agree with both and settles DC5 when there are no args. Without
    args or `variant`, a single-scale state dict is refused as ambiguous; a multi-scale one is
    taken as undilated (every released multi-scale model is). H-DETR's files (their args, or
    weights of none of the authors' models) go to hdetr_layout.resolve, which names the config
    and the keys their settings need. Raises ValueError naming the disagreement.
    """
    if variant is not None and variant not in _BY_NAME:
        raise ValueError(f"variant must be one of {list(_BY_NAME)}, got {variant!r}")
    if any(isinstance(k, str) and k.startswith(BACKBONE_PREFIX) for k in state_dict) and (
        BACKBONE_PREFIX + "conv1.weight" not in state_dict
    ):
        raise ValueError(
            f"the backbone ({BACKBONE_PREFIX}*) is not a ResNet-50, it has no conv1 (e.g. "
            f"H-Deformable-DETR's Swin files): only ResNet-50 files are read"
        )
    found = _from_keys(state_dict)
    if args is not None:
        for field, value in _from_args(args).items():
            if field in found and found[field] != value:
                raise ValueError(
                    f"the stored args say {field}={value!r} but the weights say "
                    f"{field}={found[field]!r}"
                )
            found[field] = value
    if _is_hdetr(found, args):
        return _detect_hdetr(found, args, variant)
    if variant is not None:
        chosen = _BY_NAME[variant]
        for field, value in found.items():
            if getattr(chosen, field) != value:
                raise ValueError(
                    f"variant {variant!r} has {field}={getattr(chosen, field)!r}, "
                    f"but the checkpoint has {field}={value!r}"
                )
        return chosen
    if "dilation" not in found:
        if found["num_feature_levels"] == 1:
            raise ValueError(
                "cannot tell single-scale from single-scale DC5: their weights have the same "
                "names and shapes and the checkpoint stores no args.dilation; pass the variant "
                "(--variant single_scale or --variant single_scale_dc5)"
            )
        found["dilation"] = False
    for candidate in RELEASED_VARIANTS:
        if all(getattr(candidate, f) == found[f] for f in _FIELDS):
            return candidate
    raise ValueError(
        f"no released variant has {found}; the released ones are {[v.name for v in KNOWN_VARIANTS]}"
    )
