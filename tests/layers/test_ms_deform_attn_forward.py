"""Forward of the compiled multi-scale deformable attention op (CPU kernel) and its wrapper.

Covered:
  * forward in float64 / float32 / bfloat16 / float16 against the float64 reference, head dims 8
    and 71 (a vector tail), several parallel_for chunks;
  * the wrapper running the kernel, bitwise equal to the raw operator;
  * non-contiguous inputs: bitwise equal to contiguous ones (forward and gradients);
  * empty batch / zero queries, through the wrapper (zero gradients for every input) and the raw
    forward and backward operators;
  * hand-worked sampling values (pixel centres, midpoints, map corners, far outside), exact;
  * NaN weights, NaN / inf locations (NON_FINITE_SAMPLES): NaN in all D channels of their
    (query, head), every other output bitwise that of the same samples with weight 0;
  * batch independence: each image alone gives what it gives in the batch;
  * mixed input dtypes (promotion, gradients in each input's dtype) and int32 spatial_shapes /
    level_start_index in the wrapper.

Tolerances: FWD_TOL (rationale in ms_deform_attn_cases.py); exact (rtol = atol = 0, or
torch.equal) where the result is exact in binary floating point or must be bitwise equal.
"""

import pytest
import torch

from deformable_detr.layers.ms_deform_attn_op import kernel_available, ms_deform_attn
from deformable_detr.layers.ms_deform_attn_ref import ms_deform_attn_pytorch
from ms_deform_attn_cases import (
    CPU,
    FWD_TOL,
    KERNEL_DTYPES,
    KINK_MARGIN,
    NON_FINITE_SAMPLES,
    assert_close_grads,
    kernel_grads,
    level_tensors,
    make_inputs,
    non_finite_inputs,
    raw_forward,
    reference64,
    reference_grads64,
    requires_extension,
)

pytestmark = requires_extension


# ----------------------------------------------------------------------------------------------
# Against the reference
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("D", [8, 71])
@pytest.mark.parametrize("dtype", KERNEL_DTYPES, ids=str)
def test_forward_matches_reference(dtype, D):
    assert kernel_available(CPU, dtype)
    # N * Lq = 40 rows: several parallel_for chunks (16 rows each); D = 71 has a vector tail.
    value, shapes, starts, loc, weights = make_inputs(
        N=2, Lq=20, M=2, D=D, P=3, dtype=dtype, lo=-0.2, hi=1.2, seed=1
    )
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
# Non-contiguous inputs
# ----------------------------------------------------------------------------------------------


def test_non_contiguous_inputs():
    value, shapes, starts, loc, weights = make_inputs(
        N=2, Lq=6, M=2, D=8, P=3, dtype=torch.float32, seed=9
    )
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
# Empty batch and zero queries
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
# Hand-worked sampling values
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
    return (
        (value.to(dtype), spatial_shapes, level_start_index, loc.to(dtype), weights.to(dtype)),
        expected.to(dtype),
    )


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
# NaN and infinite inputs (their gradients: test_ms_deform_attn_backends.py)
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("impl", ["kernel", "reference"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_non_finite_samples_make_only_their_rows_nan(dtype, impl):
    (value, shapes, starts, loc, weights), _, nan_rows = non_finite_inputs(dtype)
    clean_loc, clean_weights = loc.clone(), weights.clone()
    for idx, *_ in NON_FINITE_SAMPLES:
        clean_loc[idx] = 0.5
        clean_weights[idx] = 0.0  # the same sample, contributing nothing

    def run(sl, aw):
        if impl == "kernel":
            return raw_forward(value, shapes, starts, sl, aw)
        return ms_deform_attn_pytorch(value, shapes, sl, aw)

    N, Lq, M = nan_rows.shape
    out = run(loc, weights).view(N, Lq, M, -1)
    clean = run(clean_loc, clean_weights).view(N, Lq, M, -1)
    assert out[nan_rows].isnan().all()
    # Every other (query, head), the one with a far but finite sample included, is bitwise what
    # it is without them: a skipped sample adds +0.
    torch.testing.assert_close(out[~nan_rows], clean[~nan_rows], rtol=0, atol=0)


# ----------------------------------------------------------------------------------------------
# Batch independence
# ----------------------------------------------------------------------------------------------


def test_batch_equals_images_alone():
    N, Lq, M, D = 3, 7, 2, 16
    value, shapes, starts, loc, weights = make_inputs(
        N=N, Lq=Lq, M=M, D=D, P=3, seed=13, margin=1e-3
    )
    grad_out = torch.randn(
        N, Lq, M * D, dtype=torch.float64, generator=torch.Generator().manual_seed(14)
    )
    batched = kernel_grads(value, shapes, starts, loc, weights, grad_out)
    rtol, atol = FWD_TOL[torch.float64]
    for n in range(N):
        alone = kernel_grads(
            value[n : n + 1],
            shapes,
            starts,
            loc[n : n + 1],
            weights[n : n + 1],
            grad_out[n : n + 1],
        )
        for a, b in zip(alone, batched):
            torch.testing.assert_close(a, b[n : n + 1], rtol=rtol, atol=atol)
    # The images differ, so a mix-up between them would show.
    assert not torch.allclose(batched[0][0], batched[0][1])


# ----------------------------------------------------------------------------------------------
# Mixed dtypes and int32 index tensors
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value_dtype,loc_dtype,weights_dtype,out_dtype,location_dtype",
    [
        # promoted like PyTorch's binary ops
        (torch.float32, torch.float64, torch.float32, torch.float64, torch.float64),
        (torch.bfloat16, torch.float16, torch.float16, torch.float32, torch.float32),
        # half values with float32 locations or weights (autocast's mix): the kernel keeps the
        # values in their dtype and the locations and weights in float32
        (torch.bfloat16, torch.float32, torch.float32, torch.bfloat16, torch.float32),
        (torch.float16, torch.float32, torch.float16, torch.float16, torch.float32),
        (torch.bfloat16, torch.bfloat16, torch.float32, torch.bfloat16, torch.float32),
    ],
    ids=str,
)
def test_mixed_dtypes(value_dtype, loc_dtype, weights_dtype, out_dtype, location_dtype):
    value, shapes, starts, loc, weights = make_inputs(N=2, Lq=5, M=2, D=8, P=3, seed=15)
    value, loc, weights = value.to(value_dtype), loc.to(loc_dtype), weights.to(weights_dtype)
    leaves = [t.clone().requires_grad_() for t in (value, loc, weights)]
    out = ms_deform_attn(leaves[0], shapes, starts, leaves[1], leaves[2])
    assert out.dtype == out_dtype
    assert "deformable_detr_ms_deform_attn" in type(out.grad_fn).__name__  # the kernel ran
    # The same as running the kernel on the inputs converted to the dtypes it computes in.
    expected = raw_forward(
        value.to(out_dtype), shapes, starts, loc.to(location_dtype), weights.to(location_dtype)
    )
    assert torch.equal(out, expected)
    rtol, atol = FWD_TOL[out_dtype]
    torch.testing.assert_close(
        out.double(), reference64(value, shapes, loc, weights), rtol=rtol, atol=atol
    )
    out.sum().backward()
    for leaf in leaves:  # gradients come back in each input's own dtype
        assert leaf.grad is not None and leaf.grad.dtype == leaf.dtype
        assert torch.isfinite(leaf.grad).all() and leaf.grad.abs().max() > 0


@pytest.mark.parametrize("value_dtype", [torch.bfloat16, torch.float16], ids=str)
def test_half_values_with_float32_locations_backward(value_dtype):
    """The mixed kernel's gradients against the float64 reference: the value's in its half dtype,
    the locations' and weights' in float32."""
    value, shapes, starts, loc, weights = make_inputs(
        D=32, dtype=torch.float32, seed=16, margin=KINK_MARGIN[torch.float32]
    )
    value = value.to(value_dtype)
    grad_out = torch.randn(
        value.shape[0],
        loc.shape[1],
        value.shape[2] * value.shape[3],
        generator=torch.Generator().manual_seed(3),
    ).to(value_dtype)
    actual = kernel_grads(value, shapes, starts, loc, weights, grad_out)
    expected = reference_grads64(value, shapes, loc, weights, grad_out)
    assert actual[2].dtype == actual[3].dtype == torch.float32
    rtol, atol = FWD_TOL[value_dtype]
    torch.testing.assert_close(actual[0].double(), expected[0], rtol=rtol, atol=atol)
    assert_close_grads(actual[1:], expected[1:], value_dtype)


def test_int32_index_tensors_accepted_by_wrapper():
    value, shapes, starts, loc, weights = make_inputs(seed=18)
    out = ms_deform_attn(value, shapes.int(), starts.int(), loc, weights)
    assert torch.equal(out, raw_forward(value, shapes, starts, loc, weights))
