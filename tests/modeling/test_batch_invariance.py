"""An image's detections do not depend on its batch
(MODEL.DEFORMABLE_DETR.BATCH_INVARIANT_INFERENCE, on by default at test time): alone or batched with
images of other sizes and aspect ratios, its per-query scores agree to 1e-4 and boxes to 1e-3 px,
and so do its detections (of which two with scores equal to rounding may come out of the top-k in
either order). At batch 1 the invariant path is the released computation, bit for bit. The padded
batch (the released behaviour, kept for training) does change an image's outputs, which shows that
the batches below exercise the padding."""

import pytest
import torch

from deformable_detr.export.compare import compare_detections
from model_cases import (
    ALL_CONFIGS,
    BACKBONE_CONFIGS,
    FEWER_QUERIES,
    HDETR_CONFIGS,
    NO_WEIGHTS,
    RELEASED_CONFIGS,
    build,
    image,
)

# (h, w): landscape, portrait, landscape again (grouped with the first), near-square; each large
# enough that two-stage keeps its 300 proposals on the image itself (see docs/model.md)
SIZES = [(128, 160), (160, 128), (128, 160), (144, 112)]
SCORE_TOL = 1e-4
BOX_TOL_PX = 1e-3


def _inputs():
    return [{"image": image(h, w, seed)} for seed, (h, w) in enumerate(SIZES)]


def _raw(model, inputs):
    """Per image: the last layer's sigmoid scores (Q, K) and boxes in pixels (Q, 4)."""
    images, mask = model.preprocess_image(inputs)
    with torch.no_grad():
        out = model.predict(images, mask)
    scores = out["pred_logits"].sigmoid()
    result = []
    for i, (h, w) in enumerate(images.image_sizes):
        scale = torch.tensor([w, h, w, h], dtype=torch.float32)
        result.append((scores[i], out["pred_boxes"][i] * scale))
    return result


# the released configs, H-Deformable-DETR's, and each newer backbone (shrunk): Swin and MViT pad
# inside, RegNet as the ResNet, ViT every image to its square
CASES = (
    [(name, ()) for name in ALL_CONFIGS]
    + [(name, FEWER_QUERIES) for name in HDETR_CONFIGS]
    + [(name, (*opts, *NO_WEIGHTS)) for name, opts in sorted(BACKBONE_CONFIGS.items())]
)


@pytest.mark.slow
@pytest.mark.parametrize("name, opts", CASES, ids=[name for name, _ in CASES])
def test_detections_do_not_depend_on_the_batch(name, opts):
    model = build(name, opts)
    model.eval()
    inputs = _inputs()
    batched = _raw(model, inputs)
    with torch.no_grad():
        batched_instances = model(inputs)
    for i, x in enumerate(inputs):
        scores, boxes = _raw(model, [x])[0]
        torch.testing.assert_close(batched[i][0], scores, rtol=0, atol=SCORE_TOL)
        torch.testing.assert_close(batched[i][1], boxes, rtol=0, atol=BOX_TOL_PX)
        with torch.no_grad():
            alone = model([x])[0]["instances"]
        together = batched_instances[i]["instances"]
        # the same detections; two whose scores differ by rounding may swap places in the top-k
        agreement = compare_detections(
            *([x.pred_boxes.tensor, x.scores, x.pred_classes] for x in (alone, together)),
            score_tolerance=SCORE_TOL,
            box_tolerance_px=BOX_TOL_PX,
        )
        assert agreement["ok"], agreement


@pytest.mark.parametrize("name", RELEASED_CONFIGS)
def test_batch_one_is_the_released_computation(name):
    invariant = build(name)
    padded = build(name, ["MODEL.DEFORMABLE_DETR.BATCH_INVARIANT_INFERENCE", "False"])
    padded.load_state_dict(invariant.state_dict())
    invariant.eval()
    padded.eval()
    x = [{"image": image(96, 136, 7)}]
    ((scores_i, boxes_i),) = _raw(invariant, x)
    ((scores_p, boxes_p),) = _raw(padded, x)
    assert torch.equal(scores_i, scores_p)
    assert torch.equal(boxes_i, boxes_p)


@pytest.mark.parametrize("name", ["ddetr_r50.yaml", "ddetr_r50_two_stage.yaml"])
def test_padded_batches_change_an_image_outputs(name):
    """The released padded batch moves the portrait image's scores by over ten times the
    tolerance (random weights: scores near 0.01): what the invariant path removes."""
    model = build(name, ["MODEL.DEFORMABLE_DETR.BATCH_INVARIANT_INFERENCE", "False"])
    model.eval()
    inputs = _inputs()
    scores_batched, _ = _raw(model, inputs)[1]
    scores_alone, _ = _raw(model, [inputs[1]])[0]
    assert (scores_batched - scores_alone).abs().max() > 10 * SCORE_TOL
