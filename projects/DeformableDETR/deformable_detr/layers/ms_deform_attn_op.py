"""The multi-scale deformable attention op: the compiled kernels as torch operators, and the
wrapper that checks inputs (the public `ms_deform_attn`) and chooses kernel or reference.

`torch.ops.deformable_detr.ms_deform_attn` is defined in csrc/vision.cpp (C++ kernels for the CPU,
and for CUDA when built with nvcc); this module gives it autograd (the backward is the operator
`ms_deform_attn_backward`) and fake kernels, so that torch.compile and torch.export see a single
operator with known output shapes. CUDA tensors of float32, float16 and bfloat16 go to the Triton
operator of ms_deform_attn_triton.py instead, unless the environment variable
DEFORMABLE_DETR_CUDA_BACKEND is "cpp" (read at import).

Shapes: see the legend in deformable_detr/__init__.py.
"""

import logging
import os
import warnings

import torch

from .ms_deform_attn_checks import check_ms_deform_attn_inputs
from .ms_deform_attn_ref import ms_deform_attn_pytorch

__all__ = [
    "CUDA_BACKEND",
    "extension_available",
    "kernel_available",
    "kernel_backend",
    "ms_deform_attn",
    "ms_deform_attn_unchecked",
    "triton_available",
]

logger = logging.getLogger(__name__)

try:
    from deformable_detr import _C  # noqa: F401  (loading it registers the operators)

    _EXTENSION_ERROR = None
except ImportError as e:  # not built: the reference is used, with a warning
    _EXTENSION_ERROR = e

try:
    from . import ms_deform_attn_triton as _triton

    _TRITON_ERROR = None
except ImportError as e:  # no triton in this torch build: CUDA tensors use the C++ kernels
    _triton, _TRITON_ERROR = None, e

_CUDA_BACKENDS = ("triton", "cpp")
CUDA_BACKEND = os.environ.get("DEFORMABLE_DETR_CUDA_BACKEND", "triton")
if CUDA_BACKEND not in _CUDA_BACKENDS:
    raise ValueError(
        f"DEFORMABLE_DETR_CUDA_BACKEND must be one of {_CUDA_BACKENDS}, got {CUDA_BACKEND!r}"
    )

_KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_OP_NAME = "deformable_detr::ms_deform_attn"
_warned = set()


def extension_available() -> bool:
    """Whether the compiled extension `deformable_detr._C` is loaded."""
    return _EXTENSION_ERROR is None


def _kernel_device_types():
    if not extension_available():
        return frozenset()
    has_kernel = torch._C._dispatch_has_kernel_for_dispatch_key
    compiled = {t for t in ("cpu", "cuda") if has_kernel(_OP_NAME, t.upper())}
    # meta tensors carry no data for the reference to read; the fake kernel gives their shapes
    return frozenset(compiled | {"meta"})


# Read once, so that torch.compile traces kernel_available as constants.
_KERNEL_DEVICE_TYPES = _kernel_device_types()


def triton_available() -> bool:
    """Whether the Triton operator is registered (triton imports)."""
    return _TRITON_ERROR is None


def kernel_backend(device: torch.device, dtype: torch.dtype):
    """Which kernels run tensors of this device and dtype: "triton", "cpp" (the C++ operator; for
    meta tensors its fake kernel), or None (the PyTorch reference)."""
    device_type = torch.device(device).type
    if (
        device_type == "cuda"
        and CUDA_BACKEND == "triton"
        and triton_available()
        and dtype in _triton.TRITON_DTYPES
    ):
        return "triton"
    if device_type in _KERNEL_DEVICE_TYPES and dtype in _KERNEL_DTYPES:
        return "cpp"
    return None


def kernel_available(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether a compiled kernel exists for tensors of this device and dtype (for meta tensors:
    the fake kernel, which gives the output's shape and dtype)."""
    return kernel_backend(device, dtype) is not None


def _warn_once(reason: str):
    if reason not in _warned:
        _warned.add(reason)
        warnings.warn(
            f"ms_deform_attn: {reason}; using the slower PyTorch reference.", stacklevel=3
        )


if extension_available():

    @torch.library.register_fake(_OP_NAME)
    def _forward_fake(
        value, spatial_shapes, level_start_index, sampling_locations, attention_weights
    ):
        N, _, M, D = value.shape
        Lq = sampling_locations.shape[1]
        return value.new_empty((N, Lq, M * D))

    @torch.library.register_fake(_OP_NAME + "_backward")
    def _backward_fake(
        value, spatial_shapes, level_start_index, sampling_locations, attention_weights, grad_output
    ):
        return (
            torch.empty_like(value),
            torch.empty_like(sampling_locations),
            torch.empty_like(attention_weights),
        )

    def _setup_context(ctx, inputs, output):
        ctx.save_for_backward(*inputs)

    def _backward(ctx, grad_output):
        value, spatial_shapes, level_start_index, locations, weights = ctx.saved_tensors
        if value.is_cuda:
            # raises under torch.use_deterministic_algorithms(True), as PyTorch's own ops do
            torch._C._alert_not_deterministic(
                "ms_deform_attn_backward with DEFORMABLE_DETR_CUDA_BACKEND=cpp (float atomics)"
            )
        grad_value, grad_locations, grad_weights = (
            torch.ops.deformable_detr.ms_deform_attn_backward(
                value, spatial_shapes, level_start_index, locations, weights, grad_output
            )
        )
        return grad_value, None, None, grad_locations, grad_weights

    torch.library.register_autograd(_OP_NAME, _backward, setup_context=_setup_context)


_HALF = (torch.float16, torch.bfloat16)


def _compute_dtypes(value, sampling_locations, attention_weights):
    """The inputs in the dtypes the kernels take: all one dtype, or half values with float32
    locations and weights."""
    location_dtype = torch.promote_types(sampling_locations.dtype, attention_weights.dtype)
    if value.dtype in _HALF and location_dtype == torch.float32:
        value_dtype = value.dtype
    else:
        value_dtype = location_dtype = torch.promote_types(value.dtype, location_dtype)
    return (
        value.to(value_dtype),
        sampling_locations.to(location_dtype),
        attention_weights.to(location_dtype),
    )


def ms_deform_attn(
    value: torch.Tensor,
    spatial_shapes: torch.Tensor,
    level_start_index: torch.Tensor,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
    *,
    deterministic: bool = False,
) -> torch.Tensor:
    """Multi-scale deformable attention: for every query and head, the attention-weighted sum of
    values sampled bilinearly (zero padding, align_corners=False) at L * P locations.

    Args:
        value: (N, S, M, D), floating point.
        spatial_shapes: (L, 2) integer rows (H, W) of the levels; sum of H * W equals S.
        level_start_index: (L,) integer offset of each level in S.
        sampling_locations: (N, Lq, M, L, P, 2) normalised (x, y): (0, 0) is the top-left
            corner of a level, (1, 1) its bottom-right. Locations outside [0, 1] sample zeros,
            however far out.
        attention_weights: (N, Lq, M, L, P).

    NaN propagates as in grid_sample: a NaN weight, or a NaN or infinite location, makes all D
    channels of its query and head NaN (an infinite weight makes them inf or NaN), and reaches
    the gradients (the reference's: the sample's weight gradient is NaN for a non-finite location;
    its location gradients are NaN for a non-finite weight, and x's for a non-finite y and the
    other way round). A NaN upstream thus shows in the output and the loss instead of vanishing.

    Returns:
        (N, Lq, M * D). float16/bfloat16 values with float32 locations or weights (what autocast
        produces) run in the value's dtype with float32 locations and weights, so locations keep
        their precision; other mixes are promoted as PyTorch's binary ops promote them. The
        output has the value's dtype after that. Differentiable in value,
        sampling_locations and attention_weights. Uses the compiled kernel when one exists for
        the device and dtype, the PyTorch reference otherwise (with one warning).

    deterministic: on CUDA with the Triton kernels, a backward without float atomics, bitwise
    the same from run to run (also chosen by torch.use_deterministic_algorithms(True)). The CPU
    kernels are always deterministic; the opt-in C++ CUDA backward never is, and raises under
    torch.use_deterministic_algorithms(True).
    """
    check_ms_deform_attn_inputs(
        value, spatial_shapes, level_start_index, sampling_locations, attention_weights
    )
    return ms_deform_attn_unchecked(
        value,
        spatial_shapes,
        level_start_index,
        sampling_locations,
        attention_weights,
        deterministic=deterministic,
    )


def ms_deform_attn_unchecked(
    value,
    spatial_shapes,
    level_start_index,
    sampling_locations,
    attention_weights,
    *,
    deterministic: bool = False,
) -> torch.Tensor:
    """ms_deform_attn() without its input checks, for callers whose inputs are right by
    construction (MSDeformAttn): no device sync to read spatial_shapes back. The C++ entry points
    still check what reaches the kernels."""
    value, sampling_locations, attention_weights = _compute_dtypes(
        value, sampling_locations, attention_weights
    )
    N, _, M, D = value.shape
    Lq = sampling_locations.shape[1]
    if N == 0 or Lq == 0:
        # Keeps the graph connected, so that backward gives zero gradients.
        zero = 0 * (value.sum() + sampling_locations.sum() + attention_weights.sum())
        return value.new_zeros((N, Lq, M * D)) + zero.to(value.dtype)
    backend = kernel_backend(value.device, value.dtype)
    if backend is not None:
        inputs = (
            value,
            spatial_shapes.long(),
            level_start_index.long(),
            sampling_locations,
            attention_weights,
        )
        if backend == "triton":
            return torch.ops.deformable_detr.ms_deform_attn_triton(*inputs, deterministic)
        return torch.ops.deformable_detr.ms_deform_attn(*inputs)
    if not extension_available():
        _warn_once(f"the compiled extension is not built ({_EXTENSION_ERROR})")
    else:
        _warn_once(f"no compiled kernel for device {value.device.type} and dtype {value.dtype}")
    return ms_deform_attn_pytorch(value, spatial_shapes, sampling_locations, attention_weights)
