"""The one place that maps the model's module names to the released checkpoints' names.

The transformer owns the object queries and the detection heads (one owner each, data flowing one
way), but the released checkpoints keep the heads and the learned queries at the top of the
model, and the two-stage and reference-point layers directly under `transformer`:

    transformer.heads.class_embed.*          <-> class_embed.*
    transformer.heads.bbox_embed.*           <-> bbox_embed.*
    transformer.queries.query_embed.*        <-> query_embed.*
    transformer.queries.<layer>.*            <-> transformer.<layer>.*  (reference_points,
                                                 enc_output(_norm), pos_trans(_norm))

The model's state_dict() writes the released names and load_state_dict() reads them (and the
module names too), and reports missing or unexpected keys by them, so that checkpoints,
converters and released weights see one layout. Every released name is also a module path:
`model.class_embed`, `model.transformer.reference_points` (and model.get_submodule) return the
module that holds those weights, so that whatever maps a state_dict key back to its module
(fvcore's shape-mismatch check, Detectron2's matching heuristics, user code) finds it.
named_parameters() and named_modules() give the module names.
"""

from typing import Dict

from torch import nn

__all__ = [
    "MODEL_ALIASES",
    "RELEASED_NAMES",
    "TRANSFORMER_ALIASES",
    "released_aliases",
    "use_released_names",
]

# released name -> module path, relative to the meta-architecture
MODEL_ALIASES = {
    "class_embed": "transformer.heads.class_embed",
    "bbox_embed": "transformer.heads.bbox_embed",
    "query_embed": "transformer.queries.query_embed",
}
# released name -> module path, relative to the transformer
TRANSFORMER_ALIASES = {
    layer: f"queries.{layer}"
    for layer in (
        "reference_points",
        "enc_output",
        "enc_output_norm",
        "pos_trans",
        "pos_trans_norm",
    )
}

# (module name prefix, released name prefix) of state_dict keys, relative to the model
RELEASED_NAMES = (
    *((f"{path}.", f"{name}.") for name, path in MODEL_ALIASES.items()),
    *(
        (f"transformer.{path}.", f"transformer.{name}.")
        for name, path in TRANSFORMER_ALIASES.items()
    ),
)


def _module_at(path: str) -> property:
    # AttributeError when the path does not exist in this variant (query_embed in two-stage
    # mode): getattr then falls back to nn.Module.__getattr__, which says so
    return property(lambda self: self.get_submodule(path), doc=f"The module at `{path}`.")


def released_aliases(aliases: Dict[str, str]):
    """Class decorator: each released name in `aliases` becomes a read-only attribute that returns
    the module at its path (not registered a second time: parameters are counted once)."""

    def decorate(cls):
        for name, path in aliases.items():
            setattr(cls, name, _module_at(path))
        return cls

    return decorate


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
