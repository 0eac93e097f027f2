"""The feature levels flattened into one sequence for the transformer, and where each image is
valid on each level: computed once here, read by the encoder, the queries and the decoder.

Shapes: see the legend in deformable_detr/__init__.py.
"""

from typing import List, NamedTuple, Tuple

import torch

from .symbolic_sizes import sizes_tensor

__all__ = ["Levels", "flatten_levels"]


class Levels(NamedTuple):
    """The layout of the flattened levels.

    sizes: L rows (H_l, W_l) as ints (loop bounds and views); shapes: the same rows as an (L, 2)
    int64 tensor (the op's argument; traceable, so that an exported graph keeps the image size
    dynamic); starts: (L,) int64 offset of each level in S; mask: (N, S) bool, True at padding;
    valid: (N, L, 2) int64 valid width and height of each image on each level; ratios: (N, L, 2)
    float32 the same over the level's padded width and height.
    """

    sizes: List[Tuple[int, int]]
    shapes: torch.Tensor
    starts: torch.Tensor
    mask: torch.Tensor
    valid: torch.Tensor
    ratios: torch.Tensor


def flatten_levels(
    srcs: List[torch.Tensor],
    masks: List[torch.Tensor],
    pos: List[torch.Tensor],
    level_embed: torch.Tensor,
) -> Tuple[torch.Tensor, torch.Tensor, Levels]:
    """
    Args:
        srcs, pos: L tensors (N, C, H_l, W_l); masks: L bools (N, H_l, W_l), True at padding;
        level_embed: (L, C) added to each level's position encoding.
    Returns:
        src (N, S, C), pos (N, S, C) and the Levels.
    """
    sizes = [tuple(s.shape[-2:]) for s in srcs]
    # (N, C, H, W) -> (N, H*W, C), concatenated over levels -> (N, S, C)
    src = torch.cat([s.flatten(2).transpose(1, 2) for s in srcs], 1)
    pos = torch.cat(
        [
            p.flatten(2).transpose(1, 2) + level_embed[lvl].view(1, 1, -1)
            for lvl, p in enumerate(pos)
        ],
        1,
    )
    mask = torch.cat([m.flatten(1) for m in masks], 1)  # (N, S)
    shapes = torch.stack([sizes_tensor(size, src.device) for size in sizes])
    starts = torch.cat([shapes.new_zeros(1), shapes.prod(1).cumsum(0)[:-1]])
    valid, ratios = [], []
    for m, (H, W) in zip(masks, sizes):
        valid_w, valid_h = (~m[:, 0, :]).sum(1), (~m[:, :, 0]).sum(1)  # (N,) each
        valid.append(torch.stack([valid_w, valid_h], -1))
        ratios.append(torch.stack([valid_w.float() / W, valid_h.float() / H], -1))
    levels = Levels(sizes, shapes, starts, mask, torch.stack(valid, 1), torch.stack(ratios, 1))
    return src, pos, levels
