"""The compiled op is one torch operator to torch.compile and torch.export: dynamo traces a
function and the MSDeformAttn module that call it with fullgraph=True (no graph break), autograd
works through the compiled graph, and torch.export captures the operator by name.

Tolerance: compiled against eager float32, 1e-6 (the same kernel; only the surrounding ops may
be fused differently).
"""

import pytest
import torch

from deformable_detr.layers import MSDeformAttn, ms_deform_attn

pytestmark = pytest.mark.skipif(
    not hasattr(torch.ops.deformable_detr, "ms_deform_attn"), reason="extension not built"
)

SHAPES = torch.tensor([[6, 5], [3, 3]])
STARTS = torch.tensor([0, 30])
S = 39


def inputs(N=2, Lq=7, M=2, D=8, L=2, P=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    value = torch.randn(N, S, M, D, generator=g)
    loc = torch.rand(N, Lq, M, L, P, 2, generator=g)
    weights = torch.rand(N, Lq, M, L, P, generator=g)
    return value, loc, weights


def attend(value, loc, weights):
    return ms_deform_attn(value, SHAPES, STARTS, loc, weights) * 2


def _leaves(tensors):
    return [t.clone().requires_grad_() for t in tensors]


@pytest.mark.parametrize("backend", ["aot_eager", pytest.param("inductor", marks=pytest.mark.slow)])
def test_compile_fullgraph_forward_and_backward(backend):
    torch._dynamo.reset()
    eager_in, compiled_in = _leaves(inputs()), _leaves(inputs())
    compiled = torch.compile(attend, fullgraph=True, backend=backend)
    out_c = compiled(*compiled_in)
    out_e = attend(*eager_in)
    torch.testing.assert_close(out_c, out_e, rtol=1e-6, atol=1e-6)
    grad = torch.randn_like(out_e)
    for a, b in zip(
        torch.autograd.grad(out_c, compiled_in, grad), torch.autograd.grad(out_e, eager_in, grad)
    ):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


def test_compile_module_is_one_graph_holding_the_operator():
    torch._dynamo.reset()
    graphs = []

    def recording_backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    torch.manual_seed(0)
    attn = MSDeformAttn(d_model=16, n_levels=2, n_heads=2, n_points=3)
    query, ref, value = torch.randn(2, 7, 16), torch.rand(2, 7, 2, 2), torch.randn(2, S, 16)
    compiled = torch.compile(attn, backend=recording_backend, fullgraph=True)
    out = compiled(query, ref, value, SHAPES, STARTS)
    assert len(graphs) == 1
    targets = [n.target for n in graphs[0].graph.nodes if n.op == "call_function"]
    op = torch.ops.deformable_detr.ms_deform_attn
    assert op in targets or op.default in targets, targets
    torch.testing.assert_close(out, attn(query, ref, value, SHAPES, STARTS), rtol=0, atol=0)


class _Attend(torch.nn.Module):
    def forward(self, value, spatial_shapes, level_start_index, loc, weights):
        return ms_deform_attn(value, spatial_shapes, level_start_index, loc, weights)


def test_export_captures_the_operator():
    value, loc, weights = inputs()
    program = torch.export.export(_Attend(), (value, SHAPES, STARTS, loc, weights))
    targets = [n.target for n in program.graph.nodes if n.op == "call_function"]
    assert torch.ops.deformable_detr.ms_deform_attn.default in targets
    other_value, other_loc, other_weights = inputs(seed=1)
    torch.testing.assert_close(
        program.module()(other_value, SHAPES, STARTS, other_loc, other_weights),
        ms_deform_attn(other_value, SHAPES, STARTS, other_loc, other_weights),
        rtol=0,
        atol=0,
    )


def test_meta_tensors_get_the_fake_kernel():
    """Meta tensors carry no values for the reference to read: the op and the module give the
    output's shape and dtype through the fake kernel, without a fallback to the reference."""
    value, loc, weights = (t.to("meta") for t in inputs())
    out = ms_deform_attn(value, SHAPES.to("meta"), STARTS.to("meta"), loc, weights)
    assert out.device.type == "meta" and out.shape == (2, 7, 16) and out.dtype == torch.float32
    module = MSDeformAttn(d_model=16, n_levels=2, n_heads=2, n_points=3).to("meta")
    query = torch.empty(2, 7, 16, device="meta")
    reference = torch.empty(2, 7, 2, 2, device="meta")
    memory = torch.empty(2, S, 16, device="meta")
    out = module(query, reference, memory, SHAPES.to("meta"), STARTS.to("meta"))
    assert out.device.type == "meta" and out.shape == (2, 7, 16)
