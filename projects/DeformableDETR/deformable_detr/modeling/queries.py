"""The decoder's object queries: learned (one-stage), or the encoder's top-scoring proposals
(two-stage, paper appendix A.4).

Shapes: see the legend in deformable_detr/__init__.py.
"""

import math
from typing import Dict, NamedTuple, Optional

import torch
from torch import nn

from ..layers import sine_embedding
from .heads import DetectionHeads
from .levels import Levels
from .two_stage import encoder_proposals

__all__ = ["ObjectQueries", "Queries"]


class Queries(NamedTuple):
    """What the decoder starts from: content (N, Q, C), position (N, Q, C), reference (N, Q, 2)
    points or (N, Q, 4) boxes in [0, 1] of the valid image; `proposals` (two-stage only):
    {"pred_logits": (N, S, K), "pred_boxes": (N, S, 4)} of every encoder pixel."""

    content: torch.Tensor
    position: torch.Tensor
    reference: torch.Tensor
    proposals: Optional[Dict[str, torch.Tensor]]


class ObjectQueries(nn.Module):
    """One-stage: Q learned (position | content) embeddings, and a linear map from the position
    to a reference point. Two-stage: every encoder pixel proposes a box, scored and placed by the
    proposal heads; the top Q become the reference boxes, and their sine embedding the position
    and content.

    Args:
        d_model: C. num_queries: Q. two_stage: the mode.

    Parameter names as released, once the model maps them (see released_names.py):
    query_embed (one-stage), reference_points, enc_output(_norm), pos_trans(_norm).
    """

    def __init__(self, d_model: int, num_queries: int, two_stage: bool):
        super().__init__()
        self.num_queries, self.two_stage = num_queries, two_stage
        if two_stage:
            self.enc_output = nn.Linear(d_model, d_model)
            self.enc_output_norm = nn.LayerNorm(d_model)
            self.pos_trans = nn.Linear(d_model * 2, d_model * 2)
            self.pos_trans_norm = nn.LayerNorm(d_model * 2)
        else:
            self.reference_points = nn.Linear(d_model, 2)
            self.query_embed = nn.Embedding(num_queries, d_model * 2)

    def reset_parameters(self):
        """The released initialisation: Xavier-uniform for the two-stage matrices; the reference
        point layer Xavier with zero bias. query_embed keeps nn.Embedding's N(0, 1)."""
        if self.two_stage:
            nn.init.xavier_uniform_(self.enc_output.weight)
            nn.init.xavier_uniform_(self.pos_trans.weight)
        else:
            nn.init.xavier_uniform_(self.reference_points.weight, gain=1.0)
            nn.init.zeros_(self.reference_points.bias)

    def forward(
        self, memory: torch.Tensor, levels: Levels, heads: DetectionHeads, rank_padding: bool
    ) -> Queries:
        """
        Args:
            memory: (N, S, C) encoder output.
            heads: whose proposal heads score the two-stage proposals.
            rank_padding: two-stage: whether proposals on padded pixels compete for the top Q
                (as released; they all share one score, that of a zeroed memory), so that an
                image's queries depend on its batch. False keeps them out.
        """
        N, _, C = memory.shape
        if not self.two_stage:
            # (Q, 2C) -> (Q, C) twice -> (N, Q, C)
            position, content = torch.split(self.query_embed.weight, C, dim=1)
            position = position.unsqueeze(0).expand(N, -1, -1)
            content = content.unsqueeze(0).expand(N, -1, -1)
            reference = self.reference_points(position).sigmoid()  # (N, Q, 2)
            return Queries(content, position, reference, None)
        proposal_memory, anchors = encoder_proposals(memory, levels)
        proposal_memory = self.enc_output_norm(self.enc_output(proposal_memory))
        logits, deltas = heads.proposals(proposal_memory)  # (N, S, K), (N, S, 4)
        coords = deltas + anchors  # (N, S, 4) logits
        # proposals are ranked by their first class score (class-agnostic in training)
        topk = min(self.num_queries, logits.shape[1])
        scores = logits[..., 0]  # (N, S)
        if not rank_padding:
            scores = scores.masked_fill(levels.mask, float("-inf"))
        topk_index = torch.topk(scores, topk, dim=1)[1]  # (N, Q)
        topk_coords = torch.gather(coords, 1, topk_index.unsqueeze(-1).expand(-1, -1, 4)).detach()
        reference = topk_coords.sigmoid()  # (N, Q, 4)
        # C / 2 sine features per box coordinate: (N, Q, 4) -> (N, Q, 4, C / 2) -> (N, Q, 2C)
        embedding = sine_embedding(reference * (2 * math.pi), C // 2).flatten(2)
        position, content = torch.split(self.pos_trans_norm(self.pos_trans(embedding)), C, dim=2)
        proposals = {"pred_logits": logits, "pred_boxes": coords.sigmoid()}
        return Queries(content, position, reference, proposals)
