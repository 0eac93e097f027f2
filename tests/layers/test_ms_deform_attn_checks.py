"""Input checks of the multi-scale deformable attention op: the Python wrapper's and the compiled
operators' own.

Covered:
  * the wrapper `ms_deform_attn`: each malformed input (rank, size mismatches, level sizes and
    start indices, dtypes, non-tensors, a second device) raises exactly ValueError or TypeError
    (not a subclass) with a message naming the offending argument;
  * the raw operators `torch.ops.deformable_detr.ms_deform_attn` and `ms_deform_attn_backward`:
    their TORCH_CHECKs on shapes and dtypes (check_inputs in
    csrc/ms_deform_attn/ms_deform_attn_checks.cpp) and on grad_output raise RuntimeError;
  * the raw CPU operators' checks of the index values (check_levels_cpu, same file): a
    non-positive H or W, a level_start_index that disagrees with spatial_shapes, or
    spatial_shapes that do not cover S raise RuntimeError naming spatial_shapes /
    level_start_index, in the forward and the backward.

No numerical tolerances: only the exception type and message are checked.
"""

import re

import pytest
import torch

from deformable_detr.layers.ms_deform_attn_op import ms_deform_attn
from ms_deform_attn_cases import LEVELS, level_tensors, make_inputs, requires_extension

pytestmark = requires_extension


# ----------------------------------------------------------------------------------------------
# Input checks of the wrapper
# ----------------------------------------------------------------------------------------------


def _replace(**changes):
    """A case: a function of the valid inputs (as a dict) returning the modified 5-tuple."""
    names = "value spatial_shapes level_start_index sampling_locations attention_weights".split()

    def apply(inputs):
        new = dict(inputs)
        for name, fn in changes.items():
            new[name] = fn(inputs)
        return tuple(new[n] for n in names)

    return apply


def _set(t, index, v):
    """A copy of t with t[index] = v."""
    t = t.clone()
    t[index] = v
    return t


def _widen_first_level(shapes, dw):
    """spatial_shapes with level 0's W changed by dw, e.g. (5, 7) -> (5, 6): sum(H * W) no
    longer equals S."""
    return _set(shapes, (0, 1), shapes[0, 1] + dw)


CHECK_CASES = [
    # id, case, exception type, argument the message must name
    ("value-rank", _replace(value=lambda i: i["value"][0]), ValueError, "value"),
    (
        "shapes-rank",
        _replace(spatial_shapes=lambda i: i["spatial_shapes"].flatten()),
        ValueError,
        "spatial_shapes",
    ),
    (
        "starts-rank",
        _replace(level_start_index=lambda i: i["level_start_index"][None]),
        ValueError,
        "level_start_index",
    ),
    (
        "locations-rank",
        _replace(sampling_locations=lambda i: i["sampling_locations"][..., 0]),
        ValueError,
        "sampling_locations",
    ),
    (
        "weights-rank",
        _replace(attention_weights=lambda i: i["attention_weights"][..., None]),
        ValueError,
        "attention_weights",
    ),
    (
        "locations-not-xy",
        _replace(sampling_locations=lambda i: i["sampling_locations"][..., :1]),
        ValueError,
        "sampling_locations",
    ),
    (
        "M-mismatch",
        _replace(
            sampling_locations=lambda i: i["sampling_locations"][:, :, :1],
            attention_weights=lambda i: i["attention_weights"][:, :, :1],
        ),
        ValueError,
        "sampling_locations",
    ),
    (
        "N-mismatch",
        _replace(
            sampling_locations=lambda i: i["sampling_locations"][:1],
            attention_weights=lambda i: i["attention_weights"][:1],
        ),
        ValueError,
        "sampling_locations",
    ),
    (
        "L-mismatch",
        _replace(
            spatial_shapes=lambda i: i["spatial_shapes"][:3],
            level_start_index=lambda i: i["level_start_index"][:3],
        ),
        ValueError,
        "spatial_shapes",
    ),
    (
        "P-mismatch",
        _replace(attention_weights=lambda i: i["attention_weights"][..., :2]),
        ValueError,
        "attention_weights",
    ),
    (
        "Lq-mismatch",
        _replace(attention_weights=lambda i: i["attention_weights"][:, :2]),
        ValueError,
        "attention_weights",
    ),
    (
        "starts-length",
        _replace(level_start_index=lambda i: i["level_start_index"][:3]),
        ValueError,
        "level_start_index",
    ),
    (
        "shapes-sum",
        _replace(spatial_shapes=lambda i: _widen_first_level(i["spatial_shapes"], -1)),
        ValueError,
        "spatial_shapes",
    ),
    (
        "shapes-zero",
        _replace(spatial_shapes=lambda i: i["spatial_shapes"] * torch.tensor([1, 0])),
        ValueError,
        "spatial_shapes",
    ),
    (
        "starts-values",
        _replace(level_start_index=lambda i: i["level_start_index"].flip(0)),
        ValueError,
        "level_start_index",
    ),
    (
        "shapes-float",
        _replace(spatial_shapes=lambda i: i["spatial_shapes"].float()),
        TypeError,
        "spatial_shapes",
    ),
    (
        "starts-float",
        _replace(level_start_index=lambda i: i["level_start_index"].double()),
        TypeError,
        "level_start_index",
    ),
    (
        "shapes-bool",
        _replace(spatial_shapes=lambda i: i["spatial_shapes"] > 0),
        TypeError,
        "spatial_shapes",
    ),
    ("value-int", _replace(value=lambda i: i["value"].long()), TypeError, "value"),
    (
        "locations-int",
        _replace(sampling_locations=lambda i: i["sampling_locations"].long()),
        TypeError,
        "sampling_locations",
    ),
    (
        "weights-int",
        _replace(attention_weights=lambda i: i["attention_weights"].int()),
        TypeError,
        "attention_weights",
    ),
    (
        "shapes-list",
        _replace(spatial_shapes=lambda i: i["spatial_shapes"].tolist()),
        TypeError,
        "spatial_shapes",
    ),
    ("value-ndarray", _replace(value=lambda i: i["value"].numpy()), TypeError, "value"),
    ("weights-float", _replace(attention_weights=lambda i: 1.0), TypeError, "attention_weights"),
    # A second device, simulated with 'meta' (no data): the device check runs before any check
    # that reads values, so the mismatch is what is reported.
    (
        "weights-meta",
        _replace(attention_weights=lambda i: i["attention_weights"].to("meta")),
        ValueError,
        "attention_weights",
    ),
    (
        "locations-meta",
        _replace(sampling_locations=lambda i: i["sampling_locations"].to("meta")),
        ValueError,
        "sampling_locations",
    ),
    (
        "starts-meta",
        _replace(level_start_index=lambda i: i["level_start_index"].to("meta")),
        ValueError,
        "level_start_index",
    ),
]


@pytest.mark.parametrize(
    "case,exc,name", [c[1:] for c in CHECK_CASES], ids=[c[0] for c in CHECK_CASES]
)
def test_input_checks(case, exc, name):
    value, shapes, starts, loc, weights = make_inputs(N=2, Lq=4, M=2, D=8, P=3)
    valid = dict(
        value=value,
        spatial_shapes=shapes,
        level_start_index=starts,
        sampling_locations=loc,
        attention_weights=weights,
    )
    ms_deform_attn(*valid.values())  # the unmodified inputs are accepted
    with pytest.raises(exc, match=rf"\b{name}\b") as info:
        ms_deform_attn(*case(valid))
    assert type(info.value) is exc  # not a subclass, e.g. not a RuntimeError-derived error
    if any(isinstance(t, torch.Tensor) and t.device.type == "meta" for t in case(valid)):
        assert "device" in str(info.value) and "meta" in str(info.value), info.value


# ----------------------------------------------------------------------------------------------
# The raw operators' own checks
# ----------------------------------------------------------------------------------------------


RAW_CASES = [
    ("value-3d", lambda v, s, i, loc, a: (v[0], s, i, loc, a), "value"),
    (
        "locations-xyz",
        lambda v, s, i, loc, a: (v, s, i, torch.cat([loc, loc[..., :1]], -1), a),
        "sampling_locations",
    ),
    ("weights-shape", lambda v, s, i, loc, a: (v, s, i, loc, a[..., :2]), "attention_weights"),
    ("M-mismatch", lambda v, s, i, loc, a: (v[:, :, :1], s, i, loc, a), "sampling_locations"),
    ("shapes-rows", lambda v, s, i, loc, a: (v, s[:3], i, loc, a), "spatial_shapes"),
    ("starts-length", lambda v, s, i, loc, a: (v, s, i[:3], loc, a), "level_start_index"),
    ("shapes-int32", lambda v, s, i, loc, a: (v, s.int(), i, loc, a), "int64"),
    ("dtype-mix", lambda v, s, i, loc, a: (v.float(), s, i, loc, a), "dtype"),
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
# The raw CPU operators' checks of the index values (check_levels_cpu)
# ----------------------------------------------------------------------------------------------
# With LEVELS = ((5, 7), (3, 4), (1, 1), (2, 3)): S = 54, level_start_index = [0, 35, 47, 48].


def _widen_first_level_consistently(shapes, dw):
    """_widen_first_level with the level_start_index that agrees: only the total is off."""
    shapes = _widen_first_level(shapes, dw)
    return shapes, level_tensors(shapes.tolist())[1]


LEVEL_CASES = [
    # id, levels, (spatial_shapes, level_start_index) -> the same modified, exact message
    (
        "cover-fewer",
        LEVELS,
        lambda s, i: _widen_first_level_consistently(s, -1),
        "spatial_shapes cover 49 positions but value has S = 54",
    ),
    (
        "cover-more",
        LEVELS,
        lambda s, i: _widen_first_level_consistently(s, 1),
        "spatial_shapes cover 59 positions but value has S = 54",
    ),
    (
        "H-zero",
        LEVELS,
        lambda s, i: (_set(s, (0, 0), 0), i),
        "spatial_shapes row 0 = (0, 7) must be positive",
    ),
    (
        "W-zero-level2",
        LEVELS,
        lambda s, i: (_set(s, (2, 1), 0), i),
        "spatial_shapes row 2 = (1, 0) must be positive",
    ),
    (
        "H-negative",
        LEVELS,
        lambda s, i: (_set(s, (1, 0), -3), i),
        "spatial_shapes row 1 = (-3, 4) must be positive",
    ),
    # H * W is still 35 and the levels still cover S: only the sign check catches it.
    (
        "H-and-W-negative",
        LEVELS,
        lambda s, i: (_set(s, 0, -s[0]), i),
        "spatial_shapes row 0 = (-5, -7) must be positive",
    ),
    (
        "starts-huge",
        ((5, 7),),
        lambda s, i: (s, torch.tensor([1000000])),
        "level_start_index[0] = 1000000 but level 0 starts at 0 by spatial_shapes",
    ),
    (
        "starts-negative",
        ((5, 7),),
        lambda s, i: (s, torch.tensor([-5])),
        "level_start_index[0] = -5 but level 0 starts at 0 by spatial_shapes",
    ),
    (
        "starts-huge-level3",
        LEVELS,
        lambda s, i: (s, _set(i, 3, 1000000)),
        "level_start_index[3] = 1000000 but level 3 starts at 48 by spatial_shapes",
    ),
    (
        "starts-reversed",
        LEVELS,
        lambda s, i: (s, i.flip(0)),
        "level_start_index[0] = 48 but level 0 starts at 0 by spatial_shapes",
    ),
    # Non-contiguous (stride 2): the check must read the elements the view holds.
    (
        "starts-reversed-strided",
        LEVELS,
        lambda s, i: (s, torch.stack([i.flip(0), i], 1)[:, 0]),
        "level_start_index[0] = 48 but level 0 starts at 0 by spatial_shapes",
    ),
]


@pytest.mark.parametrize(
    "levels,case,message", [c[1:] for c in LEVEL_CASES], ids=[c[0] for c in LEVEL_CASES]
)
def test_raw_cpu_operators_check_index_values(levels, case, message):
    value, shapes, starts, loc, weights = make_inputs(levels, N=2, Lq=4, M=2, D=8, P=3)
    grad_out = torch.ones(2, 4, 16, dtype=torch.float64)
    # The unmodified inputs are accepted.
    torch.ops.deformable_detr.ms_deform_attn(value, shapes, starts, loc, weights)
    torch.ops.deformable_detr.ms_deform_attn_backward(value, shapes, starts, loc, weights, grad_out)
    bad_shapes, bad_starts = case(shapes, starts)
    # Only values differ: the shape and dtype checks of check_inputs all pass.
    assert bad_shapes.shape == shapes.shape and bad_shapes.dtype == torch.int64
    assert bad_starts.shape == starts.shape and bad_starts.dtype == torch.int64
    args = (value, bad_shapes, bad_starts, loc, weights)
    with pytest.raises(RuntimeError, match=re.escape(message)):
        torch.ops.deformable_detr.ms_deform_attn(*args)
    with pytest.raises(RuntimeError, match=re.escape(message)):
        torch.ops.deformable_detr.ms_deform_attn_backward(*args, grad_out)
