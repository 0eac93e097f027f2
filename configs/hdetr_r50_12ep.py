"""H-Deformable-DETR: ddetr_r50_plus_12ep.py with hybrid matching, 1,500 one-to-many queries
matched to 6 copies of the targets in training only (their 48.7 box AP at 12 epochs): the
LazyConfig twin of hdetr_r50_12ep.yaml."""

from detectron2.config import LazyCall as L

from deformable_detr.modeling import HybridMatchingCriterion

from .ddetr_r50_plus_12ep import dataloader, lr_multiplier, model, optimizer, train

__all__ = ["dataloader", "lr_multiplier", "model", "optimizer", "train"]

# DEFORMABLE_DETR.HYBRID_MATCHING.NUM_QUERIES_ONE2MANY: the transformer's extra queries, and the
# criterion that matches them
model.transformer.num_queries_one2many = 1500
model.criterion = L(HybridMatchingCriterion)(
    criterion=model.criterion,  # the one-to-one criterion, also applied to the extra queries
    k_one2many=6,  # DEFORMABLE_DETR.HYBRID_MATCHING.K_ONE2MANY: copies of every target
    lambda_one2many=1.0,  # DEFORMABLE_DETR.HYBRID_MATCHING.LAMBDA_ONE2MANY
)
# one level deeper now: DEFORMABLE_DETR.NUM_CLASSES, the transformer's
model.criterion.criterion.num_classes = "${...transformer.num_classes}"
