"""Tests of the MSDeformAttn module: the released initialisation, hand-worked sampling with 2-d
and 4-d reference points, the padding mask, a NaN query (NaN output for it alone), gradients to
every parameter, and input checks.

Tolerances: float64 hand-worked cases 1e-12; float32 initial values a few ulps (sin/cos rounding).
"""

import math

import pytest
import torch
from torch import nn

from deformable_detr.layers import MSDeformAttn, ms_deform_attn_pytorch


def identity_projections(attn: MSDeformAttn):
    """Sets value_proj and output_proj to the identity, so outputs are sampled values."""
    with torch.no_grad():
        for lin in (attn.value_proj, attn.output_proj):
            lin.weight.copy_(torch.eye(lin.weight.shape[0]))
            lin.bias.zero_()


def levels(shapes):
    spatial_shapes = torch.tensor(shapes, dtype=torch.long)
    sizes = spatial_shapes.prod(1)
    return spatial_shapes, torch.cat([sizes.new_zeros(1), sizes.cumsum(0)[:-1]]), int(sizes.sum())


def test_initial_values():
    attn = MSDeformAttn(d_model=256, n_levels=4, n_heads=8, n_points=4)
    assert torch.count_nonzero(attn.sampling_offsets.weight) == 0
    # Head m looks along angle 2 pi m / 8, scaled so the larger coordinate is 1; point k at k + 1.
    directions = torch.tensor(
        [[1, 0], [1, 1], [0, 1], [-1, 1], [-1, 0], [-1, -1], [0, -1], [1, -1]], dtype=torch.float32
    )
    expected = directions[:, None, None, :] * torch.arange(1.0, 5.0)[None, None, :, None]
    expected = expected.expand(8, 4, 4, 2)  # the same for every level
    # float32 cos/sin, a division and a product by up to 4: a few ulps of values up to 4
    torch.testing.assert_close(
        attn.sampling_offsets.bias.view(8, 4, 4, 2), expected, rtol=2e-6, atol=1e-6
    )
    for lin in (attn.attention_weights,):
        assert torch.count_nonzero(lin.weight) == 0 and torch.count_nonzero(lin.bias) == 0
    for lin in (attn.value_proj, attn.output_proj):
        assert torch.count_nonzero(lin.bias) == 0
        bound = math.sqrt(6.0 / (lin.in_features + lin.out_features))  # Xavier-uniform
        assert lin.weight.abs().max() <= bound
        # the std of U(-b, b) is b / sqrt(3); 65,536 draws put it within 2%
        assert abs(lin.weight.std().item() - bound / math.sqrt(3)) < 0.02 * bound


def _single_point(offset, shapes):
    """A float64 module of one head and one point per level, identity projections and sampling
    offset bias `offset` ((x, y) per level, in pixels), on levels `shapes`, with random values:
    (attn, value, spatial_shapes, starts)."""
    attn = MSDeformAttn(d_model=4, n_levels=len(shapes), n_heads=1, n_points=1).double()
    identity_projections(attn)
    with torch.no_grad():
        attn.sampling_offsets.bias.copy_(torch.tensor(offset))
    spatial_shapes, starts, S = levels(shapes)
    value = torch.randn(1, S, 4, dtype=torch.float64)
    return attn, value, spatial_shapes, starts


def test_two_d_reference_offsets_are_in_pixels():
    # One 4x4 level; the query's reference point is the centre of pixel (row 1, col 1) and its
    # offset is (+1, +1) pixels, so it samples exactly pixel (row 2, col 2).
    attn, value, spatial_shapes, starts = _single_point([1.0, 1.0], [(4, 4)])
    ref = torch.tensor([1.5 / 4, 1.5 / 4], dtype=torch.float64).view(1, 1, 1, 2)
    query = torch.zeros(1, 1, 4, dtype=torch.float64)
    out = attn(query, ref, value, spatial_shapes, starts)
    torch.testing.assert_close(out[0, 0], value[0, 2 * 4 + 2], rtol=0, atol=1e-12)


def test_offsets_scale_with_each_level():
    # Two levels, 4x4 and 2x2: an offset of +1 pixel in x moves by 1/4 on the first and 1/2 on
    # the second; attention is uniform (1/2 each), so the output is the mean of two pixels.
    attn, value, spatial_shapes, starts = _single_point([1.0, 0.0, 1.0, 0.0], [(4, 4), (2, 2)])
    # reference point: centre of pixel (0, 0) on level 0, of pixel (0, 0) on level 1
    ref = torch.tensor([[0.5 / 4, 0.5 / 4], [0.5 / 2, 0.5 / 2]], dtype=torch.float64)
    out = attn(
        torch.zeros(1, 1, 4, dtype=torch.float64),
        ref.view(1, 1, 2, 2),
        value,
        spatial_shapes,
        starts,
    )
    expected = 0.5 * (value[0, 1] + value[0, 16 + 1])  # pixel (0, 1) of each level
    torch.testing.assert_close(out[0, 0], expected, rtol=0, atol=1e-12)


def test_four_d_reference_offsets_are_in_half_box_sizes():
    # Box (cx, cy, w, h) = (0.375, 0.375, 0.5, 1.0), P = 1: location = centre + offset * wh / 2.
    # Offset (1, 0.25) moves by (0.25, 0.125): to (0.625, 0.5) = between pixels (1, 2) and (2, 2)
    # of a 4x4 map (x * 4 - 0.5 = 2, y * 4 - 0.5 = 1.5).
    attn, value, spatial_shapes, starts = _single_point([1.0, 0.25], [(4, 4)])
    box = torch.tensor([0.375, 0.375, 0.5, 1.0], dtype=torch.float64).view(1, 1, 1, 4)
    out = attn(torch.zeros(1, 1, 4, dtype=torch.float64), box, value, spatial_shapes, starts)
    expected = 0.5 * (value[0, 1 * 4 + 2] + value[0, 2 * 4 + 2])
    torch.testing.assert_close(out[0, 0], expected, rtol=0, atol=1e-12)


def test_forward_equals_composition_with_reference():
    torch.manual_seed(0)
    attn = MSDeformAttn(d_model=32, n_levels=2, n_heads=4, n_points=3).double()
    with torch.no_grad():
        for p in attn.parameters():
            p.add_(0.1 * torch.randn_like(p))
    spatial_shapes, starts, S = levels([(6, 5), (3, 3)])
    N, Lq = 2, 7
    query = torch.randn(N, Lq, 32, dtype=torch.float64)
    value = torch.randn(N, S, 32, dtype=torch.float64)
    ref = torch.rand(N, Lq, 2, 2, dtype=torch.float64)
    out = attn(query, ref, value, spatial_shapes, starts)
    # The same computation written out independently.
    v = attn.value_proj(value).view(N, S, 4, 8)
    off = attn.sampling_offsets(query).view(N, Lq, 4, 2, 3, 2)
    w = attn.attention_weights(query).view(N, Lq, 4, 6).softmax(-1).view(N, Lq, 4, 2, 3)
    wh = torch.tensor([[5.0, 6.0], [3.0, 3.0]], dtype=torch.float64)
    loc = ref[:, :, None, :, None, :] + off / wh[:, None, :]
    expected = attn.output_proj(ms_deform_attn_pytorch(v, spatial_shapes, loc, w))
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)


def test_padding_mask_hides_padded_values():
    torch.manual_seed(0)
    attn = MSDeformAttn(d_model=16, n_levels=2, n_heads=2, n_points=4)
    spatial_shapes, starts, S = levels([(6, 8), (3, 4)])
    N, Lq = 2, 10
    query, value = torch.randn(N, Lq, 16), torch.randn(N, S, 16)
    ref = torch.rand(N, Lq, 2, 2)
    mask = torch.zeros(N, S, dtype=torch.bool)
    mask[0, :48].view(6, 8)[:, 5:] = True  # right three columns of level 0, image 0
    mask[0, 48:].view(3, 4)[:, 3:] = True
    out = attn(query, ref, value, spatial_shapes, starts, padding_mask=mask)
    noisy = torch.where(mask[..., None], 100 * torch.randn_like(value), value)
    out_noisy = attn(query, ref, noisy, spatial_shapes, starts, padding_mask=mask)
    assert torch.equal(out, out_noisy)
    # Without the mask the padded values do change the result: the test can fail.
    assert not torch.allclose(attn(query, ref, noisy, spatial_shapes, starts), out)


def test_nan_query_makes_only_its_own_output_nan():
    # A NaN query gives NaN sampling offsets and weights; its samples used to be dropped, so its
    # output was finite (output_proj's bias). It must be NaN, and no other query's may change.
    torch.manual_seed(0)
    attn = MSDeformAttn(d_model=32, n_levels=2, n_heads=4, n_points=2).double()
    spatial_shapes, starts, S = levels([(4, 5), (2, 3)])
    query = torch.randn(2, 6, 32, dtype=torch.float64)
    value = torch.randn(2, S, 32, dtype=torch.float64)
    ref = torch.rand(2, 6, 2, 2, dtype=torch.float64)
    clean = attn(query, ref, value, spatial_shapes, starts)
    query[1, 3, 5] = math.nan
    out = attn(query, ref, value, spatial_shapes, starts)
    assert out[1, 3].isnan().all()
    others = torch.ones(2, 6, dtype=torch.bool)
    others[1, 3] = False
    torch.testing.assert_close(out[others], clean[others], rtol=0, atol=0)


def test_backward_reaches_every_parameter():
    torch.manual_seed(0)
    attn = MSDeformAttn(d_model=16, n_levels=2, n_heads=2, n_points=2)
    spatial_shapes, starts, S = levels([(4, 4), (2, 2)])
    out = attn(
        torch.randn(1, 5, 16), torch.rand(1, 5, 2, 2), torch.randn(1, S, 16), spatial_shapes, starts
    )
    out.square().sum().backward()
    for name, p in attn.named_parameters():
        assert p.grad is not None and torch.count_nonzero(p.grad) > 0, name


@pytest.mark.parametrize(
    "kwargs,exc,word",
    [
        (dict(d_model=30, n_heads=8), ValueError, "divisible"),
        (dict(n_points=0), ValueError, "n_points"),
        (dict(n_levels=2.0), ValueError, "n_levels"),
    ],
)
def test_constructor_checks(kwargs, exc, word):
    with pytest.raises(exc, match=word):
        MSDeformAttn(**kwargs)


@pytest.mark.parametrize(
    "case,exc,word",
    [
        ("query_width", ValueError, "query"),
        ("value_batch", ValueError, "value"),
        ("ref_last_dim", ValueError, "reference_points"),
        ("ref_levels", ValueError, "reference_points"),
        ("mask_dtype", TypeError, "padding_mask"),
        ("mask_shape", ValueError, "padding_mask"),
    ],
)
def test_forward_checks(case, exc, word):
    attn = MSDeformAttn(d_model=16, n_levels=2, n_heads=2, n_points=2)
    spatial_shapes, starts, S = levels([(4, 4), (2, 2)])
    args = dict(
        query=torch.randn(2, 5, 16),
        reference_points=torch.rand(2, 5, 2, 2),
        value=torch.randn(2, S, 16),
        padding_mask=torch.zeros(2, S, dtype=torch.bool),
    )
    bad = {
        "query_width": ("query", torch.randn(2, 5, 8)),
        "value_batch": ("value", torch.randn(3, S, 16)),
        "ref_last_dim": ("reference_points", torch.rand(2, 5, 2, 3)),
        "ref_levels": ("reference_points", torch.rand(2, 5, 3, 2)),
        "mask_dtype": ("padding_mask", torch.zeros(2, S)),
        "mask_shape": ("padding_mask", torch.zeros(2, S + 1, dtype=torch.bool)),
    }[case]
    args[bad[0]] = bad[1]
    with pytest.raises(exc, match=word):
        attn(
            args["query"],
            args["reference_points"],
            args["value"],
            spatial_shapes,
            starts,
            padding_mask=args["padding_mask"],
        )


def test_is_an_nn_module_with_the_released_parameter_count():
    attn = MSDeformAttn()
    assert isinstance(attn, nn.Module)
    # offsets 256*256+256, weights 256*128+128, value and output 2*(256*256+256)
    assert sum(p.numel() for p in attn.parameters()) == 65792 + 32896 + 2 * 65792


def test_autocast_runs_the_op_on_half_values_with_float32_locations():
    """Under autocast the values come out of a Linear in bfloat16 while the locations stay in
    float32 (reference points + offsets): the op keeps both, and returns bfloat16."""
    torch.manual_seed(0)
    attn = MSDeformAttn(d_model=64, n_levels=2, n_heads=2, n_points=2)
    spatial_shapes, starts, S = levels([(6, 5), (3, 3)])
    query, value, ref = torch.randn(2, 7, 64), torch.randn(2, S, 64), torch.rand(2, 7, 2, 2)
    seen = []
    handle = torch.ops.deformable_detr.ms_deform_attn.default
    from torch.utils._python_dispatch import TorchDispatchMode

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func is handle:
                seen.append((args[0].dtype, args[3].dtype, args[4].dtype))
            return func(*args, **(kwargs or {}))

    with torch.autocast("cpu", dtype=torch.bfloat16), Record():
        out = attn(query, ref, value, spatial_shapes, starts)
    assert seen == [(torch.bfloat16, torch.float32, torch.float32)]
    full = attn(query, ref, value, spatial_shapes, starts)
    # bfloat16 Linear layers and values: a few 2**-8 relative errors on O(1) outputs
    torch.testing.assert_close(out.float(), full, rtol=0.05, atol=0.05)
