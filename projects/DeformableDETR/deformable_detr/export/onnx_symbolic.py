"""ONNX symbolic of `deformable_detr::ms_deform_attn` in default-domain operators.

The compiled op is unknown to ONNX runtimes, so the exporter replaces it with what the op
computes (layers/ms_deform_attn_ref.py is the reference): for every sampling point, its four
bilinear corners, each weighted by its bilinear factor, its attention weight and whether it lies
inside its level (zero padding, align_corners=0), then summed over corners, points and levels.
The corners' rows of D channels are gathered from the value and reduced with one MatMul per
(head, level): the corner indices and weights are computed once, for all heads and levels, by
elementwise operators on tensors of one shape, levels first (the tests inside the level and the
bilinear factors once per axis and corner offset, then combined per corner), cut by level and by
head with one Split each, and each gather copies contiguous rows. A chunk holds
N * Lq * P * 4 * D floats (45 MB in an encoder layer at 800x1333), so memory stays bounded.

Measured on the whole model (ddetr_r50, 800x1333, ONNX Runtime 1.22, 2 threads, mimalloc), with
the same outputs: 2.52 s before these changes (tests per corner, a Gather per head and level to
select the pieces, levels inside), 2.36 s with the first two, 2.24 s with levels first as well:
ONNX Runtime broadcasts a level's size over an inner axis span by span, 4 points at a time.
Rejected: x and y, and the two offsets of each, on small trailing axes to broadcast over (3.60 s,
for the same reason); one gather per head over all its levels (1.6% faster, for a chunk 4x as
large).

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


def _split(g, x, axis, count):
    """x cut into `count` equal pieces along `axis` (kept, of size 1 each), as a list."""
    if count == 1:
        return [x]
    return list(g.op("Split", x, axis_i=axis, outputs=count))


def _static_dim(tensor, axis, what):
    size = symbolic_helper._get_tensor_dim_size(tensor, axis)
    if size is None:
        raise ValueError(f"ms_deform_attn export needs a static number of {what}")
    return size


def _corners(g, spatial_shapes, level_start_index, sampling_locations, attention_weights):
    """The four bilinear corners of every sampling point: their rows in value's S axis, int64,
    and their weights (bilinear factor x attention weight x inside the level), both
    (L, N, Lq, M, P, 4), levels first. A NaN or infinite location gets row 0 and a NaN weight, so
    that NaN reaches the output as in the op; a far but finite one gets weight 0."""
    # levels first, so that a level's size broadcasts over one contiguous span (ONNX Runtime
    # broadcasts over an inner axis span by span: 4 points at a time)
    # (N, Lq, M, L, P, 2) -> (L, N, Lq, M, P, 2); (N, Lq, M, L, P) -> (L, N, Lq, M, P)
    sampling_locations = g.op("Transpose", sampling_locations, perm_i=[3, 0, 1, 2, 4, 5])
    attention_weights = g.op("Transpose", attention_weights, perm_i=[3, 0, 1, 2, 4])
    # (L, 2) rows (H, W) -> (L, 1, 1, 1, 1) each, to broadcast over (L, N, Lq, M, P)
    per_level = _const(g, [-1, 1, 1, 1, 1])
    shapes = g.op("Cast", spatial_shapes, to_i=FLOAT)
    H = g.op("Reshape", _select(g, shapes, 1, 0), per_level)
    W = g.op("Reshape", _select(g, shapes, 1, 1), per_level)
    start = g.op("Reshape", g.op("Cast", level_start_index, to_i=FLOAT), per_level)
    zero, one, half = (_const(g, v, torch.float32) for v in (0.0, 1.0, 0.5))

    def axis(location, size):
        """Per axis (x with W, y with H), for its two corners d = 0, 1: the corner's pixel
        index, whether it lies inside the level, and its bilinear factor, zeroed outside."""
        # pixel coordinates with align_corners=0: the map's corners are at -0.5 and W - 0.5
        pixel = g.op("Sub", g.op("Mul", location, size), half)
        low = g.op("Floor", pixel)
        frac = g.op("Sub", pixel, low)
        index = (low, g.op("Add", low, one))
        last = g.op("Sub", size, one)
        inside = [
            g.op("And", g.op("GreaterOrEqual", i, zero), g.op("LessOrEqual", i, last))
            for i in index
        ]
        factor = (g.op("Sub", one, frac), frac)
        return (
            index,
            inside,
            [g.op("Mul", f, g.op("Cast", k, to_i=FLOAT)) for f, k in zip(factor, inside)],
        )

    xs, x_inside, x_factor = axis(_select(g, sampling_locations, 5, 0), W)
    ys, y_inside, y_factor = axis(_select(g, sampling_locations, 5, 1), H)
    rows, weights = [], []
    for dy in (0, 1):
        # exact in float32 below 2^24 positions
        row_start = g.op("Add", g.op("Mul", ys[dy], W), start)
        for dx in (0, 1):
            inside = g.op("And", y_inside[dy], x_inside[dx])
            weight = g.op("Mul", x_factor[dx], y_factor[dy])
            weights.append(g.op("Mul", weight, attention_weights))
            # rows outside the level (and NaN) become 0, their weight is 0 (or NaN)
            row = g.op("Add", row_start, xs[dx])
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
    # image n's rows start at n * S in the flattened (N * S, D) value: (1, N, 1, 1, 1, 1)
    batch = g.op("Range", _const(g, 0), g.op("Squeeze", N, _const(g, [0])), _const(g, 1))
    offsets = g.op("Reshape", g.op("Mul", batch, S), _const(g, [1, -1, 1, 1, 1, 1]))
    rows = g.op("Add", rows, offsets)
    minus_one = _const(g, [-1])
    rows_shape = g.op("Concat", N, Lq, minus_one, axis_i=0)
    weights_shape = g.op("Concat", N, Lq, _const(g, [1, -1]), axis_i=0)
    # (L, N, Lq, M, P, 4) -> L x M pieces (1, N, Lq, 1, P, 4); (N, S, M, D) -> M x (N, S, 1, D)
    rows = [_split(g, r, 3, num_heads) for r in _split(g, rows, 0, num_levels)]
    weights = [_split(g, w, 3, num_heads) for w in _split(g, weights, 0, num_levels)]
    values = _split(g, value, 2, num_heads)
    heads = []
    for m in range(num_heads):
        # (N, S, 1, D) -> (N * S, D)
        value_m = g.op("Reshape", values[m], g.op("Concat", minus_one, D, axis_i=0))
        out = None
        for lvl in range(num_levels):
            # (1, N, Lq, 1, P, 4) -> (N, Lq, P * 4) rows -> (N, Lq, P * 4, D) gathered, then
            # (N, Lq, 1, P * 4) weights @ it -> (N, Lq, 1, D)
            sampled = g.op("Gather", value_m, g.op("Reshape", rows[lvl][m], rows_shape), axis_i=0)
            level_out = g.op("MatMul", g.op("Reshape", weights[lvl][m], weights_shape), sampled)
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
