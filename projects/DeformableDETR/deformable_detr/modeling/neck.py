"""The neck of Deformable DETR: projects the chosen backbone maps to the transformer's width and
adds coarser levels, with the image's padding mask downsampled to every level (as released).

Shapes: see the legend in deformable_detr/__init__.py (C_f channels and H_f x W_f size of backbone
map f).
"""

from typing import Dict, List, Tuple

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.utils.registry import Registry
from torch import nn

__all__ = ["NECK_REGISTRY", "DeformableDETRNeck", "build_neck", "downsample_mask"]

NECK_REGISTRY = Registry("DEFORMABLE_DETR_NECK")
NECK_REGISTRY.__doc__ = """Necks of Deformable DETR, chosen by MODEL.DEFORMABLE_DETR.NECK_NAME.

A neck is called with (cfg, input_shape), input_shape the backbone's output_shape(), and maps
(features, mask) to one (N, C, H_l, W_l) map and one (N, H_l, W_l) padding mask per level.
"""


def build_neck(cfg, input_shape: Dict[str, ShapeSpec]) -> nn.Module:
    """Builds the neck named by cfg.MODEL.DEFORMABLE_DETR.NECK_NAME on a backbone's output."""
    return NECK_REGISTRY.get(cfg.MODEL.DEFORMABLE_DETR.NECK_NAME)(cfg, input_shape)


def downsample_mask(mask: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """(N, H, W) bool padding mask -> (N, h, w) bool, nearest neighbour as in the release (pixel i
    of the output takes source pixel floor(i * H / h))."""
    # the batch goes in the channel dimension, as the release does
    return F.interpolate(mask[None].float(), size=size).to(torch.bool)[0]


@NECK_REGISTRY.register()
class DeformableDETRNeck(nn.Module):
    """Per level a 1x1 convolution (backbone maps) or a stride-2 3x3 convolution (extra levels),
    each followed by GroupNorm(32). The first extra level is computed from the raw last backbone
    map, the next from the previous projected level.

    Args:
        input_shape: the backbone's output_shape(), by feature name.
        in_features: names of the backbone maps to use, from high to low resolution.
        hidden_dim: C, the transformer's width; a multiple of 32 (GroupNorm groups).
        num_feature_levels: L >= len(in_features); the difference is made of extra levels.

    Parameter names match the released checkpoint: ``input_proj.{l}.0`` is level l's convolution
    and ``input_proj.{l}.1`` its GroupNorm.
    """

    @configurable
    def __init__(
        self,
        *,
        input_shape: Dict[str, ShapeSpec],
        in_features: List[str],
        hidden_dim: int = 256,
        num_feature_levels: int = 4,
    ):
        super().__init__()
        in_features = list(in_features)
        if not in_features:
            raise ValueError("in_features must name at least one backbone feature, got []")
        missing = [f for f in in_features if f not in input_shape]
        if missing:
            raise ValueError(
                f"in_features {missing} are not backbone outputs; available: {list(input_shape)}"
            )
        strides = [input_shape[f].stride for f in in_features]
        for (f0, s0), (f1, s1) in zip(zip(in_features, strides), zip(in_features[1:], strides[1:])):
            if s0 is not None and s1 is not None and s1 < s0:
                # extra levels continue from the last map, and level embeddings are per position
                raise ValueError(
                    f"in_features must go from high to low resolution (non-decreasing stride), "
                    f"got {in_features} with strides {strides}: {f1!r} (stride {s1}) comes after "
                    f"{f0!r} (stride {s0})"
                )
        if not isinstance(hidden_dim, int) or hidden_dim < 32 or hidden_dim % 32:
            raise ValueError(
                f"hidden_dim must be a positive multiple of 32 (GroupNorm groups), "
                f"got {hidden_dim!r}"
            )
        if not isinstance(num_feature_levels, int) or num_feature_levels < len(in_features):
            raise ValueError(
                f"num_feature_levels must be an int >= len(in_features) = {len(in_features)}, "
                f"got {num_feature_levels!r}"
            )
        self.in_features = in_features
        self.num_feature_levels = num_feature_levels

        projections = [
            nn.Sequential(
                nn.Conv2d(input_shape[f].channels, hidden_dim, kernel_size=1),
                nn.GroupNorm(32, hidden_dim),
            )
            for f in in_features
        ]
        in_channels = input_shape[in_features[-1]].channels
        for _ in range(num_feature_levels - len(in_features)):
            projections.append(
                nn.Sequential(
                    nn.Conv2d(in_channels, hidden_dim, kernel_size=3, stride=2, padding=1),
                    nn.GroupNorm(32, hidden_dim),
                )
            )
            in_channels = hidden_dim
        self.input_proj = nn.ModuleList(projections)
        self.reset_parameters()

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]):
        c = cfg.MODEL.DEFORMABLE_DETR
        return dict(
            input_shape=input_shape,
            in_features=c.IN_FEATURES,
            hidden_dim=c.HIDDEN_DIM,
            num_feature_levels=c.NUM_FEATURE_LEVELS,
        )

    def reset_parameters(self):
        """The released initialisation: Xavier-uniform convolutions with zero bias; GroupNorm
        keeps its default (weight 1, bias 0)."""
        for proj in self.input_proj:
            nn.init.xavier_uniform_(proj[0].weight, gain=1)
            nn.init.zeros_(proj[0].bias)

    def forward(
        self, features: Dict[str, torch.Tensor], mask: torch.Tensor
    ) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
        """
        Args:
            features: backbone maps by name, each (N, C_f, H_f, W_f); must hold in_features.
            mask: (N, H, W) bool, True at the padded pixels of each image.

        Returns:
            srcs: L tensors (N, C, H_l, W_l); extra levels have H_l = ceil(H_{l-1} / 2).
            masks: L bool tensors (N, H_l, W_l), the image mask downsampled to each level.
        """
        missing = [f for f in self.in_features if f not in features]
        if missing:
            raise ValueError(f"features lack {missing}; got {list(features)}")
        if mask.dim() != 3:
            raise ValueError(f"mask must be (N, H, W), got shape {tuple(mask.shape)}")
        if mask.dtype != torch.bool:
            raise TypeError(f"mask must be a bool tensor, got {mask.dtype}")
        batch = features[self.in_features[0]].shape[0]
        if mask.shape[0] != batch:
            raise ValueError(
                f"mask must have the features' batch size {batch}, got {mask.shape[0]}"
            )

        srcs = [proj(features[f]) for f, proj in zip(self.in_features, self.input_proj)]
        for i in range(len(self.in_features), self.num_feature_levels):
            # the first extra level sees the raw last backbone map, as released
            x = features[self.in_features[-1]] if i == len(self.in_features) else srcs[-1]
            srcs.append(self.input_proj[i](x))
        masks = [downsample_mask(mask, src.shape[-2:]) for src in srcs]
        return srcs, masks
