"""Triton kernels of multi-scale deformable attention: the forward, the backward with atomic adds,
and the two kernels of the deterministic backward.

A program owns a tile of BLOCK_R rows r = (n * Lq + q) * M + m (one query and head each) and all
D channels (BLOCK_D: D rounded up to a power of two), loops over the L levels and P points, and
loads the four bilinear corners of every sample as (BLOCK_R, BLOCK_D) tiles, each row D
contiguous channels. Sums run in float32 whatever the value's dtype. Levels and points are plain
loops, not unrolled: unrolled at L = P = 4, ptxas took ~40 s per kernel and the tiles ran out of
registers (255 and a stack: spills); as loops, one specialisation serves every L and P.

The sampling math is that of csrc/ms_deform_attn/ms_deform_attn_sampling.h (grid_sample's
bilinear, zero padding, align_corners=False; a location whose pixel coordinates are not strictly
inside (-1, H) x (-1, W) is skipped, and its terms are NaN where grid_sample's are: a NaN weight,
or a NaN or infinite coordinate, makes its row NaN), so that both backends answer the shared test
cases alike.

Value rows: value (N, S, M, D) is addressed in rows of D channels, row (n * S + s) * M + m holding
pixel s of head m in image n. Sample i = (r * L + l) * P + p indexes sampling_locations (two
values at 2 * i) and attention_weights, as in the C++ kernels. Indices are int32 (half the
registers of int64; the launcher refuses larger tensors). Under TRITON_INTERPRET=1 these
kernels run on CPU tensors: that is how CI checks them without a GPU.

Shapes: see the legend in deformable_detr/__init__.py.
"""

import triton
import triton.language as tl

__all__ = ["forward_kernel", "backward_kernel", "segment_sum_kernel"]


@triton.jit
def _sample(shapes_ptr, starts_ptr, loc_ptr, attn_ptr, r, ok, head, lvl, p, M, L, P):
    """Point p of level lvl for the rows r (BLOCK_R,), whose value rows of pixel 0 are `head`.
    Returns the level's H and W, the sample index i, its attention weight a, the fractional parts
    (lh, lw) of its pixel coordinates, the value row of its top-left corner, and whether each
    corner is inside the map: top-left, top-right, bottom-left, bottom-right (the others' rows:
    + M, + W * M, + W * M + M). A skipped sample (not inside) is one at pixel (0, 0) with all its
    corners outside and a, lh, lw replaced by a - a, h - h, w - w: 0, or NaN for a NaN or infinite
    input, so that its terms, products with zero, are those of skipped_terms in the shared header
    (NaN where grid_sample's are; for finite inputs +0, as when they were skipped outright)."""
    H = tl.load(shapes_ptr + 2 * lvl)
    W = tl.load(shapes_ptr + 2 * lvl + 1)
    i = (r * L + lvl) * P + p
    x = tl.load(loc_ptr + 2 * i, mask=ok, other=0.0).to(tl.float32)
    y = tl.load(loc_ptr + 2 * i + 1, mask=ok, other=0.0).to(tl.float32)
    a = tl.load(attn_ptr + i, mask=ok, other=0.0).to(tl.float32)
    h_size = H.to(tl.float32)
    w_size = W.to(tl.float32)
    h = y * h_size - 0.5
    w = x * w_size - 0.5
    # written so that NaN fails every comparison
    inside = ok & (h > -1.0) & (w > -1.0) & (h < h_size) & (w < w_size)
    # finite corner indices for a skipped sample, which keeps only whether it is NaN (see above)
    h_in = tl.where(inside, h, 0.0)
    w_in = tl.where(inside, w, 0.0)
    h0f = tl.floor(h_in)
    w0f = tl.floor(w_in)
    h0 = h0f.to(tl.int32)
    w0 = w0f.to(tl.int32)
    top = inside & (h0 >= 0)
    bottom = inside & (h0 + 1 <= H - 1)
    left = w0 >= 0
    right = w0 + 1 <= W - 1
    top_left = head + (tl.load(starts_ptr + lvl) + h0 * W + w0) * M
    return (
        H,
        W,
        i,
        tl.where(inside, a, a - a),
        tl.where(inside, h_in - h0f, h - h),
        tl.where(inside, w_in - w0f, w - w),
        top_left,
        top & left,
        top & right,
        bottom & left,
        bottom & right,
    )


@triton.jit
def _rows(ptr, rows, valid, D: tl.constexpr, BLOCK_D: tl.constexpr):
    """The (BLOCK_R, BLOCK_D) tile of the D-channel rows `rows` (BLOCK_R,) of ptr, in float32;
    zero where `valid` (BLOCK_R,) is False and in the channels past D."""
    d = tl.arange(0, BLOCK_D)
    mask = valid[:, None] & (d < D)[None, :]
    return tl.load(ptr + rows[:, None] * D + d[None, :], mask=mask, other=0.0).to(tl.float32)


@triton.jit
def _store_rows(ptr, rows, valid, tile, D: tl.constexpr, BLOCK_D: tl.constexpr):
    """Writes the float32 tile (BLOCK_R, BLOCK_D) into the D-channel rows `rows` of ptr, in ptr's
    dtype, where `valid` holds."""
    d = tl.arange(0, BLOCK_D)
    mask = valid[:, None] & (d < D)[None, :]
    tl.store(ptr + rows[:, None] * D + d[None, :], tile.to(ptr.dtype.element_ty), mask=mask)


@triton.jit
def _tile_rows(rows, Lq, S, M, BLOCK_R: tl.constexpr):
    """This program's rows r (BLOCK_R,), which of them exist, and the value row of pixel 0
    of each one's image and head: (n * S) * M + m."""
    r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    n = r // (Lq * M)
    return r, r < rows, n * S * M + r % M


@triton.jit
def forward_kernel(
    value_ptr,
    shapes_ptr,
    starts_ptr,
    loc_ptr,
    attn_ptr,
    out_ptr,
    rows,
    Lq,
    S,
    M,
    L,
    P,
    size_class,  # noqa: ARG001  (read by the autotuner's key only)
    D: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """out (rows, D) = for each row, the sum over its L * P samples of the attention weight times
    the bilinear sample of value."""
    r, ok, head = _tile_rows(rows, Lq, S, M, BLOCK_R)
    acc = tl.zeros((BLOCK_R, BLOCK_D), dtype=tl.float32)
    for lvl in range(L):
        for p in range(P):
            H, W, i, a, lh, lw, top_left, v00, v01, v10, v11 = _sample(
                shapes_ptr, starts_ptr, loc_ptr, attn_ptr, r, ok, head, lvl, p, M, L, P
            )
            hh = 1.0 - lh
            hw = 1.0 - lw
            acc += (a * hh * hw)[:, None] * _rows(value_ptr, top_left, v00, D, BLOCK_D)
            acc += (a * hh * lw)[:, None] * _rows(value_ptr, top_left + M, v01, D, BLOCK_D)
            acc += (a * lh * hw)[:, None] * _rows(value_ptr, top_left + W * M, v10, D, BLOCK_D)
            acc += (a * lh * lw)[:, None] * _rows(value_ptr, top_left + W * M + M, v11, D, BLOCK_D)
    _store_rows(out_ptr, r, ok, acc, D, BLOCK_D)


@triton.jit
def _corner_backward(
    value_ptr,
    grad_value_ptr,
    dest_ptr,
    coef_ptr,
    go,
    corner_row,
    valid,
    coef,
    e,
    ok,
    sink,
    D: tl.constexpr,
    BLOCK_D: tl.constexpr,
    DETERMINISTIC: tl.constexpr,
):
    """One corner of a tile of samples: returns <grad_output, value at the corner> (BLOCK_R,),
    and passes coef * grad_output on to the corner's value row: with atomic adds, or
    (DETERMINISTIC) as entry e of the (destination row, coefficient) list that
    segment_sum_kernel sums; corners outside the map are sent to the row `sink`."""
    g = tl.sum(go * _rows(value_ptr, corner_row, valid, D, BLOCK_D), axis=1)
    if DETERMINISTIC:
        tl.store(dest_ptr + e, tl.where(valid, corner_row, sink), mask=ok)
        tl.store(coef_ptr + e, coef, mask=ok)
    else:
        d = tl.arange(0, BLOCK_D)
        mask = valid[:, None] & (d < D)[None, :]
        tl.atomic_add(
            grad_value_ptr + corner_row[:, None] * D + d[None, :], coef[:, None] * go, mask=mask
        )
    return g


@triton.jit
def backward_kernel(
    value_ptr,
    shapes_ptr,
    starts_ptr,
    loc_ptr,
    attn_ptr,
    grad_out_ptr,
    grad_value_ptr,
    grad_loc_ptr,
    grad_attn_ptr,
    dest_ptr,
    coef_ptr,
    rows,
    Lq,
    S,
    M,
    L,
    P,
    size_class,  # noqa: ARG001  (read by the autotuner's key only)
    D: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_D: tl.constexpr,
    DETERMINISTIC: tl.constexpr,
):
    """Gradients of forward_kernel. grad_locations and grad_weights of each sample are reduced over
    the D channels in registers and written once. grad_value: atomic adds into the float32
    grad_value (rows, D); with DETERMINISTIC, entry 4 * i + k of dest / coef instead records
    corner k of sample i (its value row, or the sink row N * S * M outside the map, and the
    coefficient of grad_output) for segment_sum_kernel."""
    r, ok, head = _tile_rows(rows, Lq, S, M, BLOCK_R)
    sink = rows // Lq * S  # N * S * M: one past the last value row
    go = _rows(grad_out_ptr, r, ok, D, BLOCK_D)
    for lvl in range(L):
        for p in range(P):
            H, W, i, a, lh, lw, top_left, v00, v01, v10, v11 = _sample(
                shapes_ptr, starts_ptr, loc_ptr, attn_ptr, r, ok, head, lvl, p, M, L, P
            )
            hh = 1.0 - lh
            hw = 1.0 - lw
            g00 = _corner_backward(
                value_ptr,
                grad_value_ptr,
                dest_ptr,
                coef_ptr,
                go,
                top_left,
                v00,
                a * hh * hw,
                4 * i,
                ok,
                sink,
                D,
                BLOCK_D,
                DETERMINISTIC,
            )
            g01 = _corner_backward(
                value_ptr,
                grad_value_ptr,
                dest_ptr,
                coef_ptr,
                go,
                top_left + M,
                v01,
                a * hh * lw,
                4 * i + 1,
                ok,
                sink,
                D,
                BLOCK_D,
                DETERMINISTIC,
            )
            g10 = _corner_backward(
                value_ptr,
                grad_value_ptr,
                dest_ptr,
                coef_ptr,
                go,
                top_left + W * M,
                v10,
                a * lh * hw,
                4 * i + 2,
                ok,
                sink,
                D,
                BLOCK_D,
                DETERMINISTIC,
            )
            g11 = _corner_backward(
                value_ptr,
                grad_value_ptr,
                dest_ptr,
                coef_ptr,
                go,
                top_left + W * M + M,
                v11,
                a * lh * lw,
                4 * i + 3,
                ok,
                sink,
                D,
                BLOCK_D,
                DETERMINISTIC,
            )
            # as bilinear_backward in the shared header (skipped_terms for a skipped sample); g is
            # 0 at corners outside the map
            grad_a = hh * hw * g00 + hh * lw * g01 + lh * hw * g10 + lh * lw * g11
            grad_x = a * W.to(tl.float32) * (hh * (g01 - g00) + lh * (g11 - g10))
            grad_y = a * H.to(tl.float32) * (hw * (g10 - g00) + lw * (g11 - g01))
            tl.store(grad_attn_ptr + i, grad_a.to(grad_attn_ptr.dtype.element_ty), mask=ok)
            tl.store(grad_loc_ptr + 2 * i, grad_x.to(grad_loc_ptr.dtype.element_ty), mask=ok)
            tl.store(grad_loc_ptr + 2 * i + 1, grad_y.to(grad_loc_ptr.dtype.element_ty), mask=ok)


@triton.jit
def segment_sum_kernel(
    grad_out_ptr,
    order_ptr,
    coef_ptr,
    bounds_ptr,
    grad_value_ptr,
    value_rows,
    L,
    P,
    D: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """grad_value of the deterministic backward. `order` lists the (sample, corner) entries sorted
    stably by destination value row, and value row t owns order[bounds[t]:bounds[t + 1]]; a program
    sums the entries of BLOCK_T rows, each in that order, one entry per step, and writes each
    row once. The order of every sum is thus fixed by the data alone, not by the tiling."""
    t = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    ok = t < value_rows
    first = tl.load(bounds_ptr + t, mask=ok, other=0)
    count = tl.load(bounds_ptr + t + 1, mask=ok, other=0) - first
    acc = tl.zeros((BLOCK_T, BLOCK_D), dtype=tl.float32)
    for j in range(0, tl.max(count, axis=0)):
        live = j < count
        e = tl.load(order_ptr + first + j, mask=live, other=0)
        coef = tl.load(coef_ptr + e, mask=live, other=0.0)
        # entry e = 4 * i + k belongs to sample i = r * L * P + ..., so to grad_output row r
        go = _rows(grad_out_ptr, e // (4 * L * P), live, D, BLOCK_D)
        acc += coef[:, None] * go
    _store_rows(grad_value_ptr, t, ok, acc, D, BLOCK_D)
