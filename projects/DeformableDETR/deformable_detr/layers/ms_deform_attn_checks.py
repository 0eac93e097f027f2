"""Input checks of the multi-scale deformable attention op, at its public boundary.

Each check raises a TypeError (wrong kind of input) or a ValueError (wrong shape or value) that
names the argument, what was expected and what was given.

Shapes: see the legend in deformable_detr/__init__.py.
"""

import torch

__all__ = ["check_ms_deform_attn_inputs"]


def _require_tensor(name, x):
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")


def _require_rank(name, x, rank, layout):
    if x.dim() != rank:
        raise ValueError(f"{name} must be {layout} ({rank}-d), got shape {tuple(x.shape)}")


def _require_floating(name, x):
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")


def _require_integer(name, x):
    if x.is_floating_point() or x.is_complex() or x.dtype == torch.bool:
        raise TypeError(f"{name} must be an integer tensor (int64), got dtype {x.dtype}")


def _is_tracing(*tensors):
    """True under torch.compile / torch.export, where tensor values cannot be read."""
    if torch.compiler.is_compiling():
        return True
    from torch._subclasses.fake_tensor import FakeTensor

    return any(isinstance(t, FakeTensor) or t.device.type == "meta" for t in tensors)


def check_ms_deform_attn_inputs(
    value, spatial_shapes, level_start_index, sampling_locations, attention_weights
):
    """Checks the op's inputs; see `ms_deform_attn` for the contract.

    The checks of values (spatial_shapes against S, level_start_index against spatial_shapes)
    need the data, so they are skipped while torch.compile or torch.export trace.
    """
    names = "value spatial_shapes level_start_index sampling_locations attention_weights".split()
    tensors = (value, spatial_shapes, level_start_index, sampling_locations, attention_weights)
    for name, x in zip(names, tensors):
        _require_tensor(name, x)
    _require_rank("value", value, 4, "(N, S, M, D)")
    _require_rank("spatial_shapes", spatial_shapes, 2, "(L, 2)")
    _require_rank("level_start_index", level_start_index, 1, "(L,)")
    _require_rank("sampling_locations", sampling_locations, 6, "(N, Lq, M, L, P, 2)")
    _require_rank("attention_weights", attention_weights, 5, "(N, Lq, M, L, P)")
    _require_floating("value", value)
    _require_floating("sampling_locations", sampling_locations)
    _require_floating("attention_weights", attention_weights)
    _require_integer("spatial_shapes", spatial_shapes)
    _require_integer("level_start_index", level_start_index)
    for name, x in zip(names[1:], tensors[1:]):
        if x.device != value.device:
            raise ValueError(
                f"{name} is on {x.device} but value is on {value.device}; "
                "all inputs must be on one device"
            )

    N, S, M, D = value.shape
    loc_shape = tuple(sampling_locations.shape)
    if loc_shape[5] != 2:
        raise ValueError(f"sampling_locations must end in (x, y), size 2; got shape {loc_shape}")
    if loc_shape[0] != N or loc_shape[2] != M:
        raise ValueError(
            f"sampling_locations (N, Lq, M, L, P, 2) = {loc_shape} disagrees with value "
            f"(N, S, M, D) = {tuple(value.shape)} in N or M"
        )
    if tuple(attention_weights.shape) != loc_shape[:5]:
        raise ValueError(
            f"attention_weights must be (N, Lq, M, L, P) = {loc_shape[:5]} to match "
            f"sampling_locations, got {tuple(attention_weights.shape)}"
        )
    L = loc_shape[3]
    if tuple(spatial_shapes.shape) != (L, 2):
        raise ValueError(
            f"spatial_shapes must be (L, 2) = ({L}, 2) for the L = {L} levels of "
            f"sampling_locations, got {tuple(spatial_shapes.shape)}"
        )
    if tuple(level_start_index.shape) != (L,):
        raise ValueError(
            f"level_start_index must be (L,) = ({L},), got {tuple(level_start_index.shape)}"
        )
    if _is_tracing(*tensors):
        return
    # one read-back of both index tensors: a single device sync per call on the GPU
    both = torch.cat([spatial_shapes.flatten(), level_start_index.to(spatial_shapes.dtype)])
    flat = both.tolist()
    shapes, given_starts = [flat[2 * i : 2 * i + 2] for i in range(L)], flat[2 * L :]
    if any(h < 1 or w < 1 for h, w in shapes):
        raise ValueError(f"spatial_shapes must hold positive (H, W) rows, got {shapes}")
    sizes = [h * w for h, w in shapes]
    if sum(sizes) != S:
        raise ValueError(
            f"spatial_shapes {shapes} cover sum(H * W) = {sum(sizes)} positions but value has "
            f"S = {S}"
        )
    starts = [sum(sizes[:i]) for i in range(L)]
    if given_starts != starts:
        raise ValueError(
            f"level_start_index must be the start of each level, {starts} for spatial_shapes "
            f"{shapes}; got {given_starts}"
        )
