"""A traceable single-image front of the model for TorchScript and ONNX export.

Shapes: H x W the image's size (already at the test-time resize), R detections kept
(TEST.DETECTIONS_PER_IMAGE, fewer when boxes are empty after clipping, as in the eager model).
"""

import copy
from typing import Tuple

import torch
from detectron2.modeling import detector_postprocess
from torch import nn

__all__ = ["DetectionExportWrapper"]


class DetectionExportWrapper(nn.Module):
    """image (3, H, W) float in the model's input format on a 0-255 scale -> boxes (R, 4) xyxy in
    the image's pixels, scores (R,), classes (R,) int64: what the eager model returns for
    [{"image": image}], computed by the model's own preprocess_image, predict, inference and
    Detectron2's detector_postprocess (which the eager forward applies too)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        model = copy.deepcopy(model).eval()
        # At batch 1 the padded path is bit-identical to the batch-invariant one (tested in
        # tests/modeling/test_batch_invariance.py) and has no per-size grouping, which would fix the
        # image size in an exported graph.
        model.batch_invariant_inference = False
        self.model = model

    def forward(self, image: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        images, mask = self.model.preprocess_image([{"image": image}])
        outputs = self.model.predict(images, mask)
        (result,) = self.model.inference(
            outputs["pred_logits"], outputs["pred_boxes"], images.image_sizes
        )
        result = detector_postprocess(result, image.shape[-2], image.shape[-1])
        return result.pred_boxes.tensor, result.scores, result.pred_classes
