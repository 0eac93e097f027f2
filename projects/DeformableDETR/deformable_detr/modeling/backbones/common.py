"""What the backbone builders share: each is a function of plain arguments named after its
family's config keys (MODEL.<FAMILY>.<KEY> in config.py), checked there and named in errors, and
a registered builder that passes it those keys."""

from typing import Dict, Sequence

__all__ = ["check_out_features", "keys_of", "require"]


def require(ok: bool, name: str, expected: str, value) -> None:
    """Raises ValueError naming the argument (and its config key) unless ok."""
    if not ok:
        raise ValueError(f"{name} must be {expected}, got {value!r}")


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
