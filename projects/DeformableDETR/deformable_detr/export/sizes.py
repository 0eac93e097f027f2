"""Which image sizes an exported model takes.

Shapes: H x W an image's size at the test-time resize (the exported model's input); S the
encoder's positions, the sum over levels of H_l * W_l; Q the two-stage proposals.

Two limits, each found from the model, checked at export and (through the file's metadata or its
fixed input dims) where the file runs:
- a fixed size: the trace of some backbones records the image size as constants, so their
  export is only valid at the sample's size (fixed_size_reason);
- a smallest side: a two-stage model picks its Q proposals with a top-k over the S encoder
  positions, which the trace records as top-Q, so that an image with S < Q fails in the runtime's
  TopK, and one traced with S < Q keeps S proposals at every size (min_image_side).
"""

import math
from typing import List, Optional, Tuple

import torch
from detectron2.modeling.backbone import MViT
from detectron2.structures import ImageList
from torch import nn

__all__ = [
    "check_sample_size",
    "fixed_size_reason",
    "format_size",
    "min_image_side",
    "symbolic_min_side",
    "second_size",
]


def format_size(size) -> str:
    """(h, w) -> 'hxw', as the errors and metadata write sizes."""
    return "x".join(str(int(s)) for s in size)


def fixed_size_reason(model: nn.Module) -> Optional[str]:
    """Why model's trace is valid at its sample's size only, or None when it keeps dynamic sizes.

    Detectron2's MViT sizes its pooled attention and relative-position tables with Python ints
    (np.prod of shapes, int(), torch.arange), which tracing records as constants: at another size
    its ONNX graph fails in a Reshape or a Gather."""
    if isinstance(model.backbone, MViT):
        return "Detectron2's MViT computes its attention sizes as Python ints, fixed when traced"
    return None


def _level_strides(model: nn.Module) -> List[int]:
    """The strides of the neck's levels: the backbone maps it takes, then one stride-2 level
    after another (neck.py)."""
    shapes = model.backbone.output_shape()
    strides = [shapes[f].stride for f in model.neck.in_features]
    while len(strides) < model.neck.num_feature_levels:
        strides.append(strides[-1] * 2)
    return strides


def _encoder_positions(model: nn.Module, strides: List[int], side: int) -> int:
    """S of a side x side image, padded as the model pads it (Detectron2's ImageList with the
    backbone's size_divisibility and padding_constraints); every level rounds its sides up."""
    padded = ImageList.from_tensors(
        [torch.empty(0, side, side)],
        model.backbone.size_divisibility,
        padding_constraints=model.backbone.padding_constraints,
    ).tensor.shape[-2:]
    return sum(math.ceil(padded[0] / s) * math.ceil(padded[1] / s) for s in strides)


def min_image_side(model: nn.Module) -> int:
    """The smallest side s such that every image with both sides >= s has S >= Q, for a
    two-stage model; 1 for a one-stage model (it has no top-k over S)."""
    queries = model.transformer.queries
    if not queries.two_stage:
        return 1
    strides = _level_strides(model)
    side = 1
    while _encoder_positions(model, strides, side) < queries.num_queries:
        side += 1
    return side


def symbolic_min_side(model: nn.Module) -> int:
    """The smallest side of an image for a torch.export with symbolic sizes: min_image_side,
    and every level at least 2 pixels a side (the coarsest stride + 1), since torch.export
    takes a size of 0 or 1 as a constant and then no longer follows it."""
    return max(min_image_side(model), _level_strides(model)[-1] + 1)


def check_sample_size(model: nn.Module, image: torch.Tensor) -> None:
    """Raises ValueError when image (3, H, W), the sample of an export with dynamic sizes, is
    smaller than min_image_side: its trace would keep fewer proposals than the model has."""
    side = min_image_side(model)
    if min(image.shape[-2:]) < side:
        raise ValueError(
            f"the sample image is {format_size(image.shape[-2:])}; this two-stage model picks "
            f"its {model.transformer.queries.num_queries} proposals "
            f"(MODEL.DEFORMABLE_DETR.TWO_STAGE_NUM_PROPOSALS) among the encoder's positions, "
            f"which needs images of at least {side} pixels a side: give a larger sample image "
            f"(or INPUT.MIN_SIZE_TEST >= {side})"
        )


def second_size(size: Tuple[int, int], min_side: int) -> Tuple[int, int]:
    """Another (h, w) than size to check a dynamic export at: a quarter shorter in height and an
    eighth in width (another aspect, both sides other values), each side at least min_side.
    Smaller, not larger, since some backbones take no image above their square (ViTDet's)."""
    h, w = size
    return max(h - h // 4, min_side), max(w - w // 8, min_side)
