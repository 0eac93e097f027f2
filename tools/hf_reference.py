"""Hugging Face transformers' Deformable DETR (DeformableDetrForObjectDetection) with this
project's weights: the reference that tools/benchmark_deploy.py times for its "vs HF" column and
that tests/deploy/test_hf_reference.py holds equal to the eager model.

A tool, not part of the package: transformers comes from requirements-bench.txt only. Written
from transformers 5.x's modeling code. What maps to what (this model's state_dict -> HF's):
- backbone: Detectron2's ResNet (stem, res2..res5, FrozenBN) -> transformers' own ResNet
  (embedder, encoder.stages.0..3; DeformableDetrConvEncoder freezes its BatchNorms, eps 1e-5 as
  Detectron2's FrozenBN). Both put the stride in the 3x3 conv (STRIDE_IN_1X1 False,
  downsample_in_bottleneck False), so every weight loads as it is. Nothing is downloaded:
  from_config builds the backbone empty and our weights fill it.
- neck.input_proj -> model.input_proj; transformer.level_embed -> model.level_embed;
  query_embed (query_pos | tgt, split in the same order) -> model.query_position_embeddings;
  transformer.reference_points -> model.reference_points.
- encoder layer: norm1 -> self_attn_layer_norm, linear1/2 -> mlp.fc1/2, norm2 -> final_layer_norm.
- decoder layer: cross_attn -> encoder_attn and norm1 (after it) -> encoder_attn_layer_norm;
  nn.MultiheadAttention's in_proj (rows q | k | v) -> q_proj, k_proj, v_proj, out_proj ->
  o_proj, and norm2 (after it) -> self_attn_layer_norm; norm3 -> final_layer_norm.
- class_embed.i and bbox_embed.i.layers.j keep their names (HF ties copies 1.. to copy 0).

Supported: one-stage models without box refinement on a bottleneck ResNet (ddetr_r50.yaml and
its single-scale variant); hf_config refuses anything else by its key.

Shapes: H x W the image, R detections, Q queries, K classes.
"""

import math
import re
from typing import Dict, Tuple

import torch

__all__ = [
    "HFDetector",
    "build_hf_model",
    "clip_to_image",
    "hf_config",
    "hf_inputs",
    "hf_state_dict",
]

# blocks per stage of Detectron2's bottleneck ResNets (build_resnet_backbone's table)
_BLOCKS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}
_STAGES = {"res2": "stage1", "res3": "stage2", "res4": "stage3", "res5": "stage4"}
_STEM = "model.backbone.model.embedder.embedder."
_BODY = "model.backbone.model.encoder.stages."
_TOP = {
    "neck.input_proj.": "model.input_proj.",
    "transformer.level_embed": "model.level_embed",
    "transformer.reference_points.": "model.reference_points.",
    "query_embed.": "model.query_position_embeddings.",
    "class_embed.": "class_embed.",
    "bbox_embed.": "bbox_embed.",
}
_LAYER = {
    "encoder": {
        "self_attn.": "self_attn.",
        "norm1.": "self_attn_layer_norm.",
        "linear1.": "mlp.fc1.",
        "linear2.": "mlp.fc2.",
        "norm2.": "final_layer_norm.",
    },
    "decoder": {
        "cross_attn.": "encoder_attn.",
        "norm1.": "encoder_attn_layer_norm.",
        "self_attn.out_proj.": "self_attn.o_proj.",
        "norm2.": "self_attn_layer_norm.",
        "linear1.": "mlp.fc1.",
        "linear2.": "mlp.fc2.",
        "norm3.": "final_layer_norm.",
    },
}


def _fixed_keys(cfg):
    """(key, value, the value transformers' model has) of each config key it cannot vary."""
    c, r = cfg.MODEL.DEFORMABLE_DETR, cfg.MODEL.RESNETS
    resnet = "build_deformable_detr_resnet_backbone"
    return (
        ("MODEL.BACKBONE.NAME", cfg.MODEL.BACKBONE.NAME, resnet),
        ("MODEL.RESNETS.NORM", r.NORM, "FrozenBN"),
        ("MODEL.RESNETS.STRIDE_IN_1X1", r.STRIDE_IN_1X1, False),
        ("MODEL.RESNETS.RES5_DILATION", r.RES5_DILATION, 1),
        ("MODEL.RESNETS.NUM_GROUPS", r.NUM_GROUPS, 1),
        ("MODEL.RESNETS.WIDTH_PER_GROUP", r.WIDTH_PER_GROUP, 64),
        ("MODEL.RESNETS.STEM_OUT_CHANNELS", r.STEM_OUT_CHANNELS, 64),
        ("MODEL.RESNETS.RES2_OUT_CHANNELS", r.RES2_OUT_CHANNELS, 256),
        ("MODEL.RESNETS.DEFORM_ON_PER_STAGE", any(r.DEFORM_ON_PER_STAGE), False),
        ("MODEL.DEFORMABLE_DETR.NECK_NAME", c.NECK_NAME, "DeformableDETRNeck"),
        ("MODEL.DEFORMABLE_DETR.TRANSFORMER_NAME", c.TRANSFORMER_NAME, "DeformableTransformer"),
        ("MODEL.DEFORMABLE_DETR.ACTIVATION", c.ACTIVATION, "relu"),
        ("MODEL.DEFORMABLE_DETR.WITH_BOX_REFINE", c.WITH_BOX_REFINE, False),
        ("MODEL.DEFORMABLE_DETR.TWO_STAGE", c.TWO_STAGE, False),
        ("MODEL.DEFORMABLE_DETR.MIXED_QUERY_SELECTION", c.MIXED_QUERY_SELECTION, False),
        ("MODEL.DEFORMABLE_DETR.LOOK_FORWARD_TWICE", c.LOOK_FORWARD_TWICE, False),
        (
            "MODEL.DEFORMABLE_DETR.HYBRID_MATCHING.NUM_QUERIES_ONE2MANY",
            c.HYBRID_MATCHING.NUM_QUERIES_ONE2MANY,
            0,
        ),
        ("MODEL.DEFORMABLE_DETR.POSITION_TEMPERATURE", c.POSITION_TEMPERATURE, 10000),
        ("MODEL.DEFORMABLE_DETR.POSITION_SCALE", round(c.POSITION_SCALE, 9), round(2 * math.pi, 9)),
    )


def hf_config(cfg):
    """transformers' DeformableDetrConfig of the model that `cfg` (this project's config)
    builds. Raises ValueError naming a key whose value transformers' model cannot have."""
    from transformers import DeformableDetrConfig, ResNetConfig

    for key, value, fixed in _fixed_keys(cfg):
        if value != fixed:
            raise ValueError(f"{key} must be {fixed!r} for transformers' model, got {value!r}")
    c, depth = cfg.MODEL.DEFORMABLE_DETR, cfg.MODEL.RESNETS.DEPTH
    if depth not in _BLOCKS:
        raise ValueError(f"MODEL.RESNETS.DEPTH must be one of {list(_BLOCKS)}, got {depth!r}")
    if not all(f in _STAGES for f in c.IN_FEATURES):
        raise ValueError(
            f"MODEL.DEFORMABLE_DETR.IN_FEATURES must be among {list(_STAGES)}, "
            f"got {list(c.IN_FEATURES)}"
        )
    backbone = ResNetConfig(
        depths=list(_BLOCKS[depth]),
        hidden_sizes=[256, 512, 1024, 2048],
        embedding_size=64,
        layer_type="bottleneck",
        downsample_in_bottleneck=False,  # stride in the 3x3 conv (STRIDE_IN_1X1 False)
        out_features=[_STAGES[f] for f in c.IN_FEATURES],
    )
    return DeformableDetrConfig(
        backbone_config=backbone,
        use_timm_backbone=False,
        num_labels=c.NUM_CLASSES,
        num_queries=c.NUM_QUERIES,
        d_model=c.HIDDEN_DIM,
        encoder_layers=c.ENC_LAYERS,
        decoder_layers=c.DEC_LAYERS,
        encoder_ffn_dim=c.DIM_FEEDFORWARD,
        decoder_ffn_dim=c.DIM_FEEDFORWARD,
        encoder_attention_heads=c.NHEADS,
        decoder_attention_heads=c.NHEADS,
        num_feature_levels=c.NUM_FEATURE_LEVELS,
        encoder_n_points=c.ENC_N_POINTS,
        decoder_n_points=c.DEC_N_POINTS,
        activation_function="relu",
        dropout=c.DROPOUT,
        position_embedding_type="sine",
        with_box_refine=False,
        two_stage=False,
    )


def _conv(rest: str) -> str:
    """A Detectron2 conv's own key ("weight", "norm.<x>") as HF's ResNetConvLayer names it."""
    return "convolution.weight" if rest == "weight" else "normalization." + rest[len("norm.") :]


def _backbone_key(key: str):
    if key.startswith("backbone.stem.conv1."):
        return _STEM + _conv(key[len("backbone.stem.conv1.") :])
    match = re.fullmatch(r"backbone\.res([2-5])\.(\d+)\.(shortcut|conv[123])\.(.+)", key)
    if match is None:
        return None
    stage, block, conv, rest = match.groups()
    unit = "shortcut" if conv == "shortcut" else f"layer.{int(conv[-1]) - 1}"
    return f"{_BODY}{int(stage) - 2}.layers.{block}.{unit}.{_conv(rest)}"


def _top_key(key: str):
    for ours, theirs in _TOP.items():
        if key.startswith(ours):
            return theirs + key[len(ours) :]
    return None


def _layer_keys(key: str, value: torch.Tensor):
    """[(HF key, tensor)] of a transformer layer's key; None when the key is not one."""
    match = re.fullmatch(r"transformer\.(encoder|decoder)\.layers\.(\d+)\.(.+)", key)
    if match is None:
        return None
    part, index, rest = match.groups()
    prefix = f"model.{part}.layers.{index}."
    if part == "decoder" and rest.startswith("self_attn.in_proj_"):
        kind = rest[len("self_attn.in_proj_") :]  # weight (3C, C) or bias (3C,): rows q | k | v
        return [
            (f"{prefix}self_attn.{p}_proj.{kind}", chunk)
            for p, chunk in zip("qkv", value.chunk(3, dim=0))
        ]
    for ours, theirs in _LAYER[part].items():
        if rest.startswith(ours):
            return [(prefix + theirs + rest[len(ours) :], value)]
    return None


def hf_state_dict(state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """This model's state_dict (released names; Detectron2's backbone names) under
    DeformableDetrForObjectDetection's names. Raises ValueError listing keys it has no name for."""
    out, unknown = {}, []
    for key, value in state_dict.items():
        pairs = _layer_keys(key, value)
        if pairs is None:
            name = _backbone_key(key) or _top_key(key)
            pairs = None if name is None else [(name, value)]
        if pairs is None:
            unknown.append(key)
        else:
            out.update(pairs)
    if unknown:
        raise ValueError(f"no transformers name for {len(unknown)} keys: {unknown[:10]}")
    return out


def build_hf_model(cfg, model):
    """transformers' model (eval mode, on the CPU) of `cfg` with the weights of `model` (this
    project's, built from the same cfg). Every HF weight is loaded (strict)."""
    from transformers import DeformableDetrForObjectDetection

    hf_model = DeformableDetrForObjectDetection(hf_config(cfg)).eval()
    hf_model.load_state_dict(hf_state_dict(model.state_dict()), strict=True)
    return hf_model


def hf_inputs(model, image: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """pixel_values (1, 3, H', W') and pixel_mask (1, H', W'; 1 on the image, 0 on padding) of
    image (3, H, W) in the model's input format: normalised and padded by the model's own
    preprocess_image, so that both models see the same tensor (HF's image processor would
    rescale, normalise and resize by its own rules)."""
    images, mask = model.preprocess_image([{"image": image}])
    return images.tensor, (~mask).long()


class HFDetector:
    """image (3, H, W) -> (boxes (R, 4) xyxy in pixels, scores (R,), labels (R,)) through
    transformers' model: this model's normalisation, HF's forward, then HF's own
    post_process_object_detection (top-k over sigmoid scores, as ours; no clipping, no
    threshold here)."""

    def __init__(self, model, hf_model, top_k: int):
        from transformers import DeformableDetrImageProcessor

        self.model, self.hf_model, self.top_k = model, hf_model, top_k
        self.processor = DeformableDetrImageProcessor()

    @torch.no_grad()
    def __call__(self, image: torch.Tensor):
        pixel_values, pixel_mask = hf_inputs(self.model, image)
        outputs = self.hf_model(pixel_values=pixel_values, pixel_mask=pixel_mask)
        (result,) = self.processor.post_process_object_detection(
            outputs, threshold=-1.0, target_sizes=[tuple(image.shape[-2:])], top_k=self.top_k
        )
        return result["boxes"], result["scores"], result["labels"]


def clip_to_image(detections, height: int, width: int):
    """HF's (boxes, scores, labels) clipped to the image and without the boxes left empty, as
    the eager model (Detectron2's detector_postprocess) returns them, for compare_detections."""
    boxes, scores, labels = detections
    size = torch.tensor([width, height, width, height], dtype=boxes.dtype)
    boxes = torch.minimum(boxes.clamp(min=0), size)
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    return boxes[keep], scores[keep], labels[keep]
