"""deformable_detr.DefaultPredictor gives the detections of evaluation (the test mapper's resize),
where Detectron2's DefaultPredictor resizes another way."""

import cv2
import numpy as np
import pytest
import torch
from detectron2.engine import DefaultPredictor as Detectron2Predictor

from deformable_detr import DefaultPredictor
from deformable_detr.data import DetrDatasetMapper
from export_cases import SHALLOW
from model_cases import NO_WEIGHTS, model_cfg

# a 480x640 image at MIN_SIZE_TEST 128: the released rounding gives 128x170 (640 * 128 / 480 =
# 170.7, truncated), Detectron2's ResizeShortestEdge 128x171 (rounded)
OPTS = [*SHALLOW, *NO_WEIGHTS, "INPUT.MIN_SIZE_TEST", "128"]


def _sizes_seen(model):
    """The image sizes the model is called with, appended as it runs."""
    seen = []
    model.register_forward_pre_hook(lambda _, args: seen.extend(d["image"].shape for d in args[0]))
    return seen


def test_predictor_resizes_and_predicts_as_evaluation(tmp_path):
    png = str(tmp_path / "image.png")  # lossless: the mapper and cv2 read the same pixels
    cv2.imwrite(png, np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8))
    cfg = model_cfg("ddetr_r50.yaml", OPTS)
    predictor = DefaultPredictor(cfg)
    seen = _sizes_seen(predictor.model)
    actual = predictor(cv2.imread(png))["instances"]
    mapped = DetrDatasetMapper(cfg, is_train=False)(
        {"file_name": png, "height": 480, "width": 640, "image_id": 0}
    )
    with torch.no_grad():
        expected = predictor.model([mapped])[0]["instances"]
    assert seen == [(3, 128, 170), (3, 128, 170)]
    assert actual.image_size == (480, 640) and len(actual) == 100
    torch.testing.assert_close(actual.scores, expected.scores, rtol=0, atol=0)
    torch.testing.assert_close(actual.pred_boxes.tensor, expected.pred_boxes.tensor, rtol=0, atol=0)
    # why this predictor exists: Detectron2's rounds the longer side the other way
    theirs = Detectron2Predictor(cfg)
    seen = _sizes_seen(theirs.model)
    theirs(cv2.imread(png))
    assert seen == [(3, 128, 171)]


def test_predictor_names_a_format_it_cannot_feed():
    cfg = model_cfg("ddetr_r50.yaml", [*OPTS, "INPUT.FORMAT", "L"])
    with pytest.raises(ValueError, match=r"INPUT.FORMAT must be 'RGB' or 'BGR', got 'L'"):
        DefaultPredictor(cfg)
