"""The deformable transformer: flattens the feature levels, runs the encoder, makes the object
queries (learned, or the encoder's top proposals in two-stage mode) and runs the decoder, whose
every layer the detection heads read out.

Shapes: see the legend in deformable_detr/__init__.py.
"""

from typing import Dict, List

import torch
from detectron2.config import configurable
from detectron2.utils.registry import Registry
from torch import nn

from ..layers import MSDeformAttn
from .encoder_decoder import DeformableDecoder, DeformableEncoder
from .heads import DetectionHeads
from .levels import flatten_levels
from .queries import ObjectQueries
from .released_names import TRANSFORMER_ALIASES, released_aliases
from .transformer_layers import ACTIVATIONS

__all__ = ["TRANSFORMER_REGISTRY", "DeformableTransformer", "build_transformer"]

TRANSFORMER_REGISTRY = Registry("DEFORMABLE_DETR_TRANSFORMER")
TRANSFORMER_REGISTRY.__doc__ = """Transformers of Deformable DETR, chosen by TRANSFORMER_NAME.

A transformer is called with cfg and maps (srcs, masks, pos_embeds) of the L levels to the
predictions of every decoder layer; see DeformableTransformer.forward.
"""


def build_transformer(cfg):
    return TRANSFORMER_REGISTRY.get(cfg.MODEL.DEFORMABLE_DETR.TRANSFORMER_NAME)(cfg)


# (argument, its key under MODEL.DEFORMABLE_DETR, least value) of the transformer's sizes
_SIZES = (
    ("num_classes", "NUM_CLASSES", 1),
    ("num_queries", "NUM_QUERIES", 1),
    ("d_model", "HIDDEN_DIM", 1),
    ("nhead", "NHEADS", 1),
    ("num_encoder_layers", "ENC_LAYERS", 0),
    ("num_decoder_layers", "DEC_LAYERS", 1),
    ("dim_feedforward", "DIM_FEEDFORWARD", 1),
    ("num_feature_levels", "NUM_FEATURE_LEVELS", 1),
    ("enc_n_points", "ENC_N_POINTS", 1),
    ("dec_n_points", "DEC_N_POINTS", 1),
    ("two_stage_num_proposals", "TWO_STAGE_NUM_PROPOSALS", 1),
    ("num_queries_one2many", "HYBRID_MATCHING.NUM_QUERIES_ONE2MANY", 0),
)


def _check_sizes(**sizes):
    for name, key, least in _SIZES:
        value = sizes[name]
        if not isinstance(value, int) or isinstance(value, bool) or value < least:
            raise ValueError(
                f"{name} (MODEL.DEFORMABLE_DETR.{key}) must be an int >= {least}, got {value!r}"
            )
    d_model, nhead = sizes["d_model"], sizes["nhead"]
    if d_model % nhead:
        raise ValueError(
            f"d_model (HIDDEN_DIM) must be a multiple of nhead (NHEADS), got {d_model} and {nhead}"
        )
    if d_model % 4:
        # the position encodings give each of 2 (pixels) or 4 (boxes) coordinates sin/cos pairs
        raise ValueError(f"d_model (HIDDEN_DIM) must be a multiple of 4, got {d_model}")


@TRANSFORMER_REGISTRY.register()
@released_aliases(TRANSFORMER_ALIASES)
class DeformableTransformer(nn.Module):
    """Encoder, object queries, decoder and the detection heads of every decoder layer.

    Args:
        num_classes: K. num_queries: Q in one-stage mode (two_stage_num_proposals in two-stage).
        d_model: C. nhead: M. num_encoder_layers, num_decoder_layers: their depths (J decoder
            layers). dim_feedforward, dropout, activation: of every layer's feed-forward network.
        num_feature_levels: L. enc_n_points, dec_n_points: P of the encoder's and decoder's
            deformable attention.
        with_box_refine: iterative box refinement (DetectionHeads). two_stage: encoder
            proposals become the queries (ObjectQueries).
        deterministic_backward: every MSDeformAttn's `deterministic` (CUDA, Triton kernels).
        num_queries_one2many: hybrid matching's one-to-many queries, used in training only
            (0: none); their outputs come as "one2many" (hybrid_matching.py).
        mixed_query_selection: two-stage: learned content queries (ObjectQueries).
        look_forward_twice: box refinement: gradient through the previous layer's undetached
            boxes (DeformableDecoder).
    """

    @configurable
    def __init__(
        self,
        *,
        num_classes,
        num_queries=300,
        d_model=256,
        nhead=8,
        num_encoder_layers=6,
        num_decoder_layers=6,
        dim_feedforward=1024,
        dropout=0.1,
        activation="relu",
        num_feature_levels=4,
        enc_n_points=4,
        dec_n_points=4,
        with_box_refine=False,
        two_stage=False,
        two_stage_num_proposals=300,
        deterministic_backward=False,
        num_queries_one2many=0,
        mixed_query_selection=False,
        look_forward_twice=False,
    ):
        super().__init__()
        _check_sizes(
            num_classes=num_classes,
            num_queries=num_queries,
            d_model=d_model,
            nhead=nhead,
            num_encoder_layers=num_encoder_layers,
            num_decoder_layers=num_decoder_layers,
            dim_feedforward=dim_feedforward,
            num_feature_levels=num_feature_levels,
            enc_n_points=enc_n_points,
            dec_n_points=dec_n_points,
            two_stage_num_proposals=two_stage_num_proposals,
            num_queries_one2many=num_queries_one2many,
        )
        if mixed_query_selection and not two_stage:
            raise ValueError(
                "mixed_query_selection (MIXED_QUERY_SELECTION) selects two-stage proposals: it "
                "needs two_stage (TWO_STAGE) True"
            )
        if look_forward_twice and not with_box_refine:
            raise ValueError(
                "look_forward_twice (LOOK_FORWARD_TWICE) passes gradient between refined boxes: "
                "it needs with_box_refine (WITH_BOX_REFINE) True"
            )
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout (DROPOUT) must be in [0, 1), got {dropout!r}")
        if activation not in ACTIVATIONS:
            raise ValueError(
                f"activation (ACTIVATION) must be one of {sorted(ACTIVATIONS)}, got {activation!r}"
            )
        if activation == "glu" and dim_feedforward % 2:
            raise ValueError(
                f"dim_feedforward (DIM_FEEDFORWARD) must be even with the GLU "
                f"activation, which halves it; got {dim_feedforward}"
            )
        self.d_model = d_model
        common = dict(
            d_model=d_model,
            d_ffn=dim_feedforward,
            dropout=dropout,
            activation=activation,
            n_levels=num_feature_levels,
            n_heads=nhead,
        )
        self.encoder = DeformableEncoder(num_encoder_layers, n_points=enc_n_points, **common)
        self.decoder = DeformableDecoder(
            num_decoder_layers, look_forward_twice, n_points=dec_n_points, **common
        )
        self.level_embed = nn.Parameter(torch.empty(num_feature_levels, d_model))
        self.queries = ObjectQueries(
            d_model,
            two_stage_num_proposals if two_stage else num_queries,
            two_stage,
            num_queries_one2many,
            mixed_query_selection,
        )
        self.reset_parameters()
        for m in self.modules():
            if isinstance(m, MSDeformAttn):
                m.deterministic = deterministic_backward
        self.heads = DetectionHeads(
            d_model, num_classes, num_decoder_layers, with_box_refine, two_stage
        )

    @classmethod
    def from_config(cls, cfg):
        c = cfg.MODEL.DEFORMABLE_DETR
        return dict(
            num_classes=c.NUM_CLASSES,
            num_queries=c.NUM_QUERIES,
            d_model=c.HIDDEN_DIM,
            nhead=c.NHEADS,
            num_encoder_layers=c.ENC_LAYERS,
            num_decoder_layers=c.DEC_LAYERS,
            dim_feedforward=c.DIM_FEEDFORWARD,
            dropout=c.DROPOUT,
            activation=c.ACTIVATION,
            num_feature_levels=c.NUM_FEATURE_LEVELS,
            enc_n_points=c.ENC_N_POINTS,
            dec_n_points=c.DEC_N_POINTS,
            with_box_refine=c.WITH_BOX_REFINE,
            two_stage=c.TWO_STAGE,
            two_stage_num_proposals=c.TWO_STAGE_NUM_PROPOSALS,
            deterministic_backward=c.DETERMINISTIC_BACKWARD,
            num_queries_one2many=c.HYBRID_MATCHING.NUM_QUERIES_ONE2MANY,
            mixed_query_selection=c.MIXED_QUERY_SELECTION,
            look_forward_twice=c.LOOK_FORWARD_TWICE,
        )

    def reset_parameters(self):
        """The released initialisation: Xavier-uniform for every matrix of the encoder and
        decoder, then the deformable attention's own, the queries' own, and the level embedding
        from N(0, 1). (The heads initialise themselves.)"""
        for p in [*self.encoder.parameters(), *self.decoder.parameters()]:
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        for m in self.modules():
            if isinstance(m, MSDeformAttn):
                m.reset_parameters()
        self.queries.reset_parameters()
        nn.init.normal_(self.level_embed)

    def forward(
        self,
        srcs: List[torch.Tensor],
        masks: List[torch.Tensor],
        pos_embeds: List[torch.Tensor],
        rank_padding: bool = True,
    ) -> Dict[str, torch.Tensor]:
        """
        Args:
            srcs, pos_embeds: L tensors (N, C, H_l, W_l); masks: L bools (N, H_l, W_l), True at
                padding.
            rank_padding: two-stage: whether proposals on padded pixels compete for the top Q,
                as released (see ObjectQueries).
        Returns:
            dict with "logits" (J, N, Q, K) and "boxes" (J, N, Q, 4) normalised cxcywh of every
            decoder layer; in two-stage mode also "proposals": {"pred_logits": (N, S, K),
            "pred_boxes": (N, S, 4)} of every encoder pixel; in training with hybrid matching
            also "one2many": {"logits", "boxes"} of the one-to-many queries (Q: the one-to-one
            queries then).
        """
        src, pos, levels = flatten_levels(srcs, masks, pos_embeds, self.level_embed)
        memory = self.encoder(src, pos, levels)
        queries = self.queries(memory, levels, self.heads, rank_padding)
        logits, boxes = self.decoder(queries, memory, levels, self.heads)
        out = {"logits": logits, "boxes": boxes}
        if self.training and self.queries.num_queries_one2many:
            # the groups, one-to-one first: (J, N, Q_1 + Q_2, .) -> (J, N, Q_1, .), (J, N, Q_2, .)
            one2one = self.queries.num_queries
            out = {"logits": logits[:, :, :one2one], "boxes": boxes[:, :, :one2one]}
            out["one2many"] = {"logits": logits[:, :, one2one:], "boxes": boxes[:, :, one2one:]}
        if queries.proposals is not None:
            out["proposals"] = queries.proposals
        return out
