"""The deformable transformer: flattens the feature levels, runs the encoder, chooses the object
queries (learned, or the encoder's top proposals in two-stage mode) and runs the decoder.

Shapes: N batch, C model width, L levels, H_l x W_l level sizes, S = sum H_l * W_l, Q object
queries, K classes, D decoder layers.
"""
from typing import Dict, List, Optional

import torch
from detectron2.config import configurable
from detectron2.layers.wrappers import shapes_to_tensor
from detectron2.utils.registry import Registry
from torch import nn

from ..layers import MSDeformAttn
from .encoder_decoder import DeformableDecoder, DeformableEncoder
from .layers import ACTIVATIONS
from .two_stage import encoder_proposals, proposal_pos_embed

__all__ = ["TRANSFORMER_REGISTRY", "DeformableTransformer", "build_transformer", "valid_ratios"]

TRANSFORMER_REGISTRY = Registry("DEFORMABLE_DETR_TRANSFORMER")
TRANSFORMER_REGISTRY.__doc__ = "Transformers of Deformable DETR, chosen by TRANSFORMER_NAME."


def build_transformer(cfg):
    return TRANSFORMER_REGISTRY.get(cfg.MODEL.DEFORMABLE_DETR.TRANSFORMER_NAME)(cfg)


def valid_ratios(mask: torch.Tensor) -> torch.Tensor:
    """(N, H, W) padding mask -> (N, 2): valid width / W and valid height / H of each image."""
    _, H, W = mask.shape
    valid_h = (~mask[:, :, 0]).sum(1)
    valid_w = (~mask[:, 0, :]).sum(1)
    return torch.stack([valid_w.float() / W, valid_h.float() / H], -1)


# (argument, its key under MODEL.DEFORMABLE_DETR, least value) of the transformer's sizes
_SIZES = (
    ("d_model", "HIDDEN_DIM", 1), ("nhead", "NHEADS", 1), ("num_encoder_layers", "ENC_LAYERS", 0),
    ("num_decoder_layers", "DEC_LAYERS", 1), ("dim_feedforward", "DIM_FEEDFORWARD", 1),
    ("num_feature_levels", "NUM_FEATURE_LEVELS", 1), ("enc_n_points", "ENC_N_POINTS", 1),
    ("dec_n_points", "DEC_N_POINTS", 1), ("two_stage_num_proposals", "TWO_STAGE_NUM_PROPOSALS", 1),
)


def _check_sizes(**sizes):
    for name, key, least in _SIZES:
        value = sizes[name]
        if not isinstance(value, int) or isinstance(value, bool) or value < least:
            raise ValueError(f"{name} (MODEL.DEFORMABLE_DETR.{key}) must be an int >= {least}, "
                             f"got {value!r}")
    d_model, nhead = sizes["d_model"], sizes["nhead"]
    if d_model % nhead:
        raise ValueError(f"d_model (HIDDEN_DIM) must be a multiple of nhead (NHEADS), got "
                         f"{d_model} and {nhead}")
    if d_model % 4:
        # the position encodings give each of 2 (pixels) or 4 (boxes) coordinates sin/cos pairs
        raise ValueError(f"d_model (HIDDEN_DIM) must be a multiple of 4, got {d_model}")


@TRANSFORMER_REGISTRY.register()
class DeformableTransformer(nn.Module):
    @configurable
    def __init__(self, *, d_model=256, nhead=8, num_encoder_layers=6, num_decoder_layers=6,
                 dim_feedforward=1024, dropout=0.1, activation="relu", num_feature_levels=4,
                 enc_n_points=4, dec_n_points=4, two_stage=False, two_stage_num_proposals=300):
        super().__init__()
        _check_sizes(d_model=d_model, nhead=nhead, num_encoder_layers=num_encoder_layers,
                     num_decoder_layers=num_decoder_layers, dim_feedforward=dim_feedforward,
                     num_feature_levels=num_feature_levels, enc_n_points=enc_n_points,
                     dec_n_points=dec_n_points, two_stage_num_proposals=two_stage_num_proposals)
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout (DROPOUT) must be in [0, 1), got {dropout!r}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation (ACTIVATION) must be one of {sorted(ACTIVATIONS)}, "
                             f"got {activation!r}")
        if activation == "glu" and dim_feedforward % 2:
            raise ValueError(f"dim_feedforward (DIM_FEEDFORWARD) must be even with the GLU "
                             f"activation, which halves it; got {dim_feedforward}")
        self.d_model = d_model
        self.two_stage = two_stage
        self.two_stage_num_proposals = two_stage_num_proposals
        common = dict(d_model=d_model, d_ffn=dim_feedforward, dropout=dropout,
                      activation=activation, n_levels=num_feature_levels, n_heads=nhead)
        self.encoder = DeformableEncoder(num_encoder_layers, n_points=enc_n_points, **common)
        self.decoder = DeformableDecoder(num_decoder_layers, n_points=dec_n_points, **common)
        self.level_embed = nn.Parameter(torch.empty(num_feature_levels, d_model))
        if two_stage:
            self.enc_output = nn.Linear(d_model, d_model)
            self.enc_output_norm = nn.LayerNorm(d_model)
            self.pos_trans = nn.Linear(d_model * 2, d_model * 2)
            self.pos_trans_norm = nn.LayerNorm(d_model * 2)
        else:
            self.reference_points = nn.Linear(d_model, 2)
        self.reset_parameters()

    @classmethod
    def from_config(cls, cfg):
        c = cfg.MODEL.DEFORMABLE_DETR
        return dict(
            d_model=c.HIDDEN_DIM, nhead=c.NHEADS, num_encoder_layers=c.ENC_LAYERS,
            num_decoder_layers=c.DEC_LAYERS, dim_feedforward=c.DIM_FEEDFORWARD,
            dropout=c.DROPOUT, activation=c.ACTIVATION, num_feature_levels=c.NUM_FEATURE_LEVELS,
            enc_n_points=c.ENC_N_POINTS, dec_n_points=c.DEC_N_POINTS, two_stage=c.TWO_STAGE,
            two_stage_num_proposals=c.TWO_STAGE_NUM_PROPOSALS,
        )

    def reset_parameters(self):
        """The released initialisation: Xavier-uniform for every matrix, then the deformable
        attention's own, the reference point layer Xavier with zero bias, and the level
        embedding from N(0, 1)."""
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        for m in self.modules():
            if isinstance(m, MSDeformAttn):
                m.reset_parameters()
        if not self.two_stage:
            nn.init.xavier_uniform_(self.reference_points.weight, gain=1.0)
            nn.init.zeros_(self.reference_points.bias)
        nn.init.normal_(self.level_embed)

    def forward(self, srcs: List[torch.Tensor], masks: List[torch.Tensor],
                pos_embeds: List[torch.Tensor], query_embed: Optional[torch.Tensor],
                class_heads: nn.ModuleList, box_heads: nn.ModuleList, refine: bool,
                rank_padding: bool = True) -> Dict[str, torch.Tensor]:
        """
        Args:
            srcs, pos_embeds: L tensors (N, C, H_l, W_l); masks: L bools (N, H_l, W_l), True at
                padding.
            query_embed: (Q, 2C) learned query position | content (one-stage), or None.
            class_heads, box_heads: D heads for the decoder layers, plus (two-stage) one more for
                the encoder proposals.
            refine: iterative box refinement.
            rank_padding: two-stage: whether proposals on padded pixels compete for the top-k
                (as released; they all share one score, that of a zeroed memory), so that an
                image's queries depend on its batch. False keeps them out.
        Returns:
            dict with "hs" (D, N, Q, C) and "boxes" (D, N, Q, 4); in two-stage mode also
            "enc_logits" (N, S, K) and "enc_boxes" (N, S, 4) of every encoder proposal.
        """
        level_sizes = [tuple(s.shape[-2:]) for s in srcs]
        # (N, C, H, W) -> (N, H*W, C), concatenated over levels -> (N, S, C)
        src_flat = torch.cat([s.flatten(2).transpose(1, 2) for s in srcs], 1)
        pos_flat = torch.cat([p.flatten(2).transpose(1, 2) + self.level_embed[lvl].view(1, 1, -1)
                              for lvl, p in enumerate(pos_embeds)], 1)
        mask_flat = torch.cat([m.flatten(1) for m in masks], 1)  # (N, S)
        # from the shapes by traceable ops (torch.as_tensor would record constants), so that an
        # exported graph keeps the image size dynamic; eagerly the same int64 (L, 2) tensor
        spatial_shapes = torch.stack(
            [shapes_to_tensor(list(size), src_flat.device) for size in level_sizes])
        level_start_index = torch.cat(
            [spatial_shapes.new_zeros(1), spatial_shapes.prod(1).cumsum(0)[:-1]])
        ratios = torch.stack([valid_ratios(m) for m in masks], 1)  # (N, L, 2)

        memory = self.encoder(src_flat, pos_flat, spatial_shapes, level_sizes, level_start_index,
                              ratios, mask_flat)
        out = {}
        N, _, C = memory.shape
        if self.two_stage:
            proposal_memory, proposals = encoder_proposals(memory, mask_flat, spatial_shapes,
                                                           level_sizes)
            proposal_memory = self.enc_output_norm(self.enc_output(proposal_memory))
            n_dec = len(self.decoder.layers)
            enc_logits = class_heads[n_dec](proposal_memory)  # (N, S, K)
            enc_coords = box_heads[n_dec](proposal_memory) + proposals  # (N, S, 4) logits
            out["enc_logits"], out["enc_boxes"] = enc_logits, enc_coords.sigmoid()
            # proposals are ranked by their first class score (class-agnostic in training)
            topk = min(self.two_stage_num_proposals, enc_logits.shape[1])
            scores = enc_logits[..., 0]  # (N, S)
            if not rank_padding:
                scores = scores.masked_fill(mask_flat, float("-inf"))
            topk_index = torch.topk(scores, topk, dim=1)[1]  # (N, Q)
            topk_coords = torch.gather(
                enc_coords, 1, topk_index.unsqueeze(-1).expand(-1, -1, 4)).detach()
            reference = topk_coords.sigmoid()  # (N, Q, 4)
            # C / 2 features per box coordinate: 2C, as pos_trans takes (released: 128 of 256)
            pos_trans = self.pos_trans_norm(
                self.pos_trans(proposal_pos_embed(topk_coords, num_pos_feats=C // 2)))
            query_pos, tgt = torch.split(pos_trans, C, dim=2)
        else:
            # (Q, 2C) -> (Q, C) twice -> (N, Q, C)
            query_pos, tgt = torch.split(query_embed, C, dim=1)
            query_pos = query_pos.unsqueeze(0).expand(N, -1, -1)
            tgt = tgt.unsqueeze(0).expand(N, -1, -1)
            reference = self.reference_points(query_pos).sigmoid()  # (N, Q, 2)
        out["hs"], out["boxes"] = self.decoder(
            tgt, query_pos, reference, memory, spatial_shapes, level_start_index, ratios,
            mask_flat, box_heads, refine)
        return out
