"""The box head (a small MLP) and the inverse sigmoid that box refinement is written in.

Shapes: N batch, Q queries, C model width.
"""
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["MLP", "inverse_sigmoid", "refine_boxes"]


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
