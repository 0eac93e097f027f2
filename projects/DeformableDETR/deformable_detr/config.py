"""Config keys of Deformable DETR, under cfg.MODEL.DEFORMABLE_DETR.

Defaults are the released multi-scale model's (the authors' main.py defaults; docs/model.md). The
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
    # Fine-tuning from MODEL.WEIGHTS trained for other classes: the class heads are re-initialised
    # (one log line says so). True keeps the file's rows of the classes whose names the training
    # dataset shares with the file (the names this project's checkpoints and converted released
    # weights store), e.g. "person" and "car" of COCO weights; the others are re-initialised.
    c.KEEP_MATCHING_CLASSES = False
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
    # Beyond the release: the "tricks" of H-Deformable-DETR (Jia et al., CVPR 2023), all off by
    # default. Two-stage: the positional queries come from the top-k proposals and the content
    # queries are learned embeddings (NUM_QUERIES of them, plus the one-to-many queries).
    c.MIXED_QUERY_SELECTION = False
    # Box refinement: each layer's output boxes also pass gradient into the previous layer's
    # boxes before their detach, one layer back ("look forward twice").
    c.LOOK_FORWARD_TWICE = False
    # Hybrid matching (H-DETR), training only: extra queries matched one-to-many to the targets
    # repeated K_ONE2MANY times, their losses added with weight LAMBDA_ONE2MANY; the two groups
    # are masked from each other in the decoder's self-attention. Inference, export and the
    # two-stage top-k use the one-to-one queries (NUM_QUERIES / TWO_STAGE_NUM_PROPOSALS) alone.
    c.HYBRID_MATCHING = CN()
    # The one-to-many queries (H-DETR: 1500); 0 turns hybrid matching off.
    c.HYBRID_MATCHING.NUM_QUERIES_ONE2MANY = 0
    # The copies of every target the one-to-many queries are matched to (H-DETR: 6).
    c.HYBRID_MATCHING.K_ONE2MANY = 6
    # The weight of the one-to-many losses, on every decoder layer's terms (H-DETR: 1.0).
    c.HYBRID_MATCHING.LAMBDA_ONE2MANY = 1.0
    # On CUDA, the deformable attention's backward without float atomics (Triton kernels): bitwise
    # repeatable training, at the cost of a sort per call. torch.use_deterministic_algorithms(True)
    # turns it on too. The CPU kernels are deterministic either way.
    c.DETERMINISTIC_BACKWARD = False
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
    # Mixed precision with Detectron2's SOLVER.AMP.ENABLED, on the CPU as on the GPU
    # (engine.AutocastTrainer): the autocast dtype, "float16" (Detectron2's AMPTrainer's, with
    # loss scaling) or "bfloat16" (float32's exponent range: no loss scaling needed).
    cfg.SOLVER.AMP.PRECISION = "float16"
    _add_backbone_config(cfg)


def _add_backbone_config(cfg):
    """Keys of the backbones that Detectron2 builds only from LazyConfig (modeling/backbones/).
    Defaults are the ImageNet models each family's converter reads (tools/convert_*.py)."""
    # Swin Transformer (MODEL.BACKBONE.NAME "build_deformable_detr_swin_backbone"); Swin-T.
    # Swin-S: DEPTHS [2, 2, 18, 2]; Swin-B: EMBED_DIM 128, NUM_HEADS [4, 8, 16, 32].
    cfg.MODEL.SWIN = CN()
    cfg.MODEL.SWIN.EMBED_DIM = 96  # width of stage 0; it doubles at each stage
    cfg.MODEL.SWIN.DEPTHS = [2, 2, 6, 2]  # blocks per stage
    cfg.MODEL.SWIN.NUM_HEADS = [3, 6, 12, 24]  # attention heads per stage
    cfg.MODEL.SWIN.WINDOW_SIZE = 7  # attention window side, in patches (7: the 224 px files)
    cfg.MODEL.SWIN.MLP_RATIO = 4.0  # hidden width of the blocks' MLP over their width
    cfg.MODEL.SWIN.DROP_PATH_RATE = 0.2  # stochastic depth of the last block (linear from 0)
    cfg.MODEL.SWIN.OUT_FEATURES = ["p1", "p2", "p3"]  # stages "p0".."p3" (strides 4-32) to output
    # -1 none; 0 or 1 the patch embedding; k >= 2 stages 0..k-2 too (Detectron2's numbering)
    cfg.MODEL.SWIN.FROZEN_STAGES = -1

    # ViTDet's plain ViT with a simple feature pyramid ("build_deformable_detr_vit_backbone");
    # ViT-B/16 as ViTDet trains it from MAE's ImageNet file.
    cfg.MODEL.VIT = CN()
    cfg.MODEL.VIT.IMG_SIZE = 1024  # every image is padded to this square; INPUT.MAX_SIZE_* <= it
    cfg.MODEL.VIT.PATCH_SIZE = 16  # patch side, the ViT's stride
    cfg.MODEL.VIT.EMBED_DIM = 768  # width
    cfg.MODEL.VIT.DEPTH = 12  # blocks
    cfg.MODEL.VIT.NUM_HEADS = 12  # attention heads
    cfg.MODEL.VIT.MLP_RATIO = 4.0  # hidden width of the blocks' MLP over their width
    cfg.MODEL.VIT.DROP_PATH_RATE = 0.1  # stochastic depth of the last block (linear from 0)
    cfg.MODEL.VIT.WINDOW_SIZE = 14  # side of the windows of the windowed blocks, in patches
    # blocks with window attention; the others attend globally (ViTDet: 2, 5, 8, 11)
    cfg.MODEL.VIT.WINDOW_BLOCK_INDEXES = [0, 1, 3, 4, 6, 7, 9, 10]
    cfg.MODEL.VIT.USE_REL_POS = True  # relative position biases in attention (ViTDet)
    cfg.MODEL.VIT.PRETRAIN_IMG_SIZE = 224  # image side of the ImageNet file's position embedding
    # the pyramid: the ViT's stride-16 map scaled by each factor (2, 1, 0.5: p3, p4, p5)
    cfg.MODEL.VIT.SCALE_FACTORS = [2.0, 1.0, 0.5]
    cfg.MODEL.VIT.OUT_CHANNELS = 256  # width of every pyramid map

    # MViTv2 ("build_deformable_detr_mvit_backbone"); MViTv2-T. -S: DEPTH 16,
    # LAST_BLOCK_INDEXES [0, 2, 13, 15]; -B: DEPTH 24, [1, 4, 20, 23].
    cfg.MODEL.MVIT = CN()
    cfg.MODEL.MVIT.EMBED_DIM = 96  # width of stage 2; it doubles at each stage
    cfg.MODEL.MVIT.DEPTH = 10  # blocks
    cfg.MODEL.MVIT.NUM_HEADS = 1  # attention heads of stage 2; they double at each stage
    cfg.MODEL.MVIT.LAST_BLOCK_INDEXES = [0, 2, 7, 9]  # the last block of each of the 4 stages
    cfg.MODEL.MVIT.DROP_PATH_RATE = 0.2  # stochastic depth of the last block (linear from 0)
    cfg.MODEL.MVIT.PRETRAIN_IMG_SIZE = 224  # image side the relative positions were trained at
    cfg.MODEL.MVIT.OUT_FEATURES = ["scale3", "scale4", "scale5"]  # of "scale2".."scale5"

    # RegNet ("build_deformable_detr_regnet_backbone"; frozen up to MODEL.BACKBONE.FREEZE_AT);
    # RegNetY-4.0GF, pycls' ImageNet model as Detectron2 publishes it.
    cfg.MODEL.REGNET = CN()
    cfg.MODEL.REGNET.STEM_WIDTH = 32  # channels of the stem (a stride-2 3x3 conv)
    cfg.MODEL.REGNET.DEPTH = 22  # blocks over all stages
    # the widths: w_0 + W_A * j for block j, quantised to powers of W_M times W_0
    cfg.MODEL.REGNET.W_A = 31.41
    cfg.MODEL.REGNET.W_0 = 96
    cfg.MODEL.REGNET.W_M = 2.24
    cfg.MODEL.REGNET.GROUP_WIDTH = 64  # channels per group of the 3x3 convolutions
    cfg.MODEL.REGNET.BOTTLENECK_RATIO = 1.0  # bottleneck width over block width
    cfg.MODEL.REGNET.SE_RATIO = 0.25  # squeeze-excitation width over input width (0: RegNetX)
    cfg.MODEL.REGNET.NORM = "FrozenBN"  # normalisation of every conv (Detectron2's get_norm)
    cfg.MODEL.REGNET.OUT_FEATURES = ["s2", "s3", "s4"]  # of stages "s1".."s4" (strides 4-32)


class _MappingOnlyYaml(CN):
    """Detectron2's loading of a config file and its _BASE_ chain (resolved as Detectron2 does),
    refusing a file that is not a mapping of config keys."""

    @classmethod
    def load_yaml_with_base(cls, filename, allow_unsafe=False):
        with cls._open_cfg(filename) as f:
            content = yaml.safe_load(f)
        if content is None:
            raise ValueError(
                f"config file {filename!r} is empty; expected a mapping of config keys (KEY: value)"
            )
        if not isinstance(content, dict):
            raise ValueError(
                f"config file {filename!r} must be a mapping of config keys "
                f"(KEY: value), got a YAML {type(content).__name__}"
            )
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
