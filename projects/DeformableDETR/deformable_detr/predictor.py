"""Detectron2's DefaultPredictor with this project's test resize and weights checks.

Shapes: an image (H, W, 3) in, Instances at (H, W) out; the model sees it at the test resize.

Detectron2's own DefaultPredictor resizes with ResizeShortestEdge, which rounds the longer side
where this project's test resize (data/augmentation.py, as released) truncates it: a 480x640
image at INPUT.MIN_SIZE_TEST 128 becomes 128x171 there and 128x170 in evaluation, the demo and
the exports, and scores move by up to about 1e-2. This one resizes as they do.
"""

import logging

from detectron2.data import MetadataCatalog
from detectron2.engine import DefaultPredictor as _Detectron2Predictor
from detectron2.modeling import build_model

from .data import build_detr_augmentation
from .engine import WeightsCheckpointer

__all__ = ["DefaultPredictor"]

logger = logging.getLogger(__name__)


class DefaultPredictor(_Detectron2Predictor):
    """Detectron2's DefaultPredictor (same use: predictor(bgr_image) -> {"instances": ...}, an
    (H, W, 3) uint8 BGR image as cv2.imread gives, predictions in its size), except that it
    resizes with the project's test resize (INPUT.MIN_SIZE_TEST / MAX_SIZE_TEST, the released
    rounding) and loads MODEL.WEIGHTS with WeightsCheckpointer, which refuses a file matching
    nothing in the model; without MODEL.WEIGHTS the model keeps its initial weights, with a
    warning."""

    def __init__(self, cfg):
        if cfg.INPUT.FORMAT not in ("RGB", "BGR"):
            raise ValueError(
                f"DefaultPredictor takes colour images (BGR, as cv2.imread reads them): "
                f"INPUT.FORMAT must be 'RGB' or 'BGR', got {cfg.INPUT.FORMAT!r}"
            )
        self.cfg = cfg.clone()  # the model may change its config
        (self.aug,) = build_detr_augmentation(self.cfg, is_train=False)
        self.model = build_model(self.cfg)
        self.model.eval()
        if len(cfg.DATASETS.TEST):
            self.metadata = MetadataCatalog.get(cfg.DATASETS.TEST[0])
        if cfg.MODEL.WEIGHTS:
            WeightsCheckpointer(self.model).load(cfg.MODEL.WEIGHTS)
        else:
            logger.warning("no MODEL.WEIGHTS given: these are an untrained model's predictions")
        self.input_format = cfg.INPUT.FORMAT
