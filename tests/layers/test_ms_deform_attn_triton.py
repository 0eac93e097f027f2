"""The Triton operator beyond the shared cases (test_ms_deform_attn_backends.py): determinism,
registration, routing, empty inputs (non-finite ones are among the shared cases). Runs in
Triton's interpreter on the CPU where there is no GPU.

Covered:
  * the deterministic backward is bitwise the same for every tile of TILES, while the atomic one
    changes with the tile on the same inputs (so the check can fail);
  * the operator's autograd gives the launchers' results bitwise; under
    torch.use_deterministic_algorithms(True) the backward is the deterministic one;
  * torch.library.opcheck of the schema, autograd registration and fake kernels (the traced
    launch needs a GPU: test_ms_deform_attn_cuda.py runs the whole opcheck there);
  * the public wrapper routes to the Triton operator when it is the backend, passing
    `deterministic` on; DEFORMABLE_DETR_CUDA_BACKEND picks the backend, and a bad value is an error;
  * empty batches and zero queries;
  * MODEL.DEFORMABLE_DETR.DETERMINISTIC_BACKWARD reaches every MSDeformAttn of the model.

Tolerances: FWD_TOL / GRAD_TOL (ms_deform_attn_cases.py); bitwise (torch.equal) where stated.
"""

import subprocess
import sys

import pytest
import torch

import deformable_detr.layers.ms_deform_attn_op as op_module
import deformable_detr.layers.ms_deform_attn_triton as triton_module
from deformable_detr.layers import MSDeformAttn, ms_deform_attn
from deformable_detr.layers.ms_deform_attn_triton import TILES, triton_backward, triton_forward
from ms_deform_attn_cases import (
    FWD_TOL,
    TRITON_DEVICE,
    assert_close_grads,
    make_inputs,
    poisoned_allocations,
    reference_grads64,
    requires_triton,
    triton_grads,
)

pytestmark = requires_triton


def _on_device(tensors):
    return [t.to(TRITON_DEVICE) for t in tensors]


def _hot_spot_inputs():
    """Queries sampling near two pixels, so each of their grad_value elements gathers dozens of
    contributions from many tiles: an order-dependent sum changes the bits."""
    value, shapes, starts, loc, weights = make_inputs(
        ((4, 5), (2, 3)), N=2, Lq=40, M=2, D=8, P=4, dtype=torch.float32, seed=7
    )
    g = torch.Generator().manual_seed(8)
    hot = torch.tensor([[0.3, 0.4], [0.55, 0.6]], dtype=torch.float64)
    which = torch.randint(0, 2, loc.shape[:-1], generator=g)
    loc = (hot[which] + 0.02 * torch.randn(loc.shape, generator=g, dtype=torch.float64)).float()
    grad_out = torch.randn(2, 40, 16, generator=g)
    return _on_device((value, shapes, starts, loc, weights, grad_out))


def test_deterministic_backward_is_bitwise_the_same_for_every_tile():
    inputs = _hot_spot_inputs()
    deterministic = [triton_backward(*inputs, deterministic=True, tile=t) for t in TILES]
    atomic = [triton_backward(*inputs, deterministic=False, tile=t) for t in TILES]
    for grads in deterministic[1:]:
        for a, b in zip(deterministic[0], grads):
            assert torch.equal(a, b)
    # the atomic sums' order follows the tile: the same check on them fails
    assert any(not torch.equal(atomic[0][0], grads[0]) for grads in atomic[1:])
    for grads in atomic:
        assert_close_grads(grads, deterministic[0], torch.float32)


@pytest.mark.parametrize("deterministic", [False, True])
def test_autograd_gives_the_launchers_results(deterministic):
    value, shapes, starts, loc, weights, grad_out = _hot_spot_inputs()
    got = triton_grads(value, shapes, starts, loc, weights, grad_out, deterministic)
    out = triton_forward(value, shapes, starts, loc, weights)
    grads = triton_backward(value, shapes, starts, loc, weights, grad_out, deterministic)
    for a, b in zip(got, (out, *grads)):
        assert torch.equal(a, b.cpu())


def test_deterministic_algorithms_pick_the_deterministic_backward(monkeypatch):
    seen = []
    launcher = triton_module.triton_backward

    def spy(*args):
        seen.append(args[-1])
        return launcher(*args)

    monkeypatch.setattr(triton_module, "triton_backward", spy)
    value, shapes, starts, loc, weights, grad_out = _hot_spot_inputs()
    triton_grads(value, shapes, starts, loc, weights, grad_out, False)
    with poisoned_allocations():  # turns torch.use_deterministic_algorithms on
        triton_grads(value, shapes, starts, loc, weights, grad_out, False)
    assert seen == [False, True]


def test_opcheck_schema_autograd_and_fake_kernels():
    value, shapes, starts, loc, weights = _on_device(make_inputs(dtype=torch.float32))
    args = (value.requires_grad_(), shapes, starts, loc.requires_grad_(), weights, False)
    torch.library.opcheck(
        torch.ops.deformable_detr.ms_deform_attn_triton.default,
        args,
        test_utils=("test_schema", "test_autograd_registration", "test_faketensor"),
    )


def test_wrapper_routes_to_the_triton_operator(monkeypatch):
    monkeypatch.setattr(op_module, "kernel_backend", lambda device, dtype: "triton")
    seen = []
    launcher = triton_module.triton_backward
    monkeypatch.setattr(
        triton_module, "triton_backward", lambda *a: seen.append(a[-1]) or launcher(*a)
    )
    inputs = make_inputs(D=16, dtype=torch.float32, margin=1e-3)
    value, shapes, starts, loc, weights = _on_device(inputs)
    leaves = [t.clone().requires_grad_() for t in (value, loc, weights)]
    out = ms_deform_attn(leaves[0], shapes, starts, leaves[1], leaves[2], deterministic=True)
    assert "ms_deform_attn_triton" in type(out.grad_fn).__name__
    grad_out = torch.randn_like(out)
    grads = torch.autograd.grad(out, leaves, grad_out)
    assert seen == [True]
    expected = reference_grads64(inputs[0], inputs[1], inputs[3], inputs[4], grad_out.cpu())
    rtol, atol = FWD_TOL[torch.float32]
    torch.testing.assert_close(out.cpu().double(), expected[0], rtol=rtol, atol=atol)
    assert_close_grads([g.cpu() for g in grads], expected[1:], torch.float32)


def _backend_in_subprocess(value):
    code = (
        "import torch, deformable_detr.layers as l; "
        "print(l.kernel_backend('cuda', torch.float32), l.kernel_backend('cuda', torch.float64))"
    )
    env = {"DEFORMABLE_DETR_CUDA_BACKEND": value, "PATH": "/usr/bin:/bin"}
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)


def test_backend_environment_variable():
    cuda_cpp = torch._C._dispatch_has_kernel_for_dispatch_key(
        "deformable_detr::ms_deform_attn", "CUDA"
    )
    cpp = "cpp" if cuda_cpp else "None"
    assert _backend_in_subprocess("triton").stdout.split() == ["triton", cpp]
    assert _backend_in_subprocess("cpp").stdout.split() == [cpp, cpp]
    bad = _backend_in_subprocess("cuda")
    assert bad.returncode != 0
    assert "DEFORMABLE_DETR_CUDA_BACKEND must be one of ('triton', 'cpp'), got 'cuda'" in bad.stderr


@pytest.mark.parametrize("N,Lq", [(0, 4), (2, 0), (0, 0)])
def test_empty_batch_and_zero_queries(N, Lq):
    value, shapes, starts, loc, weights = make_inputs(
        N=max(N, 1), Lq=max(Lq, 1), dtype=torch.float32
    )
    value, loc, weights = value[:N], loc[:N, :Lq], weights[:N, :Lq]
    out, g_value, g_loc, g_weights = triton_grads(
        value, shapes, starts, loc, weights, torch.ones(N, Lq, 16), False
    )
    assert out.shape == (N, Lq, 16)
    assert g_value.shape == value.shape and not g_value.any()
    assert g_loc.shape == loc.shape and g_weights.shape == weights.shape


def test_config_key_reaches_every_attention_module():
    from detectron2.config import get_cfg

    from deformable_detr import add_deformable_detr_config
    from deformable_detr.modeling.transformer import DeformableTransformer

    cfg = get_cfg()
    add_deformable_detr_config(cfg)
    cfg.MODEL.DEFORMABLE_DETR.merge_from_list(
        ["NUM_CLASSES", 3, "HIDDEN_DIM", 32, "NHEADS", 2, "DIM_FEEDFORWARD", 32, "DEC_LAYERS", 2]
    )
    for flag in (False, True):
        cfg.MODEL.DEFORMABLE_DETR.DETERMINISTIC_BACKWARD = flag
        transformer = DeformableTransformer(cfg)
        modules = [m for m in transformer.modules() if isinstance(m, MSDeformAttn)]
        assert len(modules) == 6 + 2 * 1 and all(m.deterministic is flag for m in modules)
