"""H-Deformable-DETR's R50 checkpoints (HDETR/H-Deformable-DETR, Jia et al., CVPR 2023): the
config (and keys) of this project that a file of theirs needs, read from its weights and the
args their main.py stores in it.

Their code is a fork of the Deformable DETR authors' with the same parameter names: the layout
is official_layout.released_layout's with an FFN F wide (their default 2048) and, with mixed
query selection, the learned content queries query_embed (Q_1 + Q_2, C). Every R50 model of
theirs is two-stage with box refinement on 4 levels. The one-to-many queries own no weight
besides their Q_2 rows of query_embed: their state dict has no "_one2many" name (their loss
names have it, in the criterion's weight_dict).

A run's settings are their main.py arguments (SETTINGS) and map to config keys (KEYS). Settings
that no weight shows (look_forward_twice, dropout, k_one2many, lambda_one2many, the split of
query_embed's rows into Q_1 + Q_2, epochs) come from the args; without args the named config's
values are assumed, and Q_1 = 300, as in every run of theirs with mixed query selection.

Shapes: C = 256, Q_1 one-to-one queries (TWO_STAGE_NUM_PROPOSALS), Q_2 one-to-many queries.
"""

from dataclasses import dataclass
from typing import Dict, Mapping, Tuple

__all__ = ["CONFIG_SETTINGS", "HDETR_RELEASES", "KEYS", "SOURCE", "Release", "overrides", "resolve"]

SOURCE = "HDETR/H-Deformable-DETR"
_D, _H = "MODEL.DEFORMABLE_DETR.", "MODEL.DEFORMABLE_DETR.HYBRID_MATCHING."
# their argument -> this project's config key, in the order overrides are printed
KEYS = {
    "dim_feedforward": _D + "DIM_FEEDFORWARD",
    "num_queries_one2one": _D + "TWO_STAGE_NUM_PROPOSALS",
    "mixed_selection": _D + "MIXED_QUERY_SELECTION",
    "look_forward_twice": _D + "LOOK_FORWARD_TWICE",
    "dropout": _D + "DROPOUT",
    "num_queries_one2many": _H + "NUM_QUERIES_ONE2MANY",
    "k_one2many": _H + "K_ONE2MANY",
    "lambda_one2many": _H + "LAMBDA_ONE2MANY",
}
_TYPES = dict(mixed_selection=bool, look_forward_twice=bool, dropout=float, lambda_one2many=float)
_HYBRID_ONLY = ("k_one2many", "lambda_one2many")  # no effect without one-to-many queries
_Q1 = 300  # their num_queries_one2one in every run with mixed selection

# What the configs named below set for KEYS (tests/checkpoint/test_checkpoint_hdetr.py reads
# them from the files). The 36-epoch configs differ from their 12-epoch bases in the schedule.
_TWO_STAGE = dict(
    dim_feedforward=1024,
    num_queries_one2one=300,
    mixed_selection=False,
    look_forward_twice=False,
    dropout=0.1,
    num_queries_one2many=0,
    k_one2many=6,
    lambda_one2many=1.0,
)
_PLUS = dict(
    _TWO_STAGE, dim_feedforward=2048, mixed_selection=True, look_forward_twice=True, dropout=0.0
)
_HYBRID = dict(_PLUS, num_queries_one2many=1500)
CONFIG_SETTINGS = {
    "ddetr_r50_two_stage.yaml": _TWO_STAGE,
    "ddetr_r50_plus_12ep.yaml": _PLUS,
    "ddetr_r50_plus_36ep.yaml": _PLUS,
    "hdetr_r50_12ep.yaml": _HYBRID,
    "hdetr_r50_36ep.yaml": _HYBRID,
}


@dataclass(frozen=True)
class Release:
    """One of their released R50 models: its run's settings (their configs/*.sh), the config for
    each schedule (epochs -> config) and their COCO val box AP (epochs -> AP)."""

    name: str
    settings: Mapping[str, object]
    configs: Mapping[int, str]
    box_ap: Mapping[int, float]


HDETR_RELEASES = (
    # "Deformable-DETR": their baseline, the authors' two-stage model with F = 2048
    Release(
        "hdetr_baseline",
        dict(_TWO_STAGE, dim_feedforward=2048),
        {12: "ddetr_r50_two_stage.yaml", 36: "ddetr_r50_two_stage.yaml"},
        {12: 43.7, 36: 46.8},
    ),
    # "Deformable-DETR + tricks": dropout 0, mixed query selection, look forward twice
    Release(
        "hdetr_tricks",
        _PLUS,
        {12: "ddetr_r50_plus_12ep.yaml", 36: "ddetr_r50_plus_36ep.yaml"},
        {12: 47.0, 36: 49.0},
    ),
    # "H-Deformable-DETR + tricks": 300 + 1,500 queries, K = 6, lambda = 1
    Release(
        "hdetr_hybrid",
        _HYBRID,
        {12: "hdetr_r50_12ep.yaml", 36: "hdetr_r50_36ep.yaml"},
        {12: 48.7, 36: 50.0},
    ),
)


def _value(field: str, value):
    return _TYPES.get(field, int)(value)


def _text(value) -> str:
    return repr(value) if isinstance(value, float) else str(value)


def _differences(settings: Mapping, config: str) -> Dict[str, object]:
    """The settings (of KEYS) in which a run differs from `config`, as {field: the run's}."""
    reference = CONFIG_SETTINGS[config]
    hybrid = settings.get("num_queries_one2many", reference["num_queries_one2many"]) > 0
    return {
        field: value
        for field, value in settings.items()
        if value != reference[field] and (hybrid or field not in _HYBRID_ONLY)
    }


def overrides(settings: Mapping, config: str) -> Tuple[str, ...]:
    """The config keys (and values) to add to `config` for a run of these settings."""
    found = _differences(settings, config)
    return tuple(item for f in KEYS if f in found for item in (KEYS[f], _text(found[f])))


def _settings(weights: Mapping, args) -> Dict[str, object]:
    """The run's settings of KEYS: from the args where they state them, query_embed's rows
    split into Q_1 + Q_2 (Q_1 = 300 without args), the FFN width from the weights."""
    settings = {"dim_feedforward": weights["dim_feedforward"]}
    for field in KEYS:
        value = None if args is None else _get(args, field)
        if value is not None:
            settings[field] = _value(field, value)
    rows = weights["content_queries"]
    settings["mixed_selection"] = rows > 0
    if rows:
        q1 = settings.setdefault("num_queries_one2one", min(_Q1, rows))
        settings["num_queries_one2many"] = rows - q1
    return settings


def _get(args, name: str):
    return args.get(name) if isinstance(args, Mapping) else getattr(args, name, None)


def resolve(weights: Mapping, args=None) -> dict:
    """The release closest to a file of theirs, and what this file needs beyond it.

    `weights`: the file's dim_feedforward and content_queries (query_embed's rows, 0 without
    mixed selection), checked against the args by the caller. `args`: the stored args or None.
    The release is the one of the same mixed selection, then of one-to-many queries or none
    alike, whose config needs the fewest overrides (their order breaks ties). Returns {"name",
    "config" (of the file's schedule; the 12-epoch one when unknown), "opts" (the keys the
    file's settings need on that config), "epochs" (None when unknown), "box_ap" (theirs for
    this very run: the release's settings and schedule; else None), "published" ((epochs, AP)
    pairs of the release)}.
    """
    settings = _settings(weights, args)
    hybrid = settings.get("num_queries_one2many", 0) > 0
    release = min(
        HDETR_RELEASES,
        key=lambda r: (
            r.settings["mixed_selection"] != settings["mixed_selection"],
            (r.settings["num_queries_one2many"] > 0) != hybrid,
            len(_differences(settings, r.configs[12])),
        ),
    )
    epochs = None if args is None or _get(args, "epochs") is None else int(_get(args, "epochs"))
    config = release.configs.get(epochs, release.configs[12])
    released_hybrid = release.settings["num_queries_one2many"] > 0
    same_run = args is not None and all(
        settings.get(field) == value
        for field, value in release.settings.items()
        if released_hybrid or field not in _HYBRID_ONLY
    )
    return {
        "name": release.name,
        "config": config,
        "opts": overrides(settings, config),
        "epochs": epochs,
        "box_ap": release.box_ap.get(epochs) if same_run else None,
        "published": tuple(sorted(release.box_ap.items())),
    }
