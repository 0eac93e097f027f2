"""Tests of FLOP counting (deformable_detr.flops): the op's handle against the formula worked by
hand, fvcore's analysis of the op, of MSDeformAttn and of nn.MultiheadAttention against hand
sums of their layers, and a whole model's count (the quickstart config, small and fast; the
released ResNet-50 config in a slow test). Without the compiled extension the op falls back on
the PyTorch reference and never appears in a trace, so the module is skipped.

All counts are fvcore's: one fused multiply-add is one flop; nn.Linear on (..., in) counts
prod(...) * in * out (bias free); elementwise ops (softmax, add, div...) count zero.
"""

import pytest
import torch
from fvcore.nn import FlopCountAnalysis
from torch import nn

from deformable_detr.flops import (
    MS_DEFORM_ATTN_OP,
    count_flops,
    flop_count_analysis,
    flop_count_handles,
    flops_by_module,
    ms_deform_attn_flop_jit,
)
from deformable_detr.layers import MSDeformAttn, ms_deform_attn
from model_cases import build, image, model_cfg
from ms_deform_attn_cases import requires_extension

pytestmark = requires_extension

# A small case: N = 2 images, Lq = 5 queries, M = 2 heads, D = 4 head dim, L = 2 levels of
# 4 x 5 and 2 x 3 (S = 26), P = 3 points.
N, LQ, M, D, L, P = 2, 5, 2, 4, 2, 3
SPATIAL_SHAPES = torch.tensor([[4, 5], [2, 3]])
LEVEL_START_INDEX = torch.tensor([0, 20])
S = 26
# N * Lq * M * L * P samples, each 4 multiply-adds per channel for the bilinear corners and
# 1 for the attention weight: 2 * 5 * 2 * 2 * 3 * (4 + 1) * 4
OP_FLOPS = 2400


def op_inputs():
    g = torch.Generator().manual_seed(0)
    return (
        torch.randn(N, S, M, D, generator=g),
        torch.rand(N, LQ, M, L, P, 2, generator=g),
        torch.rand(N, LQ, M, L, P, generator=g),
    )


class CallsOp(nn.Module):
    def forward(self, value, sampling_locations, attention_weights):
        return ms_deform_attn(
            value, SPATIAL_SHAPES, LEVEL_START_INDEX, sampling_locations, attention_weights
        )


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
@pytest.mark.filterwarnings("ignore:`torch.jit.trace:FutureWarning")  # deprecated in torch 2.14
def test_handle_is_the_formula():
    traced = torch.jit.trace(CallsOp(), op_inputs(), check_trace=False)
    nodes = [n for n in traced.inlined_graph.nodes() if n.kind() == MS_DEFORM_ATTN_OP]
    assert len(nodes) == 1
    node = nodes[0]
    assert ms_deform_attn_flop_jit(list(node.inputs()), list(node.outputs())) == OP_FLOPS
    assert flop_count_handles()[MS_DEFORM_ATTN_OP] is ms_deform_attn_flop_jit


def test_fvcore_counts_the_op():
    # without our handle fvcore sees the op but cannot count it
    plain = FlopCountAnalysis(CallsOp(), op_inputs()).unsupported_ops_warnings(False)
    assert plain.total() == 0
    assert plain.unsupported_ops()[MS_DEFORM_ATTN_OP] == 1

    analysis = FlopCountAnalysis(CallsOp(), op_inputs()).set_op_handle(**flop_count_handles())
    assert analysis.total() == OP_FLOPS
    assert analysis.by_operator() == {"ms_deform_attn": OP_FLOPS}
    assert MS_DEFORM_ATTN_OP not in analysis.unsupported_ops()

    # the project's helpers agree, and ignore the zero-flop ops of the wrapper's checks
    analysis = flop_count_analysis(CallsOp(), op_inputs())
    assert analysis.total() == OP_FLOPS
    assert dict(analysis.unsupported_ops()) == {}
    assert count_flops(CallsOp(), op_inputs()) == (OP_FLOPS, {"": OP_FLOPS})


@pytest.mark.parametrize("with_mask", [False, True])
def test_ms_deform_attn_module(with_mask):
    C = M * D * 2  # d_model 16, heads of D = 8
    attn = MSDeformAttn(d_model=C, n_levels=L, n_heads=M, n_points=P)
    g = torch.Generator().manual_seed(0)
    query = torch.randn(N, LQ, C, generator=g)
    reference_points = torch.rand(N, LQ, L, 2, generator=g)
    value = torch.randn(N, S, C, generator=g)
    mask = torch.zeros(N, S, dtype=torch.bool)
    mask[1, -3:] = True
    inputs = (query, reference_points, value, SPATIAL_SHAPES, LEVEL_START_INDEX)
    inputs += (mask,) if with_mask else ()

    linears = {
        "value_proj": N * S * C * C,  # 13312
        "sampling_offsets": N * LQ * C * (M * L * P * 2),  # 3840
        "attention_weights": N * LQ * C * (M * L * P),  # 1920
        "output_proj": N * LQ * C * C,  # 2560
    }
    op = N * LQ * M * L * P * 5 * (C // M)  # 4800
    total = sum(linears.values()) + op
    assert total == 26432

    analysis = FlopCountAnalysis(attn, inputs).set_op_handle(**flop_count_handles())
    analysis.unsupported_ops_warnings(False)
    assert analysis.total() == total
    assert analysis.by_operator() == {"linear": sum(linears.values()), "ms_deform_attn": op}
    by_module = analysis.by_module()
    for name, flops in linears.items():
        assert by_module[name] == flops
    # fvcore counts nothing for the softmax over the L * P weights nor for the location
    # arithmetic (reference + offset / (W, H)): they are reported, as zero; masked_fill is
    # among the ops fvcore ignores as free
    unsupported = analysis.unsupported_ops()
    assert unsupported["aten::softmax"] == 1
    assert MS_DEFORM_ATTN_OP not in unsupported
    assert "aten::masked_fill" not in unsupported


@pytest.mark.parametrize("need_weights", [False, True])
def test_multihead_attention(need_weights):
    # Without attention weights to return (as in the decoder), nn.MultiheadAttention records
    # aten::scaled_dot_product_attention, which fvcore has no handle for; ours counts its two
    # matrix products, as fvcore counts the two bmm of the explicit form (need_weights=True).
    C, H, Q, K = 16, 2, 5, 7
    mha = nn.MultiheadAttention(C, H, batch_first=True).eval()
    g = torch.Generator().manual_seed(0)
    query, key = torch.randn(N, Q, C, generator=g), torch.randn(N, K, C, generator=g)

    class Attend(nn.Module):
        def __init__(self):
            super().__init__()
            self.mha = mha

        def forward(self, q, k):
            return self.mha(q, k, k, need_weights=need_weights)[0]

    analysis = FlopCountAnalysis(Attend(), (query, key)).set_op_handle(**flop_count_handles())
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    in_proj = N * Q * C * C + 2 * N * K * C * C
    scores_and_values = N * H * Q * K * (C // H) * 2
    out_proj = N * Q * C * C
    attention_op = "bmm" if need_weights else "scaled_dot_product_attention"
    assert analysis.by_operator() == {"linear": in_proj + out_proj, attention_op: scores_and_values}
    assert analysis.total() == in_proj + scores_and_values + out_proj


def check_model_count(config, height, width, level_shapes):
    """The whole model's count at inference: the op's share equals the formula over the encoder
    (every position a query) and decoder layers; the top-level modules add up to the total."""
    model, c = build(config).eval(), model_cfg(config).MODEL.DEFORMABLE_DETR
    inputs = [{"image": image(height, width, 0), "height": height, "width": width}]
    analysis = flop_count_analysis(model, inputs)
    total, by_module = analysis.total(), flops_by_module(analysis)  # as count_flops does
    assert by_module[""] == total > 0
    queries = sum(h * w for h, w in level_shapes)
    heads, levels, dim = c.NHEADS, len(level_shapes), c.HIDDEN_DIM // c.NHEADS
    per_query = heads * levels * 5 * dim
    op = (
        c.ENC_LAYERS * queries * c.ENC_N_POINTS * per_query
        + c.DEC_LAYERS * c.NUM_QUERIES * c.DEC_N_POINTS * per_query
    )
    assert analysis.by_operator()["ms_deform_attn"] == op
    assert MS_DEFORM_ATTN_OP not in analysis.unsupported_ops()
    assert set(by_module) == {name for name, _ in model.named_modules()}
    assert sum(by_module[name] for name, _ in model.named_children()) == total
    assert by_module["transformer"] > 0 and by_module["backbone"] > 0
    return total


def test_quickstart_model():
    # ResNet-18 res3..res5 of a 128 x 160 image: strides 8, 16, 32
    check_model_count("quickstart.yaml", 128, 160, [(16, 20), (8, 10), (4, 5)])


@pytest.mark.slow
def test_released_r50_model():
    # res3..res5 and a stride-2 extra level on res5: strides 8, 16, 32, 64 (rounded up)
    total = check_model_count("ddetr_r50.yaml", 128, 160, [(16, 20), (8, 10), (4, 5), (2, 3)])
    # a sanity bound: the ResNet-50 alone is 4.1 GFLOPs at 224 x 224, so 1.7 here, and the
    # encoder's linear layers about 0.75 MFLOPs per position and layer
    assert 5e9 < total < 7e9
