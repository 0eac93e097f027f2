"""The one place that maps the model's module names to the released checkpoints' names.

The transformer owns the object queries and the detection heads (one owner each, data flowing one
way), but the released checkpoints keep the heads and the learned queries at the top of the
model, and the two-stage and reference-point layers directly under `transformer`. The model's
state_dict() writes the released names and load_state_dict() reads them (and the module names
too), and reports missing or unexpected keys by them, so that checkpoints, converters and released
weights see one layout:

    transformer.heads.class_embed.*          <-> class_embed.*
    transformer.heads.bbox_embed.*           <-> bbox_embed.*
    transformer.queries.query_embed.*        <-> query_embed.*
    transformer.queries.<layer>.*            <-> transformer.<layer>.*  (reference_points,
                                                 enc_output(_norm), pos_trans(_norm))

named_parameters() gives the module names.
"""

from typing import Dict

from torch import nn

__all__ = ["RELEASED_NAMES", "use_released_names"]

# (module name prefix, released name prefix)
RELEASED_NAMES = (
    ("transformer.heads.class_embed.", "class_embed."),
    ("transformer.heads.bbox_embed.", "bbox_embed."),
    ("transformer.queries.query_embed.", "query_embed."),
    *(
        (f"transformer.queries.{layer}.", f"transformer.{layer}.")
        for layer in (
            "reference_points",
            "enc_output",
            "enc_output_norm",
            "pos_trans",
            "pos_trans_norm",
        )
    ),
)


def _rename(state_dict: Dict, prefix: str, to_released: bool) -> None:
    """Renames the keys under `prefix` in place, keeping their order."""
    pairs = [
        (prefix + a, prefix + b) if to_released else (prefix + b, prefix + a)
        for a, b in RELEASED_NAMES
    ]
    items = list(state_dict.items())
    state_dict.clear()
    for key, value in items:
        for old, new in pairs:
            if key.startswith(old):
                key = new + key[len(old) :]
                break
        state_dict[key] = value


def _to_released(module, state_dict, prefix, local_metadata):
    _rename(state_dict, prefix, to_released=True)


def _from_released(module, state_dict, prefix, *args):
    _rename(state_dict, prefix, to_released=False)


def _report_released(module, incompatible_keys):
    for keys in (incompatible_keys.missing_keys, incompatible_keys.unexpected_keys):
        renamed = dict.fromkeys(keys)
        _rename(renamed, "", to_released=True)
        keys[:] = list(renamed)


def use_released_names(model: nn.Module) -> None:
    """Makes model.state_dict() write, and model.load_state_dict() read and report (missing and
    unexpected keys), the released names. (Named functions, not lambdas, so that the model stays
    picklable.)"""
    model.register_state_dict_post_hook(_to_released)
    model.register_load_state_dict_pre_hook(_from_released)
    model.register_load_state_dict_post_hook(_report_released)
