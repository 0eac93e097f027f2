"""The detection heads: a class head and a box head for every decoder layer, and in two-stage
mode one more pair that scores and places the encoder's proposals.

Shapes: see the legend in deformable_detr/__init__.py.
"""

import copy
import math
from typing import Tuple
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["MLP", "DetectionHeads", "inverse_sigmoid", "refine_boxes"]


class MLP(nn.Module):
    """`num_layers` Linear layers with ReLU between them; the layers are named `layers.{i}` as in
    the released checkpoints."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int):
        super().__init__()
        dims = [input_dim] + [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, x):
        """(..., input_dim) -> (..., output_dim)."""
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x


def inverse_sigmoid(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """log(x / (1 - x)), with x clamped to [0, 1] and both terms to at least eps, as released."""
    x = x.clamp(min=0, max=1)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))


def refine_boxes(delta: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Boxes (cx, cy, w, h) in [0, 1] from a head's output and a reference, in logit space.

    Args:
        delta: (..., 4) box head output.
        reference: (..., 4) boxes, or (..., 2) points that only move the centre.
    Returns:
        (..., 4) sigmoid(delta + inverse_sigmoid(reference)).
    """
    if reference.shape[-1] == 4:
        return (delta + inverse_sigmoid(reference)).sigmoid()
    centre = delta[..., :2] + inverse_sigmoid(reference)
    return torch.cat([centre, delta[..., 2:]], dim=-1).sigmoid()


class DetectionHeads(nn.Module):
    """The class and box heads of every decoder layer (and of the two-stage proposals), with the
    released initialisation.

    With `refine` every layer has its own heads and each layer's boxes become the next layer's
    reference boxes; without, one pair of heads is shared by all layers (the same module
    repeated, as released) and every layer keeps the initial reference points.

    Args:
        d_model: C, the width of the decoder's output.
        num_classes: K, sigmoid class outputs.
        num_layers: J, decoder layers.
        refine: iterative box refinement.
        two_stage: adds the proposal heads (see `proposals`).

    Parameter names are the released ones: `class_embed.{i}`, `bbox_embed.{i}.layers.{j}`, the
    proposal heads at i = J.
    """

    def __init__(
        self, d_model: int, num_classes: int, num_layers: int, refine: bool, two_stage: bool
    ):
        super().__init__()
        self.num_layers, self.refine, self.two_stage = num_layers, refine, two_stage
        class_head = nn.Linear(d_model, num_classes)
        prior = 0.01  # initial foreground probability
        nn.init.constant_(class_head.bias, -math.log((1 - prior) / prior))
        box_head = MLP(d_model, d_model, 4, 3)
        nn.init.zeros_(box_head.layers[-1].weight)
        nn.init.zeros_(box_head.layers[-1].bias)
        count = num_layers + (1 if two_stage else 0)
        if refine:
            self.class_embed = nn.ModuleList(copy.deepcopy(class_head) for _ in range(count))
            self.bbox_embed = nn.ModuleList(copy.deepcopy(box_head) for _ in range(count))
            # only the first layer starts from small boxes; later ones refine
            nn.init.constant_(self.bbox_embed[0].layers[-1].bias[2:], -2.0)
        else:
            nn.init.constant_(box_head.layers[-1].bias[2:], -2.0)
            self.class_embed = nn.ModuleList(class_head for _ in range(count))
            self.bbox_embed = nn.ModuleList(box_head for _ in range(count))
        if two_stage:
            for head in self.bbox_embed:
                nn.init.zeros_(head.layers[-1].bias[2:])

    def proposals(self, memory: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Two-stage: the proposal heads (at index J) on the encoder's proposal features.

        Args:
            memory: (N, S, C).
        Returns:
            logits (N, S, K) and box deltas (N, S, 4), to add to the proposals' logit boxes.
        """
        return self.class_embed[self.num_layers](memory), self.bbox_embed[self.num_layers](memory)

    def boxes(self, layer: int, hs: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        """The boxes of decoder layer `layer`.

        Args:
            hs: (N, Q, C) the layer's output; reference: (N, Q, 2) points or (N, Q, 4) boxes it
                started from.
        Returns:
            (N, Q, 4) cxcywh in [0, 1] of the valid image.
        """
        return refine_boxes(self.bbox_embed[layer](hs), reference)

    def logits(self, hs: torch.Tensor) -> torch.Tensor:
        """The class logits of every decoder layer: (J, N, Q, C) -> (J, N, Q, K)."""
        return torch.stack([head(h) for head, h in zip(self.class_embed, hs)])
