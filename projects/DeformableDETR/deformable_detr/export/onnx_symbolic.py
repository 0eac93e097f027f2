"""ONNX symbolic of `deformable_detr::ms_deform_attn` in default-domain operators.

The compiled op is unknown to ONNX runtimes, so the exporter replaces it with what the PyTorch
reference (layers/ms_deform_attn_ref.py) computes: per level, the level's values as an image and
one GridSample (bilinear, zero padding, align_corners=0) at the sampling locations, weighted and
summed over points, then summed over levels. GridSample rather than gathers: it is one standard
operator per level (opset 16+) that every runtime implements, with exactly the op's bilinear
sampling and zero padding, where gathers would take four gathers, bounds masks and corner weights
per level. Level heights and widths are read from the spatial_shapes input at run time, so an
exported model keeps dynamic image sizes; only L (the number of levels) is fixed.

Shapes: see the legend in deformable_detr/__init__.py.
"""

import torch
from torch.onnx import symbolic_helper

__all__ = ["OP_NAME", "ONNX_OPSET", "register_ms_deform_attn_symbolic"]

OP_NAME = "deformable_detr::ms_deform_attn"
# GridSample needs opset 16; 17 is what the exporter and onnxruntime are tested with here
ONNX_OPSET = 17


def _const(g, values, dtype=torch.int64):
    return g.op("Constant", value_t=torch.tensor(values, dtype=dtype))


def _dim(g, shape, i):
    """(1,) int64: entry i of a Shape output."""
    return g.op("Gather", shape, _const(g, [i]), axis_i=0)


def _select(g, x, axis, index):
    """x with `axis` reduced to its entry `index` (a Python int), the axis removed."""
    return g.op("Gather", x, _const(g, index), axis_i=axis)


def ms_deform_attn_symbolic(
    g, value, spatial_shapes, level_start_index, sampling_locations, attention_weights
):
    """value (N, S, M, D), spatial_shapes (L, 2) int64 rows (H, W), level_start_index (L,),
    sampling_locations (N, Lq, M, L, P, 2) (x, y) in [0, 1], attention_weights (N, Lq, M, L, P)
    -> (N, Lq, M * D)."""
    num_levels = symbolic_helper._get_tensor_dim_size(sampling_locations, 3)
    if num_levels is None:
        raise ValueError(
            "ms_deform_attn export needs a static number of levels (dimension 3 of "
            "sampling_locations)"
        )
    value_shape = g.op("Shape", value)
    N, M, D = (_dim(g, value_shape, i) for i in (0, 2, 3))
    Lq = _dim(g, g.op("Shape", sampling_locations), 1)
    P = _dim(g, g.op("Shape", attention_weights), 4)
    NM = g.op("Mul", N, M)
    minus_one = _const(g, [-1])
    # grid_sample's grid spans [-1, 1]; with align_corners=0 its ends are the map's corners.
    # NaN and inf need nothing: onnxruntime's GridSample samples NaN at a NaN or infinite
    # coordinate, as the op does (NaN reaches the output instead of vanishing).
    grids = g.op(
        "Sub",
        g.op("Mul", sampling_locations, _const(g, 2.0, torch.float32)),
        _const(g, 1.0, torch.float32),
    )
    shapes = g.op("Cast", spatial_shapes, to_i=7)  # int64
    starts = g.op("Cast", level_start_index, to_i=7)
    out = None
    for lvl in range(num_levels):
        h = g.op("Reshape", _select(g, _select(g, shapes, 0, lvl), 0, 0), minus_one)  # (1,)
        w = g.op("Reshape", _select(g, _select(g, shapes, 0, lvl), 0, 1), minus_one)
        start = g.op("Reshape", _select(g, starts, 0, lvl), minus_one)
        end = g.op("Add", start, g.op("Mul", h, w))
        # (N, H*W, M, D) -> (N, M, D, H*W) -> (N*M, D, H, W)
        value_l = g.op("Slice", value, start, end, _const(g, [1]))
        value_l = g.op("Transpose", value_l, perm_i=[0, 2, 3, 1])
        value_l = g.op("Reshape", value_l, g.op("Concat", NM, D, h, w, axis_i=0))
        # (N, Lq, M, P, 2) -> (N, M, Lq, P, 2) -> (N*M, Lq, P, 2)
        grid_l = g.op("Transpose", _select(g, grids, 3, lvl), perm_i=[0, 2, 1, 3, 4])
        grid_l = g.op("Reshape", grid_l, g.op("Concat", NM, Lq, P, _const(g, [2]), axis_i=0))
        # (N*M, D, Lq, P)
        sampled = g.op(
            "GridSample",
            value_l,
            grid_l,
            align_corners_i=0,
            mode_s="bilinear",
            padding_mode_s="zeros",
        )
        # (N, Lq, M, P) -> (N, M, Lq, P) -> (N*M, 1, Lq, P)
        weights = g.op("Transpose", _select(g, attention_weights, 3, lvl), perm_i=[0, 2, 1, 3])
        weights = g.op("Reshape", weights, g.op("Concat", NM, _const(g, [1]), Lq, P, axis_i=0))
        # (N*M, D, Lq)
        level_out = g.op("ReduceSum", g.op("Mul", sampled, weights), _const(g, [3]), keepdims_i=0)
        out = level_out if out is None else g.op("Add", out, level_out)
    # (N*M, D, Lq) -> (N, M*D, Lq) -> (N, Lq, M*D)
    out = g.op("Reshape", out, g.op("Concat", N, g.op("Mul", M, D), Lq, axis_i=0))
    return g.op("Transpose", out, perm_i=[0, 2, 1])


def register_ms_deform_attn_symbolic(opset: int = ONNX_OPSET) -> None:
    """Tells torch.onnx.export (the TorchScript-based exporter, dynamo=False) how to write the
    op; called by the export functions, not on import, so that importing the package changes
    nothing global."""
    torch.onnx.register_custom_op_symbolic(OP_NAME, ms_deform_attn_symbolic, opset)
