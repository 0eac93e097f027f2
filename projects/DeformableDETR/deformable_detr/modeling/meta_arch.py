"""The Deformable DETR meta-architecture for Detectron2.

Shapes: see the legend in deformable_detr/__init__.py.
"""

import math
from typing import Dict, List, Optional, Sequence

import torch
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, build_backbone, detector_postprocess
from detectron2.structures import Boxes, ImageList, Instances
from torch import nn
from torchvision.ops import box_convert

from ..layers import PositionEmbeddingSine
from .criterion import SetCriterion
from .fine_tuning import dataset_class_names, fit_state_dict
from .hybrid_matching import HybridMatchingCriterion
from .input_checks import check_batched_inputs
from .matcher import HungarianMatcher
from .neck import build_neck
from .per_image import features_per_image
from .symbolic_sizes import pad_images, sizes_tensor
from .released_names import MODEL_ALIASES, released_aliases, use_released_names
from .transformer import build_transformer

__all__ = ["DeformableDETR"]


@META_ARCH_REGISTRY.register()
@released_aliases(MODEL_ALIASES)
class DeformableDETR(nn.Module):
    """Backbone -> neck -> deformable transformer (with the class and box heads of every decoder
    layer) -> set criterion in training, top-k detections at inference.

    Training returns the weighted losses; inference returns, per image, the top
    `detections_per_image` (query, class) pairs by sigmoid score as Instances in the original
    image size (no NMS). With `batch_invariant_inference` (the default) the backbone and the
    neck see each image at its own size at test time, so that its detections do not depend on
    the other images of its batch; training always runs on the padded batch, as released.

    state_dict() and load_state_dict() use the released checkpoints' names
    (see released_names.py). `class_names` (the dataset's, K of them) are saved in this project's
    checkpoints; a file with other classes loads with its class heads fitted to the model
    (fine_tuning.py), keeping the rows of classes of the same name with `keep_matching_classes`.
    """

    @configurable
    def __init__(
        self,
        *,
        backbone,
        neck,
        position_embedding,
        transformer,
        criterion,
        aux_loss: bool,
        pixel_mean,
        pixel_std,
        detections_per_image: int = 100,
        batch_invariant_inference: bool = True,
        class_names: Optional[Sequence[str]] = None,
        keep_matching_classes: bool = False,
    ):
        super().__init__()
        if (
            not isinstance(detections_per_image, int)
            or isinstance(detections_per_image, bool)
            or detections_per_image < 1
        ):
            raise ValueError(
                f"detections_per_image (TEST.DETECTIONS_PER_IMAGE) must be an int "
                f">= 1, got {detections_per_image!r}"
            )
        if len(pixel_mean) != len(pixel_std) or not pixel_mean:
            raise ValueError(
                f"pixel_mean and pixel_std (MODEL.PIXEL_MEAN / PIXEL_STD) need one "
                f"value per image channel each, got {list(pixel_mean)} and "
                f"{list(pixel_std)}"
            )
        if not all(math.isfinite(s) and s > 0 for s in pixel_std):
            raise ValueError(
                f"pixel_std (MODEL.PIXEL_STD) must be finite and > 0, got {list(pixel_std)}"
            )
        one2many = getattr(getattr(transformer, "queries", None), "num_queries_one2many", 0)
        if bool(one2many) != isinstance(criterion, HybridMatchingCriterion):
            raise ValueError(
                f"hybrid matching needs both halves: the transformer's one-to-many queries "
                f"(num_queries_one2many, here {one2many}) and a HybridMatchingCriterion (here "
                f"{type(criterion).__name__}); MODEL.DEFORMABLE_DETR.HYBRID_MATCHING sets both"
            )
        self.backbone = backbone
        self.neck = neck
        self.position_embedding = position_embedding
        self.transformer = transformer
        self.criterion = criterion
        self.aux_loss = aux_loss
        self.detections_per_image = detections_per_image
        self.batch_invariant_inference = batch_invariant_inference
        num_classes = transformer.heads.class_embed[0].out_features
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(
                f"class_names must name the model's {num_classes} classes "
                f"(MODEL.DEFORMABLE_DETR.NUM_CLASSES), got {len(class_names)}: {list(class_names)}"
            )
        # the dataset's K class names: saved in checkpoints, and matched by name when a file
        # with other classes loads (fine_tuning.py)
        self.class_names = None if class_names is None else list(class_names)
        self.keep_matching_classes = keep_matching_classes
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)
        use_released_names(self)

    @classmethod
    def from_config(cls, cfg):
        c = cfg.MODEL.DEFORMABLE_DETR
        if cfg.INPUT.FORMAT in ("RGB", "BGR") and len(cfg.MODEL.PIXEL_MEAN) != 3:
            raise ValueError(
                f"MODEL.PIXEL_MEAN must have 3 values for INPUT.FORMAT "
                f"{cfg.INPUT.FORMAT!r} (one per channel), got {cfg.MODEL.PIXEL_MEAN}"
            )
        backbone = build_backbone(cfg)
        matcher = HungarianMatcher(
            cost_class=c.SET_COST_CLASS,
            cost_bbox=c.SET_COST_BBOX,
            cost_giou=c.SET_COST_GIOU,
            focal_alpha=c.FOCAL_ALPHA,
            focal_gamma=c.FOCAL_GAMMA,
        )
        weight_dict = {
            "loss_ce": c.CLASS_LOSS_COEF,
            "loss_bbox": c.BBOX_LOSS_COEF,
            "loss_giou": c.GIOU_LOSS_COEF,
        }
        criterion = SetCriterion(
            c.NUM_CLASSES,
            matcher,
            weight_dict,
            losses=tuple(c.LOSSES),
            focal_alpha=c.FOCAL_ALPHA,
            focal_gamma=c.FOCAL_GAMMA,
        )
        hybrid = c.HYBRID_MATCHING
        if hybrid.NUM_QUERIES_ONE2MANY:
            criterion = HybridMatchingCriterion(
                criterion, hybrid.K_ONE2MANY, hybrid.LAMBDA_ONE2MANY
            )
        return dict(
            backbone=backbone,
            neck=build_neck(cfg, backbone.output_shape()),
            position_embedding=PositionEmbeddingSine(
                c.HIDDEN_DIM // 2,
                temperature=c.POSITION_TEMPERATURE,
                normalize=True,
                scale=c.POSITION_SCALE,
            ),
            transformer=build_transformer(cfg),
            criterion=criterion,
            aux_loss=c.AUX_LOSS,
            pixel_mean=cfg.MODEL.PIXEL_MEAN,
            pixel_std=cfg.MODEL.PIXEL_STD,
            detections_per_image=cfg.TEST.DETECTIONS_PER_IMAGE,
            batch_invariant_inference=c.BATCH_INVARIANT_INFERENCE,
            class_names=dataset_class_names(
                list(cfg.DATASETS.TRAIN) or list(cfg.DATASETS.TEST), c.NUM_CLASSES
            ),
            keep_matching_classes=c.KEEP_MATCHING_CLASSES,
        )

    @property
    def device(self):
        return self.pixel_mean.device

    def fit_state_dict(self, state_dict: Dict, file_class_names: Optional[Sequence[str]]):
        """Fits a file's class heads and learned queries to this model before it loads
        (fine_tuning.py); called by every Detectron2 checkpointer (checkpoint/)."""
        fit_state_dict(self, state_dict, file_class_names)

    def preprocess_image(self, batched_inputs: List[Dict]):
        """Normalises and pads the images. Returns the ImageList and the padding mask
        (N, H_pad, W_pad), True outside each image's own size."""
        images = [
            (x["image"].to(self.device) - self.pixel_mean) / self.pixel_std for x in batched_inputs
        ]
        images = pad_images(
            images, self.backbone.size_divisibility, self.backbone.padding_constraints
        )
        N, _, H, W = images.tensor.shape
        mask = torch.ones((N, H, W), dtype=torch.bool, device=self.device)
        for i, (h, w) in enumerate(images.image_sizes):
            mask[i, :h, :w] = False
        return images, mask

    def _set_outputs(self, logits: torch.Tensor, boxes: torch.Tensor) -> Dict:
        """Every layer's (J, N, Q, K) logits and (J, N, Q, 4) boxes as the criterion takes them:
        the last layer's, and the earlier ones' as "aux_outputs"."""
        outputs = {"pred_logits": logits[-1], "pred_boxes": boxes[-1]}
        if self.aux_loss:
            outputs["aux_outputs"] = [
                {"pred_logits": a, "pred_boxes": b} for a, b in zip(logits[:-1], boxes[:-1])
            ]
        return outputs

    def predict(self, images: ImageList, mask: torch.Tensor) -> Dict:
        """The network's raw outputs: "pred_logits" (N, Q, K), "pred_boxes" (N, Q, 4) normalised
        cxcywh of the last layer; "aux_outputs" for the earlier layers; "enc_outputs" for the
        two-stage proposals; "one2many", the same for hybrid matching's extra queries (training
        only)."""
        invariant = self.batch_invariant_inference and not self.training
        if invariant:
            srcs, masks = features_per_image(self.backbone, self.neck, images, mask)
        else:
            srcs, masks = self.neck(self.backbone(images.tensor), mask)
        pos = [self.position_embedding(m).to(s.dtype) for s, m in zip(srcs, masks)]
        out = self.transformer(srcs, masks, pos, rank_padding=not invariant)
        outputs = self._set_outputs(out["logits"], out["boxes"])
        if "proposals" in out:
            outputs["enc_outputs"] = out["proposals"]
        if "one2many" in out:
            outputs["one2many"] = self._set_outputs(**out["one2many"])
        return outputs

    def forward(self, batched_inputs: List[Dict]):
        """
        Args:
            batched_inputs: Detectron2's list of dicts with "image" (3, H, W) in the input format,
                and in training "instances" (gt_boxes in the image's pixels, gt_classes); for
                inference optionally "height" and "width" of the original image.
        Returns:
            training: dict of weighted losses; inference: list of {"instances": Instances}.
        """
        square_size = self.backbone.padding_constraints.get("square_size", 0)
        num_classes = getattr(self.criterion, "num_classes", None)
        check_batched_inputs(
            batched_inputs, len(self.pixel_mean), self.training, square_size, num_classes
        )
        images, mask = self.preprocess_image(batched_inputs)
        outputs = self.predict(images, mask)
        if self.training:
            targets = self.prepare_targets(batched_inputs, images.image_sizes)
            # the instances are checked above, with the images: a SetCriterion need not read
            # their values back a second time
            criterion = self.criterion
            if isinstance(criterion, (SetCriterion, HybridMatchingCriterion)):
                criterion = criterion.compute
            return criterion(outputs, targets)
        results = self.inference(outputs["pred_logits"], outputs["pred_boxes"], images.image_sizes)
        processed = []
        for result, inputs, size in zip(results, batched_inputs, images.image_sizes):
            height, width = inputs.get("height", size[0]), inputs.get("width", size[1])
            processed.append({"instances": detector_postprocess(result, height, width)})
        return processed

    def prepare_targets(self, batched_inputs, image_sizes):
        """Ground truth as the criterion takes it: labels (T,) and boxes (T, 4) cxcywh
        normalised by the image's own (unpadded) size."""
        targets = []
        for inputs, (h, w) in zip(batched_inputs, image_sizes):
            gt = inputs["instances"].to(self.device)
            scale = torch.tensor([w, h, w, h], dtype=torch.float32, device=self.device)
            boxes = box_convert(gt.gt_boxes.tensor / scale, "xyxy", "cxcywh")
            targets.append({"labels": gt.gt_classes, "boxes": boxes})
        return targets

    def inference(self, logits, boxes, image_sizes) -> List[Instances]:
        """Top-k (query, class) pairs by sigmoid score, boxes in the resized image's pixels.

        Args:
            logits: (N, Q, K); boxes: (N, Q, 4) normalised cxcywh; image_sizes: N (h, w).
        """
        N, Q, K = logits.shape
        prob = logits.sigmoid().view(N, Q * K)
        k = min(self.detections_per_image, Q * K)
        scores, index = prob.topk(k, dim=1)  # (N, k)
        query_index = torch.div(index, K, rounding_mode="floor")
        labels = index % K
        xyxy = box_convert(boxes, "cxcywh", "xyxy")  # (N, Q, 4)
        xyxy = torch.gather(xyxy, 1, query_index.unsqueeze(-1).expand(-1, -1, 4))
        results = []
        for i, (h, w) in enumerate(image_sizes):
            result = Instances((h, w))
            scale = sizes_tensor([w, h, w, h], xyxy.device).to(xyxy.dtype)
            result.pred_boxes = Boxes(xyxy[i] * scale)
            result.scores = scores[i]
            result.pred_classes = labels[i]
            results.append(result)
        return results
