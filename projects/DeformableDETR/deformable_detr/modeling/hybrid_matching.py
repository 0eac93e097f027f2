"""Hybrid matching (Jia et al., "DETRs with Hybrid Matching", CVPR 2023; H-Deformable-DETR): in
training, a second group of queries is matched one-to-many, to the targets repeated K times, and
its losses are added with a weight lambda. The two groups do not see each other in the decoder's
self-attention. Inference, export and the two-stage top-k use the one-to-one queries alone.

Shapes: see the legend in deformable_detr/__init__.py; Q_1 one-to-one queries of the Q in use.
"""

import math
from typing import Dict, List, Mapping, Optional

import torch
from torch import nn

from .criterion import SetCriterion

__all__ = ["HybridMatchingCriterion", "group_attention_mask", "repeat_targets"]


def group_attention_mask(num_queries: int, num_one2one: int, device) -> Optional[torch.Tensor]:
    """The decoder self-attention's mask between the two groups of queries.

    Args:
        num_queries: Q, both groups; the first num_one2one (Q_1) are the one-to-one queries.
    Returns:
        (Q, Q) bool, True where a query may not attend (the other group's queries), as
        nn.MultiheadAttention reads it; None when there is one group only.
    """
    if num_queries <= num_one2one:
        return None
    one2many = torch.arange(num_queries, device=device) >= num_one2one  # (Q,)
    return one2many[:, None] != one2many[None, :]


def repeat_targets(targets: List[Dict[str, torch.Tensor]], k: int) -> List[Dict[str, torch.Tensor]]:
    """Each image's targets k times over: labels (T_i,) -> (k T_i,), boxes (T_i, 4) ->
    (k T_i, 4), the copies one after another."""
    return [{"labels": t["labels"].repeat(k), "boxes": t["boxes"].repeat(k, 1)} for t in targets]


class HybridMatchingCriterion(nn.Module):
    """A one-to-one criterion on the model's outputs, plus the same criterion on the one-to-many
    queries' outputs (outputs["one2many"], every decoder layer, no encoder proposals) against the
    targets repeated `k_one2many` times; those terms are multiplied by `lambda_one2many` and named
    with the suffix "_one2many" ("loss_ce_one2many", "loss_ce_0_one2many", ...).

    Args:
        criterion: the one-to-one criterion (a SetCriterion), e.g. that of the released recipe.
        k_one2many: K >= 1, the copies of every target.
        lambda_one2many: lambda >= 0, the weight of the one-to-many losses.
    """

    def __init__(self, criterion: nn.Module, k_one2many: int = 6, lambda_one2many: float = 1.0):
        super().__init__()
        if not callable(criterion):
            raise TypeError(f"criterion must be callable, got {type(criterion).__name__}")
        if isinstance(k_one2many, bool) or not isinstance(k_one2many, int) or k_one2many < 1:
            raise ValueError(
                f"k_one2many (MODEL.DEFORMABLE_DETR.HYBRID_MATCHING.K_ONE2MANY) must be an int "
                f">= 1, got {k_one2many!r}"
            )
        if (
            isinstance(lambda_one2many, bool)
            or not isinstance(lambda_one2many, (int, float))
            or not (math.isfinite(lambda_one2many) and lambda_one2many >= 0)
        ):
            raise ValueError(
                f"lambda_one2many (MODEL.DEFORMABLE_DETR.HYBRID_MATCHING.LAMBDA_ONE2MANY) must be "
                f"a finite number >= 0, got {lambda_one2many!r}"
            )
        self.criterion = criterion
        self.k_one2many, self.lambda_one2many = k_one2many, float(lambda_one2many)

    @property
    def num_classes(self) -> Optional[int]:
        """K of the one-to-one criterion (the meta-architecture checks the labels against it)."""
        return getattr(self.criterion, "num_classes", None)

    def _losses(self, outputs: Mapping, targets: List[Dict], checked: bool) -> Dict:
        if "one2many" not in outputs:
            raise ValueError(
                "hybrid matching needs the one-to-many queries' outputs (outputs['one2many']): "
                "give the transformer num_queries_one2many > 0 "
                "(MODEL.DEFORMABLE_DETR.HYBRID_MATCHING.NUM_QUERIES_ONE2MANY)"
            )
        criterion = self.criterion
        if checked and isinstance(criterion, SetCriterion):
            criterion = criterion.compute
        one2one = {k: v for k, v in outputs.items() if k != "one2many"}
        losses = criterion(one2one, targets)
        one2many = criterion(outputs["one2many"], repeat_targets(targets, self.k_one2many))
        for name, value in one2many.items():
            losses[name + "_one2many"] = value * self.lambda_one2many
        return losses

    def forward(self, outputs: Mapping, targets: List[Dict[str, torch.Tensor]]) -> Dict:
        """
        Args:
            outputs: a SetCriterion's outputs of the one-to-one queries, and "one2many": the
                same ("pred_logits", "pred_boxes", "aux_outputs") of the one-to-many queries.
            targets: N dicts {"labels": (T_i,), "boxes": (T_i, 4)}.
        Returns:
            the one-to-one criterion's losses, and each of its terms on the one-to-many
            queries, times lambda, with the suffix "_one2many".
        """
        return self._losses(outputs, targets, checked=False)

    def compute(self, outputs: Mapping, targets: List[Dict[str, torch.Tensor]]) -> Dict:
        """forward() for callers that have checked the targets (see SetCriterion.compute)."""
        return self._losses(outputs, targets, checked=True)
