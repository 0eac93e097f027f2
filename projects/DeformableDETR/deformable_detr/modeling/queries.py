"""The decoder's object queries: learned (one-stage), or the encoder's top-scoring proposals
(two-stage, paper appendix A.4), optionally with learned content (mixed query selection) and a
second, one-to-many group in training (hybrid matching, hybrid_matching.py).

Shapes: see the legend in deformable_detr/__init__.py.
"""

import math
from typing import Dict, NamedTuple, Optional

import torch
from torch import nn

from ..layers import sine_embedding
from .heads import DetectionHeads
from .hybrid_matching import group_attention_mask
from .levels import Levels
from .two_stage import encoder_proposals

__all__ = ["ObjectQueries", "Queries"]


class Queries(NamedTuple):
    """What the decoder starts from: content (N, Q, C), position (N, Q, C), reference (N, Q, 2)
    points or (N, Q, 4) boxes in [0, 1] of the valid image; `proposals` (two-stage only):
    {"pred_logits": (N, S, K), "pred_boxes": (N, S, 4)} of every encoder pixel; `attn_mask`
    (hybrid matching in training): (Q, Q) bool, True between the one-to-one and the one-to-many
    queries, for the decoder's self-attention; None with one group."""

    content: torch.Tensor
    position: torch.Tensor
    reference: torch.Tensor
    proposals: Optional[Dict[str, torch.Tensor]]
    attn_mask: Optional[torch.Tensor] = None


class ObjectQueries(nn.Module):
    """One-stage: Q learned (position | content) embeddings, and a linear map from the position
    to a reference point. Two-stage: every encoder pixel proposes a box, scored and placed by the
    proposal heads; the top Q become the reference boxes, and their sine embedding the position
    and content (with mixed query selection: the position only; the content is learned).

    Args:
        d_model: C. num_queries: Q_1, the one-to-one queries (every query without hybrid
            matching). two_stage: the mode.
        num_queries_one2many: hybrid matching's extra queries, in training only (learned rows
            after the Q_1 one-to-one rows; two-stage: the next proposals of the ranking).
        mixed_selection: two-stage: learned content embeddings (H-Deformable-DETR).

    Parameter names as released, once the model maps them (see released_names.py):
    query_embed (one-stage; two-stage with mixed selection, C wide), reference_points,
    enc_output(_norm), pos_trans(_norm).
    """

    def __init__(
        self,
        d_model: int,
        num_queries: int,
        two_stage: bool,
        num_queries_one2many: int = 0,
        mixed_selection: bool = False,
    ):
        super().__init__()
        self.num_queries, self.two_stage = num_queries, two_stage
        self.num_queries_one2many, self.mixed_selection = num_queries_one2many, mixed_selection
        rows = num_queries + num_queries_one2many
        if two_stage:
            self.enc_output = nn.Linear(d_model, d_model)
            self.enc_output_norm = nn.LayerNorm(d_model)
            self.pos_trans = nn.Linear(d_model * 2, d_model * 2)
            self.pos_trans_norm = nn.LayerNorm(d_model * 2)
            if mixed_selection:
                self.query_embed = nn.Embedding(rows, d_model)
        else:
            self.reference_points = nn.Linear(d_model, 2)
            self.query_embed = nn.Embedding(rows, d_model * 2)

    def _in_use(self) -> int:
        """The queries this pass uses: both groups in training, the one-to-one ones otherwise."""
        return self.num_queries + (self.num_queries_one2many if self.training else 0)

    def reset_parameters(self):
        """The released initialisation: Xavier-uniform for the two-stage matrices; the reference
        point layer Xavier with zero bias. query_embed keeps nn.Embedding's N(0, 1)."""
        if self.two_stage:
            nn.init.xavier_uniform_(self.enc_output.weight)
            nn.init.xavier_uniform_(self.pos_trans.weight)
        else:
            nn.init.xavier_uniform_(self.reference_points.weight, gain=1.0)
            nn.init.zeros_(self.reference_points.bias)

    def _mask(self, in_use: int, count, device) -> Optional[torch.Tensor]:
        """The groups' attention mask over the `count` queries made (two-stage: at most the
        encoder's pixels), or None when only the one-to-one group is in use (decided on the
        Python int `in_use`, so that export sees no test on a traced size)."""
        if in_use == self.num_queries:
            return None
        return group_attention_mask(count, self.num_queries, device)

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
        Q = self._in_use()
        if not self.two_stage:
            weight = self.query_embed.weight
            if self.num_queries_one2many:
                weight = weight[:Q]
            # (Q, 2C) -> (Q, C) twice -> (N, Q, C)
            position, content = torch.split(weight, C, dim=1)
            position = position.unsqueeze(0).expand(N, -1, -1)
            content = content.unsqueeze(0).expand(N, -1, -1)
            reference = self.reference_points(position).sigmoid()  # (N, Q, 2)
            return Queries(content, position, reference, None, self._mask(Q, Q, memory.device))
        proposal_memory, anchors = encoder_proposals(memory, levels)
        proposal_memory = self.enc_output_norm(self.enc_output(proposal_memory))
        logits, deltas = heads.proposals(proposal_memory)  # (N, S, K), (N, S, 4)
        coords = deltas + anchors  # (N, S, 4) logits
        # proposals are ranked by their first class score (class-agnostic in training)
        topk = min(Q, logits.shape[1])
        scores = logits[..., 0]  # (N, S)
        if not rank_padding:
            scores = scores.masked_fill(levels.mask, float("-inf"))
        topk_index = torch.topk(scores, topk, dim=1)[1]  # (N, Q)
        topk_coords = torch.gather(coords, 1, topk_index.unsqueeze(-1).expand(-1, -1, 4)).detach()
        reference = topk_coords.sigmoid()  # (N, Q, 4)
        # C / 2 sine features per box coordinate: (N, Q, 4) -> (N, Q, 4, C / 2) -> (N, Q, 2C)
        embedding = sine_embedding(reference * (2 * math.pi), C // 2).flatten(2)
        position, content = torch.split(self.pos_trans_norm(self.pos_trans(embedding)), C, dim=2)
        if self.mixed_selection:
            content = self.query_embed.weight[:topk].unsqueeze(0).expand(N, -1, -1)  # (N, Q, C)
        proposals = {"pred_logits": logits, "pred_boxes": coords.sigmoid()}
        return Queries(content, position, reference, proposals, self._mask(Q, topk, memory.device))
