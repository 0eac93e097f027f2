"""The transformer ignores padding: each image's mask comes from its own size and reaches every
level, padded values are zeroed before sampling, valid ratios scale the reference points, and
two-stage proposals on padding get no box (their memory is zeroed, their coordinates infinite).

Exact test: in eval mode on the padded batch (the released computation, as in training),
replacing the neck's features at an image's padded positions with random values changes none of
the decoder's outputs (to 1e-5). That the backbone and the neck themselves do not see the padding
at test time is tests/modeling/test_batch_invariance.py.
"""

import pytest
import torch

from model_cases import BACKBONE_CONFIGS, NO_WEIGHTS, build, image

# the transformer's variants, and each newer backbone (shrunk), whose maps have their own sizes
VARIANTS = [
    (name, ())
    for name in ("ddetr_r50.yaml", "ddetr_r50_box_refine.yaml", "ddetr_r50_two_stage.yaml")
] + [(name, (*opts, *NO_WEIGHTS)) for name, opts in sorted(BACKBONE_CONFIGS.items())]


def _batch():
    # the first image is the larger in both sides: only the second is padded
    return [{"image": image(64, 96, 0)}, {"image": image(32, 40, 1)}]


def _outputs(model, inputs):
    images, mask = model.preprocess_image(inputs)
    with torch.no_grad():
        out = model.predict(images, mask)
    layers = [out] + out.get("aux_outputs", [])
    return (
        torch.stack([o["pred_logits"] for o in layers]),
        torch.stack([o["pred_boxes"] for o in layers]),
        mask,
    )


@pytest.mark.parametrize("name, opts", VARIANTS, ids=[name for name, _ in VARIANTS])
def test_noise_at_padded_positions_changes_nothing(name, opts):
    model = build(name, [*opts, "MODEL.DEFORMABLE_DETR.BATCH_INVARIANT_INFERENCE", "False"])
    model.eval()
    inputs = _batch()
    logits, boxes, mask = _outputs(model, inputs)
    # the second image is padded (with ViT's square both are)
    assert mask[1].any() and (
        mask[0].any() == bool(model.backbone.padding_constraints.get("square_size"))
    )

    neck_forward = model.neck.forward
    g = torch.Generator().manual_seed(0)

    def noisy_neck(features, image_mask):
        srcs, masks = neck_forward(features, image_mask)
        noisy = [
            torch.where(m[:, None], 10 * torch.randn(s.shape, generator=g), s)
            for s, m in zip(srcs, masks)
        ]
        assert all(m[1].any() for m in masks)  # every level of image 1 has padding to perturb
        return noisy, masks

    model.neck.forward = noisy_neck
    noisy_logits, noisy_boxes, _ = _outputs(model, inputs)
    torch.testing.assert_close(noisy_logits, logits, rtol=0, atol=1e-5)
    torch.testing.assert_close(noisy_boxes, boxes, rtol=0, atol=1e-5)


def test_valid_ratios_place_reference_points_in_the_valid_image():
    """Hand-worked: a level-0 pixel's centre, normalised by the image's valid size on level 0,
    lands on every level at the same place of the image, through each level's valid ratio."""
    from deformable_detr.modeling.encoder_decoder import encoder_reference_points
    from deformable_detr.modeling.levels import flatten_levels

    # levels 4x6 and 2x3; the image covers 2x3 of level 0 and 1x2 of level 1
    masks = [torch.ones(1, 4, 6, dtype=torch.bool), torch.ones(1, 2, 3, dtype=torch.bool)]
    masks[0][0, :2, :3] = False
    masks[1][0, :1, :2] = False
    maps = [torch.zeros(1, 4, 4, 6), torch.zeros(1, 4, 2, 3)]
    levels = flatten_levels(maps, masks, maps, torch.zeros(2, 4))[2]
    assert levels.sizes == [(4, 6), (2, 3)] and levels.starts.tolist() == [0, 24]
    assert levels.valid.tolist() == [[[3, 2], [2, 1]]]  # (1, L, 2) as (w, h)
    ratios = levels.ratios
    torch.testing.assert_close(ratios, torch.tensor([[[0.5, 0.5], [2 / 3, 0.5]]]))
    refs = encoder_reference_points([(4, 6), (2, 3)], ratios)  # (1, S, L, 2)
    # level-0 pixel (row 0, col 1): centre (1.5, 0.5) over the valid size (3, 2) = (0.5, 0.25)
    expected = torch.tensor([[0.5 * 0.5, 0.25 * 0.5], [0.5 * 2 / 3, 0.25 * 0.5]])
    torch.testing.assert_close(refs[0, 1], expected)
    # level-1 pixel (row 0, col 0): centre (0.5, 0.5) over the valid size (2, 1) = (0.25, 0.5)
    expected = torch.tensor([[0.25 * 0.5, 0.5 * 0.5], [0.25 * 2 / 3, 0.5 * 0.5]])
    torch.testing.assert_close(refs[0, 24], expected)
