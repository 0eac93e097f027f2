"""Writing the model as an AOTInductor package (.pt2: torch.export + Inductor's compiled C++),
and running the package.

Shapes: H x W the image's size at the test-time resize, R detections.

Running a package needs torch and the op's library only, not Detectron2: the compiled code calls
deformable_detr::ms_deform_attn through the dispatcher, so load
torch.ops.load_library(".../deformable_detr/_C*.so") (or `import deformable_detr`, which also
imports Detectron2) before torch._inductor.aoti_load_package; without the op, loading fails with
"Could not find schema for deformable_detr::ms_deform_attn".

One package serves every image whose sides lie in its range: torch.export keeps H and W symbolic
(Dim) through the model, whose sizes are computed for that (modeling/symbolic_sizes.py), from
sizes.symbolic_min_side (every level 2 pixels or more; a two-stage model's proposals fit) to
max_side (INPUT.MAX_SIZE_TEST, the longest side of the test resize). A backbone that fixes the
size (sizes.fixed_size_reason: MViTv2), or whose code torch.export cannot follow symbolically
(Swin, ViT), gives a static package of the sample's size instead. The
range is in the package's metadata (SIDES_KEY, or IMAGE_SIZE_KEY when static), and run_aoti
refuses an image outside it: the compiled code does not check its input unless
AOTI_RUNTIME_CHECK_INPUTS=1 is set, so a caller of aoti_load_package checks sizes itself.
"""

import logging
from typing import Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn
from torch.export import Dim

from .int8 import quantize_int8
from .sizes import fixed_size_reason, format_size, symbolic_min_side
from .wrapper import DetectionExportWrapper

__all__ = [
    "IMAGE_SIZE_KEY",
    "INT8_KEY",
    "MAX_SIDE",
    "SIDES_KEY",
    "export_aoti",
    "package_sides",
    "run_aoti",
]

logger = logging.getLogger(__name__)

# the package's metadata: "HxW" of a static package, "MIN-MAX" sides of a dynamic one
IMAGE_SIZE_KEY = "deformable_detr.image_size"
SIDES_KEY = "deformable_detr.sides"
INT8_KEY = "deformable_detr.int8"  # an int8 package: how many images calibrated it
MAX_SIDE = 1333  # Detectron2's INPUT.MAX_SIZE_TEST, the longest side the test resize gives

Detections = Tuple[np.ndarray, np.ndarray, np.ndarray]


def _side_range(model: nn.Module, image: torch.Tensor, max_side: int) -> Tuple[int, int]:
    """(min, max) sides of a dynamic package, with the sample image (3, H, W) inside."""
    low = symbolic_min_side(model)
    if not low <= min(image.shape[-2:]) <= max(image.shape[-2:]) <= max_side:
        raise ValueError(
            f"the sample image is {format_size(image.shape[-2:])}; a package of this model "
            f"takes sides from {low} to {max_side} pixels (max_side, INPUT.MAX_SIZE_TEST), "
            f"and is exported on an image in that range"
        )
    return low, max_side


def _export(module: nn.Module, image: torch.Tensor, sides: Optional[Tuple[int, int]]):
    """torch.export of module (image (3, H, W) -> detections) on image: with H and W symbolic
    in [sides[0], sides[1]], or fixed at image's size when sides is None."""
    shapes = None
    if sides is not None:
        height, width = (Dim(n, min=sides[0], max=sides[1]) for n in ("height", "width"))
        shapes = {"image": {1: height, 2: width}}
    return torch.export.export(module, (image,), dynamic_shapes=shapes)


def _check_calibration(path: str, images: Sequence[torch.Tensor], metadata: dict) -> None:
    """Raises ValueError unless each of images is of a size the package will take."""
    for i, image in enumerate(images):
        try:
            _check_size(path, metadata, image)
        except ValueError as e:
            raise ValueError(f"calibration image {i}: {e}") from None


@torch.no_grad()
def export_aoti(
    model: nn.Module,
    image: torch.Tensor,
    path: str,
    max_side: int = MAX_SIDE,
    dynamic: Optional[bool] = None,
    calibration: Optional[Sequence[torch.Tensor]] = None,
) -> str:
    """Exports model with torch.export on image (3, H, W), compiles it with AOTInductor and
    writes the package to path (.pt2); returns path. dynamic=True: every image with sides from
    symbolic_min_side to max_side; False: image's size only. None (the default): dynamic unless
    the backbone cannot be, then static with a warning: fixed_size_reason's backbones, and those
    whose code torch.export cannot prove valid over the whole range (Detectron2's Swin and ViT,
    whose padding to windows or to a square it cannot reason about).

    calibration: images (3, H, W) of sizes the package takes, like those it will see (a few
    dozen): the package is int8 (int8.py), its activations' ranges observed on them.
    Inductor compiles with freezing: weights are constants, convolutions fold the frozen
    BatchNorms' scales, and oneDNN's kernels take their weights prepacked."""
    if calibration is not None and len(calibration) == 0:
        raise ValueError("an int8 package needs calibration images; got none")
    if dynamic is None and fixed_size_reason(model) is not None:
        dynamic = False
    wrapper, exported, sides = DetectionExportWrapper(model), None, None
    if dynamic is not False:
        sides = _side_range(model, image, max_side)
        try:
            exported = _export(wrapper, image, sides)
        except (torch._dynamo.exc.UserError, NotImplementedError) as e:
            if dynamic:
                raise
            first_line = str(e).strip().splitlines()[0]
            logger.warning(
                f"torch.export cannot keep the image size symbolic through "
                f"{type(model.backbone).__name__} ({first_line}): the package is static, valid "
                f"at {format_size(image.shape[-2:])} only"
            )
            sides = None
    if exported is None:
        exported = _export(wrapper, image, None)
        metadata = {IMAGE_SIZE_KEY: format_size(image.shape[-2:])}
    else:
        metadata = {SIDES_KEY: "-".join(map(str, sides))}
    if calibration is not None:
        _check_calibration(path, calibration, metadata)
        exported = _export(quantize_int8(exported.module(), calibration), image, sides)
        metadata[INT8_KEY] = str(len(calibration))
    return torch._inductor.aoti_compile_and_package(
        exported,
        package_path=path,
        inductor_configs={"aot_inductor.metadata": metadata, "freezing": True},
    )


def package_sides(path: str) -> Optional[Tuple[int, int]]:
    """(min, max) sides of the images a package of export_aoti takes, None when it is static."""
    sides = torch._inductor.aoti_load_package(path).get_metadata().get(SIDES_KEY)
    return None if sides is None else tuple(map(int, sides.split("-")))


def _check_size(path: str, metadata: dict, image: torch.Tensor) -> None:
    """Raises ValueError unless image (3, H, W) is of a size the package at path takes."""
    if image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(f"the package takes one image (3, H, W), got {tuple(image.shape)}")
    if SIDES_KEY in metadata:
        low, high = map(int, metadata[SIDES_KEY].split("-"))
        if not low <= min(image.shape[-2:]) <= max(image.shape[-2:]) <= high:
            raise ValueError(
                f"the AOTInductor package {path!r} takes images (3, H, W) with sides from {low} "
                f"to {high} pixels; got {format_size(image.shape[-2:])}: resize it as at test "
                f"time, or export with another max_side"
            )
    elif IMAGE_SIZE_KEY in metadata:
        built = metadata[IMAGE_SIZE_KEY]
        if tuple(image.shape[-2:]) != tuple(map(int, built.split("x"))):
            raise ValueError(
                f"the AOTInductor package {path!r} was exported for images (3, H, W) of {built} "
                f"pixels and runs at that size only (its backbone fixes the size); got "
                f"{format_size(image.shape[-2:])}: export again at this size "
                f"(export_model.py --format aoti --sample-image)"
            )
    else:
        raise ValueError(f"{path!r} is not a package of export_aoti: no {SIDES_KEY} entry")


def run_aoti(path: str, image: torch.Tensor) -> Detections:
    """(boxes, scores, classes) of a saved AOTInductor package on image (3, H, W), which must be
    of a size the package takes (ValueError otherwise)."""
    runner = torch._inductor.aoti_load_package(path)
    _check_size(path, runner.get_metadata(), image)
    with torch.no_grad():
        return tuple(o.detach().cpu().numpy() for o in runner(image))
