"""The deformable encoder and decoder stacks: reference points, and the heads applied after
every decoder layer (box refinement).

Shapes: see the legend in deformable_detr/__init__.py.
"""

from typing import Sequence, Tuple

import torch
from torch import nn

from .heads import DetectionHeads
from .levels import Levels
from .queries import Queries
from .transformer_layers import DeformableDecoderLayer, DeformableEncoderLayer

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
            torch.arange(H, dtype=torch.float32, device=valid_ratios.device) + 0.5,
            torch.arange(W, dtype=torch.float32, device=valid_ratios.device) + 0.5,
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
        self.layers = nn.ModuleList(
            DeformableEncoderLayer(**layer_kwargs) for _ in range(num_layers)
        )

    def forward(self, src: torch.Tensor, pos: torch.Tensor, levels: Levels) -> torch.Tensor:
        """src, pos: (N, S, C) -> memory (N, S, C)."""
        reference_points = encoder_reference_points(levels.sizes, levels.ratios)
        for layer in self.layers:
            src = layer(src, pos, reference_points, levels.shapes, levels.starts, levels.mask)
        return src


class DeformableDecoder(nn.Module):
    """`num_layers` DeformableDecoderLayer, each followed by its class and box heads.

    With refinement (heads.refine) each layer's boxes become (detached) the next layer's
    reference boxes; without, every layer keeps the initial reference points. With
    `look_forward_twice` (refinement only; H-Deformable-DETR) the boxes a layer outputs refine
    the previous layer's boxes undetached, so that a layer's box loss also reaches the previous
    layer (one layer back: the previous layer's own boxes refine a detached reference). The
    values, and the references the attention samples at, stay the same.
    """

    def __init__(self, num_layers: int, look_forward_twice: bool = False, **layer_kwargs):
        super().__init__()
        self.look_forward_twice = look_forward_twice
        self.layers = nn.ModuleList(
            DeformableDecoderLayer(**layer_kwargs) for _ in range(num_layers)
        )

    def forward(
        self, queries: Queries, memory: torch.Tensor, levels: Levels, heads: DetectionHeads
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """
        Args:
            queries: the object queries, their reference points or boxes, and the mask of the
                self-attention between their groups.
            memory: (N, S, C) encoder output.
            heads: the J layers' class and box heads.
        Returns:
            logits (J, N, Q, K) and boxes (J, N, Q, 4) of every layer.
        """
        tgt, reference = queries.content, queries.reference
        hs, boxes = [], []
        previous = None  # the previous layer's boxes, before their detach
        for i, layer in enumerate(self.layers):
            # references are relative to the valid image; the attention samples in padded maps.
            # With refinement the first layer's points become boxes for the next layers.
            ratios = levels.ratios
            if reference.shape[-1] == 4:
                ratios = torch.cat([ratios, ratios], -1)  # (N, L, 4): (w, h) for (cx, cy, w, h)
            # (N, Q, 2|4) -> (N, Q, L, 2|4)
            reference_input = reference[:, :, None] * ratios[:, None]
            tgt = layer(
                tgt,
                queries.position,
                reference_input,
                memory,
                levels.shapes,
                levels.starts,
                levels.mask,
                queries.attn_mask,
            )
            layer_boxes = heads.boxes(i, tgt, reference)
            output_boxes = layer_boxes
            if self.look_forward_twice and previous is not None:
                output_boxes = heads.boxes(i, tgt, previous)  # the same values, more gradient
            if heads.refine:
                reference = layer_boxes.detach()
            previous = layer_boxes
            hs.append(tgt)
            boxes.append(output_boxes)
        # the class heads read the stacked outputs, as released (the order in which autograd
        # sums the gradients of each layer's output then stays the release's)
        return heads.logits(torch.stack(hs)), torch.stack(boxes)
