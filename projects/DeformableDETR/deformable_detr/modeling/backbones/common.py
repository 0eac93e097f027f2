"""Checks shared by the backbone builders: every one reads a family of config keys and names the
key in its errors."""
from typing import Sequence

__all__ = ["check_out_features", "require"]


def require(ok: bool, key: str, expected: str, value) -> None:
    """Raises ValueError naming the config key unless ok."""
    if not ok:
        raise ValueError(f"{key} must be {expected}, got {value!r}")


def check_out_features(key: str, out_features: Sequence[str], available: Sequence[str]) -> None:
    """OUT_FEATURES must be a non-empty subset of the backbone's maps, named once each, in the
    backbone's order (high to low resolution, as the neck takes them)."""
    out_features = list(out_features)
    require(bool(out_features) and all(f in available for f in out_features)
            and len(set(out_features)) == len(out_features), key,
            f"a non-empty list of distinct names among {list(available)}", out_features)
    order = [available.index(f) for f in out_features]
    require(order == sorted(order), key, f"in the backbone's order {list(available)} (high to "
            f"low resolution)", out_features)
