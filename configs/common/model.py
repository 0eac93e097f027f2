"""The released multi-scale Deformable DETR on ResNet-50, as a LazyConfig model: the MODEL keys of
Base-DeformableDETR.yaml with the defaults of deformable_detr/config.py (each argument below is
the key named in its comment). Variants edit it (configs/ddetr_r50_*.py).

Shapes: C = transformer.d_model channels; L = neck.num_feature_levels feature levels.
"""

import math

from detectron2.config import LazyCall as L
from detectron2.layers import ShapeSpec

from deformable_detr.layers import PositionEmbeddingSine
from deformable_detr.modeling import (
    DeformableDETR,
    DeformableDETRNeck,
    DeformableTransformer,
    HungarianMatcher,
    SetCriterion,
)
from deformable_detr.modeling.backbones.resnet import deformable_detr_resnet

# (channels, stride) of the ResNet-50 maps the neck can take (Detectron2's ResNet, strides 8-32)
RESNET50_SHAPES = {
    "res3": ShapeSpec(channels=512, stride=8),
    "res4": ShapeSpec(channels=1024, stride=16),
    "res5": ShapeSpec(channels=2048, stride=32),
}

model = L(DeformableDETR)(
    # MODEL.BACKBONE.NAME "build_deformable_detr_resnet_backbone" with MODEL.RESNETS
    backbone=L(deformable_detr_resnet)(
        depth=50,  # RESNETS.DEPTH: ResNet-50
        stride_in_1x1=False,  # RESNETS.STRIDE_IN_1X1: torchvision layout, stride in the 3x3 conv
        norm="FrozenBN",  # RESNETS.NORM: ImageNet statistics, frozen
        freeze_at=2,  # BACKBONE.FREEZE_AT: stem and res2 frozen
        res5_dilation=1,  # RESNETS.RES5_DILATION: 2 for the dilated C5 (DC5)
        stem_out_channels=64,  # RESNETS.STEM_OUT_CHANNELS
        res2_out_channels=256,  # RESNETS.RES2_OUT_CHANNELS
        out_features=["res3", "res4", "res5"],  # RESNETS.OUT_FEATURES: C3-C5
    ),
    # DEFORMABLE_DETR.NECK_NAME "DeformableDETRNeck"
    neck=L(DeformableDETRNeck)(
        input_shape=RESNET50_SHAPES,  # the backbone's output_shape()
        in_features=["res3", "res4", "res5"],  # DEFORMABLE_DETR.IN_FEATURES, high to low res.
        hidden_dim="${..transformer.d_model}",  # DEFORMABLE_DETR.HIDDEN_DIM
        # DEFORMABLE_DETR.NUM_FEATURE_LEVELS: the 4th level is a stride-2 conv on C5
        num_feature_levels=4,
    ),
    position_embedding=L(PositionEmbeddingSine)(
        num_pos_feats=128,  # half of DEFORMABLE_DETR.HIDDEN_DIM: one half per axis
        temperature=10000,  # DEFORMABLE_DETR.POSITION_TEMPERATURE
        normalize=True,  # positions relative to each image's valid region
        scale=2 * math.pi,  # DEFORMABLE_DETR.POSITION_SCALE
    ),
    # DEFORMABLE_DETR.TRANSFORMER_NAME "DeformableTransformer"
    transformer=L(DeformableTransformer)(
        num_classes=80,  # DEFORMABLE_DETR.NUM_CLASSES: COCO
        num_queries=300,  # DEFORMABLE_DETR.NUM_QUERIES
        d_model=256,  # DEFORMABLE_DETR.HIDDEN_DIM: the transformer's width C
        nhead=8,  # DEFORMABLE_DETR.NHEADS
        num_encoder_layers=6,  # DEFORMABLE_DETR.ENC_LAYERS
        num_decoder_layers=6,  # DEFORMABLE_DETR.DEC_LAYERS
        dim_feedforward=1024,  # DEFORMABLE_DETR.DIM_FEEDFORWARD
        dropout=0.1,  # DEFORMABLE_DETR.DROPOUT
        activation="relu",  # DEFORMABLE_DETR.ACTIVATION
        num_feature_levels="${..neck.num_feature_levels}",  # the neck's L levels
        enc_n_points=4,  # DEFORMABLE_DETR.ENC_N_POINTS: sampling points per head and level
        dec_n_points=4,  # DEFORMABLE_DETR.DEC_N_POINTS
        with_box_refine=False,  # DEFORMABLE_DETR.WITH_BOX_REFINE
        two_stage=False,  # DEFORMABLE_DETR.TWO_STAGE: encoder proposals become the queries
        two_stage_num_proposals=300,  # DEFORMABLE_DETR.TWO_STAGE_NUM_PROPOSALS
        deterministic_backward=False,  # DEFORMABLE_DETR.DETERMINISTIC_BACKWARD: CUDA, no atomics
    ),
    criterion=L(SetCriterion)(
        num_classes="${..transformer.num_classes}",  # DEFORMABLE_DETR.NUM_CLASSES
        matcher=L(HungarianMatcher)(
            cost_class=2.0,  # DEFORMABLE_DETR.SET_COST_CLASS
            cost_bbox=5.0,  # DEFORMABLE_DETR.SET_COST_BBOX
            cost_giou=2.0,  # DEFORMABLE_DETR.SET_COST_GIOU
            focal_alpha="${..focal_alpha}",  # the loss's
            focal_gamma="${..focal_gamma}",  # the loss's
        ),
        # DEFORMABLE_DETR.CLASS_LOSS_COEF, BBOX_LOSS_COEF, GIOU_LOSS_COEF
        weight_dict={"loss_ce": 2.0, "loss_bbox": 5.0, "loss_giou": 2.0},
        losses=["labels", "boxes"],  # DEFORMABLE_DETR.LOSSES: sigmoid focal; L1 and GIoU
        focal_alpha=0.25,  # DEFORMABLE_DETR.FOCAL_ALPHA
        focal_gamma=2.0,  # DEFORMABLE_DETR.FOCAL_GAMMA
    ),
    aux_loss=True,  # DEFORMABLE_DETR.AUX_LOSS: losses on every decoder layer
    # MODEL.PIXEL_MEAN / PIXEL_STD: RGB on a 0-255 scale, ImageNet statistics
    pixel_mean=[123.675, 116.280, 103.530],
    pixel_std=[58.395, 57.120, 57.375],
    detections_per_image=100,  # TEST.DETECTIONS_PER_IMAGE
    batch_invariant_inference=True,  # DEFORMABLE_DETR.BATCH_INVARIANT_INFERENCE
    # the training dataset's thing_classes (train_net.py sets them from dataloader.train when
    # None): saved in checkpoints, and matched by name when weights of other classes load
    class_names=None,
    keep_matching_classes=False,  # DEFORMABLE_DETR.KEEP_MATCHING_CLASSES
)
