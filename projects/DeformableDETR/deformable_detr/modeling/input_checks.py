"""Checks of what a caller hands the meta-architecture: Detectron2's list of dicts.

Each problem raises a TypeError or ValueError naming the input (batched_inputs[i]["key"]), what
was expected and what was given, before anything runs on it.

Shapes: C image channels (len(MODEL.PIXEL_MEAN)), H x W an image's size.
"""

import numbers
from typing import Dict, List

import torch

__all__ = ["check_batched_inputs"]


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
    if not (image.is_floating_point() or image.dtype == torch.uint8):
        raise TypeError(f"{name} must be uint8 or floating point, got {image.dtype}")


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


def check_batched_inputs(
    batched_inputs: List[Dict], channels: int, training: bool, square_size: int = 0
) -> None:
    """Raises unless batched_inputs is a non-empty list of dicts, each with "image" a (C, H, W)
    uint8 or finite floating tensor, optional positive int "height"/"width", and (training)
    "instances". With square_size > 0 (a backbone that pads every image to that square, such as
    ViTDet's), H and W must not exceed it: Detectron2's padding would crop the image."""
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
    floating = [
        (i, x["image"]) for i, x in enumerate(batched_inputs) if x["image"].is_floating_point()
    ]
    if floating:
        # one read-back for the whole batch
        device = floating[0][1].device
        finite = torch.stack([torch.isfinite(x).all().to(device) for _, x in floating]).tolist()
        bad = [i for (i, _), ok in zip(floating, finite) if not ok]
        if bad:
            raise ValueError(
                f'batched_inputs[{bad[0]}]["image"] has NaN or infinite values (images {bad})'
            )
