"""The set criterion of Deformable DETR against numbers worked by hand.

Covered:
  * a tiny example (N = 1, Q = 2, K = 2, one target) whose focal, L1 and GIoU terms are worked
    out below with plain math, under the release's weights and others;
  * auxiliary layers (suffix "_0", "_1", each matched on its own) and two-stage encoder
    proposals (suffix "_enc", scored against class-agnostic targets, also with K' = 1);
  * the normaliser: boxes of the whole batch, averaged over processes, at least 1;
  * a random batch against the release's form of the loss, written independently in float64;
  * images without targets: finite loss, zero box terms, every score pushed down;
  * gradients reach pred_logits and the matched pred_boxes only;
  * unknown loss names, weights and malformed inputs raise ValueError/TypeError.
"""

import math

import pytest
import torch

from deformable_detr.modeling.criterion import SetCriterion
from deformable_detr.modeling.matcher import HungarianMatcher
from test_matcher import pair_giou, random_batch

RELEASE_WEIGHTS = {"loss_ce": 2.0, "loss_bbox": 5.0, "loss_giou": 2.0}
LN3 = math.log(3.0)


def _criterion(weights=RELEASE_WEIGHTS, num_classes=2, **kwargs):
    return SetCriterion(num_classes, HungarianMatcher(), weights, **kwargs)


def _focal(p, t, alpha=0.25, gamma=2.0):
    """Focal loss of one probability p against a 0/1 target t."""
    if t:
        return -alpha * (1 - p) ** gamma * math.log(p)
    return -(1 - alpha) * p**gamma * math.log(1 - p)


# The tiny example. Logits +-ln 3 and 0 have sigmoids 0.75, 0.25 and 0.5.
#   query 0: scores (0.25, 0.5), box (0.6, 0.6, 0.4, 0.4) -> xyxy (0.4, 0.4, 0.8, 0.8)
#   query 1: scores (0.75, 0.25), box (0.2, 0.2, 0.1, 0.1), far from the target
#   target: class 1, box (0.5, 0.5, 0.4, 0.4) -> xyxy (0.3, 0.3, 0.7, 0.7)
# Query 0 matches (cost ~ 0.2 against ~ 6.7 for query 1: its L1 alone is 1.2 x 5).
def _example():
    logits = torch.tensor([[[-LN3, 0.0], [LN3, -LN3]]], requires_grad=True)
    boxes = torch.tensor([[[0.6, 0.6, 0.4, 0.4], [0.2, 0.2, 0.1, 0.1]]], requires_grad=True)
    targets = [{"labels": torch.tensor([1]), "boxes": torch.tensor([[0.5, 0.5, 0.4, 0.4]])}]
    return {"pred_logits": logits, "pred_boxes": boxes}, targets


# Focal loss over the 4 (query, class) pairs; only (query 0, class 1) is positive:
#   q0 c0: 0.75 * 0.25^2 * -ln 0.75 = 0.013485    q0 c1: 0.25 * 0.5^2 * -ln 0.5 = 0.043322
#   q1 c0: 0.75 * 0.75^2 * -ln 0.25 = 0.584843    q1 c1: as q0 c0 = 0.013485
# summed 0.655135, over num_boxes = 1.
CE = _focal(0.25, 0) + _focal(0.5, 1) + _focal(0.75, 0) + _focal(0.25, 0)
# L1 of (0.6, 0.6, 0.4, 0.4) - (0.5, 0.5, 0.4, 0.4): 0.1 + 0.1 + 0 + 0.
BBOX = 0.2
# Intersection (0.4..0.7)^2 = 0.09; union 0.16 + 0.16 - 0.09 = 0.23; enclosing box (0.3..0.8)^2 =
# 0.25; GIoU = 0.09 / 0.23 - (0.25 - 0.23) / 0.25 = 0.311304, so 1 - GIoU = 0.688696.
GIOU = 1 - (0.09 / 0.23 - (0.25 - 0.23) / 0.25)
# Encoder proposals: the target becomes class 0, so (query 0, class 0) is the positive pair:
#   q0 c0: 0.25 * 0.75^2 * -ln 0.25 = 0.194948   q0 c1: 0.75 * 0.5^2 * -ln 0.5 = 0.129965
#   q1 c0: 0.584843, q1 c1: 0.013485 as before; summed 0.923241. Query 0 still matches.
CE_ENC = _focal(0.25, 1) + _focal(0.5, 0) + _focal(0.75, 0) + _focal(0.25, 0)


def test_hand_numbers():
    assert CE == pytest.approx(0.655135, abs=1e-6) and GIOU == pytest.approx(0.688696, abs=1e-6)
    outputs, targets = _example()
    losses = _criterion()(outputs, targets)
    assert set(losses) == {"loss_ce", "loss_bbox", "loss_giou"}
    assert losses["loss_ce"].item() == pytest.approx(2 * CE, rel=1e-5)
    assert losses["loss_bbox"].item() == pytest.approx(5 * BBOX, rel=1e-5)
    assert losses["loss_giou"].item() == pytest.approx(2 * GIOU, rel=1e-5)


@pytest.mark.parametrize(
    "weights",
    [
        {"loss_ce": 1, "loss_bbox": 1, "loss_giou": 1},
        {"loss_ce": 3.0, "loss_bbox": 0.5, "loss_giou": 0.0},
    ],
)
def test_weights(weights):
    outputs, targets = _example()
    losses = _criterion(weights)(outputs, targets)
    for term, value in (("loss_ce", CE), ("loss_bbox", BBOX), ("loss_giou", GIOU)):
        assert losses[term].item() == pytest.approx(weights[term] * value, rel=1e-5, abs=1e-7)


def test_only_the_chosen_losses():
    outputs, targets = _example()
    losses = _criterion({"loss_ce": 2.0}, losses=("labels",))(outputs, targets)
    assert list(losses) == ["loss_ce"] and losses["loss_ce"].item() == pytest.approx(2 * CE)


def test_aux_layers_are_matched_on_their_own():
    outputs, targets = _example()
    # Layer 0: the boxes in swapped order and every score 0.5, so the near box, now query 1,
    # matches; scored with the last layer's match (query 0) its L1 would be 1.2, not 0.2.
    # Focal: (q1, c1) positive 0.25 * 0.5^2 * -ln 0.5, three negatives 0.75 * 0.5^2 * -ln 0.5.
    layer0 = {
        "pred_logits": torch.zeros(1, 2, 2, requires_grad=True),
        "pred_boxes": outputs["pred_boxes"].flip(1),
    }
    layer1 = {k: v for k, v in outputs.items()}
    outputs["aux_outputs"] = [layer0, layer1]
    losses = _criterion()(outputs, targets)
    terms = ("loss_ce", "loss_bbox", "loss_giou")
    assert set(losses) == {t + s for t in terms for s in ("", "_0", "_1")}
    expected = {
        "": (CE, BBOX, GIOU),
        "_1": (CE, BBOX, GIOU),
        "_0": (_focal(0.5, 1) + 3 * _focal(0.5, 0), BBOX, GIOU),
    }
    for suffix, values in expected.items():
        for term, weight, value in zip(terms, (2, 5, 2), values):
            assert losses[term + suffix].item() == pytest.approx(weight * value, rel=1e-5), (
                term + suffix
            )


def test_enc_outputs_are_class_agnostic():
    outputs, targets = _example()
    outputs["enc_outputs"] = {k: v for k, v in outputs.items()}
    losses = _criterion()(outputs, targets)
    assert losses["loss_ce_enc"].item() == pytest.approx(2 * CE_ENC, rel=1e-5)
    assert losses["loss_bbox_enc"].item() == pytest.approx(5 * BBOX, rel=1e-5)
    assert losses["loss_giou_enc"].item() == pytest.approx(2 * GIOU, rel=1e-5)
    assert losses["loss_ce"].item() == pytest.approx(2 * CE, rel=1e-5)
    assert targets[0]["labels"].tolist() == [1], "the caller's targets must stay as they were"


def test_enc_outputs_with_one_class():
    outputs, targets = _example()
    # One score per proposal, (0.25, 0.75): only class 0, positive for query 0.
    outputs["enc_outputs"] = {
        "pred_logits": outputs["pred_logits"][..., :1],
        "pred_boxes": outputs["pred_boxes"],
    }
    losses = _criterion()(outputs, targets)
    assert losses["loss_ce_enc"].item() == pytest.approx(
        2 * (_focal(0.25, 1) + _focal(0.75, 0)), rel=1e-5
    )


def _random_batch(seed, sizes, Q=6, K=3):
    outputs, targets = random_batch(torch.Generator().manual_seed(seed), sizes, Q, K)
    return {k: v.requires_grad_() for k, v in outputs.items()}, targets


def _image(outputs, targets, i):
    return {k: v[i : i + 1] for k, v in outputs.items()}, targets[i : i + 1]


def test_normalised_by_the_boxes_of_the_batch():
    # Image 0 has 3 targets, image 1 has none: the batch divides by 3, image 1 alone by 1.
    outputs, targets = _random_batch(0, [3, 0])
    criterion = _criterion(num_classes=3)
    batch = criterion(outputs, targets)
    first = criterion(*_image(outputs, targets, 0))
    second = criterion(*_image(outputs, targets, 1))
    assert batch["loss_ce"].item() == pytest.approx(
        (3 * first["loss_ce"].item() + 1 * second["loss_ce"].item()) / 3, rel=1e-5
    )
    for term in ("loss_bbox", "loss_giou"):
        assert batch[term].item() == pytest.approx(first[term].item(), rel=1e-5)
        assert second[term].item() == 0


def test_release_form_on_a_random_batch():
    outputs, targets = _random_batch(1, [2, 4, 1])
    indices = HungarianMatcher()(outputs, targets)
    losses = _criterion({"loss_ce": 1, "loss_bbox": 1, "loss_giou": 1}, num_classes=3)(
        outputs, targets
    )
    logits = outputs["pred_logits"].detach().double()
    N, Q, K = logits.shape
    onehot = torch.zeros_like(logits)
    l1 = giou = 0.0
    for i, (src, tgt) in enumerate(indices):
        for q, t in zip(src.tolist(), tgt.tolist()):
            onehot[i, q, targets[i]["labels"][t]] = 1
            pred, gt = outputs["pred_boxes"][i, q].tolist(), targets[i]["boxes"][t].tolist()
            l1 += sum(abs(a - b) for a, b in zip(pred, gt))
            giou += 1 - pair_giou(pred, gt)
    # The release: sigmoid_focal_loss(...).mean(1).sum() / num_boxes * Q, num_boxes = 7.
    p = logits.sigmoid()
    focal = -(0.25 * onehot * (1 - p) ** 2 * p.log() + 0.75 * (1 - onehot) * p**2 * (1 - p).log())
    assert losses["loss_ce"].item() == pytest.approx((focal.mean(1).sum() / 7 * Q).item(), rel=1e-5)
    assert losses["loss_bbox"].item() == pytest.approx(l1 / 7, rel=1e-5)
    assert losses["loss_giou"].item() == pytest.approx(giou / 7, rel=1e-5)


def test_num_boxes_is_averaged_over_processes(monkeypatch):
    # A fake group of 2 processes, where the other one holds 5 boxes: (3 + 5) / 2 = 4.
    def all_reduce(tensor):
        tensor += 5

    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda: 2)
    monkeypatch.setattr(torch.distributed, "all_reduce", all_reduce)
    targets = [{"labels": torch.zeros(n, dtype=torch.int64)} for n in (2, 1)]
    assert SetCriterion.num_boxes(targets, "cpu") == 4.0


def test_num_boxes_is_at_least_one():
    assert SetCriterion.num_boxes([{"labels": torch.zeros(0, dtype=torch.int64)}], "cpu") == 1.0


def test_image_without_targets():
    outputs, _ = _example()
    targets = [{"labels": torch.zeros(0, dtype=torch.int64), "boxes": torch.zeros(0, 4)}]
    losses = _criterion()(outputs, targets)
    assert all(torch.isfinite(v) for v in losses.values())
    assert losses["loss_bbox"].item() == 0 and losses["loss_giou"].item() == 0
    # Every pair is negative; num_boxes is clamped to 1.
    expected = _focal(0.25, 0) + _focal(0.5, 0) + _focal(0.75, 0) + _focal(0.25, 0)
    assert losses["loss_ce"].item() == pytest.approx(2 * expected, rel=1e-5)
    sum(losses.values()).backward()
    assert (outputs["pred_logits"].grad > 0).all(), "every score must be pushed down"
    assert (outputs["pred_boxes"].grad == 0).all()


def test_gradients():
    outputs, targets = _example()
    outputs["aux_outputs"] = [{k: v * 1 for k, v in outputs.items()}]
    sum(_criterion()(outputs, targets).values()).backward()
    assert (outputs["pred_logits"].grad != 0).all()
    grad = outputs["pred_boxes"].grad[0]
    assert (grad[0, :2] != 0).all(), "the matched box must move"
    assert (grad[1] == 0).all(), "an unmatched box has no box loss"


# ----------------------------------------------------------------------------------------------
# Errors
# ----------------------------------------------------------------------------------------------


def test_unknown_loss_name():
    with pytest.raises(ValueError, match=r"\['boxes', 'labels'\], got \['labels', 'masks'\]"):
        _criterion(losses=("labels", "masks"))
    with pytest.raises(TypeError, match="losses must be a sequence of names"):
        _criterion(losses="labels")


@pytest.mark.parametrize(
    "weights", [{"loss_ce": 2.0, "loss_bbox": 5.0}, dict(RELEASE_WEIGHTS, loss_gio=2.0)]
)
def test_weight_dict_names_every_term(weights):
    with pytest.raises(ValueError, match=r"weight_dict must give a weight to each of \['loss_ce',"):
        _criterion(weights)


def test_bad_construction():
    with pytest.raises(ValueError, match="num_classes must be a positive int"):
        _criterion(num_classes=0)
    with pytest.raises(TypeError, match=r"weight_dict\['loss_ce'\] must be a number"):
        _criterion(dict(RELEASE_WEIGHTS, loss_ce="2"))
    with pytest.raises(ValueError, match="focal_alpha"):
        _criterion(focal_alpha=-0.5)


def _set(path, value):
    """A change of the example's inputs: path = ("targets", 0, "boxes") and the like."""

    def change(outputs, targets):
        node = {"outputs": outputs, "targets": targets}
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value

    return change


BAD_INPUTS = [
    (
        _set(("targets", 0, "boxes"), torch.zeros(1, 3)),
        ValueError,
        r"targets\[0\]\['boxes'\] must be 2-d with last size 4, got shape \(1, 3\)",
    ),
    (
        _set(("targets", 0, "boxes"), torch.zeros(2, 4)),
        ValueError,
        r"targets\[0\]\['boxes'\] must be \(T, 4\) with T = 1",
    ),
    (
        _set(("targets", 0, "labels"), torch.tensor([[1]])),
        ValueError,
        r"targets\[0\]\['labels'\] must be 1-d",
    ),
    (_set(("targets", 0, "labels"), torch.tensor([2])), ValueError, r"must lie in \[0, 2\)"),
    (
        _set(("targets", 0), {"labels": torch.tensor([1])}),
        ValueError,
        r"targets\[0\] must be a dict with 'labels' and 'boxes'",
    ),
    (_set(("outputs", "pred_logits"), torch.zeros(1, 2, 3)), ValueError, r"K = 2, got \(1, 2, 3\)"),
    (
        _set(
            ("outputs", "aux_outputs"),
            [{"pred_logits": torch.zeros(1, 2, 2), "pred_boxes": torch.zeros(1, 2, 3)}],
        ),
        ValueError,
        r"outputs\['aux_outputs'\]\[0\]\['pred_boxes'\] must be 3-d with last size 4",
    ),
    (
        _set(
            ("outputs", "enc_outputs"),
            {"pred_logits": torch.zeros(2, 5, 1), "pred_boxes": torch.zeros(2, 5, 4)},
        ),
        ValueError,
        r"outputs\['enc_outputs'\]\['pred_logits'\] must be \(N, Q, K\) with N = 1",
    ),
]


@pytest.mark.parametrize("change, error, message", BAD_INPUTS)
def test_bad_inputs(change, error, message):
    outputs, targets = _example()
    change(outputs, targets)
    with pytest.raises(error, match=message) as info:
        _criterion()(outputs, targets)
    assert type(info.value) is error
