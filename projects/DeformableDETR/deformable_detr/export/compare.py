"""How far an exported model's detections are from the eager model's.

Shapes: R detections; boxes (R, 4) xyxy in pixels, scores (R,), classes (R,).
"""

from typing import Dict, Sequence, Tuple

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

__all__ = ["compare_detections", "eager_detections", "SCORE_TOLERANCE", "BOX_TOLERANCE_PX"]

SCORE_TOLERANCE = 1e-4
BOX_TOLERANCE_PX = 1e-2


def _pair(expected, actual, order, score_tolerance, box_tolerance_px) -> Dict:
    (eb, es, ec), (ab, as_, ac) = expected, (x[order] for x in actual)
    score_diff = float(np.abs(es - as_).max(initial=0.0))
    box_diff = float(np.abs(eb - ab).max(initial=0.0))
    classes_agree = bool(np.array_equal(ec, ac))
    return dict(
        max_score_diff=score_diff,
        max_box_diff=box_diff,
        classes_agree=classes_agree,
        ok=classes_agree and score_diff <= score_tolerance and box_diff <= box_tolerance_px,
    )


def compare_detections(
    expected: Sequence[np.ndarray],
    actual: Sequence[np.ndarray],
    score_tolerance: float = SCORE_TOLERANCE,
    box_tolerance_px: float = BOX_TOLERANCE_PX,
) -> Dict:
    """Pairs each actual detection with one expected detection and reports the worst pair.

    Both are (boxes, scores, classes), sorted by score as the model returns them. Detections are
    paired by position when that pairing is within the tolerances; otherwise (two scores within
    rounding of each other may come out of top-k in either order) by the assignment
    (scipy's linear_sum_assignment) minimising class mismatches first, then score differences
    in units of score_tolerance plus box differences in units of box_tolerance_px. A pairing
    exists for the same set of detections in any order, so this forgives reordering only.

    Returns dict: count (expected, actual), max_score_diff, max_box_diff (px), classes_agree,
    and ok (same count, classes agree, both differences within the tolerances).
    """
    expected = tuple(np.asarray(x) for x in expected)
    actual = tuple(np.asarray(x) for x in actual)
    (eb, es, ec), (ab, as_, ac) = expected, actual
    if len(es) != len(as_):
        return dict(
            count=(len(es), len(as_)),
            max_score_diff=float("inf"),
            max_box_diff=float("inf"),
            classes_agree=False,
            ok=False,
        )
    tolerances = (score_tolerance, box_tolerance_px)
    result = _pair(expected, actual, np.arange(len(es)), *tolerances)
    if not result["ok"]:
        box_cost = np.abs(eb[:, None] - ab[None]).max(-1) / box_tolerance_px
        score_cost = np.abs(es[:, None] - as_[None]) / score_tolerance
        class_cost = (ec[:, None] != ac[None]) * 1e9
        _, order = linear_sum_assignment(class_cost + score_cost + box_cost)
        result = _pair(expected, actual, order, *tolerances)
    return dict(count=(len(es), len(as_)), **result)


@torch.no_grad()
def eager_detections(model, image: torch.Tensor) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(boxes, scores, classes) of the eager model (in eval mode) on image (3, H, W), on the CPU,
    as an export returns them."""
    inst = model([{"image": image}])[0]["instances"].to("cpu")
    return inst.pred_boxes.tensor.numpy(), inst.scores.numpy(), inst.pred_classes.numpy()
