"""Two-stage Deformable DETR's proposals: every encoder pixel proposes a box (paper, appendix
A.4); ObjectQueries scores them and keeps the best as the decoder's queries.

Shapes: see the legend in deformable_detr/__init__.py.
"""

from typing import Tuple

import torch

from .levels import Levels

__all__ = ["encoder_proposals"]


def encoder_proposals(memory: torch.Tensor, levels: Levels) -> Tuple[torch.Tensor, torch.Tensor]:
    """One box per encoder pixel: its centre, with width and height 0.05 * 2^level.

    Args:
        memory: (N, S, C) encoder output.
    Returns:
        memory: (N, S, C) with padded pixels and invalid proposals zeroed;
        proposals: (N, S, 4) boxes in inverse-sigmoid space, +inf where the proposal is on
            padding or too close to the border (a centre or size outside (0.01, 0.99)).
    """
    N = memory.shape[0]
    proposals = []
    for level, (H, W) in enumerate(levels.sizes):
        ys, xs = torch.meshgrid(
            torch.arange(H, dtype=torch.float32, device=memory.device),
            torch.arange(W, dtype=torch.float32, device=memory.device),
            indexing="ij",
        )
        grid = torch.stack([xs, ys], -1)  # (H, W, 2)
        # centres normalised by each image's valid size: (N, 2) -> (N, 1, 1, 2) -> (N, H, W, 2)
        scale = levels.valid[:, level].view(N, 1, 1, 2)
        centres = (grid[None].expand(N, -1, -1, -1) + 0.5) / scale
        sizes = torch.full_like(centres, 0.05 * (2.0**level))
        # (N, H, W, 4) -> (N, H*W, 4)
        proposals.append(torch.cat([centres, sizes], -1).view(N, H * W, 4))
    proposals = torch.cat(proposals, 1)  # (N, S, 4)
    valid = ((proposals > 0.01) & (proposals < 0.99)).all(-1, keepdim=True)  # (N, S, 1)
    proposals = torch.log(proposals / (1 - proposals))
    invalid = levels.mask.unsqueeze(-1) | ~valid
    proposals = proposals.masked_fill(invalid, float("inf"))
    memory = memory.masked_fill(invalid, 0.0)
    return memory, proposals
