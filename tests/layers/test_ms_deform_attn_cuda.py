"""The CUDA kernels against the float64 reference (computed on the CPU), where a GPU is present:
the backend that DEFORMABLE_DETR_CUDA_BACKEND selects (Triton by default, or the C++ kernels with
"cpp"; tools/gpu_check.py runs this module once with each). float64 always runs the C++ CUDA
kernels, and is skipped where they are not built.

Skipped on machines without a GPU (ours): there CI compiles the CUDA sources and checks the
Triton kernels in the interpreter (test_ms_deform_attn_backends.py, test_ms_deform_attn_triton.py).
Tolerances are those of the CPU tests (ms_deform_attn_cases.py); the atomic backwards sum
grad_value with float32 atomics in any order, which stays within them.
"""

import pytest
import torch

from deformable_detr.layers import MSDeformAttn, kernel_available, kernel_backend, ms_deform_attn
from deformable_detr.layers.ms_deform_attn_op import CUDA_BACKEND
from ms_deform_attn_cases import (
    FWD_TOL,
    GRADCHECK_TOL,
    KERNEL_DTYPES,
    KINK_MARGIN,
    assert_close_grads,
    assert_non_finite_propagated,
    kernel_grads,
    make_inputs,
    non_finite_inputs,
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


def _require_kernel(dtype):
    if not kernel_available(CUDA, dtype):
        pytest.skip(f"no CUDA kernel for {dtype} (the C++ CUDA kernels are not built)")


def test_backend_is_the_selected_one():
    assert kernel_backend(CUDA, torch.float32) == CUDA_BACKEND


@pytest.mark.parametrize("D", [8, 32, 71])
@pytest.mark.parametrize("dtype", KERNEL_DTYPES, ids=str)
def test_forward_matches_reference(dtype, D):
    _require_kernel(dtype)
    inputs = make_inputs(D=D, dtype=dtype)
    value, shapes, starts, loc, weights = _to_cuda(inputs)
    out = ms_deform_attn(value, shapes, starts, loc, weights)
    expected = reference64(inputs[0], inputs[1], inputs[3], inputs[4])
    rtol, atol = FWD_TOL[dtype]
    torch.testing.assert_close(out.cpu().double(), expected, rtol=rtol, atol=atol)


@pytest.mark.parametrize("dtype", KERNEL_DTYPES, ids=str)
def test_backward_matches_reference(dtype):
    _require_kernel(dtype)
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
    _require_kernel(torch.float64)
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
    if CUDA_BACKEND == "triton":
        out = torch.ops.deformable_detr.ms_deform_attn_triton(
            value, shapes, starts, loc, weights, False
        )
    else:
        out = torch.ops.deformable_detr.ms_deform_attn(value, shapes, starts, loc, weights)
    assert out.shape == (N, Lq, value.shape[2] * value.shape[3])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_non_finite_inputs_propagate(dtype):
    _require_kernel(dtype)
    inputs, grad_out, nan_rows = non_finite_inputs(dtype)
    results = kernel_grads(*_to_cuda([*inputs, grad_out]))
    assert_non_finite_propagated([t.cpu() for t in results], inputs, grad_out, nan_rows)


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


# ----------------------------------------------------------------------------------------------
# Determinism, registration and torch.compile of the selected backend
# ----------------------------------------------------------------------------------------------


def _hot_spot_inputs(dtype=torch.float32):
    """Many queries sampling near two pixels: each grad_value element there gathers hundreds of
    contributions, so any order-dependent sum changes the bits."""
    value, shapes, starts, loc, weights = make_inputs(
        ((4, 5), (2, 3)), N=2, Lq=400, M=2, D=32, P=4, dtype=dtype, seed=7
    )
    g = torch.Generator().manual_seed(8)
    hot = torch.tensor([[0.3, 0.4], [0.55, 0.6]], dtype=torch.float64)
    which = torch.randint(0, 2, loc.shape[:-1], generator=g)
    loc = (hot[which] + 0.02 * torch.randn(loc.shape, generator=g, dtype=torch.float64)).to(dtype)
    grad_out = torch.randn(2, 400, 64, generator=g).to(dtype)
    return _to_cuda((value, shapes, starts, loc, weights, grad_out))


@pytest.mark.skipif(CUDA_BACKEND != "triton", reason="the C++ CUDA backward uses float atomics")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_deterministic_backward_bitwise_repeatable(dtype):
    value, shapes, starts, loc, weights, grad_out = _hot_spot_inputs(dtype)
    runs = []
    for _ in range(3):
        leaves = [t.clone().requires_grad_() for t in (value, loc, weights)]
        out = ms_deform_attn(leaves[0], shapes, starts, leaves[1], leaves[2], deterministic=True)
        runs.append(torch.autograd.grad(out, leaves, grad_out))
    for other in runs[1:]:
        for a, b in zip(runs[0], other):
            assert torch.equal(a, b)
    expected = reference_grads64(*(t.cpu() for t in (value, shapes, loc, weights, grad_out)))
    assert_close_grads([a.cpu() for a in runs[0]], expected[1:], dtype)


@pytest.mark.skipif(CUDA_BACKEND != "cpp", reason="the C++ CUDA backward is the atomic one")
def test_cpp_backward_refused_under_deterministic_algorithms():
    value, shapes, starts, loc, weights, grad_out = _hot_spot_inputs()
    value.requires_grad_()
    out = ms_deform_attn(value, shapes, starts, loc, weights)
    torch.use_deterministic_algorithms(True)
    try:
        with pytest.raises(RuntimeError, match="DEFORMABLE_DETR_CUDA_BACKEND=cpp"):
            out.backward(grad_out)
    finally:
        torch.use_deterministic_algorithms(False)


def test_opcheck():
    value, shapes, starts, loc, weights = _to_cuda(make_inputs(D=32, dtype=torch.float32))
    args = [value.requires_grad_(), shapes, starts, loc.requires_grad_(), weights.requires_grad_()]
    if CUDA_BACKEND == "triton":
        torch.library.opcheck(
            torch.ops.deformable_detr.ms_deform_attn_triton.default, (*args, False)
        )
    else:
        torch.library.opcheck(torch.ops.deformable_detr.ms_deform_attn.default, tuple(args))


def test_torch_compile_matches_eager():
    """MSDeformAttn compiled in one graph (Inductor sees through the Triton op) gives the eager
    result and gradients."""
    torch.manual_seed(0)
    module = MSDeformAttn(d_model=64, n_levels=2, n_heads=2, n_points=4).to(CUDA)
    levels = torch.tensor([[6, 8], [3, 4]], device=CUDA)
    starts = torch.tensor([0, 48], device=CUDA)
    query = torch.randn(2, 10, 64, device=CUDA)
    value = torch.randn(2, 60, 64, device=CUDA, requires_grad=True)
    ref = torch.rand(2, 10, 2, 2, device=CUDA)
    eager = module(query, ref, value, levels, starts)
    compiled = torch.compile(module, fullgraph=True)(query, ref, value, levels, starts)
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-5)
    (g_eager,) = torch.autograd.grad(eager.sum(), value)
    (g_compiled,) = torch.autograd.grad(compiled.sum(), value)
    torch.testing.assert_close(g_compiled, g_eager, rtol=1e-5, atol=1e-5)
