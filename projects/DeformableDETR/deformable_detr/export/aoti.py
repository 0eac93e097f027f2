"""Writing the model as an AOTInductor package (.pt2: torch.export + Inductor's compiled C++),
and running the package.

Shapes: H x W the image's size at the test-time resize, R detections.

Running a package needs torch and the op's library only, not Detectron2: the compiled code calls
deformable_detr::ms_deform_attn through the dispatcher, so load
torch.ops.load_library(".../deformable_detr/_C*.so") (or `import deformable_detr`, which also
imports Detectron2) before torch._inductor.aoti_load_package; without the op, loading fails with
"Could not find schema for deformable_detr::ms_deform_attn".

The package is static: exported at one image size, it runs at that size only. run_aoti refuses
other sizes, naming the package's (its metadata's IMAGE_SIZE_KEY). The compiled code does not
check its input unless AOTI_RUNTIME_CHECK_INPUTS=1 is set: at another size it returns no
detections (smaller image) or boxes cut at the exported size (larger), without an error, so a
caller of aoti_load_package compares sizes itself. torch.export cannot keep the size symbolic
through the model as written: detectron2's shapes_to_tensor
(modeling/transformer.py and meta_arch.py) is torch.as_tensor outside torch.jit tracing, which
records the sizes, and torch.linspace(..., steps=H) (modeling/encoder_decoder.py, two_stage.py)
takes its steps as a plain int; both specialise height and width.
"""

from typing import Tuple

import numpy as np
import torch
from detectron2.structures import ImageList
from torch import nn

from .sizes import format_size
from .wrapper import DetectionExportWrapper

__all__ = ["IMAGE_SIZE_KEY", "export_aoti", "run_aoti"]

# the package's metadata entry holding the image size it was exported at, "HxW"
IMAGE_SIZE_KEY = "deformable_detr.image_size"

Detections = Tuple[np.ndarray, np.ndarray, np.ndarray]


class _AOTIWrapper(DetectionExportWrapper):
    """DetectionExportWrapper with a batch-of-one preprocessing that torch.export can follow:
    Detectron2's ImageList.from_tensors pads by amounts held in tensors, which export can only
    read as data-dependent values (the feature sizes would then be unknown). One image needs no
    padding when the backbone asks for none (ResNet's size_divisibility is 0), so the image is
    its own batch and its mask is all valid, as from_tensors and preprocess_image give."""

    def __init__(self, model: nn.Module):
        super().__init__(model)
        backbone = self.model.backbone
        if backbone.size_divisibility > 1 or backbone.padding_constraints:
            raise ValueError(
                f"the aoti export takes backbones that need no padding, got size_divisibility "
                f"{backbone.size_divisibility} and padding_constraints "
                f"{backbone.padding_constraints}"
            )

    def forward(self, image: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        model = self.model
        h, w = image.shape[-2:]
        x = (image.to(model.device) - model.pixel_mean) / model.pixel_std
        images = ImageList(x.unsqueeze(0), [(h, w)])
        mask = x.new_zeros((1, h, w), dtype=torch.bool)
        outputs = model.predict(images, mask)
        (result,) = model.inference(
            outputs["pred_logits"], outputs["pred_boxes"], images.image_sizes
        )
        # detector_postprocess at the image's own size (scale 1): clip, drop empty boxes; its
        # Boxes.clip asserts finite boxes, a data-dependent check export cannot follow
        x1, y1, x2, y2 = result.pred_boxes.tensor.unbind(1)
        boxes = torch.stack([x1.clamp(0, w), y1.clamp(0, h), x2.clamp(0, w), y2.clamp(0, h)], 1)
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        return boxes[keep], result.scores[keep], result.pred_classes[keep]


@torch.no_grad()
def export_aoti(model: nn.Module, image: torch.Tensor, path: str) -> str:
    """Exports model with torch.export on image (3, H, W), compiles it with AOTInductor and
    writes the package to path (.pt2). The package runs at image's size only (see the module's
    note on dynamic sizes). Returns path."""
    exported = torch.export.export(_AOTIWrapper(model), (image,))
    return torch._inductor.aoti_compile_and_package(
        exported,
        package_path=path,
        inductor_configs={"aot_inductor.metadata": {IMAGE_SIZE_KEY: format_size(image.shape[-2:])}},
    )


def run_aoti(path: str, image: torch.Tensor) -> Detections:
    """(boxes, scores, classes) of a saved AOTInductor package on image (3, H, W), which must have
    the size the package was exported at (ValueError otherwise)."""
    runner = torch._inductor.aoti_load_package(path)
    built = runner.get_metadata().get(IMAGE_SIZE_KEY)
    if built is None:
        raise ValueError(f"{path!r} is not a package of export_aoti: no {IMAGE_SIZE_KEY} entry")
    if tuple(image.shape) != (3, *map(int, built.split("x"))):
        raise ValueError(
            f"the AOTInductor package {path!r} was exported for images (3, H, W) of {built} "
            f"pixels and runs at that size only; got an image of shape {tuple(image.shape)}: "
            f"export again at this size (export_model.py --format aoti --sample-image)"
        )
    with torch.no_grad():
        return tuple(o.detach().cpu().numpy() for o in runner(image))
