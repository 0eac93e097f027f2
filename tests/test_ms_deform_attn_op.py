"""Tests of the compiled multi-scale deformable attention op (CPU kernel) and its Python wrapper.

The kernel (`torch.ops.deformable_detr.ms_deform_attn` and its backward, reached through
`ms_deform_attn`) is held against the grid_sample reference `ms_deform_attn_pytorch`, always
evaluated in float64 on the same inputs upcast to float64 (for the reduced-precision dtypes: on the
same already-rounded inputs, so only the kernel's own arithmetic is measured).

Covered:
  * forward in float64 / float32 / bfloat16 / float16 against the float64 reference;
  * float64 gradcheck for value, sampling_locations and attention_weights (head dims 30, 32, 64,
    71, odd level sizes, batch > 1, points in the partially-outside border band and fully outside
    the map) and float64 gradients against autograd through the reference;
  * float32 / bfloat16 / float16 gradients against the float64 reference;
  * bitwise determinism of the backward across runs and thread counts (1 vs 2);
  * non-contiguous inputs, empty batch / zero queries, hand-worked sampling values (pixel centres,
    midpoints, map corners, far outside), NaN / inf locations, batch independence, mixed dtypes;
  * the wrapper's input checks (error type and the argument the message names) and the raw
    operator's TORCH_CHECKs;
  * every CPU instruction-set variant of the kernel (ATEN_CPU_CAPABILITY = default / avx2 /
    avx512), each in a subprocess, against the float64 reference.

Tolerances (assert_close semantics, |actual - expected| <= atol + rtol * |expected|):
  forward, values ~ N(0, 1), softmax attention weights (outputs are O(1)):
    float64  rtol 1e-12, atol 1e-12   (rounding of a few dozen terms: ~1e-15)
    float32  rtol 1e-5,  atol 1e-5    (<= 48 terms summed in float32: n * eps * sum|terms| ~ 1e-5)
    bfloat16 rtol 2**-7, atol 1e-5    (float32 accumulation, then one rounding to 8 significant
                                       bits: relative error <= unit roundoff 2**-8; 2x margin)
    float16  rtol 2**-10, atol 1e-5   (same, 11 significant bits: <= 2**-11; 2x margin)
  gradients: the same rtol, and atol scaled by the largest |reference gradient| of that tensor
    (float64 1e-12, float32 1e-5, half types 1e-5), since grad_locations are W (or H) times a
    difference of D-long dot products and are one to two orders larger than the outputs.
  float64 gradcheck: eps 1e-6, atol 1e-7, rtol 1e-6. The op is linear in value and in the weights
    and, between kinks, linear in each coordinate of a location separately, so central differences
    are exact up to rounding (~1e-10); every location is kept >= 1e-3 pixel away from the kinks
    (integer pixel coordinates x * W - 0.5, including the outer border -1 and W).
"""
import contextlib
import json
import math
import os
import subprocess
import sys

import pytest
import torch

from deformable_detr.layers.ms_deform_attn_op import (
    extension_available,
    kernel_available,
    ms_deform_attn,
)
from deformable_detr.layers.ms_deform_attn_ref import ms_deform_attn_pytorch

CPU = torch.device("cpu")
LEVELS = ((5, 7), (3, 4), (1, 1), (2, 3))
KERNEL_DTYPES = (torch.float64, torch.float32, torch.bfloat16, torch.float16)

# (rtol, atol) of the forward against the float64 reference; see the module docstring.
FWD_TOL = {
    torch.float64: (1e-12, 1e-12),
    torch.float32: (1e-5, 1e-5),
    torch.bfloat16: (2**-7, 1e-5),
    torch.float16: (2**-10, 1e-5),
}
# (rtol, atol relative to the largest |reference gradient|) of the gradients.
GRAD_TOL = {
    torch.float64: (1e-10, 1e-12),
    torch.float32: (1e-5, 1e-5),
    torch.bfloat16: (2**-7, 1e-5),
    torch.float16: (2**-10, 1e-5),
}
# Distance (in pixels) that locations keep from the kinks in gradient tests: half-precision
# locations are rounded after being placed, by up to ~0.015 pixel on these level sizes.
KINK_MARGIN = {
    torch.float64: 1e-3,
    torch.float32: 1e-3,
    torch.bfloat16: 0.05,
    torch.float16: 0.05,
}

pytestmark = pytest.mark.skipif(
    not extension_available(), reason="the compiled extension deformable_detr._C is not built"
)


# ----------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------


def level_tensors(levels):
    """(spatial_shapes (L, 2) int64, level_start_index (L,) int64, S) of a list of (H, W)."""
    spatial_shapes = torch.tensor(levels, dtype=torch.int64).reshape(-1, 2)
    sizes = spatial_shapes.prod(dim=1)
    level_start_index = torch.cat([sizes.new_zeros(1), sizes.cumsum(0)[:-1]])
    return spatial_shapes, level_start_index, int(sizes.sum())


def push_off_kinks(loc, spatial_shapes, margin):
    """Moves every (finite) location so that its pixel coordinates x * W - 0.5 and y * H - 0.5
    are at least `margin` from an integer, where bilinear interpolation has its kinks."""
    loc = loc.double().clone()
    for lvl, (h, w) in enumerate(spatial_shapes.tolist()):
        for coord, size in ((0, w), (1, h)):
            pix = loc[..., lvl, :, coord] * size - 0.5
            base = pix.floor()
            frac = (pix - base).clamp(margin, 1 - margin)
            loc[..., lvl, :, coord] = (base + frac + 0.5) / size
    return loc


def min_kink_distance(loc, spatial_shapes):
    """Smallest distance, in pixels, of any location's pixel coordinate to a kink: an integer in
    [-1, size] (beyond, the interpolant is identically zero)."""
    dist = math.inf
    for lvl, (h, w) in enumerate(spatial_shapes.tolist()):
        for coord, size in ((0, w), (1, h)):
            pix = loc[..., lvl, :, coord].double() * size - 0.5
            kink = pix.round()
            near = (pix - kink).abs()[(kink >= -1) & (kink <= size)]
            if near.numel():
                dist = min(dist, float(near.min()))
    return dist


def border_locations(shape, generator):
    """Locations (shape[:-1] + (2,)) with each coordinate drawn from one of: near 0 (partly
    outside the map, in the border band), near 1 (likewise), inside, fully outside."""
    u = torch.rand(shape, generator=generator, dtype=torch.float64)
    kind = torch.randint(0, 5, shape, generator=generator)
    near0 = -0.04 + 0.08 * u
    near1 = 0.96 + 0.08 * u
    outside = torch.where(u < 0.5, -0.8 - u, 1.7 + u)
    return torch.where(kind == 0, near0, torch.where(kind == 1, near1,
                       torch.where(kind == 4, outside, u)))


def make_inputs(levels=LEVELS, N=2, Lq=5, M=2, D=8, P=3, dtype=torch.float64, lo=-0.1, hi=1.1,
                seed=0, margin=None, border=False):
    """Random valid inputs: value ~ N(0, 1); locations uniform in [lo, hi] (or `border_locations`),
    kept `margin` pixels off the kinks when given; attention weights a softmax over the L * P
    samples of each query and head. Returns (value, spatial_shapes, level_start_index,
    sampling_locations, attention_weights)."""
    g = torch.Generator().manual_seed(seed)
    spatial_shapes, level_start_index, S = level_tensors(levels)
    L = spatial_shapes.shape[0]
    value = torch.randn(N, S, M, D, generator=g, dtype=torch.float64)
    if border:
        loc = border_locations((N, Lq, M, L, P, 2), g)
    else:
        loc = lo + (hi - lo) * torch.rand(N, Lq, M, L, P, 2, generator=g, dtype=torch.float64)
    if margin is not None:
        loc = push_off_kinks(loc, spatial_shapes, margin)
    logits = torch.randn(N, Lq, M, L * P, generator=g, dtype=torch.float64)
    weights = logits.softmax(-1).reshape(N, Lq, M, L, P)
    return (value.to(dtype), spatial_shapes, level_start_index, loc.to(dtype), weights.to(dtype))


def reference64(value, spatial_shapes, loc, weights):
    """The reference in float64 on the given inputs upcast."""
    return ms_deform_attn_pytorch(value.double(), spatial_shapes, loc.double(), weights.double())


def reference_grads64(value, spatial_shapes, loc, weights, grad_out):
    """(output, grad_value, grad_locations, grad_weights) of the float64 reference."""
    leaves = [t.detach().double().requires_grad_() for t in (value, loc, weights)]
    out = ms_deform_attn_pytorch(leaves[0], spatial_shapes, leaves[1], leaves[2])
    grads = torch.autograd.grad(out, leaves, grad_out.double())
    return (out.detach(), *grads)


def kernel_grads(value, spatial_shapes, level_start_index, loc, weights, grad_out):
    """(output, grad_value, grad_locations, grad_weights) through `ms_deform_attn`, checking that
    the compiled operator (not the reference fallback) ran."""
    assert kernel_available(CPU, value.dtype)
    leaves = [t.detach().clone().requires_grad_() for t in (value, loc, weights)]
    out = ms_deform_attn(leaves[0], spatial_shapes, level_start_index, leaves[1], leaves[2])
    assert "deformable_detr_ms_deform_attn" in type(out.grad_fn).__name__, out.grad_fn
    grads = torch.autograd.grad(out, leaves, grad_out)
    return (out.detach(), *grads)


def raw_forward(value, spatial_shapes, level_start_index, loc, weights):
    """The compiled CPU forward operator, called directly."""
    assert kernel_available(CPU, value.dtype)
    return torch.ops.deformable_detr.ms_deform_attn(
        value, spatial_shapes, level_start_index, loc, weights
    )


def err_ratio(actual, expected, rtol, atol):
    """max |actual - expected| / (atol + rtol * |expected|): <= 1 iff assert_close would pass."""
    if expected.numel() == 0:
        return 0.0
    actual, expected = actual.double(), expected.double()
    return float(((actual - expected).abs() / (atol + rtol * expected.abs())).max())


def assert_close_grads(actual, expected, dtype, names=("value", "locations", "weights")):
    rtol, atol_rel = GRAD_TOL[dtype]
    for name, a, e in zip(names, actual, expected):
        atol = atol_rel * max(float(e.abs().max()), 1.0) if e.numel() else atol_rel
        torch.testing.assert_close(
            a.double(), e.double(), rtol=rtol, atol=atol, msg=lambda m, n=name: f"grad {n}: {m}"
        )


@contextlib.contextmanager
def num_threads(n):
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


# ----------------------------------------------------------------------------------------------
# 1. Forward against the reference
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("D", [8, 71])
@pytest.mark.parametrize("dtype", KERNEL_DTYPES, ids=str)
def test_forward_matches_reference(dtype, D):
    assert kernel_available(CPU, dtype)
    # N * Lq = 40 rows: several parallel_for chunks (16 rows each); D = 71 has a vector tail.
    value, shapes, starts, loc, weights = make_inputs(N=2, Lq=20, M=2, D=D, P=3, dtype=dtype,
                                                      lo=-0.2, hi=1.2, seed=1)
    out = raw_forward(value, shapes, starts, loc, weights)
    assert out.dtype == dtype and out.shape == (2, 20, 2 * D)
    expected = reference64(value, shapes, loc, weights)
    assert expected.abs().max() > 0.1  # the comparison is not trivially between zeros
    rtol, atol = FWD_TOL[dtype]
    torch.testing.assert_close(out.double(), expected, rtol=rtol, atol=atol)


def test_wrapper_forward_uses_kernel_and_matches_raw_operator():
    inputs = make_inputs(seed=2)
    out = ms_deform_attn(*inputs)
    assert torch.equal(out, raw_forward(*inputs))


# ----------------------------------------------------------------------------------------------
# 2. Float64 gradcheck, and float64 gradients against the reference
# ----------------------------------------------------------------------------------------------

GRADCHECK_CASES = [
    # levels, N, Lq, M, D, P
    pytest.param(LEVELS, 2, 2, 2, 30, 2, id="D30-4levels-N2"),
    pytest.param(((3, 5), (1, 1)), 1, 3, 1, 32, 3, id="D32-N1"),
    pytest.param(((1, 3), (3, 1)), 2, 2, 1, 64, 2, id="D64-thin-levels"),
    pytest.param(((3, 3), (1, 2), (5, 1)), 2, 2, 2, 71, 2, id="D71-N2"),
]


@pytest.mark.parametrize("levels,N,Lq,M,D,P", GRADCHECK_CASES)
def test_gradcheck_float64(levels, N, Lq, M, D, P):
    value, shapes, starts, loc, weights = make_inputs(
        levels, N=N, Lq=Lq, M=M, D=D, P=P, seed=3, border=True, margin=1e-3
    )
    # A sample fully outside every level, in every image and head: its gradients must be 0.
    loc[:, 0, :, :, 0] = torch.tensor([1.7, -0.8], dtype=torch.float64)
    assert min_kink_distance(loc, shapes) >= 1e-3 - 1e-9
    inside = (loc >= 0) & (loc <= 1)
    assert inside.all(-1).any() and (~inside).any()  # both kinds of sample are present
    leaves = [t.clone().requires_grad_() for t in (value, loc, weights)]

    def fn(v, sl, aw):
        return ms_deform_attn(v, shapes, starts, sl, aw)

    assert torch.autograd.gradcheck(fn, leaves, eps=1e-6, atol=1e-7, rtol=1e-6)

    grad_out = torch.randn(N, Lq, M * D, dtype=torch.float64,
                           generator=torch.Generator().manual_seed(4))
    got = kernel_grads(value, shapes, starts, loc, weights, grad_out)
    assert torch.equal(got[2][:, 0, :, :, 0], torch.zeros_like(got[2][:, 0, :, :, 0]))
    assert torch.equal(got[3][:, 0, :, :, 0], torch.zeros_like(got[3][:, 0, :, :, 0]))
    expected = reference_grads64(value, shapes, loc, weights, grad_out)
    rtol, atol = FWD_TOL[torch.float64]
    torch.testing.assert_close(got[0], expected[0], rtol=rtol, atol=atol)
    assert_close_grads(got[1:], expected[1:], torch.float64)


# ----------------------------------------------------------------------------------------------
# 3. Reduced-precision backward against the float64 reference
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("D", [32, 71])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_backward_matches_reference(dtype, D):
    value, shapes, starts, loc, weights = make_inputs(
        N=2, Lq=24, M=2, D=D, P=3, dtype=dtype, seed=5, border=True, margin=KINK_MARGIN[dtype]
    )
    assert min_kink_distance(loc, shapes) > 5e-4  # still off the kinks after rounding to dtype
    grad_out = torch.randn(2, 24, 2 * D, generator=torch.Generator().manual_seed(6)).to(dtype)
    got = kernel_grads(value, shapes, starts, loc, weights, grad_out)
    assert [g.dtype for g in got] == [dtype] * 4
    expected = reference_grads64(value, shapes, loc, weights, grad_out)
    assert all(float(e.abs().max()) > 0.1 for e in expected[1:])
    rtol, atol = FWD_TOL[dtype]
    torch.testing.assert_close(got[0].double(), expected[0], rtol=rtol, atol=atol)
    assert_close_grads(got[1:], expected[1:], dtype)


# ----------------------------------------------------------------------------------------------
# 4. Determinism of the backward
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_backward_bitwise_deterministic(dtype):
    # Many queries sampling near the same few pixels: every grad_value element gathers hundreds of
    # contributions, so any race or order-dependent sum would change the bits.
    N, Lq, M, D, P = 2, 400, 2, 32, 4
    value, shapes, starts, loc, weights = make_inputs(
        ((4, 5), (2, 3)), N=N, Lq=Lq, M=M, D=D, P=P, dtype=dtype, seed=7
    )
    g = torch.Generator().manual_seed(8)
    hot = torch.tensor([[0.3, 0.4], [0.55, 0.6]], dtype=torch.float64)  # two hot spots
    which = torch.randint(0, 2, loc.shape[:-1], generator=g)
    loc = (hot[which] + 0.02 * torch.randn(loc.shape, generator=g, dtype=torch.float64)).to(dtype)
    grad_out = torch.randn(N, Lq, M * D, generator=g).to(dtype)

    def run():
        return kernel_grads(value, shapes, starts, loc, weights, grad_out)

    with num_threads(2):
        first, second = run(), run()
    with num_threads(1):
        single = run()
    for a, b, c in zip(first, second, single):
        assert torch.equal(a, b)
        assert torch.equal(a, c)
    assert first[1].abs().max() > 1  # the hot pixels did gather many contributions


# ----------------------------------------------------------------------------------------------
# 5. Non-contiguous inputs
# ----------------------------------------------------------------------------------------------


def test_non_contiguous_inputs():
    value, shapes, starts, loc, weights = make_inputs(N=2, Lq=6, M=2, D=8, P=3,
                                                      dtype=torch.float32, seed=9)
    value_nc = value.transpose(1, 2).contiguous().transpose(1, 2)  # (N, S, M, D), strided
    loc_nc = torch.cat([loc, torch.zeros_like(loc)], dim=-1)[..., :2]  # a slice, strides (.., 4, 1)
    weights_nc = weights.transpose(0, 1).contiguous().transpose(0, 1)
    shapes_nc = shapes.t().contiguous().t()
    starts_nc = torch.stack([starts, starts], dim=1)[:, 0]
    non_contiguous = (value_nc, shapes_nc, starts_nc, loc_nc, weights_nc)
    assert not any(t.is_contiguous() for t in non_contiguous)
    for a, b in zip(non_contiguous, (value, shapes, starts, loc, weights)):
        assert torch.equal(a, b)

    grad_out = torch.randn(2, 6, 16, generator=torch.Generator().manual_seed(10))
    grad_out_nc = grad_out.transpose(0, 1).contiguous().transpose(0, 1)
    contiguous_result = kernel_grads(value, shapes, starts, loc, weights, grad_out)
    strided_result = kernel_grads(*non_contiguous, grad_out_nc)
    for a, b in zip(strided_result, contiguous_result):
        assert torch.equal(a, b)
    assert torch.equal(raw_forward(*non_contiguous), contiguous_result[0])


# ----------------------------------------------------------------------------------------------
# 6. Empty batch and zero queries
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("N,Lq", [(0, 4), (2, 0), (0, 0)])
def test_empty_wrapper_forward_and_backward(N, Lq):
    value, shapes, starts, loc, weights = make_inputs(N=N, Lq=Lq, M=2, D=8, P=3)
    leaves = [t.clone().requires_grad_() for t in (value, loc, weights)]
    out = ms_deform_attn(leaves[0], shapes, starts, leaves[1], leaves[2])
    assert out.shape == (N, Lq, 16) and out.dtype == torch.float64
    # allow_unused only so that a disconnected input fails the assert below with its name,
    # rather than inside autograd: every input must get a (zero) gradient.
    grads = torch.autograd.grad(out.sum(), leaves, allow_unused=True)
    for name, g, leaf in zip(("value", "sampling_locations", "attention_weights"), grads, leaves):
        assert g is not None, f"{name} gets no gradient: it is not connected to the output"
        assert g.shape == leaf.shape
        assert torch.equal(g, torch.zeros_like(leaf))


@pytest.mark.parametrize("N,Lq", [(0, 4), (2, 0)])
def test_empty_raw_operators(N, Lq):
    value, shapes, starts, loc, weights = make_inputs(N=N, Lq=Lq, M=2, D=8, P=3)
    out = raw_forward(value, shapes, starts, loc, weights)
    assert out.shape == (N, Lq, 16)
    grads = torch.ops.deformable_detr.ms_deform_attn_backward(
        value, shapes, starts, loc, weights, torch.ones(N, Lq, 16, dtype=torch.float64)
    )
    for g, t in zip(grads, (value, loc, weights)):
        assert g.shape == t.shape and not g.abs().any()


# ----------------------------------------------------------------------------------------------
# 7. Hand-worked sampling values
# ----------------------------------------------------------------------------------------------

# Level 0: H = W = 2, pixel (row, col) of head 0 holds [[1, 2], [3, 4]], head 1 ten times that.
# Level 1: H = 1, W = 3, head 0 holds [5, 6, 7], head 1 ten times that.
# Pixel coordinates are (x * W - 0.5, y * H - 0.5); pixel centres sit on integers.
HAND_CASES = [
    # (x, y) on level 0, expected head-0 value
    ((0.25, 0.75), 3.0),  # centre of row 1, col 0
    ((0.75, 0.25), 2.0),  # centre of row 0, col 1
    ((0.75, 0.75), 4.0),  # centre of row 1, col 1
    ((0.5, 0.25), 1.5),  # midway between (0, 0) and (0, 1)
    ((0.25, 0.5), 2.0),  # midway between (0, 0) and (1, 0)
    ((0.5, 0.5), 2.5),  # centre of the map: mean of the four pixels
    ((0.0, 0.0), 0.25),  # top-left corner: 1/4 of pixel (0, 0), the rest is zero padding
    ((1.0, 1.0), 1.0),  # bottom-right corner: 1/4 of pixel (1, 1)
    ((0.0, 0.25), 0.5),  # left edge at row 0's centre: half of pixel (0, 0)
    ((1.7, -0.8), 0.0),  # far outside
    ((0.25, 1.3), 0.0),  # below the map
    ((-0.3, 0.5), 0.0),  # left of the map
]


def hand_inputs(dtype):
    spatial_shapes, level_start_index, S = level_tensors(((2, 2), (1, 3)))
    head0 = torch.tensor([1.0, 2, 3, 4, 5, 6, 7])
    value = torch.stack([head0, 10 * head0], dim=1).reshape(1, S, 2, 1)
    Lq = len(HAND_CASES) + 1
    loc = torch.full((1, Lq, 2, 2, 1, 2), 0.5)
    weights = torch.zeros(1, Lq, 2, 2, 1)
    for q, ((x, y), _) in enumerate(HAND_CASES):
        loc[0, q, :, 0, 0] = torch.tensor([x, y])
        weights[0, q, :, 0, 0] = 1.0
    # Last query: only level 1, at its centre pixel (col 1): checks the level offset.
    weights[0, -1, :, 1, 0] = 1.0
    expected0 = torch.tensor([e for _, e in HAND_CASES] + [6.0])
    expected = torch.stack([expected0, 10 * expected0], dim=1).reshape(1, Lq, 2)
    return ((value.to(dtype), spatial_shapes, level_start_index, loc.to(dtype),
             weights.to(dtype)), expected.to(dtype))


@pytest.mark.parametrize(
    "dtype,impl",
    [(dtype, "kernel") for dtype in KERNEL_DTYPES]
    + [(torch.float64, "reference"), (torch.float32, "reference")],
    ids=str,
)
def test_hand_worked_values(dtype, impl):
    (value, shapes, starts, loc, weights), expected = hand_inputs(dtype)
    if impl == "kernel":
        out = raw_forward(value, shapes, starts, loc, weights)
    else:
        out = ms_deform_attn_pytorch(value, shapes, loc, weights)
    # All of these are exact in binary floating point: only exact equality is right.
    torch.testing.assert_close(out, expected, rtol=0, atol=0)


# ----------------------------------------------------------------------------------------------
# 8. NaN and infinite locations
# ----------------------------------------------------------------------------------------------

NON_FINITE = [
    # (n, q, m, l, p), (x, y)
    ((0, 0, 0, 0, 0), (math.nan, 0.5)),
    ((0, 1, 1, 1, 1), (0.5, math.inf)),
    ((1, 2, 0, 2, 0), (-math.inf, -math.inf)),
    ((1, 3, 1, 3, 2), (math.inf, math.nan)),
    ((1, 0, 0, 0, 1), (0.3, -math.inf)),
    ((0, 4, 1, 0, 2), (math.nan, math.nan)),
]


@pytest.mark.parametrize("impl", ["kernel", "reference"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_non_finite_locations(dtype, impl):
    value, shapes, starts, loc, weights = make_inputs(N=2, Lq=5, M=2, D=8, P=3, dtype=dtype,
                                                      seed=11, margin=1e-3)
    bad = torch.zeros(weights.shape, dtype=torch.bool)
    clean_loc, clean_weights = loc.clone(), weights.clone()
    for idx, xy in NON_FINITE:
        loc[idx] = torch.tensor(xy, dtype=dtype)
        bad[idx] = True
        clean_weights[idx] = 0.0  # the same sample, contributing nothing
    grad_out = torch.randn(2, 5, 16, generator=torch.Generator().manual_seed(12)).to(dtype)

    def run(sl, aw):
        if impl == "kernel":
            return kernel_grads(value, shapes, starts, sl, aw, grad_out)
        leaves = [t.clone().requires_grad_() for t in (value, sl, aw)]
        out = ms_deform_attn_pytorch(leaves[0], shapes, leaves[1], leaves[2])
        return (out.detach(), *torch.autograd.grad(out, leaves, grad_out))

    out, g_value, g_loc, g_weights = run(loc, weights)
    c_out, c_value, c_loc, c_weights = run(clean_loc, clean_weights)
    assert torch.isfinite(out).all() and torch.isfinite(g_value).all()
    assert torch.isfinite(g_loc).all() and torch.isfinite(g_weights).all()
    assert torch.equal(g_loc[bad], torch.zeros_like(g_loc[bad]))
    assert torch.equal(g_weights[bad], torch.zeros_like(g_weights[bad]))
    rtol, atol = FWD_TOL[dtype]
    torch.testing.assert_close(out, c_out, rtol=rtol, atol=atol)
    torch.testing.assert_close(g_value, c_value, rtol=rtol, atol=atol)
    torch.testing.assert_close(g_loc[~bad], c_loc[~bad], rtol=rtol, atol=atol)
    torch.testing.assert_close(g_weights[~bad], c_weights[~bad], rtol=rtol, atol=atol)
    assert c_weights[bad].abs().max() > 0  # (those samples would have had a weight gradient)


# ----------------------------------------------------------------------------------------------
# 9. Input checks of the wrapper
# ----------------------------------------------------------------------------------------------


def _replace(**changes):
    """A case: a function of the valid inputs (as a dict) returning the modified 5-tuple."""
    names = ("value", "spatial_shapes", "level_start_index", "sampling_locations",
             "attention_weights")

    def apply(inputs):
        new = dict(inputs)
        for name, fn in changes.items():
            new[name] = fn(inputs)
        return tuple(new[n] for n in names)

    return apply


def _shift_first_level(i):
    shapes = i["spatial_shapes"].clone()
    shapes[0, 1] -= 1  # (5, 7) -> (5, 6): sum(H * W) no longer equals S
    return shapes


CHECK_CASES = [
    # id, case, exception type, argument the message must name
    ("value-rank", _replace(value=lambda i: i["value"][0]), ValueError, "value"),
    ("shapes-rank", _replace(spatial_shapes=lambda i: i["spatial_shapes"].flatten()),
     ValueError, "spatial_shapes"),
    ("starts-rank", _replace(level_start_index=lambda i: i["level_start_index"][None]),
     ValueError, "level_start_index"),
    ("locations-rank", _replace(sampling_locations=lambda i: i["sampling_locations"][..., 0]),
     ValueError, "sampling_locations"),
    ("weights-rank", _replace(attention_weights=lambda i: i["attention_weights"][..., None]),
     ValueError, "attention_weights"),
    ("locations-not-xy", _replace(sampling_locations=lambda i: i["sampling_locations"][..., :1]),
     ValueError, "sampling_locations"),
    ("M-mismatch", _replace(sampling_locations=lambda i: i["sampling_locations"][:, :, :1],
                            attention_weights=lambda i: i["attention_weights"][:, :, :1]),
     ValueError, "sampling_locations"),
    ("N-mismatch", _replace(sampling_locations=lambda i: i["sampling_locations"][:1],
                            attention_weights=lambda i: i["attention_weights"][:1]),
     ValueError, "sampling_locations"),
    ("L-mismatch", _replace(spatial_shapes=lambda i: i["spatial_shapes"][:3],
                            level_start_index=lambda i: i["level_start_index"][:3]),
     ValueError, "spatial_shapes"),
    ("P-mismatch", _replace(attention_weights=lambda i: i["attention_weights"][..., :2]),
     ValueError, "attention_weights"),
    ("Lq-mismatch", _replace(attention_weights=lambda i: i["attention_weights"][:, :2]),
     ValueError, "attention_weights"),
    ("starts-length", _replace(level_start_index=lambda i: i["level_start_index"][:3]),
     ValueError, "level_start_index"),
    ("shapes-sum", _replace(spatial_shapes=_shift_first_level), ValueError, "spatial_shapes"),
    ("shapes-zero", _replace(spatial_shapes=lambda i: i["spatial_shapes"] * torch.tensor([1, 0])),
     ValueError, "spatial_shapes"),
    ("starts-values", _replace(level_start_index=lambda i: i["level_start_index"].flip(0)),
     ValueError, "level_start_index"),
    ("shapes-float", _replace(spatial_shapes=lambda i: i["spatial_shapes"].float()),
     TypeError, "spatial_shapes"),
    ("starts-float", _replace(level_start_index=lambda i: i["level_start_index"].double()),
     TypeError, "level_start_index"),
    ("shapes-bool", _replace(spatial_shapes=lambda i: i["spatial_shapes"] > 0),
     TypeError, "spatial_shapes"),
    ("value-int", _replace(value=lambda i: i["value"].long()), TypeError, "value"),
    ("locations-int", _replace(sampling_locations=lambda i: i["sampling_locations"].long()),
     TypeError, "sampling_locations"),
    ("weights-int", _replace(attention_weights=lambda i: i["attention_weights"].int()),
     TypeError, "attention_weights"),
    ("shapes-list", _replace(spatial_shapes=lambda i: i["spatial_shapes"].tolist()),
     TypeError, "spatial_shapes"),
    ("value-ndarray", _replace(value=lambda i: i["value"].numpy()), TypeError, "value"),
    ("weights-float", _replace(attention_weights=lambda i: 1.0), TypeError, "attention_weights"),
    # A second device, simulated with 'meta' (no data): the device check runs before any check
    # that reads values, so the mismatch is what is reported.
    ("weights-meta", _replace(attention_weights=lambda i: i["attention_weights"].to("meta")),
     ValueError, "attention_weights"),
    ("locations-meta", _replace(sampling_locations=lambda i: i["sampling_locations"].to("meta")),
     ValueError, "sampling_locations"),
    ("starts-meta", _replace(level_start_index=lambda i: i["level_start_index"].to("meta")),
     ValueError, "level_start_index"),
]


@pytest.mark.parametrize("case,exc,name", [c[1:] for c in CHECK_CASES],
                         ids=[c[0] for c in CHECK_CASES])
def test_input_checks(case, exc, name):
    value, shapes, starts, loc, weights = make_inputs(N=2, Lq=4, M=2, D=8, P=3)
    valid = dict(value=value, spatial_shapes=shapes, level_start_index=starts,
                 sampling_locations=loc, attention_weights=weights)
    ms_deform_attn(*valid.values())  # the unmodified inputs are accepted
    with pytest.raises(exc, match=rf"\b{name}\b") as info:
        ms_deform_attn(*case(valid))
    assert type(info.value) is exc  # not a subclass, e.g. not a RuntimeError-derived error
    if any(isinstance(t, torch.Tensor) and t.device.type == "meta" for t in case(valid)):
        assert "device" in str(info.value) and "meta" in str(info.value), info.value


# ----------------------------------------------------------------------------------------------
# 10. Batch independence
# ----------------------------------------------------------------------------------------------


def test_batch_equals_images_alone():
    N, Lq, M, D = 3, 7, 2, 16
    value, shapes, starts, loc, weights = make_inputs(N=N, Lq=Lq, M=M, D=D, P=3, seed=13,
                                                      margin=1e-3)
    grad_out = torch.randn(N, Lq, M * D, dtype=torch.float64,
                           generator=torch.Generator().manual_seed(14))
    batched = kernel_grads(value, shapes, starts, loc, weights, grad_out)
    rtol, atol = FWD_TOL[torch.float64]
    for n in range(N):
        alone = kernel_grads(value[n:n + 1], shapes, starts, loc[n:n + 1], weights[n:n + 1],
                             grad_out[n:n + 1])
        for a, b in zip(alone, batched):
            torch.testing.assert_close(a, b[n:n + 1], rtol=rtol, atol=atol)
    # The images differ, so a mix-up between them would show.
    assert not torch.allclose(batched[0][0], batched[0][1])


# ----------------------------------------------------------------------------------------------
# 11. The raw operators' own checks
# ----------------------------------------------------------------------------------------------

RAW_CASES = [
    ("value-3d", lambda v, s, i, l, a: (v[0], s, i, l, a), "value"),
    ("locations-xyz", lambda v, s, i, l, a: (v, s, i, torch.cat([l, l[..., :1]], -1), a),
     "sampling_locations"),
    ("weights-shape", lambda v, s, i, l, a: (v, s, i, l, a[..., :2]), "attention_weights"),
    ("M-mismatch", lambda v, s, i, l, a: (v[:, :, :1], s, i, l, a), "sampling_locations"),
    ("shapes-rows", lambda v, s, i, l, a: (v, s[:3], i, l, a), "spatial_shapes"),
    ("starts-length", lambda v, s, i, l, a: (v, s, i[:3], l, a), "level_start_index"),
    ("shapes-int32", lambda v, s, i, l, a: (v, s.int(), i, l, a), "int64"),
    ("dtype-mix", lambda v, s, i, l, a: (v.float(), s, i, l, a), "dtype"),
]


@pytest.mark.parametrize("case,name", [c[1:] for c in RAW_CASES], ids=[c[0] for c in RAW_CASES])
def test_raw_operator_rejects_bad_inputs(case, name):
    inputs = make_inputs(N=2, Lq=4, M=2, D=8, P=3)
    with pytest.raises(RuntimeError, match=name):
        torch.ops.deformable_detr.ms_deform_attn(*case(*inputs))
    grad_out = torch.ones(2, 4, 16, dtype=torch.float64)
    with pytest.raises(RuntimeError, match=name):
        torch.ops.deformable_detr.ms_deform_attn_backward(*case(*inputs), grad_out)


def test_raw_backward_rejects_bad_grad_output():
    inputs = make_inputs(N=2, Lq=4, M=2, D=8, P=3)
    with pytest.raises(RuntimeError, match="grad_output"):
        torch.ops.deformable_detr.ms_deform_attn_backward(
            *inputs, torch.ones(2, 4, 15, dtype=torch.float64)
        )


# ----------------------------------------------------------------------------------------------
# 12. Mixed dtypes
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value_dtype,loc_dtype,weights_dtype,out_dtype",
    [
        (torch.float32, torch.float64, torch.float32, torch.float64),
        (torch.float16, torch.float32, torch.float16, torch.float32),
        (torch.bfloat16, torch.bfloat16, torch.float32, torch.float32),
    ],
    ids=str,
)
def test_mixed_dtypes_promote(value_dtype, loc_dtype, weights_dtype, out_dtype):
    value, shapes, starts, loc, weights = make_inputs(N=2, Lq=5, M=2, D=8, P=3, seed=15)
    value, loc, weights = value.to(value_dtype), loc.to(loc_dtype), weights.to(weights_dtype)
    leaves = [t.clone().requires_grad_() for t in (value, loc, weights)]
    out = ms_deform_attn(leaves[0], shapes, starts, leaves[1], leaves[2])
    assert out.dtype == out_dtype
    assert "deformable_detr_ms_deform_attn" in type(out.grad_fn).__name__  # the kernel ran
    # The same as running the kernel on the inputs converted to the promoted dtype.
    expected = raw_forward(value.to(out_dtype), shapes, starts, loc.to(out_dtype),
                           weights.to(out_dtype))
    assert torch.equal(out, expected)
    rtol, atol = FWD_TOL[out_dtype]
    torch.testing.assert_close(out.double(), reference64(value, shapes, loc, weights),
                               rtol=rtol, atol=atol)
    out.sum().backward()
    for leaf in leaves:  # gradients come back in each input's own dtype
        assert leaf.grad is not None and leaf.grad.dtype == leaf.dtype
        assert torch.isfinite(leaf.grad).all() and leaf.grad.abs().max() > 0


def test_int32_index_tensors_accepted_by_wrapper():
    value, shapes, starts, loc, weights = make_inputs(seed=18)
    out = ms_deform_attn(value, shapes.int(), starts.int(), loc, weights)
    assert torch.equal(out, raw_forward(value, shapes, starts, loc, weights))


# ----------------------------------------------------------------------------------------------
# Every instruction-set variant of the CPU kernel, each in its own process
# ----------------------------------------------------------------------------------------------


def isa_report():
    """Runs the kernel (forward and backward) in every dtype against the float64 reference and
    returns, per dtype, the worst err_ratio (<= 1 passes) and the raw max errors; also whether two
    backward runs were bitwise equal. Called in a subprocess by test_isa_variant."""
    report = {"torch_capability": torch.backends.cpu.get_cpu_capability()}
    for dtype in KERNEL_DTYPES:
        value, shapes, starts, loc, weights = make_inputs(
            N=2, Lq=20, M=2, D=71, P=3, dtype=dtype, seed=16, border=True,
            margin=KINK_MARGIN[dtype]
        )
        grad_out = torch.randn(2, 20, 142, generator=torch.Generator().manual_seed(17)).to(dtype)
        got = kernel_grads(value, shapes, starts, loc, weights, grad_out)
        again = kernel_grads(value, shapes, starts, loc, weights, grad_out)
        expected = reference_grads64(value, shapes, loc, weights, grad_out)
        rtol, atol = FWD_TOL[dtype]
        g_rtol, g_atol = GRAD_TOL[dtype]
        ratios = {"forward": err_ratio(got[0], expected[0], rtol, atol)}
        for name, a, e in zip(("value", "locations", "weights"), got[1:], expected[1:]):
            ratios["grad_" + name] = err_ratio(a, e, g_rtol, g_atol * max(float(e.abs().max()), 1))
        report[str(dtype)] = {
            "ratios": ratios,
            "max_abs_err": {k: float((a.double() - e).abs().max())
                            for k, a, e in zip(ratios, got, expected)},
            "deterministic": all(torch.equal(a, b) for a, b in zip(got, again)),
            "min_kink_distance": min_kink_distance(loc, shapes),
        }
    return report


def _cpu_flags():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


ISA_REQUIREMENTS = {
    "default": set(),
    "avx2": {"avx2", "fma"},
    "avx512": {"avx512f", "avx512bw", "avx512vl", "avx512dq"},
}


@pytest.mark.parametrize("capability", ["default", "avx2", "avx512"])
def test_isa_variant(capability):
    missing = ISA_REQUIREMENTS[capability] - _cpu_flags()
    if missing:
        pytest.skip(f"this CPU lacks {sorted(missing)}")
    tests_dir = os.path.dirname(os.path.abspath(__file__))
    code = (
        "import json, sys\n"
        f"sys.path.insert(0, {tests_dir!r})\n"
        "import test_ms_deform_attn_op as t\n"
        "print(json.dumps(t.isa_report()))\n"
    )
    env = dict(os.environ, ATEN_CPU_CAPABILITY=capability)
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    # The variable reached the process (PyTorch's own dispatch reports the capped level).
    assert report["torch_capability"].lower() == capability.lower()
    for dtype in KERNEL_DTYPES:
        entry = report[str(dtype)]
        assert entry["min_kink_distance"] > 5e-4
        assert entry["deterministic"], (capability, dtype)
        for key, ratio in entry["ratios"].items():
            assert ratio <= 1.0, (capability, str(dtype), key, entry)


# ----------------------------------------------------------------------------------------------
# The operator's registration (schema, fake kernels, autograd) as torch.library sees it
# ----------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_opcheck():
    value, shapes, starts, loc, weights = make_inputs(N=2, Lq=3, M=2, D=8, P=2, margin=1e-3)
    value = value.transpose(1, 2).contiguous().transpose(1, 2)  # non-contiguous on purpose
    args = (value.requires_grad_(), shapes, starts, loc.requires_grad_(),
            weights.requires_grad_())
    result = torch.library.opcheck(torch.ops.deformable_detr.ms_deform_attn.default, args)
    assert all(v == "SUCCESS" for v in result.values()), result
