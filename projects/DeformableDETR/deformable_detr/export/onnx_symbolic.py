"""ONNX symbolic of `deformable_detr::ms_deform_attn` in default-domain operators.

The compiled op is unknown to ONNX runtimes, so the exporter replaces it with what the op
computes (layers/ms_deform_attn_ref.py is the reference): for every sampling point, its four
bilinear corners, each weighted by its bilinear factor, its attention weight and whether it lies
inside its level (zero padding, align_corners=0), then summed over corners, points and levels.
The corners' rows of D channels are gathered from the value and reduced with one MatMul per
(head, level): the corner indices and weights are computed once, for all heads and levels, by
elementwise operators, and each gather copies contiguous rows. A chunk holds N * Lq * P * 4 * D
floats (45 MB in an encoder layer at 800x1333), so memory stays bounded.

Why not GridSample (one operator per level, the first choice): ONNX Runtime's CPU GridSample
computes each point's coordinates again for every channel, and took 57% of the whole model's time
at 800x1333, putting ONNX Runtime at 0.57x eager; on one encoder layer's inputs at that size
these gathers take 0.27x its time (ONNX Runtime 1.22, 2 threads), and the model runs faster than
eager (tools/benchmark_deploy.py).

Level heights, widths and starts are read from the spatial_shapes and level_start_index inputs at
run time, so an exported model keeps dynamic image sizes; the numbers of levels and heads (L, M)
are fixed in the graph.

Shapes: see the legend in deformable_detr/__init__.py.
"""

import torch
from torch.onnx import symbolic_helper

__all__ = ["OP_NAME", "ONNX_OPSET", "register_ms_deform_attn_symbolic"]

OP_NAME = "deformable_detr::ms_deform_attn"
# opset 17 is what the exporter and onnxruntime are tested with here
ONNX_OPSET = 17

FLOAT, INT64 = 1, 7  # ONNX's TensorProto element types


def _const(g, values, dtype=torch.int64):
    return g.op("Constant", value_t=torch.tensor(values, dtype=dtype))


def _dim(g, shape, i):
    """(1,) int64: entry i of a Shape output."""
    return g.op("Gather", shape, _const(g, [i]), axis_i=0)


def _select(g, x, axis, index):
    """x with `axis` reduced to its entry `index` (a Python int), the axis removed."""
    return g.op("Gather", x, _const(g, index), axis_i=axis)


def _static_dim(tensor, axis, what):
    size = symbolic_helper._get_tensor_dim_size(tensor, axis)
    if size is None:
        raise ValueError(f"ms_deform_attn export needs a static number of {what}")
    return size


def _corners(g, spatial_shapes, level_start_index, sampling_locations, attention_weights):
    """The four bilinear corners of every sampling point: their rows in value's S axis, int64,
    and their weights (bilinear factor x attention weight x inside the level), both
    (N, Lq, M, L, P, 4). A NaN or infinite location gets row 0 and a NaN weight, so that NaN
    reaches the output as in the op; a far but finite one gets weight 0."""
    # (L, 2) rows (H, W) -> (1, 1, 1, L, 1) each, to broadcast over (N, Lq, M, L, P)
    per_level = _const(g, [1, 1, 1, -1, 1])
    shapes = g.op("Cast", spatial_shapes, to_i=FLOAT)
    H = g.op("Reshape", _select(g, shapes, 1, 0), per_level)
    W = g.op("Reshape", _select(g, shapes, 1, 1), per_level)
    start = g.op("Reshape", g.op("Cast", level_start_index, to_i=FLOAT), per_level)
    zero, one, half = (_const(g, v, torch.float32) for v in (0.0, 1.0, 0.5))
    # pixel coordinates with align_corners=0: the map's corners are at -0.5 and W - 0.5
    x = g.op("Sub", g.op("Mul", _select(g, sampling_locations, 5, 0), W), half)
    y = g.op("Sub", g.op("Mul", _select(g, sampling_locations, 5, 1), H), half)
    x0, y0 = g.op("Floor", x), g.op("Floor", y)
    fx, fy = g.op("Sub", x, x0), g.op("Sub", y, y0)
    last_x, last_y = g.op("Sub", W, one), g.op("Sub", H, one)
    rows, weights = [], []
    for dy in (0, 1):
        for dx in (0, 1):
            xi = g.op("Add", x0, _const(g, float(dx), torch.float32))
            yi = g.op("Add", y0, _const(g, float(dy), torch.float32))
            inside = g.op(
                "And",
                g.op("And", g.op("GreaterOrEqual", xi, zero), g.op("LessOrEqual", xi, last_x)),
                g.op("And", g.op("GreaterOrEqual", yi, zero), g.op("LessOrEqual", yi, last_y)),
            )
            wx = fx if dx else g.op("Sub", one, fx)
            wy = fy if dy else g.op("Sub", one, fy)
            weight = g.op("Mul", g.op("Mul", wx, wy), attention_weights)
            weights.append(g.op("Mul", weight, g.op("Cast", inside, to_i=FLOAT)))
            # exact in float32 below 2^24 positions; rows outside the level (and NaN) become 0
            row = g.op("Add", g.op("Add", g.op("Mul", yi, W), xi), start)
            rows.append(g.op("Cast", g.op("Where", inside, row, zero), to_i=INT64))
    last = _const(g, [-1])
    stack = lambda ts: g.op("Concat", *[g.op("Unsqueeze", t, last) for t in ts], axis_i=-1)  # noqa: E731
    return stack(rows), stack(weights)


def ms_deform_attn_symbolic(
    g, value, spatial_shapes, level_start_index, sampling_locations, attention_weights
):
    """value (N, S, M, D), spatial_shapes (L, 2) int64 rows (H, W), level_start_index (L,),
    sampling_locations (N, Lq, M, L, P, 2) (x, y) in [0, 1], attention_weights (N, Lq, M, L, P)
    -> (N, Lq, M * D)."""
    num_levels = _static_dim(sampling_locations, 3, "levels (dimension 3 of sampling_locations)")
    num_heads = _static_dim(sampling_locations, 2, "heads (dimension 2 of sampling_locations)")
    rows, weights = _corners(
        g, spatial_shapes, level_start_index, sampling_locations, attention_weights
    )
    value_shape = g.op("Shape", value)
    N, S, D = (_dim(g, value_shape, i) for i in (0, 1, 3))
    Lq = _dim(g, g.op("Shape", sampling_locations), 1)
    # image n's rows start at n * S in the flattened (N * S, D) value: (N, 1, 1, 1, 1, 1)
    batch = g.op("Range", _const(g, 0), g.op("Squeeze", N, _const(g, [0])), _const(g, 1))
    offsets = g.op("Reshape", g.op("Mul", batch, S), _const(g, [-1, 1, 1, 1, 1, 1]))
    rows = g.op("Add", rows, offsets)
    minus_one = _const(g, [-1])
    heads = []
    for m in range(num_heads):
        # (N, S, M, D) -> (N, S, D) -> (N * S, D)
        value_m = g.op("Reshape", _select(g, value, 2, m), g.op("Concat", minus_one, D, axis_i=0))
        out = None
        for lvl in range(num_levels):
            # (N, Lq, M, L, P, 4) -> (N, Lq, P, 4) -> (N, Lq, P * 4)
            rows_ml = _select(g, _select(g, rows, 2, m), 2, lvl)
            rows_ml = g.op("Reshape", rows_ml, g.op("Concat", N, Lq, minus_one, axis_i=0))
            # (N, Lq, P * 4, D), then (N, Lq, 1, P * 4) @ it -> (N, Lq, 1, D)
            sampled = g.op("Gather", value_m, rows_ml, axis_i=0)
            weights_ml = _select(g, _select(g, weights, 2, m), 2, lvl)
            weights_ml = g.op(
                "Reshape", weights_ml, g.op("Concat", N, Lq, _const(g, [1, -1]), axis_i=0)
            )
            level_out = g.op("MatMul", weights_ml, sampled)
            out = level_out if out is None else g.op("Add", out, level_out)
        heads.append(out)
    # M x (N, Lq, 1, D) -> (N, Lq, M, D) -> (N, Lq, M * D)
    out = g.op("Concat", *heads, axis_i=2)
    return g.op("Reshape", out, g.op("Concat", N, Lq, minus_one, axis_i=0))


def register_ms_deform_attn_symbolic(opset: int = ONNX_OPSET) -> None:
    """Tells torch.onnx.export (the TorchScript-based exporter, dynamo=False) how to write the
    op; called by the export functions, not on import, so that importing the package changes
    nothing global."""
    torch.onnx.register_custom_op_symbolic(OP_NAME, ms_deform_attn_symbolic, opset)
