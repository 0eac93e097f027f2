"""A traceable single-image front of the model for TorchScript and ONNX export.

Shapes: H x W the image's size (already at the test-time resize), R detections kept
(TEST.DETECTIONS_PER_IMAGE, fewer when boxes are empty after clipping, as in the eager model).
"""

import copy
from typing import Tuple

import torch
from torch import nn

__all__ = ["DetectionExportWrapper"]


class DetectionExportWrapper(nn.Module):
    """image (3, H, W) float in the model's input format on a 0-255 scale -> boxes (R, 4) xyxy in
    the image's pixels, scores (R,), classes (R,) int64: what the eager model returns for
    [{"image": image}], computed by the model's own preprocess_image, predict and inference, then
    clipped and filtered as Detectron2's detector_postprocess (which the eager forward applies)
    does at the image's own size."""

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
        # detector_postprocess at scale 1: boxes clipped to the image, empty ones dropped; written
        # out because its Boxes.clip asserts finite boxes, a check on data torch.export refuses
        h, w = image.shape[-2:]
        x1, y1, x2, y2 = result.pred_boxes.tensor.unbind(1)
        boxes = torch.stack([x1.clamp(0, w), y1.clamp(0, h), x2.clamp(0, w), y2.clamp(0, h)], 1)
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        return boxes[keep], result.scores[keep], result.pred_classes[keep]
