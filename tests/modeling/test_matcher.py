"""The Hungarian matcher of Deformable DETR against a brute-force assignment.

Covered:
  * on many small random batches (Q <= 5 queries, T <= 4 targets per image, images with T = 0,
    T < Q, T = Q and T > Q in one batch), the matcher's assignment has the minimal total cost
    found by enumerating every injection with itertools, under a cost written independently here
    (float64, explicit loops, a hand-written GIoU of one pair of boxes); when the optimum is
    unique the assignments are equal; for the release's weights and for other weights and focal
    parameters;
  * the form of the result: N pairs of int64 tensors of length min(Q, T_i), queries ascending;
  * non-finite predictions, degenerate boxes and malformed inputs raise ValueError/TypeError
    naming the culprit.
"""

import itertools
import math
import re

import pytest
import torch

from deformable_detr.modeling.matcher import HungarianMatcher

# ----------------------------------------------------------------------------------------------
# The independent reference: the cost of one (prediction, target) pair and brute-force matching
# ----------------------------------------------------------------------------------------------


def _xyxy(box):
    cx, cy, w, h = box
    return cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2


def pair_giou(a, b):
    """GIoU of two (cx, cy, w, h) boxes: IoU - (enclosing area - union) / enclosing area."""
    ax0, ay0, ax1, ay1 = _xyxy(a)
    bx0, by0, bx1, by1 = _xyxy(b)
    inter = max(0.0, min(ax1, bx1) - max(ax0, bx0)) * max(0.0, min(ay1, by1) - max(ay0, by0))
    union = (ax1 - ax0) * (ay1 - ay0) + (bx1 - bx0) * (by1 - by0) - inter
    enclosing = (max(ax1, bx1) - min(ax0, bx0)) * (max(ay1, by1) - min(ay0, by0))
    return inter / union - (enclosing - union) / enclosing


def _pair_cost(logits, box, label, tgt_box, w_class, w_bbox, w_giou, alpha, gamma):
    """The matching cost of one query (K logits, a box) with one target (a label, a box)."""
    p = 1.0 / (1.0 + math.exp(-logits[label]))
    focal = alpha * (1 - p) ** gamma * -math.log(p + 1e-8) - (1 - alpha) * p**gamma * -math.log(
        1 - p + 1e-8
    )
    l1 = sum(abs(x - y) for x, y in zip(box, tgt_box))
    return w_class * focal + w_bbox * l1 - w_giou * pair_giou(box, tgt_box)


def _brute_force(cost):
    """All injections of the smaller side into the larger, as sorted (query, target) pairs with
    their total cost, cheapest first. cost: Q x T nested lists."""
    Q, T = len(cost), len(cost[0]) if cost else 0
    if T <= Q:
        pairings = [
            tuple(zip(queries, range(T))) for queries in itertools.permutations(range(Q), T)
        ]
    else:
        pairings = [tuple(zip(range(Q), tgts)) for tgts in itertools.permutations(range(T), Q)]
    scored = [(sum(cost[q][t] for q, t in pairs), tuple(sorted(pairs))) for pairs in pairings]
    return sorted(scored)


def random_batch(gen, sizes, Q, K):
    """Random logits, boxes well inside the image, and targets of T_i = sizes[i] objects."""
    N = len(sizes)
    logits = torch.randn(N, Q, K, generator=gen) * 2
    boxes = torch.cat(
        [
            torch.rand(N, Q, 2, generator=gen) * 0.6 + 0.2,
            torch.rand(N, Q, 2, generator=gen) * 0.35 + 0.05,
        ],
        -1,
    )
    targets = []
    for T in sizes:
        tboxes = torch.cat(
            [
                torch.rand(T, 2, generator=gen) * 0.6 + 0.2,
                torch.rand(T, 2, generator=gen) * 0.35 + 0.05,
            ],
            -1,
        )
        targets.append({"labels": torch.randint(0, K, (T,), generator=gen), "boxes": tboxes})
    return {"pred_logits": logits, "pred_boxes": boxes}, targets


WEIGHTS = [
    dict(cost_class=2.0, cost_bbox=5.0, cost_giou=2.0, focal_alpha=0.25, focal_gamma=2.0),
    dict(cost_class=1.0, cost_bbox=3.0, cost_giou=0.5, focal_alpha=0.6, focal_gamma=1.0),
    dict(cost_class=4.0, cost_bbox=0.0, cost_giou=1.0, focal_alpha=0.25, focal_gamma=0.0),
]


@pytest.mark.parametrize("weights", WEIGHTS, ids=["release", "other", "no-l1"])
@pytest.mark.parametrize("seed", range(12))
def test_matches_brute_force(seed, weights):
    gen = torch.Generator().manual_seed(seed)
    Q = 2 + seed % 4  # 2..5
    K = 3
    # T = 0, T = Q, T < Q, T > Q (capped at 4 so the enumeration stays small).
    sizes = [0, min(Q, 4), max(Q - 2, 1), min(Q + 1, 4)]
    outputs, targets = random_batch(gen, sizes, Q, K)
    matcher = HungarianMatcher(**weights)
    indices = matcher(outputs, targets)
    w = (
        weights["cost_class"],
        weights["cost_bbox"],
        weights["cost_giou"],
        weights["focal_alpha"],
        weights["focal_gamma"],
    )

    assert len(indices) == len(sizes)
    for i, (src, tgt) in enumerate(indices):
        T = sizes[i]
        logits = outputs["pred_logits"][i].double().tolist()
        boxes = outputs["pred_boxes"][i].double().tolist()
        labels = targets[i]["labels"].tolist()
        tboxes = targets[i]["boxes"].double().tolist()
        cost = [
            [_pair_cost(logits[q], boxes[q], labels[t], tboxes[t], *w) for t in range(T)]
            for q in range(Q)
        ]
        assert src.dtype == tgt.dtype == torch.int64
        assert len(src) == len(tgt) == min(Q, T)
        assert src.tolist() == sorted(set(src.tolist())) and len(set(tgt.tolist())) == len(tgt)
        if T == 0:
            continue
        ranked = _brute_force(cost)
        best_cost, best_pairs = ranked[0]
        got = sum(cost[q][t] for q, t in zip(src.tolist(), tgt.tolist()))
        assert got == pytest.approx(best_cost, abs=1e-4), (i, got, ranked[:3])
        # The matcher works in float32: compare the pairs only when the optimum is clear.
        if len(ranked) == 1 or ranked[1][0] - best_cost > 1e-3:
            assert tuple(zip(src.tolist(), tgt.tolist())) == best_pairs


def test_all_images_without_targets():
    gen = torch.Generator().manual_seed(0)
    outputs, targets = random_batch(gen, [0, 0], Q=3, K=2)
    for src, tgt in HungarianMatcher()(outputs, targets):
        assert src.dtype == tgt.dtype == torch.int64 and src.numel() == tgt.numel() == 0


def test_prefers_the_matching_box_and_class():
    # Query 2 has the target's box and a confident score for its class; queries 0, 1 neither.
    logits = torch.tensor([[[3.0, -3.0], [-3.0, -3.0], [-3.0, 3.0]]])
    boxes = torch.tensor([[[0.2, 0.2, 0.1, 0.1], [0.8, 0.8, 0.2, 0.2], [0.5, 0.5, 0.3, 0.3]]])
    targets = [{"labels": torch.tensor([1]), "boxes": torch.tensor([[0.5, 0.5, 0.3, 0.3]])}]
    ((src, tgt),) = HungarianMatcher()({"pred_logits": logits, "pred_boxes": boxes}, targets)
    assert src.tolist() == [2] and tgt.tolist() == [0]


# ----------------------------------------------------------------------------------------------
# Errors
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key, value",
    [("pred_boxes", float("nan")), ("pred_boxes", float("inf")), ("pred_logits", float("nan"))],
)
def test_non_finite_predictions(key, value):
    gen = torch.Generator().manual_seed(1)
    outputs, targets = random_batch(gen, [2], Q=3, K=2)
    outputs[key][0, 1, 0] = value
    with pytest.raises(ValueError, match=re.escape(f"outputs['{key}'] contain NaN or inf")):
        HungarianMatcher()(outputs, targets)


def test_degenerate_boxes():
    # Two zero-area boxes at one point: their union and enclosing box are empty, GIoU is 0 / 0.
    outputs = {
        "pred_logits": torch.zeros(1, 1, 2),
        "pred_boxes": torch.tensor([[[0.5, 0.5, 0, 0]]]),
    }
    targets = [{"labels": torch.tensor([0]), "boxes": torch.tensor([[0.5, 0.5, 0.0, 0.0]])}]
    with pytest.raises(ValueError, match="zero-area predicted or target box"):
        HungarianMatcher()(outputs, targets)


def _valid():
    gen = torch.Generator().manual_seed(2)
    return random_batch(gen, [2, 1], Q=3, K=2)


def _labels(value):
    def change(outputs, targets):
        targets[0]["labels"] = value

    return change


def _boxes(value):
    def change(outputs, targets):
        targets[0]["boxes"] = value

    return change


def _pred(key, value):
    def change(outputs, targets):
        outputs[key] = value

    return change


def _drop_target(outputs, targets):
    targets.pop()


BAD_INPUTS = [
    (_pred("pred_logits", torch.zeros(2, 3)), ValueError, r"outputs\['pred_logits'\] must be 3-d"),
    (_pred("pred_boxes", torch.zeros(2, 3, 5)), ValueError, r"outputs\['pred_boxes'\] must be"),
    (_pred("pred_boxes", torch.zeros(2, 4, 4)), ValueError, r"\(N, Q, 4\) = \(2, 3, 4\)"),
    (_pred("pred_logits", torch.zeros(2, 3, 2, dtype=torch.int64)), TypeError, "floating"),
    (_drop_target, ValueError, r"one dict per image \(2\), got 1"),
    (_labels(torch.tensor([[0, 1]])), ValueError, r"targets\[0\]\['labels'\] must be 1-d"),
    (_labels(torch.tensor([0.0, 1.0])), TypeError, r"targets\[0\]\['labels'\]"),
    (_labels(torch.tensor([0, 1], dtype=torch.int32)), TypeError, "must be int64"),
    (_labels(torch.tensor([0, 2])), ValueError, r"must lie in \[0, 2\)"),
    (
        _labels(torch.tensor([0])),
        ValueError,
        r"targets\[0\]\['boxes'\] must be \(T, 4\) with T = 1",
    ),
    (
        _boxes(torch.zeros(2, 3)),
        ValueError,
        r"targets\[0\]\['boxes'\] must be 2-d with last size 4",
    ),
    (_boxes(torch.tensor([[0.5, 0.5, -0.1, 0.2]] * 2)), ValueError, "w, h >= 0"),
]


@pytest.mark.parametrize("change, error, message", BAD_INPUTS)
def test_bad_inputs(change, error, message):
    outputs, targets = _valid()
    change(outputs, targets)
    with pytest.raises(error, match=message) as info:
        HungarianMatcher()(outputs, targets)
    assert type(info.value) is error


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(cost_class=0, cost_bbox=0, cost_giou=0), "at least one matching cost"),
        (dict(cost_bbox=-1.0), "cost_bbox must be a non-negative number"),
        (dict(focal_alpha=1.5), r"focal_alpha must be a number in \[0, 1\]"),
        (dict(focal_gamma=-2.0), "focal_gamma must be a non-negative number"),
    ],
)
def test_bad_construction(kwargs, message):
    with pytest.raises(ValueError, match=message):
        HungarianMatcher(**kwargs)
