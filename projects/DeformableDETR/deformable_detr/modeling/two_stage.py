"""Two-stage Deformable DETR: every encoder pixel proposes a box, and the top-scoring proposals
become the decoder's object queries (paper, appendix A.4).

Shapes: N batch, S encoder pixels (all levels), L levels, K kept proposals, C model width.
"""
import math

import torch

__all__ = ["encoder_proposals", "proposal_pos_embed"]


def encoder_proposals(memory, padding_mask, spatial_shapes, level_sizes):
    """One box per encoder pixel: its centre, with width and height 0.05 * 2^level.

    Args:
        memory: (N, S, C) encoder output.
        padding_mask: (N, S) bool, True at padded pixels.
        spatial_shapes: (L, 2) rows (H, W).
        level_sizes: the same rows as a list of (H, W) ints.
    Returns:
        memory: (N, S, C) with padded pixels and invalid proposals zeroed;
        proposals: (N, S, 4) boxes in inverse-sigmoid space, +inf where the proposal is on
            padding or too close to the border (a centre or size outside (0.01, 0.99)).
    """
    N = memory.shape[0]
    proposals = []
    start = 0
    for level, (H, W) in enumerate(level_sizes):
        # (N, H*W) -> (N, H, W)
        mask = padding_mask[:, start:start + H * W].view(N, H, W)
        valid_h = (~mask[:, :, 0]).sum(1)  # (N,)
        valid_w = (~mask[:, 0, :]).sum(1)
        ys, xs = torch.meshgrid(
            torch.linspace(0, H - 1, H, dtype=torch.float32, device=memory.device),
            torch.linspace(0, W - 1, W, dtype=torch.float32, device=memory.device),
            indexing="ij",
        )
        grid = torch.stack([xs, ys], -1)  # (H, W, 2)
        # centres normalised by each image's valid size: (N, H, W, 2)
        scale = torch.stack([valid_w, valid_h], -1).view(N, 1, 1, 2)
        centres = (grid[None].expand(N, -1, -1, -1) + 0.5) / scale
        sizes = torch.full_like(centres, 0.05 * (2.0**level))
        proposals.append(torch.cat([centres, sizes], -1).view(N, H * W, 4))
        start += H * W
    proposals = torch.cat(proposals, 1)  # (N, S, 4)
    valid = ((proposals > 0.01) & (proposals < 0.99)).all(-1, keepdim=True)  # (N, S, 1)
    proposals = torch.log(proposals / (1 - proposals))
    invalid = padding_mask.unsqueeze(-1) | ~valid
    proposals = proposals.masked_fill(invalid, float("inf"))
    memory = memory.masked_fill(invalid, 0.0)
    return memory, proposals


def proposal_pos_embed(proposals, num_pos_feats=128, temperature=10000):
    """Sine embedding of proposal boxes given in inverse-sigmoid space.

    Args:
        proposals: (N, K, 4) unnormalised boxes (logits of cx, cy, w, h).
    Returns:
        (N, K, 4 * num_pos_feats): per coordinate, sin and cos interleaved.
    """
    dim_t = torch.arange(num_pos_feats, dtype=torch.float32, device=proposals.device)
    dim_t = temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / num_pos_feats)
    # (N, K, 4) -> (N, K, 4, num_pos_feats)
    pos = proposals.sigmoid() * (2 * math.pi)
    pos = pos[:, :, :, None] / dim_t
    # (N, K, 4, num_pos_feats / 2, 2) -> (N, K, 4 * num_pos_feats)
    return torch.stack([pos[:, :, :, 0::2].sin(), pos[:, :, :, 1::2].cos()], dim=4).flatten(2)
