"""Batch-invariant features: the backbone and the neck run on every image at its own size, images
of one size together, and the feature levels are padded afterwards.

In a padded batch an image's features depend on its companions: the backbone's convolutions see
the padding at the image's right and bottom borders, and the neck's GroupNorm takes statistics
over the padded maps. Here each image is padded only as far as the backbone itself asks
(size_divisibility, padding_constraints), exactly as when it is alone in its batch, so its
features are those of batch 1; the levels are then padded with zeros and masked, which the
transformer ignores.

Shapes: see the legend in deformable_detr/__init__.py.
"""

from typing import Dict, List, Tuple

import torch
from detectron2.structures import ImageList
from torch import nn

__all__ = ["features_per_image"]


def features_per_image(
    backbone: nn.Module, neck: nn.Module, images: ImageList, mask: torch.Tensor
) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
    """The neck's levels of each image computed at its own size, padded to a common size.

    Args:
        backbone: a Detectron2 Backbone; neck: maps (features, mask) to L levels and masks.
        images: the normalised, padded batch; image_sizes gives each image's (h_i, w_i).
        mask: (N, H, W) bool, True outside each image.
    Returns:
        srcs: L tensors (N, C, H_l, W_l), zero where an image's own level ends;
        masks: L bool tensors (N, H_l, W_l), True there and at the image's own padding.
    """
    groups: Dict[Tuple[int, int], List[int]] = {}
    for i, size in enumerate(images.image_sizes):
        groups.setdefault(tuple(size), []).append(i)

    per_group = []  # (indices, srcs, masks) with srcs L x (G, C, h_l, w_l)
    for (h, w), index in groups.items():
        # each image cut back to its own size, then padded as the backbone asks, as at batch 1
        group = ImageList.from_tensors(
            [images.tensor[i, :, :h, :w] for i in index],
            backbone.size_divisibility,
            padding_constraints=backbone.padding_constraints,
        )
        H, W = group.tensor.shape[-2:]
        srcs, masks = neck(backbone(group.tensor), mask[index, :H, :W])
        per_group.append((index, srcs, masks))

    out_srcs, out_masks = [], []
    for level in range(len(per_group[0][1])):
        N = len(images.image_sizes)
        C = per_group[0][1][level].shape[1]
        H = max(srcs[level].shape[-2] for _, srcs, _ in per_group)
        W = max(srcs[level].shape[-1] for _, srcs, _ in per_group)
        src = per_group[0][1][level].new_zeros((N, C, H, W))
        level_mask = torch.ones((N, H, W), dtype=torch.bool, device=mask.device)
        for index, srcs, masks in per_group:
            h, w = srcs[level].shape[-2:]
            src[index, :, :h, :w] = srcs[level]
            level_mask[index, :h, :w] = masks[level]
        out_srcs.append(src)
        out_masks.append(level_mask)
    return out_srcs, out_masks
