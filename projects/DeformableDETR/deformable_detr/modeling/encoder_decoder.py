"""The deformable encoder and decoder stacks: reference points, valid ratios, box refinement.

Shapes: N batch, S encoder pixels (all levels), Q object queries, C model width, L levels,
D decoder layers.
"""
from typing import List, Optional, Sequence, Tuple

import torch
from torch import nn

from .box_head import refine_boxes
from .layers import DeformableDecoderLayer, DeformableEncoderLayer

__all__ = ["DeformableEncoder", "DeformableDecoder", "encoder_reference_points"]


def encoder_reference_points(level_sizes: Sequence[Tuple[int, int]], valid_ratios: torch.Tensor):
    """Every pixel's centre as its own reference point, in every level's coordinates.

    Args:
        level_sizes: L rows (H, W).
        valid_ratios: (N, L, 2) valid width and height over padded width and height per level.
    Returns:
        (N, S, L, 2): the centre (x, y) normalised by its own level's valid size, then scaled by
        each level's valid ratio, so that it points at the same place of the image on every level.
    """
    refs = []
    for lvl, (H, W) in enumerate(level_sizes):
        ys, xs = torch.meshgrid(
            torch.linspace(0.5, H - 0.5, H, dtype=torch.float32, device=valid_ratios.device),
            torch.linspace(0.5, W - 0.5, W, dtype=torch.float32, device=valid_ratios.device),
            indexing="ij",
        )
        # (H*W,) -> (N, H*W) by each image's valid size on this level
        ref_y = ys.reshape(-1)[None] / (valid_ratios[:, None, lvl, 1] * H)
        ref_x = xs.reshape(-1)[None] / (valid_ratios[:, None, lvl, 0] * W)
        refs.append(torch.stack([ref_x, ref_y], -1))
    refs = torch.cat(refs, 1)  # (N, S, 2)
    return refs[:, :, None] * valid_ratios[:, None]  # (N, S, L, 2)


class DeformableEncoder(nn.Module):
    """`num_layers` DeformableEncoderLayer; layer_kwargs are the layer's constructor arguments."""

    def __init__(self, num_layers: int, **layer_kwargs):
        super().__init__()
        self.layers = nn.ModuleList(DeformableEncoderLayer(**layer_kwargs) for _ in range(num_layers))

    def forward(self, src, pos, spatial_shapes, level_sizes, level_start_index, valid_ratios,
                padding_mask=None):
        """
        Args:
            src, pos: (N, S, C). spatial_shapes: (L, 2); level_sizes: the same as (H, W) ints;
            level_start_index: (L,); valid_ratios: (N, L, 2); padding_mask: (N, S) bool.
        Returns:
            memory (N, S, C).
        """
        reference_points = encoder_reference_points(level_sizes, valid_ratios)
        for layer in self.layers:
            src = layer(src, pos, reference_points, spatial_shapes, level_start_index,
                        padding_mask)
        return src


class DeformableDecoder(nn.Module):
    """`num_layers` DeformableDecoderLayer, each followed by its box head.

    With refinement each layer's boxes become (detached) the next layer's reference boxes;
    without, every layer keeps the initial reference points.
    """

    def __init__(self, num_layers: int, **layer_kwargs):
        super().__init__()
        self.layers = nn.ModuleList(DeformableDecoderLayer(**layer_kwargs) for _ in range(num_layers))

    def forward(self, tgt, query_pos, reference, memory, spatial_shapes, level_start_index,
                valid_ratios, memory_padding_mask: Optional[torch.Tensor],
                box_heads: List[nn.Module], refine: bool):
        """
        Args:
            tgt, query_pos: (N, Q, C). reference: (N, Q, 2) points or (N, Q, 4) boxes in [0, 1]
                of the valid image. memory: (N, S, C); spatial_shapes (L, 2); level_start_index
                (L,); valid_ratios (N, L, 2); memory_padding_mask (N, S) bool.
            box_heads: one box head per layer (the same module repeated when shared).
            refine: whether each layer's boxes are the next layer's references.
        Returns:
            hs: (D, N, Q, C) every layer's output; boxes: (D, N, Q, 4) every layer's boxes.
        """
        hs, boxes = [], []
        for layer, box_head in zip(self.layers, box_heads):
            # references are relative to the valid image; the attention samples in padded maps
            ratios = valid_ratios if reference.shape[-1] == 2 else torch.cat([valid_ratios] * 2, -1)
            # (N, Q, 2|4) -> (N, Q, L, 2|4)
            reference_input = reference[:, :, None] * ratios[:, None]
            tgt = layer(tgt, query_pos, reference_input, memory, spatial_shapes,
                        level_start_index, memory_padding_mask)
            layer_boxes = refine_boxes(box_head(tgt), reference)
            if refine:
                reference = layer_boxes.detach()
            hs.append(tgt)
            boxes.append(layer_boxes)
        return torch.stack(hs), torch.stack(boxes)
