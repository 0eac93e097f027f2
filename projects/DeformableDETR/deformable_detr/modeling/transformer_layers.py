"""The encoder and decoder layers of the deformable transformer (post-norm, as released).

Shapes: see the legend in deformable_detr/__init__.py.
Parameter names follow the released checkpoints (self_attn, cross_attn, norm1..3, linear1..2).
"""

import torch
import torch.nn.functional as F
from torch import nn

from ..layers import MSDeformAttn

__all__ = ["ACTIVATIONS", "DeformableEncoderLayer", "DeformableDecoderLayer", "activation_fn"]


ACTIVATIONS = {"relu": F.relu, "gelu": F.gelu, "glu": F.glu}


def activation_fn(name: str):
    """The FFN activation by name: "relu", "gelu" or "glu"."""
    if name not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {name!r}")
    return ACTIVATIONS[name]


def ffn_layers(d_model: int, d_ffn: int, activation: str):
    """The feed-forward network's two Linears and activation; GLU halves the hidden width, so
    the second Linear takes d_ffn / 2 features then."""
    hidden_out = d_ffn // 2 if activation == "glu" else d_ffn
    return nn.Linear(d_model, d_ffn), activation_fn(activation), nn.Linear(hidden_out, d_model)


def with_pos(x: torch.Tensor, pos):
    return x if pos is None else x + pos


class DeformableEncoderLayer(nn.Module):
    """Deformable self-attention over all levels, then a feed-forward network; each followed by
    dropout, residual and LayerNorm."""

    def __init__(
        self,
        d_model=256,
        d_ffn=1024,
        dropout=0.1,
        activation="relu",
        n_levels=4,
        n_heads=8,
        n_points=4,
    ):
        super().__init__()
        self.self_attn = MSDeformAttn(d_model, n_levels, n_heads, n_points)
        self.dropout1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.linear1, self.activation, self.linear2 = ffn_layers(d_model, d_ffn, activation)
        self.dropout2 = nn.Dropout(dropout)
        self.dropout3 = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(d_model)

    def forward(
        self, src, pos, reference_points, spatial_shapes, level_start_index, padding_mask=None
    ):
        """
        Args:
            src, pos: (N, S, C). reference_points: (N, S, L, 2).
            spatial_shapes: (L, 2); level_start_index: (L,); padding_mask: (N, S) bool.
        Returns:
            (N, S, C).
        """
        attended = self.self_attn(
            with_pos(src, pos),
            reference_points,
            src,
            spatial_shapes,
            level_start_index,
            padding_mask,
        )
        src = self.norm1(src + self.dropout1(attended))
        ffn = self.linear2(self.dropout2(self.activation(self.linear1(src))))
        return self.norm2(src + self.dropout3(ffn))


class DeformableDecoderLayer(nn.Module):
    """Self-attention among the object queries, deformable cross-attention into the encoder's
    memory, then a feed-forward network; each followed by dropout, residual and LayerNorm.
    (norm2 follows self-attention and norm1 cross-attention, as the released names have it.)"""

    def __init__(
        self,
        d_model=256,
        d_ffn=1024,
        dropout=0.1,
        activation="relu",
        n_levels=4,
        n_heads=8,
        n_points=4,
    ):
        super().__init__()
        self.cross_attn = MSDeformAttn(d_model, n_levels, n_heads, n_points)
        self.dropout1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.self_attn = nn.MultiheadAttention(d_model, n_heads, dropout=dropout, batch_first=True)
        self.dropout2 = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(d_model)
        self.linear1, self.activation, self.linear2 = ffn_layers(d_model, d_ffn, activation)
        self.dropout3 = nn.Dropout(dropout)
        self.dropout4 = nn.Dropout(dropout)
        self.norm3 = nn.LayerNorm(d_model)

    def forward(
        self,
        tgt,
        query_pos,
        reference_points,
        memory,
        spatial_shapes,
        level_start_index,
        memory_padding_mask=None,
        self_attn_mask=None,
    ):
        """
        Args:
            tgt, query_pos: (N, Q, C). reference_points: (N, Q, L, 2) or (N, Q, L, 4).
            memory: (N, S, C); spatial_shapes: (L, 2); level_start_index: (L,);
            memory_padding_mask: (N, S) bool; self_attn_mask: (Q, Q) bool, True where a query
                may not attend (hybrid matching's groups).
        Returns:
            (N, Q, C).
        """
        q = k = with_pos(tgt, query_pos)
        attended = self.self_attn(q, k, tgt, need_weights=False, attn_mask=self_attn_mask)[0]
        tgt = self.norm2(tgt + self.dropout2(attended))
        attended = self.cross_attn(
            with_pos(tgt, query_pos),
            reference_points,
            memory,
            spatial_shapes,
            level_start_index,
            memory_padding_mask,
        )
        tgt = self.norm1(tgt + self.dropout1(attended))
        ffn = self.linear2(self.dropout3(self.activation(self.linear1(tgt))))
        return self.norm3(tgt + self.dropout4(ffn))
