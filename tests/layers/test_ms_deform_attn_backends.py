"""The shared case table (OP_CASES in ms_deform_attn_cases.py), answered by every kernel backend
against the float64 reference: the C++ CPU kernel, and the Triton kernels (on the GPU when there
is one, else in Triton's interpreter on the CPU: how CI checks them).

For each case and dtype: the forward, the backward with atomic adds (Triton) or per-(image, head)
ownership (C++), and the Triton deterministic backward. Every allocation is poisoned with NaN first
(poisoned_allocations), so an element a kernel never writes fails the comparison. Half-precision
values run both with locations and weights of their own dtype and with float32 ones (autocast's
mix). Every backend also answers the non-finite samples (NON_FINITE_SAMPLES): a NaN attention
weight, or a NaN or infinite location, makes its (query, head)'s output NaN and its gradients
those of the reference, NaN for NaN, instead of vanishing.

Tolerances: FWD_TOL and GRAD_TOL of the value's dtype (rationale in ms_deform_attn_cases.py);
locations are kept KINK_MARGIN off the bilinear kinks in the gradient comparisons.
"""

import pytest
import torch

from deformable_detr.layers.ms_deform_attn_triton import triton_backward, triton_forward
from ms_deform_attn_cases import (
    FWD_TOL,
    KERNEL_DTYPES,
    KINK_MARGIN,
    OP_CASES,
    TRITON_DEVICE,
    TRITON_DTYPES,
    assert_close_grads,
    assert_non_finite_propagated,
    kernel_grads,
    make_inputs,
    non_finite_inputs,
    poisoned_allocations,
    reference_grads64,
    requires_extension,
    requires_triton,
)

# (value dtype, locations and weights dtype) of each backend
CPP_DTYPES = [(d, d) for d in KERNEL_DTYPES]
TRITON_MIXES = [(d, d) for d in TRITON_DTYPES] + [
    (torch.bfloat16, torch.float32),
    (torch.float16, torch.float32),
]


def _dtype_id(pair):
    value, loc = (str(d).replace("torch.", "") for d in pair)
    return value if value == loc else f"{value}-loc-{loc}"


def _case_inputs(case, value_dtype, loc_dtype):
    """The case's inputs in the given dtypes, and a grad_output; locations kept off the kinks."""
    value, shapes, starts, loc, weights = make_inputs(
        **OP_CASES[case], dtype=torch.float64, margin=KINK_MARGIN[value_dtype]
    )
    N, Lq = loc.shape[:2]
    M, D = value.shape[2:]
    g = torch.Generator().manual_seed(len(case))
    grad_out = torch.randn(N, Lq, M * D, generator=g, dtype=torch.float64).to(value_dtype)
    return value.to(value_dtype), shapes, starts, loc.to(loc_dtype), weights.to(loc_dtype), grad_out


def _check(case, dtype_pair, results):
    """results: (output, grad_value, grad_locations, grad_weights) -> against the reference."""
    value, shapes, _, loc, weights, grad_out = _case_inputs(case, *dtype_pair)
    expected = reference_grads64(value, shapes, loc, weights, grad_out)
    out = results[0]
    assert out.dtype == value.dtype and out.shape == expected[0].shape
    rtol, atol = FWD_TOL[dtype_pair[0]]
    torch.testing.assert_close(out.double(), expected[0], rtol=rtol, atol=atol)
    for grad, leaf in zip(results[1:], (value, loc, weights)):
        assert grad.dtype == leaf.dtype and grad.shape == leaf.shape
    assert_close_grads(results[1:], expected[1:], dtype_pair[0])


@requires_extension
@pytest.mark.parametrize("dtype_pair", CPP_DTYPES, ids=_dtype_id)
@pytest.mark.parametrize("case", OP_CASES)
def test_cpp_cpu_kernel(case, dtype_pair):
    value, shapes, starts, loc, weights, grad_out = _case_inputs(case, *dtype_pair)
    with poisoned_allocations():
        results = kernel_grads(value, shapes, starts, loc, weights, grad_out)
    _check(case, dtype_pair, results)


@requires_triton
@pytest.mark.parametrize("deterministic", [False, True], ids=["atomic", "deterministic"])
@pytest.mark.parametrize("dtype_pair", TRITON_MIXES, ids=_dtype_id)
@pytest.mark.parametrize("case", OP_CASES)
def test_triton_kernels(case, dtype_pair, deterministic):
    inputs = [t.to(TRITON_DEVICE) for t in _case_inputs(case, *dtype_pair)]
    with poisoned_allocations():
        out = triton_forward(*inputs[:5])
        grads = triton_backward(*inputs, deterministic=deterministic)
    _check(case, dtype_pair, [t.cpu() for t in (out, *grads)])


@requires_extension
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_cpp_cpu_kernel_non_finite(dtype):
    inputs, grad_out, nan_rows = non_finite_inputs(dtype)
    with poisoned_allocations():
        results = kernel_grads(*inputs, grad_out)
    assert_non_finite_propagated(results, inputs, grad_out, nan_rows)


@requires_triton
@pytest.mark.parametrize("deterministic", [False, True], ids=["atomic", "deterministic"])
# numpy, under the interpreter, warns of the inf - inf that makes an infinite input NaN
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
def test_triton_kernels_non_finite(deterministic):
    inputs, grad_out, nan_rows = non_finite_inputs(torch.float32)
    on_device = [t.to(TRITON_DEVICE) for t in (*inputs, grad_out)]
    with poisoned_allocations():
        out = triton_forward(*on_device[:5])
        grads = triton_backward(*on_device, deterministic=deterministic)
    results = [t.cpu() for t in (out, *grads)]
    # against the reference on the CPU, whose grid_sample treats inf as the kernels do
    assert_non_finite_propagated(results, inputs, grad_out, nan_rows)
