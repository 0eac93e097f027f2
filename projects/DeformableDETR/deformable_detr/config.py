"""Config keys of Deformable DETR, under cfg.MODEL.DEFORMABLE_DETR.

Defaults are the released multi-scale model's (../shared/reference/official-facts.md). The
backbone, input format and pixel statistics live in Detectron2's own keys and are set by
configs/Base-DeformableDETR.yaml.
"""
import os
from typing import Optional, Sequence

import yaml
from detectron2.config import CfgNode as CN
from detectron2.config import get_cfg

__all__ = ["add_deformable_detr_config", "get_config"]


def add_deformable_detr_config(cfg):
    """Adds the keys of this project to a Detectron2 config, in place."""
    cfg.MODEL.DEFORMABLE_DETR = CN()
    c = cfg.MODEL.DEFORMABLE_DETR
    # Number of object classes (COCO: 80). The class head has this many sigmoid outputs.
    c.NUM_CLASSES = 80
    # Number of object queries of the decoder (one-stage), i.e. detections before top-k.
    c.NUM_QUERIES = 300
    # Width of the transformer (d_model); every feature level is projected to it.
    c.HIDDEN_DIM = 256
    # Attention heads in every attention layer (M); must divide HIDDEN_DIM.
    c.NHEADS = 8
    # Number of encoder layers.
    c.ENC_LAYERS = 6
    # Number of decoder layers; there is one prediction head (and loss) per decoder layer.
    c.DEC_LAYERS = 6
    # Hidden width of the feed-forward network of every transformer layer.
    c.DIM_FEEDFORWARD = 1024
    # Dropout in every transformer layer.
    c.DROPOUT = 0.1
    # Activation of the feed-forward networks: "relu", "gelu" or "glu".
    c.ACTIVATION = "relu"
    # Backbone outputs the neck projects, from high to low resolution (multi-scale: C3-C5).
    c.IN_FEATURES = ["res3", "res4", "res5"]
    # Feature levels the transformer sees (L). Levels beyond IN_FEATURES are added by the neck as
    # stride-2 3x3 convolutions, the first on the last IN_FEATURES map.
    c.NUM_FEATURE_LEVELS = 4
    # Sampling points per head and level in the encoder's and the decoder's deformable attention.
    c.ENC_N_POINTS = 4
    c.DEC_N_POINTS = 4
    # Name of the neck in NECK_REGISTRY.
    c.NECK_NAME = "DeformableDETRNeck"
    # Name of the transformer in TRANSFORMER_REGISTRY.
    c.TRANSFORMER_NAME = "DeformableTransformer"
    # Iterative box refinement: each decoder layer refines the previous layer's boxes, with its
    # own heads.
    c.WITH_BOX_REFINE = False
    # Two-stage: the encoder proposes boxes (one per pixel, top-k kept) that become the decoder's
    # queries. Released only together with WITH_BOX_REFINE.
    c.TWO_STAGE = False
    # Number of encoder proposals kept in two-stage mode (the released model keeps NUM_QUERIES).
    c.TWO_STAGE_NUM_PROPOSALS = 300
    # At test time, run the backbone and the neck on every image at its own size (images of one
    # size together) and pad the features, not the pixels, so that an image's detections do not
    # depend on the other images of its batch (the released model's do: its convolutions and
    # GroupNorm see the padding). Equal to the released computation at batch 1. False: the
    # released padded batch, e.g. to reproduce its evaluation at 2 images per GPU. Training
    # always runs on the padded batch, as released.
    c.BATCH_INVARIANT_INFERENCE = True
    # Losses on every decoder layer's predictions, not only the last.
    c.AUX_LOSS = True
    # Losses computed by the set criterion, by name: "labels" (sigmoid focal), "boxes" (L1 and
    # GIoU).
    c.LOSSES = ["labels", "boxes"]
    # Weights of the loss terms.
    c.CLASS_LOSS_COEF = 2.0
    c.BBOX_LOSS_COEF = 5.0
    c.GIOU_LOSS_COEF = 2.0
    # Sigmoid focal loss parameters, in the loss and in the matching cost.
    c.FOCAL_ALPHA = 0.25
    c.FOCAL_GAMMA = 2.0
    # Weights of the Hungarian matching costs: focal class cost, L1 box cost, negative GIoU.
    c.SET_COST_CLASS = 2.0
    c.SET_COST_BBOX = 5.0
    c.SET_COST_GIOU = 2.0
    # Sine position encoding: temperature and the normalisation scale (2 pi in the release).
    c.POSITION_TEMPERATURE = 10000
    c.POSITION_SCALE = 6.283185307179586

    # DETR augmentation (data/augmentation.py): the shortest-edge sizes of the resize before the
    # random crop (INPUT.CROP), in the half of the samples that are cropped.
    cfg.INPUT.RESIZE_BEFORE_CROP = [400, 500, 600]

    # Optimizer: "ADAMW" (as released) or "SGD" (Detectron2's default); BASE_LR, WEIGHT_DECAY and
    # MOMENTUM are Detectron2's keys.
    cfg.SOLVER.OPTIMIZER = "ADAMW"
    # Learning-rate multiplier of the backbone's parameters (released: 2e-5 over 2e-4).
    cfg.SOLVER.BACKBONE_MULTIPLIER = 0.1
    # Learning-rate multiplier of the layers that predict sampling locations (released: 0.1),
    # matched by these substrings of the parameter names.
    cfg.SOLVER.LINEAR_PROJ_MULTIPLIER = 0.1
    cfg.SOLVER.LINEAR_PROJ_NAMES = ["sampling_offsets", "reference_points"]
    # Gradient clipping of the whole model's norm (released: max norm 0.1): Detectron2's
    # CLIP_GRADIENTS keys, with CLIP_TYPE "full_model" added to its "value" and "norm".
    cfg.SOLVER.CLIP_GRADIENTS.ENABLED = True
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE = "full_model"
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE = 0.1
    cfg.SOLVER.CLIP_GRADIENTS.NORM_TYPE = 2.0


class _MappingOnlyYaml(CN):
    """Detectron2's loading of a config file and its _BASE_ chain (resolved as Detectron2 does),
    refusing a file that is not a mapping of config keys."""

    @classmethod
    def load_yaml_with_base(cls, filename, allow_unsafe=False):
        with cls._open_cfg(filename) as f:
            content = yaml.safe_load(f)
        if content is None:
            raise ValueError(f"config file {filename!r} is empty; expected a mapping of config "
                             f"keys (KEY: value)")
        if not isinstance(content, dict):
            raise ValueError(f"config file {filename!r} must be a mapping of config keys "
                             f"(KEY: value), got a YAML {type(content).__name__}")
        return super().load_yaml_with_base(filename, allow_unsafe=allow_unsafe)


def get_config(config_file: Optional[str] = None, opts: Sequence[str] = ()) -> CN:
    """Detectron2's default config with this project's keys, merged with a YAML file (if given)
    and then with KEY VALUE overrides, as the command-line tools take them.

    Raises FileNotFoundError when config_file does not exist, ValueError when it or a file of its
    _BASE_ chain is empty or not a mapping, yaml's ConstructorError when one has Python tags."""
    cfg = get_cfg()
    add_deformable_detr_config(cfg)
    if config_file:
        if not os.path.isfile(config_file):
            raise FileNotFoundError(f"config_file {config_file!r} does not exist")
        # Detectron2 reads an empty file or a YAML list into a TypeError/AttributeError that names
        # no file: the chain is read once more, checked, before the merge
        _MappingOnlyYaml.load_yaml_with_base(config_file)
        # a config file is data: tags that build Python objects would run code
        cfg.merge_from_file(config_file, allow_unsafe=False)
    cfg.merge_from_list(list(opts))
    return cfg
