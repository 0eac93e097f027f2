"""Image and feature sizes computed so that every export keeps them symbolic.

The two exporters follow sizes differently. torch.jit.trace (TorchScript, ONNX) records Python
ints as constants, so sizes must flow through tensors: Detectron2's shapes_to_tensor and
ImageList.from_tensors do that. torch.export (AOTInductor) follows Python ints as symbols
(SymInt) but reads a size held in a tensor as data, unknown until run time: from_tensors' padding
amounts and torch.as_tensor of sizes would either fix the traced image size or fail. Each helper
here takes the tensor way under tracing and eager, and the int way while torch compiles.

Shapes: N images, C channels, H x W the padded batch, h_i x w_i image i's own size.
"""

from typing import List, Sequence

import torch
import torch.nn.functional as F
from detectron2.layers.wrappers import shapes_to_tensor
from detectron2.structures import ImageList

__all__ = ["pad_images", "sizes_tensor"]


def sizes_tensor(sizes: Sequence, device: torch.device) -> torch.Tensor:
    """(len(sizes),) int64 tensor of sizes (ints, or whatever a tracer makes of a tensor's shape)
    that tracing and torch.export both keep symbolic."""
    if torch.compiler.is_compiling():
        return torch.tensor(list(sizes), dtype=torch.int64, device=device)
    return shapes_to_tensor(list(sizes), device)


def pad_images(
    tensors: List[torch.Tensor], size_divisibility: int = 0, padding_constraints=None
) -> ImageList:
    """Detectron2's ImageList.from_tensors(tensors (C, h_i, w_i), size_divisibility,
    padding_constraints) with zero padding: the batch (N, C, H, W) padded at the bottom and
    right to the largest size, rounded up to size_divisibility, or the constraints' square."""
    if not torch.compiler.is_compiling():
        return ImageList.from_tensors(
            tensors, size_divisibility, padding_constraints=padding_constraints
        )
    image_sizes = [(t.shape[-2], t.shape[-1]) for t in tensors]
    H, W = max(s[0] for s in image_sizes), max(s[1] for s in image_sizes)
    constraints = padding_constraints or {}
    if constraints.get("square_size", 0) > 0:
        H = W = constraints["square_size"]
    stride = constraints.get("size_divisibility", size_divisibility)
    if stride > 1:
        H, W = (H + stride - 1) // stride * stride, (W + stride - 1) // stride * stride
    # F.pad rather than a zero batch with slices assigned: Inductor's freezing passes (the
    # int8 package) fail on the scatter that slice assignment becomes
    padded = [F.pad(t, (0, W - t.shape[-1], 0, H - t.shape[-2])) for t in tensors]
    return ImageList(torch.stack(padded), image_sizes)
