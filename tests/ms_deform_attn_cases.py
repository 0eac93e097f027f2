"""Shared inputs, tolerances and helpers of the tests of the compiled multi-scale deformable
attention op (not a test module: the test_ms_deform_attn_*.py modules import it).

The kernel (`torch.ops.deformable_detr.ms_deform_attn` and its backward, reached through
`ms_deform_attn`) is held against the grid_sample reference `ms_deform_attn_pytorch`, always
evaluated in float64 on the same inputs upcast to float64 (for the reduced-precision dtypes: on the
same already-rounded inputs, so only the kernel's own arithmetic is measured).

`isa_report` is here, not in a test module, because test_isa_variant runs it in a subprocess.
"""

import contextlib
import math
import os

import pytest
import torch

from deformable_detr.layers.ms_deform_attn_op import (
    extension_available,
    kernel_available,
    ms_deform_attn,
    triton_available,
)
from deformable_detr.layers.ms_deform_attn_ref import ms_deform_attn_pytorch

CPU = torch.device("cpu")
LEVELS = ((5, 7), (3, 4), (1, 1), (2, 3))
KERNEL_DTYPES = (torch.float64, torch.float32, torch.bfloat16, torch.float16)

# Every test module sets `pytestmark = requires_extension`.
requires_extension = pytest.mark.skipif(
    not extension_available(), reason="the compiled extension deformable_detr._C is not built"
)

# Where the Triton kernels run in tests: on the GPU when there is one, else on CPU tensors in
# Triton's interpreter (tests/conftest.py sets TRITON_INTERPRET=1 before the kernels are defined).
TRITON_DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
requires_triton = pytest.mark.skipif(
    not triton_available()
    or (TRITON_DEVICE.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1"),
    reason="triton is not importable, or there is no GPU and TRITON_INTERPRET is not 1",
)
TRITON_DTYPES = (torch.float32, torch.bfloat16, torch.float16)

# ----------------------------------------------------------------------------------------------
# Tolerances (assert_close semantics, |actual - expected| <= atol + rtol * |expected|)
# ----------------------------------------------------------------------------------------------

# (rtol, atol) of the forward against the float64 reference. Values ~ N(0, 1) and softmax
# attention weights, so the outputs are O(1):
#   float64  rtol 1e-12, atol 1e-12   (rounding of a few dozen terms: ~1e-15)
#   float32  rtol 1e-5,  atol 1e-5    (<= 48 terms summed in float32: n * eps * sum|terms| ~ 1e-5)
#   bfloat16 rtol 2**-7, atol 1e-5    (float32 accumulation, then one rounding to 8 significant
#                                      bits: relative error <= unit roundoff 2**-8; 2x margin)
#   float16  rtol 2**-10, atol 1e-5   (same, 11 significant bits: <= 2**-11; 2x margin)
FWD_TOL = {
    torch.float64: (1e-12, 1e-12),
    torch.float32: (1e-5, 1e-5),
    torch.bfloat16: (2**-7, 1e-5),
    torch.float16: (2**-10, 1e-5),
}
# (rtol, atol relative to the largest |reference gradient|) of the gradients. rtol: the forward's
# for float32 / bfloat16 / float16, 1e-10 for float64. atol: the forward's (float64 1e-12, float32
# 1e-5, half types 1e-5) times the largest |reference gradient| of that tensor (at least 1; see
# assert_close_grads), since grad_locations are W (or H) times a difference of D-long dot products
# and are one to two orders larger than the outputs.
GRAD_TOL = {
    torch.float64: (1e-10, 1e-12),
    torch.float32: (1e-5, 1e-5),
    torch.bfloat16: (2**-7, 1e-5),
    torch.float16: (2**-10, 1e-5),
}
# Keyword arguments of the float64 torch.autograd.gradcheck. The op is linear in value and in the
# weights and, between kinks, linear in each coordinate of a location separately, so central
# differences are exact up to rounding (~1e-10), provided every location is kept >= 1e-3 pixel
# (KINK_MARGIN[torch.float64]) away from the kinks: the integer pixel coordinates x * W - 0.5,
# including the outer border -1 and W.
GRADCHECK_TOL = dict(eps=1e-6, atol=1e-7, rtol=1e-6)
# Distance (in pixels) that locations keep from the kinks in gradient tests: half-precision
# locations are rounded after being placed, by up to ~0.015 pixel on these level sizes.
KINK_MARGIN = {
    torch.float64: 1e-3,
    torch.float32: 1e-3,
    torch.bfloat16: 0.05,
    torch.float16: 0.05,
}

# ----------------------------------------------------------------------------------------------
# The cases every kernel backend answers (test_ms_deform_attn_backends.py): make_inputs keyword
# arguments, by id. Defaults: N 2, Lq 5, M 2, D 8, P 3, the four LEVELS, locations in [-0.1, 1.1].
# They cover head dims that are not powers of two (30, 48, 71) and are (32, 64), 1 to 5 levels,
# 1 to 8 points, row counts N * Lq * M that are not a multiple of any tile (26, 42, 201), a batch
# of 67, and locations in the border bands and far outside.
# ----------------------------------------------------------------------------------------------

OP_CASES = {
    "D30-L4-P3": dict(D=30, seed=21),
    "D48-L1-P1": dict(levels=((6, 5),), D=48, P=1, Lq=13, seed=22),
    "D32-L2-P8": dict(levels=((5, 7), (2, 3)), D=32, P=8, seed=23),
    "D64-L5-P2": dict(levels=LEVELS + ((4, 2),), D=64, P=2, seed=24),
    "D71-M3-Lq7": dict(M=3, D=71, Lq=7, P=4, seed=25),
    "N67": dict(N=67, Lq=3, M=1, D=16, P=2, levels=LEVELS[:2], seed=26),
    "border": dict(D=32, Lq=9, border=True, seed=27),
}

# ----------------------------------------------------------------------------------------------
# Input builders
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
    return torch.where(
        kind == 0, near0, torch.where(kind == 1, near1, torch.where(kind == 4, outside, u))
    )


def make_inputs(
    levels=LEVELS,
    N=2,
    Lq=5,
    M=2,
    D=8,
    P=3,
    dtype=torch.float64,
    lo=-0.1,
    hi=1.1,
    seed=0,
    margin=None,
    border=False,
):
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


# ----------------------------------------------------------------------------------------------
# Running the kernel and the reference
# ----------------------------------------------------------------------------------------------


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
    the compiled operator (not the reference fallback) ran, on the inputs' device."""
    assert kernel_available(value.device, value.dtype)
    leaves = [t.detach().clone().requires_grad_() for t in (value, loc, weights)]
    out = ms_deform_attn(leaves[0], spatial_shapes, level_start_index, leaves[1], leaves[2])
    assert "deformable_detr_ms_deform_attn" in type(out.grad_fn).__name__, out.grad_fn
    grads = torch.autograd.grad(out, leaves, grad_out)
    return (out.detach(), *grads)


def triton_grads(value, spatial_shapes, level_start_index, loc, weights, grad_out, deterministic):
    """(output, grad_value, grad_locations, grad_weights) of the Triton operator through its
    autograd, on TRITON_DEVICE; results on the CPU."""
    leaves = [t.detach().to(TRITON_DEVICE).requires_grad_() for t in (value, loc, weights)]
    shapes, starts = spatial_shapes.to(TRITON_DEVICE), level_start_index.to(TRITON_DEVICE)
    out = torch.ops.deformable_detr.ms_deform_attn_triton(
        leaves[0], shapes, starts, leaves[1], leaves[2], deterministic
    )
    grads = torch.autograd.grad(out, leaves, grad_out.to(TRITON_DEVICE))
    return tuple(t.detach().cpu() for t in (out, *grads))


@contextlib.contextmanager
def poisoned_allocations():
    """Fills every tensor that torch.empty and its kind allocate with NaN (integers: their largest
    value), so that an output element a kernel never writes shows in the results."""
    import torch.utils.deterministic

    saved = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.utils.deterministic.fill_uninitialized_memory,
    )
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = True
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
        torch.utils.deterministic.fill_uninitialized_memory = saved[2]


def raw_forward(value, spatial_shapes, level_start_index, loc, weights):
    """The compiled CPU forward operator, called directly."""
    assert kernel_available(CPU, value.dtype)
    return torch.ops.deformable_detr.ms_deform_attn(
        value, spatial_shapes, level_start_index, loc, weights
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
# Comparisons
# ----------------------------------------------------------------------------------------------


def err_ratio(actual, expected, rtol, atol):
    """max |actual - expected| / (atol + rtol * |expected|): <= 1 iff assert_close would pass."""
    if expected.numel() == 0:
        return 0.0
    actual, expected = actual.double(), expected.double()
    return float(((actual - expected).abs() / (atol + rtol * expected.abs())).max())


def assert_close_grads(
    actual, expected, dtype, names=("value", "locations", "weights"), equal_nan=False
):
    """Each gradient against the reference's, atol scaled by its largest finite |value|."""
    rtol, atol_rel = GRAD_TOL[dtype]
    for name, a, e in zip(names, actual, expected):
        finite = e[e.isfinite()]
        atol = atol_rel * max(float(finite.abs().max()), 1.0) if finite.numel() else atol_rel
        torch.testing.assert_close(
            a.double(),
            e.double(),
            rtol=rtol,
            atol=atol,
            equal_nan=equal_nan,
            msg=lambda m, n=name: f"grad {n}: {m}",
        )


# ----------------------------------------------------------------------------------------------
# Non-finite samples, set on make_inputs' defaults (N 2, Lq 5, M 2, the four LEVELS, P 3), each in
# its own (image, query, head): (n, q, m, l, p), the location (x, y) (None: keep it), the
# attention weight (None: keep it), and whether that (n, q, m)'s output is NaN. As grid_sample:
# a NaN weight, or a NaN or infinite coordinate, makes it NaN; a finite location however far out
# samples zero; an infinite weight on a sample outside the map gives inf * 0 = NaN.
# ----------------------------------------------------------------------------------------------

NON_FINITE_SAMPLES = [
    ((0, 0, 0, 0, 0), (0.37, 0.61), math.nan, True),  # NaN weight, location inside
    ((0, 1, 1, 1, 1), (-3.0, 0.5), math.nan, True),  # NaN weight, location outside
    ((1, 2, 0, 2, 0), (math.nan, 0.5), None, True),
    ((1, 3, 1, 3, 2), (0.4, math.nan), None, True),
    ((0, 2, 0, 1, 1), (math.nan, math.nan), None, True),
    ((1, 0, 0, 0, 1), (math.inf, 0.5), None, True),
    ((0, 4, 1, 0, 2), (0.3, -math.inf), None, True),
    ((1, 4, 1, 1, 0), (-2.0, 0.5), math.inf, True),  # infinite weight, location outside
    ((0, 3, 1, 2, 2), (1e30, -1e30), None, False),  # finite, far outside: samples zero
]


def non_finite_inputs(dtype):
    """make_inputs' defaults in `dtype` (locations off the kinks) with NON_FINITE_SAMPLES set,
    and a grad_output. Returns (inputs, grad_output, nan_rows: the (N, Lq, M) mask of the
    (image, query, head)s whose output is NaN)."""
    value, shapes, starts, loc, weights = make_inputs(dtype=dtype, seed=31, margin=1e-3)
    nan_rows = torch.zeros(weights.shape[:3], dtype=torch.bool)
    for idx, xy, weight, nan in NON_FINITE_SAMPLES:
        if xy is not None:
            loc[idx] = torch.tensor(xy, dtype=torch.float64).to(dtype)
        if weight is not None:
            weights[idx] = weight
        nan_rows[idx[:3]] = nan
    N, Lq, M = nan_rows.shape
    grad_out = torch.randn(N, Lq, M * value.shape[3], generator=torch.Generator().manual_seed(32))
    return (value, shapes, starts, loc, weights), grad_out.to(dtype), nan_rows


def assert_non_finite_propagated(results, inputs, grad_out, nan_rows):
    """results: (output, grad_value, grad_locations, grad_weights) of a kernel on
    non_finite_inputs. The output is NaN in all D channels of the nan_rows and finite elsewhere;
    it and the gradients equal the float64 reference's, NaN for NaN."""
    value, shapes, _, loc, weights = inputs
    N, Lq, M = nan_rows.shape
    out = results[0].reshape(N, Lq, M, -1)
    assert out[nan_rows].isnan().all() and out[~nan_rows].isfinite().all()
    expected = reference_grads64(value, shapes, loc, weights, grad_out)
    assert expected[0].reshape(out.shape)[nan_rows].isnan().all()
    rtol, atol = FWD_TOL[value.dtype]
    torch.testing.assert_close(
        results[0].double(), expected[0], rtol=rtol, atol=atol, equal_nan=True
    )
    assert_close_grads(results[1:], expected[1:], value.dtype, equal_nan=True)


def isa_report():
    """Runs the kernel (forward and backward) in every dtype against the float64 reference and
    returns, per dtype, the worst err_ratio (<= 1 passes) and the raw max errors; also whether two
    backward runs were bitwise equal. Called in a subprocess by test_isa_variant."""
    report = {"torch_capability": torch.backends.cpu.get_cpu_capability()}
    for dtype in KERNEL_DTYPES:
        value, shapes, starts, loc, weights = make_inputs(
            N=2, Lq=20, M=2, D=71, P=3, dtype=dtype, seed=16, border=True, margin=KINK_MARGIN[dtype]
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
            "max_abs_err": {
                k: float((a.double() - e).abs().max()) for k, a, e in zip(ratios, got, expected)
            },
            "deterministic": all(torch.equal(a, b) for a, b in zip(got, again)),
            "min_kink_distance": min_kink_distance(loc, shapes),
        }
    return report
