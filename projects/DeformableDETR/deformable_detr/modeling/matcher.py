"""Hungarian matching of predictions to ground-truth objects (DETR's one-to-one set matching,
with the sigmoid focal class cost of Deformable DETR's release).

Shapes: see the legend in deformable_detr/__init__.py (the encoder's proposals: S in place of
Q; sum(T) targets of the whole batch).
"""

from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import nn
from torchvision.ops import box_convert, generalized_box_iou

__all__ = ["HungarianMatcher", "check_focal", "check_set_outputs", "check_targets"]

# The release adds it inside both logs of the class cost, so that p = 0 or 1 stays finite.
_LOG_EPS = 1e-8


def _check_tensor(
    value, name: str, ndim: int, last: Optional[int] = None, floating: bool = True
) -> None:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if floating and not value.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {value.dtype}")
    if value.dim() != ndim or (last is not None and value.shape[-1] != last):
        expected = f"{ndim}-d" + (f" with last size {last}" if last is not None else "")
        raise ValueError(f"{name} must be {expected}, got shape {tuple(value.shape)}")


def check_set_outputs(
    outputs: Mapping[str, torch.Tensor], name: str = "outputs"
) -> Tuple[int, int]:
    """Checks one set of predictions; raises ValueError/TypeError otherwise.

    Args:
        outputs: {"pred_logits": (N, Q, K) floating, "pred_boxes": (N, Q, 4) floating}.
        name: how `outputs` is called in the messages (e.g. "outputs['aux_outputs'][2]").

    Returns:
        (N, K).
    """
    if not isinstance(outputs, Mapping):
        raise TypeError(f"{name} must be a dict, got {type(outputs).__name__}")
    for key in ("pred_logits", "pred_boxes"):
        if key not in outputs:
            raise ValueError(f"{name} must hold {key!r}, got keys {sorted(outputs)}")
    logits, boxes = outputs["pred_logits"], outputs["pred_boxes"]
    _check_tensor(logits, f"{name}['pred_logits']", 3)
    _check_tensor(boxes, f"{name}['pred_boxes']", 3, last=4)
    N, Q, K = logits.shape
    if N == 0 or K == 0:
        raise ValueError(
            f"{name}['pred_logits'] must have N >= 1 images and K >= 1 classes, "
            f"got shape {tuple(logits.shape)}"
        )
    if boxes.shape[:2] != logits.shape[:2]:
        raise ValueError(
            f"{name}['pred_boxes'] must be (N, Q, 4) = ({N}, {Q}, 4) as "
            f"pred_logits, got {tuple(boxes.shape)}"
        )
    return N, K


def check_targets(targets: Sequence[Mapping], num_images: int, num_classes: int) -> None:
    """Checks the ground truth of a batch; raises ValueError/TypeError otherwise.

    Args:
        targets: N mappings {"labels": (T_i,) int64 in [0, K), "boxes": (T_i, 4) floating,
            finite, with w, h >= 0}.
        num_images: N; num_classes: K.
    """
    if not isinstance(targets, Sequence) or isinstance(targets, (str, bytes)):
        raise TypeError(f"targets must be a list of dicts, got {type(targets).__name__}")
    if len(targets) != num_images:
        raise ValueError(f"targets must hold one dict per image ({num_images}), got {len(targets)}")
    for i, target in enumerate(targets):
        if not isinstance(target, Mapping) or "labels" not in target or "boxes" not in target:
            raise ValueError(
                f"targets[{i}] must be a dict with 'labels' and 'boxes', got "
                f"{sorted(target) if isinstance(target, Mapping) else type(target)}"
            )
        labels, boxes = target["labels"], target["boxes"]
        _check_tensor(labels, f"targets[{i}]['labels']", 1, floating=False)
        if labels.dtype != torch.int64:
            raise TypeError(f"targets[{i}]['labels'] must be int64, got {labels.dtype}")
        _check_tensor(boxes, f"targets[{i}]['boxes']", 2, last=4)
        if len(boxes) != len(labels):
            raise ValueError(
                f"targets[{i}]['boxes'] must be (T, 4) with T = {len(labels)} as "
                f"its labels, got {tuple(boxes.shape)}"
            )
    # The value checks of all images read back one flag: one device sync per call, not several
    # per image; the details are looked up only when something is wrong.
    flags = [
        ((t["labels"] < 0) | (t["labels"] >= num_classes)).any()
        | (~torch.isfinite(t["boxes"]).all(1) | (t["boxes"][:, 2:] < 0).any(1)).any()
        for t in targets
        if len(t["labels"])
    ]
    if not flags or not bool(torch.stack(flags).any()):
        return
    for i, target in enumerate(targets):
        labels, boxes = target["labels"], target["boxes"]
        if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
            raise ValueError(
                f"targets[{i}]['labels'] must lie in [0, {num_classes}), got "
                f"values in [{labels.min().item()}, {labels.max().item()}]"
            )
        bad = ~torch.isfinite(boxes).all(1) | (boxes[:, 2:] < 0).any(1)
        if bad.any():
            raise ValueError(
                f"targets[{i}]['boxes'] must be finite (cx, cy, w, h) with "
                f"w, h >= 0; {int(bad.sum())} are not, e.g. "
                f"{boxes[bad][0].tolist()}"
            )


def check_focal(focal_alpha, focal_gamma) -> None:
    """Checks the parameters of a sigmoid focal loss or cost."""
    if (
        isinstance(focal_alpha, bool)
        or not isinstance(focal_alpha, (int, float))
        or not (0 <= focal_alpha <= 1)
    ):
        raise ValueError(f"focal_alpha must be a number in [0, 1], got {focal_alpha!r}")
    if (
        isinstance(focal_gamma, bool)
        or not isinstance(focal_gamma, (int, float))
        or not (focal_gamma >= 0)
    ):
        raise ValueError(f"focal_gamma must be a non-negative number, got {focal_gamma!r}")


def _raise_not_finite(outputs: Mapping[str, torch.Tensor]) -> None:
    """Raises naming the predictions that hold NaN or inf, if any."""
    bad = [
        f"outputs[{k!r}]"
        for k in ("pred_logits", "pred_boxes")
        if not torch.isfinite(outputs[k]).all()
    ]
    if bad:
        raise ValueError(f"cannot match: {' and '.join(bad)} contain NaN or inf")


class HungarianMatcher(nn.Module):
    """One-to-one assignment of queries to targets that minimises, per image, the sum of

        cost_class * C_cls + cost_bbox * C_L1 + cost_giou * C_giou

    where, with p the predicted probability of the target's class,
        C_cls = alpha (1 - p)^gamma (-log(p + eps)) - (1 - alpha) p^gamma (-log(1 - p + eps)),
        C_L1 = L1 distance of the (cx, cy, w, h) vectors, C_giou = -GIoU of the boxes.

    Args:
        cost_class, cost_bbox, cost_giou: non-negative weights, not all zero.
        focal_alpha, focal_gamma: of the focal class cost (the loss's, in the release).
    """

    def __init__(
        self,
        cost_class: float = 2.0,
        cost_bbox: float = 5.0,
        cost_giou: float = 2.0,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
    ):
        super().__init__()
        weights = {"cost_class": cost_class, "cost_bbox": cost_bbox, "cost_giou": cost_giou}
        for arg, v in weights.items():
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= 0:
                raise ValueError(f"{arg} must be a non-negative number, got {v!r}")
        if not any(weights.values()):
            raise ValueError(f"at least one matching cost must be non-zero, got {weights}")
        check_focal(focal_alpha, focal_gamma)
        self.cost_class, self.cost_bbox, self.cost_giou = (
            float(cost_class),
            float(cost_bbox),
            float(cost_giou),
        )
        self.focal_alpha, self.focal_gamma = float(focal_alpha), float(focal_gamma)

    def cost_matrix(
        self,
        logits: torch.Tensor,
        boxes: torch.Tensor,
        tgt_labels: torch.Tensor,
        tgt_boxes: torch.Tensor,
    ) -> torch.Tensor:
        """The matching cost of every prediction with every target.

        Args:
            logits: (P, K) class logits of P predictions; boxes: (P, 4) their boxes.
            tgt_labels: (T,) int64 classes; tgt_boxes: (T, 4) boxes.

        Returns:
            (P, T) cost.
        """
        prob = logits.sigmoid()[:, tgt_labels]  # (P, T): probability of each target's class
        alpha, gamma = self.focal_alpha, self.focal_gamma
        pos = alpha * (1 - prob) ** gamma * -(prob + _LOG_EPS).log()
        neg = (1 - alpha) * prob**gamma * -(1 - prob + _LOG_EPS).log()
        c_l1 = torch.cdist(boxes, tgt_boxes, p=1)
        c_giou = -generalized_box_iou(
            box_convert(boxes, "cxcywh", "xyxy"), box_convert(tgt_boxes, "cxcywh", "xyxy")
        )
        # The release's order of the sum, so that the floats (and near-ties) match it.
        return self.cost_bbox * c_l1 + self.cost_class * (pos - neg) + self.cost_giou * c_giou

    @torch.no_grad()
    def forward(
        self, outputs: Dict[str, torch.Tensor], targets: List[Dict[str, torch.Tensor]]
    ) -> List[Tuple[torch.Tensor, torch.Tensor]]:
        """Matches each image's predictions to its targets.

        Args:
            outputs: {"pred_logits": (N, Q, K), "pred_boxes": (N, Q, 4)}; other keys ignored.
            targets: N dicts {"labels": (T_i,) int64, "boxes": (T_i, 4)}.

        Returns:
            N pairs (pred_idx, target_idx) of CPU int64 tensors of length min(Q, T_i), pred_idx
            ascending: query pred_idx[j] is matched to target target_idx[j].
        """
        check_targets(targets, *check_set_outputs(outputs))
        # one device sync for both tensors; the names only when something is wrong
        if not bool(
            torch.isfinite(outputs["pred_logits"]).all()
            & torch.isfinite(outputs["pred_boxes"]).all()
        ):
            _raise_not_finite(outputs)
        return self.match(outputs, targets)

    @torch.no_grad()
    def match(
        self, outputs: Dict[str, torch.Tensor], targets: List[Dict[str, torch.Tensor]]
    ) -> List[Tuple[torch.Tensor, torch.Tensor]]:
        """forward() without its input checks, for callers that have checked the inputs already
        (SetCriterion checks them once for all layers)."""
        logits, boxes = outputs["pred_logits"], outputs["pred_boxes"]
        N, Q = logits.shape[:2]
        # One cost matrix for the whole batch, (N Q, sum(T)), is one set of big kernels rather
        # than N small ones; only each image's own block is used below.
        cost = self.cost_matrix(
            logits.flatten(0, 1),
            boxes.flatten(0, 1),
            torch.cat([t["labels"] for t in targets]),
            torch.cat([t["boxes"] for t in targets]).to(boxes.dtype),
        )
        # The one host sync of a matching: the cost's copy into NumPy, in float64, which holds
        # any float dtype exactly (scipy takes no half precision). All that follows reads it on
        # the host.
        cost = cost.view(N, Q, cost.shape[-1]).to("cpu", torch.float64).numpy()
        if not np.isfinite(cost).all():
            # A diverged model fails here with its cause, not inside scipy.
            _raise_not_finite(outputs)
            raise ValueError(
                "the matching cost is not finite: a zero-area predicted or target "
                "box leaves GIoU undefined"
            )
        ends = np.cumsum([len(t["labels"]) for t in targets])[:-1]
        indices = []
        for i, block in enumerate(np.split(cost, ends, axis=-1)):
            rows, cols = linear_sum_assignment(block[i])
            indices.append(
                (torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64))
            )
        return indices
