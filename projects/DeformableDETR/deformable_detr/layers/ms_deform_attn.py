"""The multi-scale deformable attention module (Zhu et al., ICLR 2021, section 4.1).

Each query attends to P sampling points per head and level around its reference point; the
offsets and attention weights are predicted from the query itself.

Shapes: see the legend in deformable_detr/__init__.py.
"""

import math

import torch
from torch import nn

from .ms_deform_attn_op import ms_deform_attn_unchecked

__all__ = ["MSDeformAttn"]


class MSDeformAttn(nn.Module):
    """Multi-scale deformable attention with the released model's initialisation.

    Args:
        d_model: C, the width of queries and values.
        n_levels: L, the number of feature levels.
        n_heads: M; must divide d_model.
        n_points: P, sampling points per head and level.
        deterministic: on CUDA (Triton kernels), a backward bitwise the same from run to run,
            without float atomics (see `ms_deform_attn`); the CPU's always is.
    """

    def __init__(
        self,
        d_model: int = 256,
        n_levels: int = 4,
        n_heads: int = 8,
        n_points: int = 4,
        deterministic: bool = False,
    ):
        super().__init__()
        for name, v in (
            ("d_model", d_model),
            ("n_levels", n_levels),
            ("n_heads", n_heads),
            ("n_points", n_points),
        ):
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if d_model % n_heads != 0:
            raise ValueError(f"d_model ({d_model}) must be divisible by n_heads ({n_heads})")
        self.d_model, self.n_levels, self.n_heads, self.n_points = (
            d_model,
            n_levels,
            n_heads,
            n_points,
        )
        self.deterministic = deterministic
        self.sampling_offsets = nn.Linear(d_model, n_heads * n_levels * n_points * 2)
        self.attention_weights = nn.Linear(d_model, n_heads * n_levels * n_points)
        self.value_proj = nn.Linear(d_model, d_model)
        self.output_proj = nn.Linear(d_model, d_model)
        self.reset_parameters()

    def reset_parameters(self):
        """The released initialisation: each head starts looking in its own direction (angle
        2 pi m / M, scaled to unit max-norm), point k at distance k + 1; uniform attention."""
        M, L, P = self.n_heads, self.n_levels, self.n_points
        nn.init.zeros_(self.sampling_offsets.weight)
        thetas = torch.arange(M, dtype=torch.float32) * (2.0 * math.pi / M)
        grid = torch.stack([thetas.cos(), thetas.sin()], -1)  # (M, 2)
        grid = grid / grid.abs().max(-1, keepdim=True).values
        # (M, 2) -> (M, L, P, 2), point k scaled by k + 1
        grid = grid[:, None, None, :].repeat(1, L, P, 1)
        grid = grid * torch.arange(1, P + 1, dtype=torch.float32)[None, None, :, None]
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.reshape(-1))
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        nn.init.xavier_uniform_(self.value_proj.weight)
        nn.init.zeros_(self.value_proj.bias)
        nn.init.xavier_uniform_(self.output_proj.weight)
        nn.init.zeros_(self.output_proj.bias)

    def _check(self, query, reference_points, value, padding_mask):
        C, L = self.d_model, self.n_levels
        if query.dim() != 3 or query.shape[-1] != C:
            raise ValueError(f"query must be (N, Lq, {C}), got {tuple(query.shape)}")
        if value.dim() != 3 or value.shape[-1] != C or value.shape[0] != query.shape[0]:
            raise ValueError(
                f"value must be (N, S, {C}) with N = {query.shape[0]} as in query, "
                f"got {tuple(value.shape)}"
            )
        expected = (query.shape[0], query.shape[1], L)
        if (
            reference_points.dim() != 4
            or tuple(reference_points.shape[:3]) != expected
            or reference_points.shape[-1] not in (2, 4)
        ):
            raise ValueError(
                f"reference_points must be (N, Lq, L, 2) or (N, Lq, L, 4) with (N, Lq, L) = "
                f"{expected}, got {tuple(reference_points.shape)}"
            )
        if padding_mask is not None:
            if padding_mask.dtype != torch.bool:
                raise TypeError(f"padding_mask must be a bool tensor, got {padding_mask.dtype}")
            if tuple(padding_mask.shape) != tuple(value.shape[:2]):
                raise ValueError(
                    f"padding_mask must be (N, S) = {tuple(value.shape[:2])}, "
                    f"got {tuple(padding_mask.shape)}"
                )

    def forward(
        self, query, reference_points, value, spatial_shapes, level_start_index, padding_mask=None
    ):
        """
        Args:
            query: (N, Lq, C).
            reference_points: (N, Lq, L, 2) normalised (x, y) per level, or (N, Lq, L, 4) boxes
                (cx, cy, w, h); offsets are then relative to half the box size.
            value: (N, S, C), the flattened feature levels.
            spatial_shapes: (L, 2) int64 rows (H, W).
            level_start_index: (L,) int64.
            padding_mask: optional (N, S) bool, True at padded positions, whose values are zeroed
                before sampling.

        Returns:
            (N, Lq, C).
        """
        self._check(query, reference_points, value, padding_mask)
        N, Lq, C = query.shape
        S = value.shape[1]
        M, L, P = self.n_heads, self.n_levels, self.n_points
        value = self.value_proj(value)
        if padding_mask is not None:
            value = value.masked_fill(padding_mask[..., None], 0.0)
        value = value.view(N, S, M, C // M)
        offsets = self.sampling_offsets(query).view(N, Lq, M, L, P, 2)
        # (N, Lq, M * L * P) -> (N * Lq * M, L * P): softmax over all samples of a head, one
        # row each. As 2-D rows, Inductor's code for a package of every image size stays
        # vectorised; as (N, Lq, M, L * P) it stored them transposed, with the symbolic size in
        # every index: the encoder's kernel took 2.5x the static package's (docs/deploy.md)
        weights = self.attention_weights(query).view(-1, L * P).softmax(-1)
        weights = weights.view(N, Lq, M, L, P)
        # (N, Lq, L, 2|4) -> (N, Lq, 1, L, 1, 2|4) against offsets (N, Lq, M, L, P, 2)
        ref = reference_points[:, :, None, :, None, :]
        if reference_points.shape[-1] == 2:
            # offsets are in pixels of each level: divide by (W, H)
            wh = spatial_shapes.flip(-1).to(offsets.dtype)  # (L, 2)
            locations = ref + offsets / wh[None, None, None, :, None, :]
        else:
            locations = ref[..., :2] + offsets / P * ref[..., 2:] * 0.5
        # the shapes are checked above and the levels are the caller's: no second check
        out = ms_deform_attn_unchecked(
            value,
            spatial_shapes,
            level_start_index,
            locations,
            weights,
            deterministic=self.deterministic,
        )
        return self.output_proj(out)
