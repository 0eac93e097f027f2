"""The Deformable DETR meta-architecture for Detectron2.

Shapes: N batch, C model width, Q object queries, K classes, T targets of an image, D decoder
layers, L feature levels.
"""
import copy
import math
from typing import Dict, List

import torch
from detectron2.config import configurable
from detectron2.layers.wrappers import shapes_to_tensor
from detectron2.modeling import META_ARCH_REGISTRY, build_backbone, detector_postprocess
from detectron2.structures import Boxes, ImageList, Instances
from torch import nn
from torchvision.ops import box_convert

from ..layers import PositionEmbeddingSine
from .box_head import MLP
from .criterion import SetCriterion
from .input_checks import check_batched_inputs
from .matcher import HungarianMatcher
from .neck import build_neck
from .per_image import features_per_image
from .transformer import build_transformer

__all__ = ["DeformableDETR"]


@META_ARCH_REGISTRY.register()
class DeformableDETR(nn.Module):
    """Backbone -> neck -> deformable transformer -> class and box heads on every decoder layer.

    Training returns the weighted losses; inference returns, per image, the top
    `detections_per_image` (query, class) pairs by sigmoid score as Instances in the original
    image size (no NMS). With `batch_invariant_inference` (the default) the backbone and the
    neck see each image at its own size at test time, so that its detections do not depend on
    the other images of its batch; training always runs on the padded batch, as released.
    """

    @configurable
    def __init__(self, *, backbone, neck, position_embedding, transformer, criterion,
                 num_classes: int, num_queries: int, aux_loss: bool, with_box_refine: bool,
                 two_stage: bool, pixel_mean, pixel_std, detections_per_image: int = 100,
                 batch_invariant_inference: bool = True):
        super().__init__()
        for name, value in (("num_classes", num_classes), ("num_queries", num_queries),
                            ("detections_per_image", detections_per_image)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if len(pixel_mean) != len(pixel_std) or not pixel_mean:
            raise ValueError(f"pixel_mean and pixel_std (MODEL.PIXEL_MEAN / PIXEL_STD) need one "
                             f"value per image channel each, got {list(pixel_mean)} and "
                             f"{list(pixel_std)}")
        if not all(math.isfinite(s) and s > 0 for s in pixel_std):
            raise ValueError(f"pixel_std (MODEL.PIXEL_STD) must be finite and > 0, got "
                             f"{list(pixel_std)}")
        self.backbone = backbone
        self.neck = neck
        self.position_embedding = position_embedding
        self.transformer = transformer
        self.criterion = criterion
        self.aux_loss = aux_loss
        self.with_box_refine = with_box_refine
        self.two_stage = two_stage
        self.detections_per_image = detections_per_image
        self.batch_invariant_inference = batch_invariant_inference
        hidden = transformer.d_model
        if not two_stage:
            self.query_embed = nn.Embedding(num_queries, hidden * 2)
        self.class_embed, self.bbox_embed = self._make_heads(hidden, num_classes)
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)

    def _make_heads(self, hidden, num_classes):
        """One class and one box head per decoder layer (plus one for the two-stage proposals):
        copies with refinement, else the same module repeated, with the released init."""
        class_head = nn.Linear(hidden, num_classes)
        prior = 0.01  # initial foreground probability
        nn.init.constant_(class_head.bias, -math.log((1 - prior) / prior))
        box_head = MLP(hidden, hidden, 4, 3)
        nn.init.zeros_(box_head.layers[-1].weight)
        nn.init.zeros_(box_head.layers[-1].bias)
        num_pred = len(self.transformer.decoder.layers) + (1 if self.two_stage else 0)
        if self.with_box_refine:
            class_heads = nn.ModuleList(copy.deepcopy(class_head) for _ in range(num_pred))
            box_heads = nn.ModuleList(copy.deepcopy(box_head) for _ in range(num_pred))
            # only the first layer starts from small boxes; later ones refine
            nn.init.constant_(box_heads[0].layers[-1].bias[2:], -2.0)
        else:
            nn.init.constant_(box_head.layers[-1].bias[2:], -2.0)
            class_heads = nn.ModuleList(class_head for _ in range(num_pred))
            box_heads = nn.ModuleList(box_head for _ in range(num_pred))
        if self.two_stage:
            for head in box_heads:
                nn.init.zeros_(head.layers[-1].bias[2:])
        return class_heads, box_heads

    @classmethod
    def from_config(cls, cfg):
        c = cfg.MODEL.DEFORMABLE_DETR
        if cfg.INPUT.FORMAT in ("RGB", "BGR") and len(cfg.MODEL.PIXEL_MEAN) != 3:
            raise ValueError(f"MODEL.PIXEL_MEAN must have 3 values for INPUT.FORMAT "
                             f"{cfg.INPUT.FORMAT!r} (one per channel), got {cfg.MODEL.PIXEL_MEAN}")
        backbone = build_backbone(cfg)
        matcher = HungarianMatcher(
            cost_class=c.SET_COST_CLASS, cost_bbox=c.SET_COST_BBOX, cost_giou=c.SET_COST_GIOU,
            focal_alpha=c.FOCAL_ALPHA, focal_gamma=c.FOCAL_GAMMA)
        weight_dict = {"loss_ce": c.CLASS_LOSS_COEF, "loss_bbox": c.BBOX_LOSS_COEF,
                       "loss_giou": c.GIOU_LOSS_COEF}
        criterion = SetCriterion(c.NUM_CLASSES, matcher, weight_dict, losses=tuple(c.LOSSES),
                                 focal_alpha=c.FOCAL_ALPHA, focal_gamma=c.FOCAL_GAMMA)
        return dict(
            backbone=backbone,
            neck=build_neck(cfg, backbone.output_shape()),
            position_embedding=PositionEmbeddingSine(
                c.HIDDEN_DIM // 2, temperature=c.POSITION_TEMPERATURE, normalize=True,
                scale=c.POSITION_SCALE),
            transformer=build_transformer(cfg),
            criterion=criterion,
            num_classes=c.NUM_CLASSES,
            num_queries=c.NUM_QUERIES,
            aux_loss=c.AUX_LOSS,
            with_box_refine=c.WITH_BOX_REFINE,
            two_stage=c.TWO_STAGE,
            pixel_mean=cfg.MODEL.PIXEL_MEAN,
            pixel_std=cfg.MODEL.PIXEL_STD,
            detections_per_image=cfg.TEST.DETECTIONS_PER_IMAGE,
            batch_invariant_inference=c.BATCH_INVARIANT_INFERENCE,
        )

    @property
    def device(self):
        return self.pixel_mean.device

    def preprocess_image(self, batched_inputs: List[Dict]):
        """Normalises and pads the images. Returns the ImageList and the padding mask
        (N, H_pad, W_pad), True outside each image's own size."""
        images = [(x["image"].to(self.device) - self.pixel_mean) / self.pixel_std
                  for x in batched_inputs]
        images = ImageList.from_tensors(
            images, self.backbone.size_divisibility,
            padding_constraints=self.backbone.padding_constraints)
        N, _, H, W = images.tensor.shape
        mask = torch.ones((N, H, W), dtype=torch.bool, device=self.device)
        for i, (h, w) in enumerate(images.image_sizes):
            mask[i, :h, :w] = False
        return images, mask

    def predict(self, images: ImageList, mask: torch.Tensor) -> Dict:
        """The network's raw outputs: "pred_logits" (N, Q, K), "pred_boxes" (N, Q, 4) normalised
        cxcywh of the last layer; "aux_outputs" for the earlier layers; "enc_outputs" for the
        two-stage proposals."""
        invariant = self.batch_invariant_inference and not self.training
        if invariant:
            srcs, masks = features_per_image(self.backbone, self.neck, images, mask)
        else:
            srcs, masks = self.neck(self.backbone(images.tensor), mask)
        pos = [self.position_embedding(m).to(s.dtype) for s, m in zip(srcs, masks)]
        query_embed = None if self.two_stage else self.query_embed.weight
        out = self.transformer(srcs, masks, pos, query_embed, self.class_embed, self.bbox_embed,
                               refine=self.with_box_refine, rank_padding=not invariant)
        hs, boxes = out["hs"], out["boxes"]  # (D, N, Q, C), (D, N, Q, 4)
        logits = [head(h) for head, h in zip(self.class_embed, hs)]  # D x (N, Q, K)
        outputs = {"pred_logits": logits[-1], "pred_boxes": boxes[-1]}
        if self.aux_loss:
            outputs["aux_outputs"] = [{"pred_logits": a, "pred_boxes": b}
                                      for a, b in zip(logits[:-1], boxes[:-1])]
        if self.two_stage:
            outputs["enc_outputs"] = {"pred_logits": out["enc_logits"],
                                      "pred_boxes": out["enc_boxes"]}
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
        check_batched_inputs(batched_inputs, len(self.pixel_mean), self.training, square_size)
        images, mask = self.preprocess_image(batched_inputs)
        outputs = self.predict(images, mask)
        if self.training:
            targets = self.prepare_targets(batched_inputs, images.image_sizes)
            return self.criterion(outputs, targets)
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
            # traceable (torch.tensor would record the traced size as a constant)
            scale = shapes_to_tensor([w, h, w, h], xyxy.device).to(xyxy.dtype)
            result.pred_boxes = Boxes(xyxy[i] * scale)
            result.scores = scores[i]
            result.pred_classes = labels[i]
            results.append(result)
        return results
