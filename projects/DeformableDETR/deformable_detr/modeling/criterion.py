"""The set criterion of Deformable DETR: match predictions to targets one-to-one, then score the
matched pairs (and, for the class scores, every unmatched query as background).

Shapes: see the legend in deformable_detr/__init__.py (the encoder's proposals: S in place of
Q; A matched pairs).
"""

from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torchvision.ops import box_convert, generalized_box_iou, sigmoid_focal_loss

from .matcher import HungarianMatcher, check_focal, check_set_outputs, check_targets

__all__ = ["SetCriterion"]

Indices = List[Tuple[torch.Tensor, torch.Tensor]]


def _matched_pairs(indices: Indices, device) -> Tuple[torch.Tensor, torch.Tensor]:
    """The (image, query) index of every matched prediction: two (A,) int64 tensors."""
    image_idx = torch.cat([torch.full_like(src, i) for i, (src, _) in enumerate(indices)])
    query_idx = torch.cat([src for src, _ in indices])
    return image_idx.to(device), query_idx.to(device)


def _matched_targets(targets: Sequence[Mapping], indices: Indices, key: str) -> torch.Tensor:
    """targets[i][key] of every matched target, in the order of `_matched_pairs`: (A, ...)."""
    return torch.cat([t[key][tgt.to(t[key].device)] for t, (_, tgt) in zip(targets, indices)])


def _check_layer(
    outputs: Mapping, name: str, num_images: Optional[int], num_classes: Optional[int]
) -> Tuple[int, int]:
    """check_set_outputs, and that N and K are as given (None: any). Returns (N, K)."""
    N, K = check_set_outputs(outputs, name)
    if num_images not in (None, N) or num_classes not in (None, K):
        raise ValueError(
            f"{name}['pred_logits'] must be (N, Q, K) with N = {num_images or 'any'}"
            f" and K = {num_classes or 'any'}, got "
            f"{tuple(outputs['pred_logits'].shape)}"
        )
    return N, K


class SetCriterion(nn.Module):
    """Weighted Deformable DETR losses, for the last decoder layer, each earlier one
    ("aux_outputs", suffix "_{i}") and the two-stage encoder proposals ("enc_outputs", suffix
    "_enc", scored against class-agnostic targets). Every layer is matched on its own.

    Args:
        num_classes: K, the number of sigmoid class outputs of the decoder's heads.
        matcher: called as matcher(outputs, targets) -> N pairs (pred_idx, target_idx), e.g. a
            HungarianMatcher.
        weight_dict: the weight of each loss term of the chosen losses ("loss_ce" for "labels";
            "loss_bbox" and "loss_giou" for "boxes"); the same weight applies to every layer.
        losses: names of the losses to compute, among "labels" and "boxes".
        focal_alpha, focal_gamma: of the sigmoid focal loss of "labels".
    """

    def __init__(
        self,
        num_classes: int,
        matcher: Callable,
        weight_dict: Mapping[str, float],
        losses: Sequence[str] = ("labels", "boxes"),
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
    ):
        super().__init__()
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
        if not callable(matcher):
            raise TypeError(f"matcher must be callable, got {type(matcher).__name__}")
        if isinstance(losses, str) or not isinstance(losses, Sequence):
            raise TypeError(f"losses must be a sequence of names, got {losses!r}")
        unknown = [name for name in losses if name not in self._LOSSES]
        if unknown or not losses:
            raise ValueError(
                f"losses must be a non-empty selection of {sorted(self._LOSSES)}, "
                f"got {list(losses)}"
            )
        if not isinstance(weight_dict, Mapping):
            raise TypeError(f"weight_dict must be a dict, got {type(weight_dict).__name__}")
        known_terms = {term for terms in self._TERMS.values() for term in terms}
        needed = [term for name in losses for term in self._TERMS[name]]
        missing = [term for term in needed if term not in weight_dict]
        extra = sorted(set(weight_dict) - known_terms)
        if missing or extra:
            raise ValueError(
                f"weight_dict must give a weight to each of {needed} (other known "
                f"terms: {sorted(known_terms - set(needed))}), "
                f"got {dict(weight_dict)}"
            )
        for term, w in weight_dict.items():
            if isinstance(w, bool) or not isinstance(w, (int, float)):
                raise TypeError(f"weight_dict[{term!r}] must be a number, got {w!r}")
        check_focal(focal_alpha, focal_gamma)
        self.num_classes = num_classes
        self.matcher = matcher
        self.weight_dict = {term: float(w) for term, w in weight_dict.items()}
        self.losses = tuple(losses)
        self.focal_alpha, self.focal_gamma = float(focal_alpha), float(focal_gamma)

    def loss_labels(
        self,
        outputs: Mapping[str, torch.Tensor],
        targets: Sequence[Mapping],
        indices: Indices,
        num_boxes: torch.Tensor,
    ) -> Dict[str, torch.Tensor]:
        """Sigmoid focal loss of every (query, class) score against one-hot targets: 1 at a
        matched query's target class, 0 elsewhere; summed and divided by num_boxes.

        Args:
            outputs: with "pred_logits" (N, Q, K).
        """
        logits = outputs["pred_logits"]
        onehot = torch.zeros_like(logits)
        image_idx, query_idx = _matched_pairs(indices, logits.device)
        onehot[
            image_idx, query_idx, _matched_targets(targets, indices, "labels").to(logits.device)
        ] = 1
        loss = sigmoid_focal_loss(
            logits, onehot, alpha=self.focal_alpha, gamma=self.focal_gamma, reduction="sum"
        )
        return {"loss_ce": loss / num_boxes}

    def loss_boxes(
        self,
        outputs: Mapping[str, torch.Tensor],
        targets: Sequence[Mapping],
        indices: Indices,
        num_boxes: torch.Tensor,
    ) -> Dict[str, torch.Tensor]:
        """L1 of the matched (cx, cy, w, h) and 1 - GIoU of the matched boxes, each summed and
        divided by num_boxes.

        Args:
            outputs: with "pred_boxes" (N, Q, 4).
        """
        pred = outputs["pred_boxes"][_matched_pairs(indices, outputs["pred_boxes"].device)]
        gt = _matched_targets(targets, indices, "boxes").to(pred)  # (A, 4)
        loss_bbox = F.l1_loss(pred, gt, reduction="sum")
        # generalized_box_iou is pairwise, (A, A); the matched pairs are its diagonal.
        giou = generalized_box_iou(
            box_convert(pred, "cxcywh", "xyxy"), box_convert(gt, "cxcywh", "xyxy")
        ).diagonal()
        return {"loss_bbox": loss_bbox / num_boxes, "loss_giou": (1 - giou).sum() / num_boxes}

    # name -> the method computing it, and the loss terms it returns.
    _LOSSES = {"labels": loss_labels, "boxes": loss_boxes}
    _TERMS = {"labels": ("loss_ce",), "boxes": ("loss_bbox", "loss_giou")}

    @staticmethod
    def num_boxes(targets: Sequence[Mapping], device) -> torch.Tensor:
        """The normaliser of every loss: the number of target boxes per process, averaged over
        all processes so that every process scales its gradient alike; at least 1. A 0-d float32
        tensor on `device`, not a Python float: reading the all-reduced count back would stop the
        host until the device has run the whole forward."""
        count = torch.tensor(float(sum(len(t["labels"]) for t in targets)), device=device)
        world_size = 1
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(count)
            world_size = dist.get_world_size()
        return torch.clamp(count / world_size, min=1)

    def _set_losses(
        self,
        outputs: Mapping[str, torch.Tensor],
        targets: Sequence[Mapping],
        num_boxes: torch.Tensor,
        suffix: str,
    ) -> Dict[str, torch.Tensor]:
        """Matches one set of predictions and returns its weighted losses, names + suffix."""
        # forward() has checked outputs and targets: a HungarianMatcher need not check again
        match = self.matcher.match if isinstance(self.matcher, HungarianMatcher) else self.matcher
        indices = match(outputs, targets)
        losses = {}
        for name in self.losses:
            for term, value in self._LOSSES[name](
                self, outputs, targets, indices, num_boxes
            ).items():
                losses[term + suffix] = value * self.weight_dict[term]
        return losses

    def forward(
        self, outputs: Mapping, targets: List[Dict[str, torch.Tensor]]
    ) -> Dict[str, torch.Tensor]:
        """
        Args:
            outputs: {"pred_logits": (N, Q, K), "pred_boxes": (N, Q, 4)} of the last decoder
                layer; optionally "aux_outputs": a list of such dicts, one per earlier layer,
                and "enc_outputs": {"pred_logits": (N, S, K'), "pred_boxes": (N, S, 4)}.
            targets: N dicts {"labels": (T_i,) int64 in [0, K), "boxes": (T_i, 4)}.

        Returns:
            Weighted scalar losses by name: e.g. "loss_ce", "loss_bbox", "loss_giou", then
            "loss_ce_0", ... for aux_outputs[0], ..., and "loss_ce_enc", ... for enc_outputs.
        """
        N, _ = _check_layer(outputs, "outputs", None, self.num_classes)
        check_targets(targets, N, self.num_classes)
        aux = outputs.get("aux_outputs", [])
        if not isinstance(aux, Sequence):
            raise TypeError(
                f"outputs['aux_outputs'] must be a list of dicts, got {type(aux).__name__}"
            )
        for i, layer in enumerate(aux):
            _check_layer(layer, f"outputs['aux_outputs'][{i}]", N, self.num_classes)
        if "enc_outputs" in outputs:
            # Class-agnostic proposals may have any K' >= 1 classes: their targets are class 0.
            _check_layer(outputs["enc_outputs"], "outputs['enc_outputs']", N, None)
        return self.compute(outputs, targets)

    def compute(
        self, outputs: Mapping, targets: List[Dict[str, torch.Tensor]]
    ) -> Dict[str, torch.Tensor]:
        """forward() without its input checks, for callers that have checked the inputs already:
        the meta-architecture checks the instances its targets are made of at its own boundary,
        in the one read of the batch's values, so that reading them back here would be a second
        host sync."""
        num_boxes = self.num_boxes(targets, outputs["pred_logits"].device)
        aux = outputs.get("aux_outputs", [])
        last = {k: v for k, v in outputs.items() if k not in ("aux_outputs", "enc_outputs")}
        losses = self._set_losses(last, targets, num_boxes, "")
        for i, layer in enumerate(aux):
            losses.update(self._set_losses(layer, targets, num_boxes, f"_{i}"))
        if "enc_outputs" in outputs:
            agnostic = [{**t, "labels": torch.zeros_like(t["labels"])} for t in targets]
            losses.update(self._set_losses(outputs["enc_outputs"], agnostic, num_boxes, "_enc"))
        return losses
