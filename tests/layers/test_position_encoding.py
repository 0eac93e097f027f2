"""Tests of the sine position encoding: against a brute-force float64 loop over pixels, against
hand-worked values, independence of the valid region's encoding from the padding, and input
checks.

Tolerances: the module works in float32. The encoding is sin / cos of an argument a, which float32
carries to a few ulps, and sin and cos are 1-Lipschitz, so an element may differ from the float64
value by about eps32 * |a|; we allow 16 ulps of |a| plus 1e-6 for sin / cos themselves. Fully
padded rows and columns have |a| ~ 3e6 (division by eps = 1e-6), where that bound is vacuous,
as it is for the release.
"""

import math

import pytest
import torch

from deformable_detr.config import get_config
from deformable_detr.layers.position_encoding import PositionEmbeddingSine

EPS32 = torch.finfo(torch.float32).eps


def released_encoding():
    """The encoding with the released settings, from the project's config."""
    cfg = get_config()
    c = cfg.MODEL.DEFORMABLE_DETR
    return PositionEmbeddingSine(
        num_pos_feats=c.HIDDEN_DIM // 2,
        temperature=c.POSITION_TEMPERATURE,
        normalize=True,
        scale=c.POSITION_SCALE,
    )


def padded_mask(valid_sizes, size):
    """(N, H, W) bool mask, True outside each image's top-left (h, w) valid region."""
    mask = torch.ones(len(valid_sizes), *size, dtype=torch.bool)
    for n, (h, w) in enumerate(valid_sizes):
        mask[n, :h, :w] = False
    return mask


def brute_force(mask, num_pos_feats, temperature, normalize, scale):
    """Per pixel, in float64: count the valid pixels up to it along its column (y) and row (x),
    normalise, and take sin / cos. Returns the encoding and the arguments, both (N, C, H, W)."""
    N, H, W = mask.shape
    F = num_pos_feats
    valid = (~mask).tolist()
    out = torch.zeros(N, 2 * F, H, W, dtype=torch.float64)
    args = torch.zeros_like(out)
    for n in range(N):
        for i in range(H):
            for j in range(W):
                y = sum(valid[n][r][j] for r in range(i + 1))
                x = sum(valid[n][i][c] for c in range(j + 1))
                if normalize:
                    y = (y - 0.5) / (sum(valid[n][r][j] for r in range(H)) + 1e-6) * scale
                    x = (x - 0.5) / (sum(valid[n][i][c] for c in range(W)) + 1e-6) * scale
                for half, p in ((0, y), (F, x)):
                    for k in range(F):
                        a = p / temperature ** (2 * (k // 2) / F)
                        args[n, half + k, i, j] = a
                        out[n, half + k, i, j] = math.sin(a) if k % 2 == 0 else math.cos(a)
    return out, args


@pytest.mark.parametrize("normalize", [True, False])
def test_matches_brute_force(normalize):
    # image 0 padded on both sides, image 1 not padded, image 2 padded at the bottom only
    mask = padded_mask([(3, 4), (5, 7), (2, 7)], (5, 7))
    F, T, scale = 16, 10000.0, 2 * math.pi
    pos = PositionEmbeddingSine(F, T, normalize=normalize, scale=scale)(mask)
    expected, args = brute_force(mask, F, T, normalize, scale)
    assert pos.shape == (3, 2 * F, 5, 7) and pos.dtype == torch.float32
    assert torch.isfinite(pos).all()
    tol = 1e-6 + 16 * EPS32 * args.abs()
    err = (pos.double() - expected).abs()
    assert (err <= tol).all(), f"max excess {(err - tol).max().item():.3g}"


def test_hand_worked_values():
    # one image of valid size 2 x 3 in a 4 x 5 canvas; released settings (F = 128, scale 2 pi)
    pos = released_encoding()(padded_mask([(2, 3)], (4, 5)))
    F = 128
    assert pos.shape == (1, 2 * F, 4, 5)
    # pixel (0, 0): y = 0.5 / 2 * 2 pi = pi / 2, x = 0.5 / 3 * 2 pi = pi / 3
    # pixel (1, 2): y = 1.5 / 2 * 2 pi = 3 pi / 2, x = 2.5 / 3 * 2 pi = 5 pi / 3
    # channels 0, 1 (and F, F + 1) have wavelength 1; channel 2 has 10000^(2 / 128)
    d2 = 10000 ** (2 / 128)
    cases = {
        (0, 0, 0): 1.0,
        (1, 0, 0): 0.0,
        (2, 0, 0): math.sin(math.pi / 2 / d2),
        (F, 0, 0): math.sqrt(3) / 2,
        (F + 1, 0, 0): 0.5,
        (0, 1, 2): -1.0,
        (1, 1, 2): 0.0,
        (F, 1, 2): -math.sqrt(3) / 2,
        (F + 1, 1, 2): 0.5,
    }
    for (c, i, j), value in cases.items():
        assert abs(pos[0, c, i, j].item() - value) < 1e-5, (c, i, j)


@pytest.mark.parametrize("normalize", [True, False])
def test_valid_region_does_not_depend_on_padding(normalize):
    # The same 3 x 4 image alone and in larger canvases: its valid region's encoding only
    # depends on the valid size (with normalize the counts are divided by the valid h / w).
    enc = PositionEmbeddingSine(32, normalize=normalize)
    alone = enc(padded_mask([(3, 4)], (3, 4)))
    for size in [(5, 4), (3, 7), (6, 9)]:
        padded = enc(padded_mask([(3, 4)], size))
        torch.testing.assert_close(padded[..., :3, :4], alone, rtol=0, atol=1e-6)


def test_batch_images_are_independent():
    mask = padded_mask([(3, 4), (5, 7)], (5, 7))
    enc = released_encoding()
    batched = enc(mask)
    for n in range(2):
        torch.testing.assert_close(batched[n : n + 1], enc(mask[n : n + 1]), rtol=0, atol=1e-6)


def test_input_checks():
    with pytest.raises(ValueError, match="num_pos_feats"):
        PositionEmbeddingSine(num_pos_feats=7)
    with pytest.raises(ValueError, match="temperature"):
        PositionEmbeddingSine(temperature=0)
    enc = PositionEmbeddingSine(8)
    with pytest.raises(ValueError, match=r"mask must be \(N, H, W\)"):
        enc(torch.zeros(1, 1, 4, 4, dtype=torch.bool))
    with pytest.raises(TypeError, match="bool"):
        enc(torch.zeros(1, 4, 4))
