"""Checks of what a caller hands the meta-architecture: Detectron2's list of dicts.

Each problem raises a TypeError or ValueError naming the input (batched_inputs[i]["key"]), what
was expected and what was given, before anything runs on it.

Shapes: C image channels (len(MODEL.PIXEL_MEAN)), H x W an image's size, T its objects.
"""

import numbers
from typing import Dict, List, Optional

import torch
from detectron2.structures import Boxes, Instances

__all__ = ["IMAGE_DTYPES", "check_batched_inputs"]

# float64 is not among them: normalised against float32 pixel means it stays float64, and the
# first convolution of float32 weights fails on it
IMAGE_DTYPES = (torch.uint8, torch.float16, torch.bfloat16, torch.float32)


def _check_image(i: int, image, channels: int) -> None:
    name = f'batched_inputs[{i}]["image"]'
    if not isinstance(image, torch.Tensor):
        raise TypeError(
            f"{name} must be a torch.Tensor ({channels}, H, W), got {type(image).__name__}"
        )
    if image.dim() != 3:
        raise ValueError(
            f"{name} must be one image ({channels}, H, W), got shape "
            f"{tuple(image.shape)}; pass a batch as a list of dicts, one per image"
        )
    if image.shape[0] != channels:
        hint = (
            f" (it looks like (H, W, {channels}): use image.permute(2, 0, 1))"
            if image.shape[-1] == channels
            else ""
        )
        raise ValueError(
            f"{name} must have {channels} channels first, as many as "
            f"MODEL.PIXEL_MEAN has values, got shape {tuple(image.shape)}{hint}"
        )
    if image.shape[1] < 1 or image.shape[2] < 1:
        raise ValueError(f"{name} must not be empty, got shape {tuple(image.shape)}")
    if image.dtype not in IMAGE_DTYPES:
        raise TypeError(
            f"{name} must be uint8 or floating point (float16, bfloat16 or float32), got "
            f"{image.dtype}"
            + (": convert it with image.float()" if image.is_floating_point() else "")
        )


def _check_size(i: int, inputs: Dict) -> None:
    for key in ("height", "width"):
        if key not in inputs:
            continue
        value = inputs[key]
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            value = value.item()
        if (
            isinstance(value, bool)
            or not isinstance(value, numbers.Real)
            or value != int(value)
            or value < 1
        ):
            raise ValueError(
                f'batched_inputs[{i}]["{key}"], the size of the output, must be a '
                f"positive int, got {inputs[key]!r}"
            )


def _bad_classes(classes: torch.Tensor, num_classes: Optional[int]) -> torch.Tensor:
    """(T,) int64 -> (T,) bool: outside [0, num_classes); none when num_classes is None."""
    if num_classes is None:
        return torch.zeros_like(classes, dtype=torch.bool)
    return (classes < 0) | (classes >= num_classes)


def _bad_boxes(boxes: torch.Tensor) -> torch.Tensor:
    """(T, 4) x1, y1, x2, y2 -> (T,) bool: not finite, or x2 < x1 or y2 < y1."""
    return ~torch.isfinite(boxes).all(1) | (boxes[:, 2:] < boxes[:, :2]).any(1)


def _check_instances(i: int, instances, num_classes: Optional[int]) -> Optional[torch.Tensor]:
    """Checks the fields of batched_inputs[i]["instances"]; returns a 0-d bool tensor, True when
    a class lies outside [0, num_classes) or a box is bad (None without objects), for the
    batch's one read of its values."""
    name = f'batched_inputs[{i}]["instances"]'
    if not isinstance(instances, Instances) or not all(
        instances.has(k) for k in ("gt_boxes", "gt_classes")
    ):
        got = (
            f"Instances with {sorted(instances.get_fields())}"
            if isinstance(instances, Instances)
            else type(instances).__name__
        )
        raise ValueError(f"{name} must be Instances with gt_boxes and gt_classes, got {got}")
    boxes, classes = instances.gt_boxes, instances.gt_classes
    if not isinstance(boxes, Boxes):
        raise TypeError(f"{name}.gt_boxes must be Boxes, got {type(boxes).__name__}")
    if not isinstance(classes, torch.Tensor) or classes.dtype != torch.int64 or classes.dim() != 1:
        raise TypeError(
            f"{name}.gt_classes must be a 1-d int64 tensor, got "
            f"{getattr(classes, 'dtype', type(classes).__name__)} "
            f"{tuple(getattr(classes, 'shape', ()))}"
        )
    if not len(classes):
        return None
    return (_bad_classes(classes, num_classes) | _bad_boxes(boxes.tensor)).any()


def _raise_bad_instances(i: int, instances: Instances, num_classes: Optional[int]) -> None:
    """Names what _check_instances flagged."""
    name = f'batched_inputs[{i}]["instances"]'
    classes, boxes = instances.gt_classes, instances.gt_boxes.tensor
    if _bad_classes(classes, num_classes).any():
        raise ValueError(
            f"{name}.gt_classes must lie in [0, {num_classes}) (NUM_CLASSES), got values in "
            f"[{classes.min().item()}, {classes.max().item()}]"
        )
    bad = _bad_boxes(boxes)
    raise ValueError(
        f"{name}.gt_boxes must be finite (x1, y1, x2, y2) with x1 <= x2 and y1 <= y2; "
        f"{int(bad.sum())} are not, e.g. {boxes[bad][0].tolist()}"
    )


def check_batched_inputs(
    batched_inputs: List[Dict],
    channels: int,
    training: bool,
    square_size: int = 0,
    num_classes: Optional[int] = None,
) -> None:
    """Raises unless batched_inputs is a non-empty list of dicts, each with "image" a (C, H, W)
    tensor of IMAGE_DTYPES (floating: finite), optional positive int "height"/"width", and
    (training) "instances" with gt_classes (T,) int64 in [0, num_classes) (any class when None)
    and gt_boxes (T, 4) finite x1 <= x2, y1 <= y2. With square_size > 0 (a backbone that pads every
    image to that square, such as ViTDet's), H and W must not exceed it: Detectron2's padding
    would crop the image."""
    if not isinstance(batched_inputs, (list, tuple)) or not batched_inputs:
        raise ValueError(
            "batched_inputs must be a non-empty list of dicts, one per image, got "
            f"{batched_inputs!r:.80}"
        )
    for i, inputs in enumerate(batched_inputs):
        if not isinstance(inputs, dict) or "image" not in inputs:
            raise ValueError(
                f'batched_inputs[{i}] must be a dict with an "image", got '
                f"{type(inputs).__name__}"
                f"{' with keys ' + str(sorted(inputs)) if isinstance(inputs, dict) else ''}"
            )
        _check_image(i, inputs["image"], channels)
        if square_size and max(inputs["image"].shape[1:]) > square_size:
            raise ValueError(
                f'batched_inputs[{i}]["image"] is {tuple(inputs["image"].shape)}, '
                f"larger than the backbone's input square {square_size} (e.g. "
                f"MODEL.VIT.IMG_SIZE): resize it to fit, as INPUT.MAX_SIZE_TEST does"
            )
        _check_size(i, inputs)
        if training and "instances" not in inputs:
            raise ValueError(
                f'training needs "instances" in every input dict; batched_inputs[{i}] '
                f"has {sorted(inputs)}"
            )
    # The value checks of the whole batch, True where bad, read back together: one host read
    # per call, of the host's own memory when the inputs are CPU tensors (as Detectron2's loader
    # gives them), so no device sync then.
    flags = {}
    for i, inputs in enumerate(batched_inputs):
        if inputs["image"].is_floating_point():
            flags["image", i] = ~torch.isfinite(inputs["image"]).all()
        if training:
            flag = _check_instances(i, inputs["instances"], num_classes)
            if flag is not None:
                flags["instances", i] = flag
    if not flags:
        return
    # gathered on the device if any input is there: copies to it do not wait, copies from it do
    device = next((f.device for f in flags.values() if f.device.type != "cpu"), "cpu")
    read = torch.stack([flag.to(device) for flag in flags.values()]).tolist()
    bad = [key for key, is_bad in zip(flags, read) if is_bad]
    images = [i for what, i in bad if what == "image"]
    if images:
        raise ValueError(
            f'batched_inputs[{images[0]}]["image"] has NaN or infinite values (images {images})'
        )
    if bad:
        _raise_bad_instances(bad[0][1], batched_inputs[bad[0][1]]["instances"], num_classes)
