"""The Triton implementation of multi-scale deformable attention, as torch operators: the default
kernels for CUDA tensors of float32, float16 and bfloat16 (ms_deform_attn_op.py chooses them).

    torch.ops.deformable_detr.ms_deform_attn_triton(value, spatial_shapes, level_start_index,
        sampling_locations, attention_weights, deterministic) -> (N, Lq, M * D)
    torch.ops.deformable_detr.ms_deform_attn_triton_backward(..., grad_output, deterministic)
        -> (grad_value, grad_locations, grad_weights)

Both are `torch.library.triton_op`s, so torch.compile and torch.export see the kernels inside them
(wrap_triton), and their fake kernels are these same functions run on fake tensors. The forward
is differentiable. `deterministic` (or torch.use_deterministic_algorithms(True) when the backward
runs) picks the backward without float atomics: every grad_value element is then summed in an
order fixed by the data alone (ms_deform_attn_triton_kernels.segment_sum_kernel), at the cost of
sorting N * Lq * M * L * P * 4 (destination, coefficient) entries.

Direct calls trust spatial_shapes and level_start_index (reading them would cost a device sync);
the public `ms_deform_attn` checks them.

Shapes: see the legend in deformable_detr/__init__.py.
"""

import torch
import triton
from torch._subclasses.fake_tensor import is_fake
from torch.library import triton_op, wrap_triton
from triton.runtime.interpreter import InterpretedFunction

from .ms_deform_attn_triton_kernels import backward_kernel, forward_kernel, segment_sum_kernel

__all__ = [
    "TRITON_DTYPES",
    "TILES",
    "autotune_choices",
    "specializations",
    "triton_backward",
    "triton_forward",
]

TRITON_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

# (BLOCK_R rows per program, num_warps): the autotuner's list on the GPU. Each holds 4 of the
# tile's (BLOCK_R, 32) elements per thread; 8 took 161-255 registers and spilled in the backward,
# 16 or more spilled in the forward too (tools/triton_aot_check.py).
TILES = ((8, 2), (16, 4), (32, 8), (64, 16))
# The tile used without autotuning: under the interpreter, and in the deterministic backward,
# whose bits must not change with the autotuner's choice (the reduction over D inside a tile
# follows the tile's thread layout).
FIXED_TILE = (16, 4)
# (BLOCK_T value rows per program, num_warps) of the deterministic backward's segment sums.
SEGMENT_TILE = (32, 4)
# The forward needs about 110 registers; left alone, ptxas held the float16 / float32-location
# forward to 79 on sm_80 and spilled.
FORWARD_OPTIONS = {"maxnreg": 128}

_KEY = ["M", "D", "L", "P", "size_class"]
_CONFIGS = [triton.Config({"BLOCK_R": rows}, num_warps=warps) for rows, warps in TILES]
_FORWARD_CONFIGS = [
    triton.Config({"BLOCK_R": rows}, num_warps=warps, **FORWARD_OPTIONS) for rows, warps in TILES
]
_forward_tuned = triton.autotune(configs=_FORWARD_CONFIGS, key=_KEY)(forward_kernel)
# the autotuner runs the kernel once per candidate: grad_value's atomic sums restart each time
_backward_tuned = triton.autotune(configs=_CONFIGS, key=_KEY, reset_to_zero=["grad_value_ptr"])(
    backward_kernel
)


def autotune_choices() -> dict:
    """The tiles the autotuner picked so far: "forward|backward (key)" -> the config."""
    return {
        f"{name} {key}": str(config)
        for name, tuned in (("forward", _forward_tuned), ("backward", _backward_tuned))
        for key, config in tuned.cache.items()
    }


_TRITON_TYPES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


def specializations(D=32):
    """Every (name, kernel, signature, constexprs, compile options) that triton_forward and
    triton_backward launch for head dim D (any N, S, Lq, M, L, P): each value dtype,
    with locations and weights of its own dtype or (half values) float32, each tile. For ahead-of-
    time compilation, e.g. tools/triton_aot_check.py."""
    out = []
    ints = {n: "i32" for n in ("rows", "Lq", "S", "M", "L", "P", "size_class")}
    for value_dtype in TRITON_DTYPES:
        v = _TRITON_TYPES[value_dtype]
        for loc in dict.fromkeys((v, "fp32")):
            inputs = dict(
                value_ptr="*" + v, shapes_ptr="*i64", starts_ptr="*i64", loc_ptr="*" + loc
            )
            inputs["attn_ptr"] = "*" + loc
            consts = dict(D=D, BLOCK_D=triton.next_power_of_2(D))
            forward = dict(inputs, out_ptr="*" + v, **ints)
            grads = dict(grad_out_ptr="*" + v, grad_value_ptr="*fp32")
            grads.update(grad_loc_ptr="*" + loc, grad_attn_ptr="*" + loc)
            for deterministic in (False, True):
                extra = dict(dest_ptr="*i64" if deterministic else "*fp32", coef_ptr="*fp32")
                backward = dict(inputs, **grads, **extra, **ints)
                for block_r, warps in [FIXED_TILE] if deterministic else TILES:
                    c = dict(consts, BLOCK_R=block_r)
                    tag = f"{v}/{loc} D{D} tile {block_r}x{warps}w"
                    options = {"num_warps": warps}
                    if not deterministic:
                        forward_options = dict(options, **FORWARD_OPTIONS)
                        out.append((f"forward {tag}", forward_kernel, forward, c, forward_options))
                    c = dict(c, DETERMINISTIC=deterministic)
                    name = f"backward{'-deterministic' if deterministic else ''} {tag}"
                    out.append((name, backward_kernel, backward, c, options))
        segment = dict(grad_out_ptr="*" + v, order_ptr="*i64", coef_ptr="*fp32")
        segment.update(bounds_ptr="*i64", grad_value_ptr="*" + v, value_rows="i32")
        segment.update(L="i32", P="i32")
        block_t, warps = SEGMENT_TILE
        c = dict(D=D, BLOCK_T=block_t, BLOCK_D=triton.next_power_of_2(D))
        tag = f"{v} D{D} tile {block_t}x{warps}w"
        out.append((f"segment-sum {tag}", segment_sum_kernel, segment, c, {"num_warps": warps}))
    return out


def _size_class(rows):
    """The autotuner's key for the row count: its power of two, so that the encoder (a row per
    pixel and head) and the decoder get their own tiles without a retune per image size.
    Symbolic under torch.compile's dynamic shapes: one class."""
    return rows.bit_length() if isinstance(rows, int) else 0


def _run(kernel, grid, args, kwargs):
    """kernel[grid](*args, **kwargs) through wrap_triton, which records the launch when
    torch.compile, torch.export or a fake-tensor pass traces it. Under TRITON_INTERPRET=1,
    wrap_triton hands the kernel back unwrapped, and fake tensors have no data to interpret: the
    launch is then skipped, as the traced launch does nothing on fake tensors."""
    if isinstance(kernel, InterpretedFunction) and is_fake(args[0]):
        return
    wrap_triton(kernel)[grid](*args, **kwargs)


def _launch(kernel, tuned, tile, rows, args, consts, options=None):
    """Launches `tuned` (the autotuner, on the GPU) or `kernel` with `tile` (BLOCK_R, num_warps)
    (given, or FIXED_TILE) and the compile `options` over cdiv(rows, BLOCK_R) programs."""
    if tile is None and args[0].is_cuda:
        _run(tuned, lambda meta: (triton.cdiv(rows, meta["BLOCK_R"]),), args, consts)
    else:
        block_r, warps = tile or FIXED_TILE
        grid = (triton.cdiv(rows, block_r),)
        launch = dict(consts, BLOCK_R=block_r, num_warps=warps, **(options or {}))
        _run(kernel, grid, args, launch)


def _layout(value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
    """The inputs contiguous, the sizes (N, S, M, D, Lq, L) and the compile-time constants."""
    N, S, M, D = value.shape
    Lq, L, P = sampling_locations.shape[1], sampling_locations.shape[3], sampling_locations.shape[4]
    tensors = [
        t.contiguous()
        for t in (value, spatial_shapes, level_start_index, sampling_locations, attention_weights)
    ]
    return tensors, (N, S, M, D, Lq, L, P), dict(D=D, BLOCK_D=triton.next_power_of_2(D))


def triton_forward(
    value, spatial_shapes, level_start_index, sampling_locations, attention_weights, tile=None
):
    """(N, Lq, M * D) in value's dtype. tile: (BLOCK_R, num_warps), or None for the autotuner on
    the GPU and FIXED_TILE elsewhere."""
    tensors, (N, S, M, D, Lq, L, P), consts = _layout(
        value, spatial_shapes, level_start_index, sampling_locations, attention_weights
    )
    out = value.new_empty((N, Lq, M * D))
    rows = N * Lq * M
    if rows == 0:
        return out
    args = (*tensors, out, rows, Lq, S, M, L, P, _size_class(rows))
    _launch(forward_kernel, _forward_tuned, tile, rows, args, consts, FORWARD_OPTIONS)
    return out


def triton_backward(
    value,
    spatial_shapes,
    level_start_index,
    sampling_locations,
    attention_weights,
    grad_output,
    deterministic=False,
    tile=None,
):
    """(grad_value, grad_locations, grad_weights), each in its input's dtype. tile as in
    triton_forward; the deterministic backward uses FIXED_TILE unless one is given."""
    tensors, (N, S, M, D, Lq, L, P), consts = _layout(
        value, spatial_shapes, level_start_index, sampling_locations, attention_weights
    )
    value, locations, weights = tensors[0], tensors[3], tensors[4]
    grad_locations = torch.empty_like(locations)
    grad_weights = torch.empty_like(weights)
    rows = N * Lq * M
    if rows == 0:
        return torch.zeros_like(value), grad_locations, grad_weights
    grad_output = grad_output.contiguous()
    unused = value.new_empty(0, dtype=torch.float32)  # pointers the chosen branch never reads
    if not deterministic:
        grad_value = torch.zeros(value.shape, dtype=torch.float32, device=value.device)
        args = (*tensors, grad_output, grad_value, grad_locations, grad_weights, unused, unused)
        args += (rows, Lq, S, M, L, P, _size_class(rows))
        consts["DETERMINISTIC"] = False
        _launch(backward_kernel, _backward_tuned, tile, rows, args, consts)
        return grad_value.to(value.dtype), grad_locations, grad_weights

    # entry 4 * i + k: corner k of sample i, its value row (or the sink N * S * M) and coefficient
    dest = value.new_empty(rows * L * P * 4, dtype=torch.int64)
    coef = value.new_empty(rows * L * P * 4, dtype=torch.float32)
    args = (*tensors, grad_output, unused, grad_locations, grad_weights, dest, coef)
    args += (rows, Lq, S, M, L, P, _size_class(rows))
    _launch(backward_kernel, None, tile or FIXED_TILE, rows, args, dict(consts, DETERMINISTIC=True))
    value_rows = N * S * M
    # stable: entries of one value row keep their (sample, corner) order
    sorted_dest, order = torch.sort(dest, stable=True)
    bounds = torch.searchsorted(sorted_dest, torch.arange(value_rows + 1, device=value.device))
    grad_value = torch.empty_like(value)
    block_t, warps = SEGMENT_TILE
    _run(
        segment_sum_kernel,
        (triton.cdiv(value_rows, block_t),),
        (grad_output, order, coef, bounds, grad_value, value_rows, L, P),
        dict(D=D, BLOCK_T=block_t, BLOCK_D=consts["BLOCK_D"], num_warps=warps),
    )
    return grad_value, grad_locations, grad_weights


@triton_op("deformable_detr::ms_deform_attn_triton", mutates_args=())
def _forward_op(
    value: torch.Tensor,
    spatial_shapes: torch.Tensor,
    level_start_index: torch.Tensor,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
    deterministic: bool,
) -> torch.Tensor:
    return triton_forward(
        value, spatial_shapes, level_start_index, sampling_locations, attention_weights
    )


@triton_op("deformable_detr::ms_deform_attn_triton_backward", mutates_args=())
def _backward_op(
    value: torch.Tensor,
    spatial_shapes: torch.Tensor,
    level_start_index: torch.Tensor,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
    grad_output: torch.Tensor,
    deterministic: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return triton_backward(
        value,
        spatial_shapes,
        level_start_index,
        sampling_locations,
        attention_weights,
        grad_output,
        deterministic,
    )


def _setup_context(ctx, inputs, output):
    *tensors, deterministic = inputs
    ctx.save_for_backward(*tensors)
    ctx.deterministic = deterministic


def _backward(ctx, grad_output):
    value, spatial_shapes, level_start_index, locations, weights = ctx.saved_tensors
    deterministic = ctx.deterministic or torch.are_deterministic_algorithms_enabled()
    grad_value, grad_locations, grad_weights = _backward_op(
        value, spatial_shapes, level_start_index, locations, weights, grad_output, deterministic
    )
    return grad_value, None, None, grad_locations, grad_weights, None


_forward_op.register_autograd(_backward, setup_context=_setup_context)
