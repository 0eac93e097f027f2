"""Pure-PyTorch reference of multi-scale deformable attention, built on grid_sample.

Slow and memory-hungry (it materialises every sampled value), but simple and independent of the
compiled kernels: the tests hold the kernels against it, and the wrapper falls back on it where no
kernel exists for a device or dtype.

Shapes: see the legend in deformable_detr/__init__.py.
"""

import math
from typing import Sequence, Tuple, Union

import torch
import torch.nn.functional as F

__all__ = ["ms_deform_attn_pytorch"]


def ms_deform_attn_pytorch(
    value: torch.Tensor,
    spatial_shapes: Union[torch.Tensor, Sequence[Tuple[int, int]]],
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """Multi-scale deformable attention by bilinear grid sampling.

    Args:
        value: (N, S, M, D).
        spatial_shapes: (L, 2) rows (H, W), a tensor or a list of pairs; sum of H * W equals S.
        sampling_locations: (N, Lq, M, L, P, 2) normalised (x, y); (0, 0) is the top-left corner
            of the map and (1, 1) the bottom-right. Outside [0, 1] samples zero, however far
            out; a NaN or infinite coordinate samples NaN.
        attention_weights: (N, Lq, M, L, P). A NaN weight, or an infinite one on a sample
            outside the map (inf * 0), makes its query and head's output NaN.

    Returns:
        (N, Lq, M * D): for each query and head, the weighted sum of the sampled values.
        float16 and bfloat16 inputs are computed in float32 and the result rounded back, as the
        kernels do. (This also avoids grid_sample's bfloat16 CPU kernel in torch 2.14, which
        returned NaN or crashed, reading out of bounds, on the benchmark's encoder inputs.)
    """
    if value.dtype in (torch.float16, torch.bfloat16):
        out = ms_deform_attn_pytorch(
            value.float(), spatial_shapes, sampling_locations.float(), attention_weights.float()
        )
        return out.to(value.dtype)
    N, S, M, D = value.shape
    _, Lq, _, L, P, _ = sampling_locations.shape
    shapes = spatial_shapes.tolist() if torch.is_tensor(spatial_shapes) else list(spatial_shapes)
    sizes = [int(h) * int(w) for h, w in shapes]
    # grid_sample samples NaN at a NaN coordinate, and at an infinite one on the CPU; on CUDA an
    # infinite one gives corner indices outside the map, so zero. NaN on every device, as the
    # kernels: a location that overflowed upstream shows in the output instead of vanishing.
    sampling_locations = torch.where(
        sampling_locations.isinf(), sampling_locations.new_tensor(math.nan), sampling_locations
    )
    # grid_sample's grid spans [-1, 1]; with align_corners=False its ends are the map's corners.
    grids = 2 * sampling_locations - 1  # (N, Lq, M, L, P, 2)
    sampled = []
    for lvl, (value_l, (h, w)) in enumerate(zip(value.split(sizes, dim=1), shapes)):
        # (N, H*W, M, D) -> (N, M, D, H*W) -> (N*M, D, H, W)
        value_l = value_l.permute(0, 2, 3, 1).reshape(N * M, D, int(h), int(w))
        # (N, Lq, M, P, 2) -> (N, M, Lq, P, 2) -> (N*M, Lq, P, 2)
        grid_l = grids[:, :, :, lvl].transpose(1, 2).reshape(N * M, Lq, P, 2)
        # (N*M, D, Lq, P)
        sampled.append(
            F.grid_sample(
                value_l, grid_l, mode="bilinear", padding_mode="zeros", align_corners=False
            )
        )
    # (N*M, D, Lq, L, P)
    sampled = torch.stack(sampled, dim=-2)
    # (N, Lq, M, L, P) -> (N, M, Lq, L, P) -> (N*M, 1, Lq, L, P)
    weights = attention_weights.transpose(1, 2).reshape(N * M, 1, Lq, L, P)
    # (N*M, D, Lq) -> (N, M*D, Lq) -> (N, Lq, M*D)
    out = (sampled * weights).sum(dim=(-2, -1)).view(N, M * D, Lq)
    return out.transpose(1, 2).contiguous()
