"""What the backbone builders share: each is a function of plain arguments named after its
family's config keys (MODEL.<FAMILY>.<KEY> in config.py), checked there and named in errors, and
a registered builder that passes it those keys."""

from numbers import Real
from typing import Callable, Dict, Sequence, Union

__all__ = [
    "NORMS",
    "check_norm",
    "check_out_features",
    "keys_of",
    "require",
    "require_int",
    "require_rate",
]

# The names Detectron2's get_norm knows ("" for none); any other name is a KeyError inside it.
NORMS = ("FrozenBN", "BN", "SyncBN", "GN", "LN", "nnSyncBN", "naiveSyncBN", "naiveSyncBN_N", "")
GN_GROUPS = 32  # get_norm's "GN" is nn.GroupNorm(32, channels)


def require(ok: bool, name: str, expected: str, value) -> None:
    """Raises ValueError naming the argument (and its config key) unless ok."""
    if not ok:
        raise ValueError(f"{name} must be {expected}, got {value!r}")


def require_int(name: str, value, minimum: int = 1) -> None:
    """value must be an int >= minimum (a width, a depth, a size)."""
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= minimum
    require(ok, name, f"an int >= {minimum}", value)


def require_rate(name: str, value) -> None:
    """A stochastic-depth rate is a probability of dropping a block: in [0, 1). Detectron2 takes
    a negative one as no drop path at all and fails on one >= 1 only at the first training step."""
    ok = isinstance(value, Real) and not isinstance(value, bool) and 0 <= value < 1
    require(ok, name, "a probability in [0, 1)", value)


def check_norm(name: str, norm: Union[str, Callable], widths: Sequence[int]) -> None:
    """norm is one of NORMS (or a callable of the channel count, as get_norm takes); "GN" splits
    every one of widths (the channel counts it normalises) into 32 groups."""
    require(callable(norm) or norm in NORMS, name, f"one of {list(NORMS)}", norm)
    if norm == "GN":
        require(
            all(w % GN_GROUPS == 0 for w in widths),
            name,
            f"a norm other than 'GN' for these widths {sorted(set(widths))}, or widths that are "
            f"multiples of {GN_GROUPS} (GroupNorm's {GN_GROUPS} groups)",
            norm,
        )


def check_out_features(name: str, out_features: Sequence[str], available: Sequence[str]) -> None:
    """out_features must be a non-empty subset of the backbone's maps, named once each, in the
    backbone's order (high to low resolution, as the neck takes them)."""
    out_features = list(out_features)
    require(
        bool(out_features)
        and all(f in available for f in out_features)
        and len(set(out_features)) == len(out_features),
        name,
        f"a non-empty list of distinct names among {list(available)}",
        out_features,
    )
    order = [available.index(f) for f in out_features]
    require(
        order == sorted(order),
        name,
        f"in the backbone's order {list(available)} (high to low resolution)",
        out_features,
    )


def keys_of(node) -> Dict:
    """A family's config node (e.g. cfg.MODEL.SWIN) as the builder function's arguments: each key
    in lower case."""
    return {key.lower(): value for key, value in node.items()}
