"""The 2-d sine position encoding of Deformable DETR (Zhu et al., ICLR 2021), as released.

Each pixel's row and column are counted over the valid (unpadded) pixels, normalised to
(0, scale] and encoded by sines and cosines of geometrically spaced frequencies, as in the
Transformer (Vaswani et al., 2017), one half of the channels per axis.

Shapes: see the legend in deformable_detr/__init__.py; here H x W is the feature map's size and
the output has C = 2F channels.
"""

import math

import torch
from torch import nn

__all__ = ["PositionEmbeddingSine", "sine_embedding"]


def sine_embedding(
    coords: torch.Tensor, num_feats: int, temperature: float = 10000
) -> torch.Tensor:
    """(...) coordinates -> (..., F), F = num_feats: channel 2k is sin(p / T^(2k/F)) and channel
    2k+1 cos(p / T^(2k/F)), p the coordinate and T the temperature."""
    dim_t = torch.arange(num_feats, dtype=torch.float32, device=coords.device)
    dim_t = temperature ** (2 * (dim_t // 2) / num_feats)
    pos = coords[..., None] / dim_t  # (..., F)
    # interleave: (..., F/2, 2) -> (..., F) as sin, cos, sin, cos, ...
    return torch.stack((pos[..., 0::2].sin(), pos[..., 1::2].cos()), dim=-1).flatten(-2)


class PositionEmbeddingSine(nn.Module):
    """Sine encoding of each pixel's (y, x) position within its image's valid region.

    Args:
        num_pos_feats: F, features per axis; even, since they come in (sin, cos) pairs.
        temperature: base of the geometric progression of wavelengths.
        normalize: divide the counts by the valid height / width and multiply by ``scale``, so
            every image's valid region spans (0, scale) whatever its size.
        scale: the range the normalised coordinates span (2 pi in the release).
    """

    def __init__(
        self,
        num_pos_feats: int = 128,
        temperature: float = 10000,
        normalize: bool = True,
        scale: float = 2 * math.pi,
    ):
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
        # (N, H, W) -> (N, H, W, F) per axis -> (N, 2F, H, W)
        pos_y = sine_embedding(y_embed, self.num_pos_feats, self.temperature)
        pos_x = sine_embedding(x_embed, self.num_pos_feats, self.temperature)
        return torch.cat((pos_y, pos_x), dim=3).permute(0, 3, 1, 2)
