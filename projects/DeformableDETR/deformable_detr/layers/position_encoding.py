"""The 2-d sine position encoding of Deformable DETR (Zhu et al., ICLR 2021), as released.

Each pixel's row and column are counted over the valid (unpadded) pixels, normalised to
(0, scale] and encoded by sines and cosines of geometrically spaced frequencies, as in the
Transformer (Vaswani et al., 2017), one half of the channels per axis.

Shapes: N batch, H/W the feature map's height and width, F = num_pos_feats features per axis,
C = 2 * F output channels.
"""
import math

import torch
from torch import nn

__all__ = ["PositionEmbeddingSine"]


class PositionEmbeddingSine(nn.Module):
    """Sine encoding of each pixel's (y, x) position within its image's valid region.

    Args:
        num_pos_feats: F, features per axis; even, since they come in (sin, cos) pairs.
        temperature: base of the geometric progression of wavelengths.
        normalize: divide the counts by the valid height / width and multiply by ``scale``, so
            every image's valid region spans (0, scale) whatever its size.
        scale: the range the normalised coordinates span (2 pi in the release).
    """

    def __init__(self, num_pos_feats: int = 128, temperature: float = 10000,
                 normalize: bool = True, scale: float = 2 * math.pi):
        super().__init__()
        if not isinstance(num_pos_feats, int) or num_pos_feats < 2 or num_pos_feats % 2:
            raise ValueError(f"num_pos_feats must be a positive even int, got {num_pos_feats!r}")
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature!r}")
        self.num_pos_feats = num_pos_feats
        self.temperature = temperature
        self.normalize = normalize
        self.scale = scale

    def forward(self, mask: torch.Tensor) -> torch.Tensor:
        """
        Args:
            mask: (N, H, W) bool, True at padded pixels.

        Returns:
            (N, C, H, W) float32: channels [0, F) encode y, [F, 2F) encode x; channel 2k of each
            half is sin(p / T^(2k/F)) and channel 2k+1 is cos(p / T^(2k/F)), p the coordinate.
        """
        if mask.dim() != 3:
            raise ValueError(f"mask must be (N, H, W), got shape {tuple(mask.shape)}")
        if mask.dtype != torch.bool:
            raise TypeError(f"mask must be a bool tensor, got {mask.dtype}")
        not_mask = ~mask
        # 1-based counts of valid pixels up to and including this one
        y_embed = not_mask.cumsum(1, dtype=torch.float32)
        x_embed = not_mask.cumsum(2, dtype=torch.float32)
        if self.normalize:
            # The release's -0.5 moves each count to the pixel centre; the last row / column holds
            # the valid height / width, eps keeps fully padded rows and columns finite.
            eps = 1e-6
            y_embed = (y_embed - 0.5) / (y_embed[:, -1:, :] + eps) * self.scale
            x_embed = (x_embed - 0.5) / (x_embed[:, :, -1:] + eps) * self.scale
        F = self.num_pos_feats
        dim_t = torch.arange(F, dtype=torch.float32, device=mask.device)
        dim_t = self.temperature ** (2 * (dim_t // 2) / F)
        # (N, H, W) -> (N, H, W, F)
        pos_x = x_embed[:, :, :, None] / dim_t
        pos_y = y_embed[:, :, :, None] / dim_t
        # interleave: (N, H, W, F/2, 2) -> (N, H, W, F) as sin, cos, sin, cos, ...
        pos_x = torch.stack((pos_x[..., 0::2].sin(), pos_x[..., 1::2].cos()), dim=4).flatten(3)
        pos_y = torch.stack((pos_y[..., 0::2].sin(), pos_y[..., 1::2].cos()), dim=4).flatten(3)
        return torch.cat((pos_y, pos_x), dim=3).permute(0, 3, 1, 2)
