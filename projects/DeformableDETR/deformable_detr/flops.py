"""FLOP counting with fvcore that understands the multi-scale deformable attention op.

fvcore traces the model with torch.jit and counts each recorded operator with a handle; it has
none for our operator `deformable_detr::ms_deform_attn`, nor for
`aten::scaled_dot_product_attention` (which nn.MultiheadAttention records in current PyTorch when
it returns no attention weights, as in our decoder), so without the handles below both would
count zero. fvcore's convention holds throughout: one fused multiply-add is one flop.

Shapes: see the legend in deformable_detr/__init__.py (E / Ev: the query-key / value
head widths of scaled dot-product attention).
"""

import logging
from math import prod
from typing import Any, Dict, List, Tuple

import fvcore.nn
from detectron2.utils.analysis import FlopCountAnalysis as Detectron2FlopCountAnalysis
from fvcore.nn.jit_handles import Handle, get_shape
from torch import nn

__all__ = [
    "MS_DEFORM_ATTN_OP",
    "count_flops",
    "flop_count_analysis",
    "flop_count_handles",
    "flops_by_module",
    "ms_deform_attn_flop_jit",
    "scaled_dot_product_attention_flop_jit",
]

logger = logging.getLogger(__name__)

MS_DEFORM_ATTN_OP = "deformable_detr::ms_deform_attn"
_SDPA_OP = "aten::scaled_dot_product_attention"

# Recorded in the trace but computing nothing: `.tolist()` records resolve_conj / resolve_neg,
# flip / pad are copies, fill_ a memset. Explicitly ignored so that the list of unsupported ops
# names only operators that do arithmetic fvcore leaves uncounted.
_ZERO_FLOP_OPS = (
    "aten::resolve_conj",
    "aten::resolve_neg",
    "aten::flip",
    "aten::pad",
    "aten::fill_",
)


def _shape(value, what: str) -> List[int]:
    shape = get_shape(value)
    if shape is None:
        raise ValueError(
            f"the trace records no complete shape for {what}; trace with "
            "torch.jit.trace (fvcore's analysis), not torch.jit.script"
        )
    return shape


def ms_deform_attn_flop_jit(inputs: List[Any], outputs: List[Any]) -> int:
    """fvcore handle of `deformable_detr::ms_deform_attn`.

    Inputs as traced: value (N, S, M, D), spatial_shapes (L, 2), level_start_index (L,),
    sampling_locations (N, Lq, M, L, P, 2), attention_weights (N, Lq, M, L, P).

    Returns N * Lq * M * L * P * 5 * D: each of the N * Lq * M * L * P samples reads D channels,
    and per channel the bilinear interpolation is 4 multiply-adds (one per corner) and the
    attention weighting 1 more. This is the "5" of the paper's complexity count (appendix A.1:
    bilinear interpolation plus weighted sum, 5 per sampling point and channel) and agrees
    with fvcore's own `aten::grid_sampler` handle (4 per output element, assuming bilinear).
    Corner weights, index arithmetic and bounds checks are not counted, as fvcore counts no
    address arithmetic elsewhere; the cost does not depend on how many corners fall outside.
    """
    D = _shape(inputs[0], "value")[-1]
    samples = prod(_shape(inputs[4], "attention_weights"))
    return samples * 5 * D


def scaled_dot_product_attention_flop_jit(inputs: List[Any], outputs: List[Any]) -> int:
    """fvcore handle of `aten::scaled_dot_product_attention`: query (..., Lq, E), key (..., S, E),
    value (..., S, Ev) -> (..., Lq, Ev). Counts the two matrix products, Lq * S * E for the
    scores and Lq * S * Ev for the weighted values, per batch element: what fvcore counts for
    the `bmm` / `matmul` ops that the same attention records when written out. Scaling, mask
    and softmax are elementwise and, as elsewhere in fvcore, not counted."""
    S = _shape(inputs[1], "key")[-2]
    E = _shape(inputs[0], "query")[-1]
    out = _shape(outputs[0], "attention output")  # (..., Lq, Ev); broadcast batch dims
    return prod(out[:-1]) * S * (E + out[-1])


def flop_count_handles() -> Dict[str, Handle]:
    """The fvcore handles this project adds, {operator name: handle}, for
    `FlopCountAnalysis.set_op_handle(**flop_count_handles())`."""
    return {
        MS_DEFORM_ATTN_OP: ms_deform_attn_flop_jit,
        _SDPA_OP: scaled_dot_product_attention_flop_jit,
    }


def _is_detectron2_inputs(inputs) -> bool:
    return isinstance(inputs, list) and len(inputs) > 0 and all(isinstance(x, dict) for x in inputs)


def flop_count_analysis(model: nn.Module, inputs) -> fvcore.nn.FlopCountAnalysis:
    """A FlopCountAnalysis of `model(inputs)` with this project's handles.

    Args:
        model: a Detectron2 model (put it in eval mode first: in training it needs
            "instances" and runs the criterion) or any module.
        inputs: Detectron2's list of dicts ("image" (3, H, W) tensors; other entries such as
            "height" and "width" are passed to the model but not traced), analysed with
            Detectron2's FlopCountAnalysis, whose TracingAdapter takes such inputs and flattens
            the Instances outputs, and which also ignores common elementwise ops (add, mul, div,
            softmax, sigmoid...); or a tensor / tuple of tensors, with fvcore's.

    Returns:
        The analysis (lazy: tracing runs at the first query). Module names of the Detectron2
        variant start with "model." (the adapter's attribute); `flops_by_module` removes it.
        Unsupported operators are counted as zero and listed by `.unsupported_ops()`, without
        fvcore's per-operator warnings; modules never called (the criterion at inference) are
        listed by `.uncalled_modules()`, without a warning.
    """
    if _is_detectron2_inputs(inputs):
        analysis = Detectron2FlopCountAnalysis(model, inputs)
    else:
        analysis = fvcore.nn.FlopCountAnalysis(model, inputs)
    analysis.set_op_handle(**flop_count_handles())
    analysis.set_op_handle(**{op: None for op in _ZERO_FLOP_OPS})
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    return analysis


def flops_by_module(analysis: fvcore.nn.FlopCountAnalysis) -> Dict[str, int]:
    """The counts of an analysis from `flop_count_analysis` per submodule, named relative to the
    analysed model ("" for the model itself, "backbone", "transformer.encoder", ...), whichever
    FlopCountAnalysis it is. An operator counts for the module that owns the innermost module
    running it and for that module's parents (so a head called from inside the transformer
    counts under the head); each module appears once, under its first name, if shared."""
    by_module = analysis.by_module()
    if not isinstance(analysis, Detectron2FlopCountAnalysis):
        return dict(by_module)
    # strip the TracingAdapter root: "model" -> "", "model.backbone" -> "backbone"
    return {
        name[len("model.") :] if name.startswith("model.") else "": flops
        for name, flops in by_module.items()
        if name.startswith("model")
    }


def count_flops(model: nn.Module, inputs) -> Tuple[int, Dict[str, int]]:
    """Counts the FLOPs (fused multiply-adds) of one call `model(inputs)`.

    Args:
        model, inputs: as for `flop_count_analysis`.

    Returns:
        (total, by_module), by_module as `flops_by_module` gives it. Operators without a handle
        count as zero and are logged once, with how often they occurred.
    """
    analysis = flop_count_analysis(model, inputs)
    by_module = flops_by_module(analysis)
    unsupported = analysis.unsupported_ops()
    if unsupported:
        logger.warning(
            "operators without a FLOP handle, counted as zero: %s",
            ", ".join(f"{op} x{n}" for op, n in sorted(unsupported.items())),
        )
    return by_module[""], by_module
