"""The CUDA kernels against the float64 reference (computed on the CPU), where a GPU is present.

Skipped on machines without one (ours): the CUDA sources are compiled by every CI run but can
only be run here. Tolerances are those of the CPU tests (ms_deform_attn_cases.py); the CUDA
backward sums grad_value with float32 atomics in any order, which stays within them.
"""

import pytest
import torch

from deformable_detr.layers import kernel_available, ms_deform_attn
from ms_deform_attn_cases import (
    FWD_TOL,
    GRADCHECK_TOL,
    KERNEL_DTYPES,
    KINK_MARGIN,
    assert_close_grads,
    kernel_grads,
    make_inputs,
    reference64,
    reference_grads64,
)

CUDA = torch.device("cuda")
pytestmark = pytest.mark.skipif(
    not (torch.cuda.is_available() and kernel_available(CUDA, torch.float32)),
    reason="no GPU, or the extension was built without CUDA kernels",
)


def _to_cuda(tensors):
    return [t.to(CUDA) for t in tensors]


@pytest.mark.parametrize("D", [8, 32, 71])
@pytest.mark.parametrize("dtype", KERNEL_DTYPES, ids=str)
def test_forward_matches_reference(dtype, D):
    inputs = make_inputs(D=D, dtype=dtype)
    value, shapes, starts, loc, weights = _to_cuda(inputs)
    out = torch.ops.deformable_detr.ms_deform_attn(value, shapes, starts, loc, weights)
    expected = reference64(inputs[0], inputs[1], inputs[3], inputs[4])
    rtol, atol = FWD_TOL[dtype]
    torch.testing.assert_close(out.cpu().double(), expected, rtol=rtol, atol=atol)


@pytest.mark.parametrize("dtype", KERNEL_DTYPES, ids=str)
def test_backward_matches_reference(dtype):
    inputs = make_inputs(D=32, dtype=dtype, margin=KINK_MARGIN[dtype])
    value, shapes, starts, loc, weights = _to_cuda(inputs)
    grad_out = torch.randn(
        value.shape[0], loc.shape[1], value.shape[2] * value.shape[3], dtype=dtype, device=CUDA
    )
    actual = kernel_grads(value, shapes, starts, loc, weights, grad_out)
    expected = reference_grads64(inputs[0], inputs[1], inputs[3], inputs[4], grad_out.cpu())
    assert_close_grads([a.cpu() for a in actual[1:]], expected[1:], dtype)


@pytest.mark.parametrize("D", [30, 71])
def test_gradcheck_float64(D):
    inputs = make_inputs(D=D, Lq=4, border=True, margin=1e-3)
    value, shapes, starts, loc, weights = _to_cuda(inputs)
    leaves = [t.clone().requires_grad_() for t in (value, loc, weights)]
    assert torch.autograd.gradcheck(
        lambda v, loc, w: ms_deform_attn(v, shapes, starts, loc, w), leaves, **GRADCHECK_TOL
    )


def test_large_batch_equals_each_image_alone():
    """No im2col_step limit: any batch size, each image independent."""
    inputs = make_inputs(N=67, Lq=9, D=32, dtype=torch.float32)
    value, shapes, starts, loc, weights = _to_cuda(inputs)
    out = ms_deform_attn(value, shapes, starts, loc, weights)
    for i in (0, 33, 66):
        alone = ms_deform_attn(value[i : i + 1], shapes, starts, loc[i : i + 1], weights[i : i + 1])
        torch.testing.assert_close(out[i : i + 1], alone, rtol=0, atol=0)


def test_cuda_equals_cpu_kernel():
    inputs = make_inputs(D=32, dtype=torch.float32)
    cpu = ms_deform_attn(*inputs)
    cuda = ms_deform_attn(*_to_cuda(inputs))
    torch.testing.assert_close(cuda.cpu(), cpu, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("N,Lq", [(0, 4), (2, 0)])
def test_empty_inputs(N, Lq):
    value, shapes, starts, loc, weights = _to_cuda(make_inputs(N=max(N, 1), Lq=max(Lq, 1)))
    value, loc, weights = value[:N], loc[:N, :Lq], weights[:N, :Lq]
    out = torch.ops.deformable_detr.ms_deform_attn(value, shapes, starts, loc, weights)
    assert out.shape == (N, Lq, value.shape[2] * value.shape[3])


def test_non_finite_locations_sample_zero():
    value, shapes, starts, loc, weights = _to_cuda(make_inputs(D=8))
    masked = weights.clone()
    masked[0, 0, 0, 0, 0] = 0
    expected = ms_deform_attn(value, shapes, starts, loc, masked)
    for bad in (float("nan"), float("inf"), -float("inf")):
        broken = loc.clone()
        broken[0, 0, 0, 0, 0, 0] = bad
        leaves = [t.clone().requires_grad_() for t in (value, broken, weights)]
        out = ms_deform_attn(leaves[0], shapes, starts, leaves[1], leaves[2])
        torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
        _, g_loc, g_w = torch.autograd.grad(out.sum(), leaves)
        assert g_loc[0, 0, 0, 0, 0].abs().sum() == 0 and g_w[0, 0, 0, 0, 0] == 0


@pytest.mark.parametrize("value_dtype", [torch.bfloat16, torch.float16], ids=str)
def test_half_values_with_float32_locations(value_dtype):
    inputs = make_inputs(D=32, dtype=torch.float32, margin=KINK_MARGIN[torch.float32])
    value, shapes, starts, loc, weights = _to_cuda(inputs)
    value = value.to(value_dtype)
    grad_out = torch.randn(
        value.shape[0], loc.shape[1], value.shape[2] * value.shape[3], device=CUDA
    ).to(value_dtype)
    actual = kernel_grads(value, shapes, starts, loc, weights, grad_out)
    assert actual[0].dtype == value_dtype and actual[2].dtype == torch.float32
    expected = reference_grads64(value.cpu(), inputs[1], inputs[3], inputs[4], grad_out.cpu())
    rtol, atol = FWD_TOL[value_dtype]
    torch.testing.assert_close(actual[0].cpu().double(), expected[0], rtol=rtol, atol=atol)
    assert_close_grads([a.cpu() for a in actual[1:]], expected[1:], value_dtype)
