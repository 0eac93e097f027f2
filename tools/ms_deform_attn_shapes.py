"""The op's inputs at the shapes of Deformable DETR on an 800x1333 image, shared by the op's
benchmarks (benchmark_ms_deform_attn.py, gpu_check.py):
  encoder: levels (100,167) (50,84) (25,42) (13,21), S = Lq = 22,223, M=8, L=4, P=4, D=32
  decoder: the same value, Lq = 300 object queries
with realistic locations (each query's reference point plus offsets of a few pixels).
"""

import torch

__all__ = ["D", "LEVELS", "M", "P", "make_inputs"]

LEVELS = ((100, 167), (50, 84), (25, 42), (13, 21))
M, P, D = 8, 4, 32


def make_inputs(batch, num_queries, dtype, device, seed=0, levels=LEVELS):
    """Returns (value, spatial_shapes, level_start_index, locations, weights, grad_output).

    Encoder queries (num_queries None) sit at every pixel centre of every level; decoder queries at
    uniform random points. Offsets are N(0, 2 pixels) of each level, as a trained model's are.
    """
    g = torch.Generator().manual_seed(seed)
    shapes = torch.tensor(levels, dtype=torch.long)
    sizes = shapes.prod(1)
    starts = torch.cat([sizes.new_zeros(1), sizes.cumsum(0)[:-1]])
    S, L = int(sizes.sum()), len(levels)
    if num_queries is None:
        refs = []
        for h, w in levels:
            ys, xs = torch.meshgrid(
                (torch.arange(h) + 0.5) / h, (torch.arange(w) + 0.5) / w, indexing="ij"
            )
            refs.append(torch.stack([xs.reshape(-1), ys.reshape(-1)], -1))
        ref = torch.cat(refs)  # (Lq, 2)
    else:
        ref = torch.rand(num_queries, 2, generator=g)
    Lq = ref.shape[0]
    wh = shapes.flip(1).to(torch.float32)  # (L, 2) rows (W, H)
    offsets = torch.randn(batch, Lq, M, L, P, 2, generator=g) * 2.0 / wh[:, None, :]
    loc = ref[None, :, None, None, None, :] + offsets  # (N, Lq, M, L, P, 2)
    weights = torch.randn(batch, Lq, M, L * P, generator=g).softmax(-1).view(batch, Lq, M, L, P)
    value = torch.randn(batch, S, M, D, generator=g)
    grad_out = torch.randn(batch, Lq, M * D, generator=g)
    cast = lambda t: t.to(device=device, dtype=dtype)  # noqa: E731
    return (
        cast(value),
        shapes.to(device),
        starts.to(device),
        cast(loc),
        cast(weights),
        cast(grad_out),
    )
