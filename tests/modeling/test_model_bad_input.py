"""Bad model configs and bad inputs to the model get an error that names them, at the boundary;
configs that used to fail deep inside (two-stage at another width, the GLU activation) work; a NaN
weight reaches the predictions instead of vanishing in the deformable attention.
"""

import pytest
import torch
from detectron2.structures import Boxes, Instances

from model_cases import build, image, instances

SMALL = "quickstart.yaml"  # ResNet-18, a 128-wide transformer: quick to build


@pytest.mark.parametrize(
    "key,value,named",
    [
        ("MODEL.DEFORMABLE_DETR.NUM_QUERIES", "0", "num_queries"),
        ("MODEL.DEFORMABLE_DETR.NUM_QUERIES", "-5", "num_queries"),
        ("MODEL.DEFORMABLE_DETR.NUM_CLASSES", "0", "num_classes"),
        ("MODEL.DEFORMABLE_DETR.DIM_FEEDFORWARD", "0", "DIM_FEEDFORWARD"),
        ("MODEL.DEFORMABLE_DETR.DEC_LAYERS", "0", "DEC_LAYERS"),
        ("MODEL.DEFORMABLE_DETR.ENC_LAYERS", "-1", "ENC_LAYERS"),
        ("MODEL.DEFORMABLE_DETR.NHEADS", "3", "NHEADS"),
        ("MODEL.DEFORMABLE_DETR.DEC_N_POINTS", "0", "DEC_N_POINTS"),
        ("MODEL.DEFORMABLE_DETR.TWO_STAGE_NUM_PROPOSALS", "0", "TWO_STAGE_NUM_PROPOSALS"),
        ("MODEL.DEFORMABLE_DETR.DROPOUT", "1.0", "DROPOUT"),
        ("MODEL.DEFORMABLE_DETR.ACTIVATION", "'tanh'", "ACTIVATION"),
        ("MODEL.DEFORMABLE_DETR.IN_FEATURES", "['res5', 'res4', 'res3']", "high to low"),
        ("MODEL.PIXEL_MEAN", "[123.675, 116.28]", "PIXEL_MEAN"),
        ("MODEL.PIXEL_STD", "[58.395, 0.0, 57.375]", "PIXEL_STD"),
        ("TEST.DETECTIONS_PER_IMAGE", "0", "detections_per_image"),
    ],
)
def test_bad_model_config_is_named(key, value, named):
    with pytest.raises(ValueError, match=named):
        build(SMALL, [key, value])


def _train_step(model, h=64, w=96):
    batch = [{"image": image(h, w, 0), "instances": instances(h, w, [[4, 6, 40, 50]], [1])}]
    losses = model(batch)
    sum(losses.values()).backward()
    return losses


@pytest.mark.parametrize(
    "opts",
    [
        # two-stage at a width other than 256: the proposal embedding follows HIDDEN_DIM
        ["MODEL.DEFORMABLE_DETR.TWO_STAGE", "True"],
        # GLU halves the feed-forward width
        ["MODEL.DEFORMABLE_DETR.ACTIVATION", "glu"],
    ],
)
def test_configs_that_failed_deep_inside_now_train_and_predict(opts):
    model = build(SMALL, opts)
    losses = _train_step(model)
    assert all(torch.isfinite(v) for v in losses.values())
    model.eval()
    with torch.no_grad():
        out = model([{"image": image(64, 96, 1)}])[0]["instances"]
    assert len(out) == 30 and torch.isfinite(out.pred_boxes.tensor).all()


@pytest.mark.parametrize("layer", ["encoder.layers.0.self_attn", "decoder.layers.0.cross_attn"])
def test_nan_sampling_offsets_weight_reaches_the_predictions(layer):
    # issue 22: one NaN sampling_offsets weight made NaN sampling locations, which the op sampled
    # as zero, and the model predicted finite, wrong boxes without a word (AP 46.2 instead of 54.1)
    model = build(SMALL).eval()
    with torch.no_grad():
        model.transformer.get_submodule(layer).sampling_offsets.weight[0, 0] = float("nan")
        outputs = model.predict(*model.preprocess_image([{"image": image(64, 96, 0)}]))
    assert outputs["pred_logits"].isnan().all() and outputs["pred_boxes"].isnan().all()


@pytest.fixture(scope="module")
def small_model():
    model = build(SMALL)
    model.eval()
    return model


@pytest.mark.parametrize(
    "inputs,error,named",
    [
        ([], ValueError, "non-empty list"),
        ({"image": image(32, 32, 0)}, ValueError, "non-empty list"),
        ([image(32, 32, 0)], ValueError, r"batched_inputs\[0\] must be a dict"),
        (
            [{"file_name": "x.jpg"}],
            ValueError,
            r"batched_inputs\[0\] must be a dict with an \"image\"",
        ),
        ([{"image": image(32, 40, 0).permute(1, 2, 0)}], ValueError, r"permute\(2, 0, 1\)"),
        ([{"image": torch.zeros(4, 32, 32)}], ValueError, "3 channels"),
        ([{"image": torch.zeros(1, 3, 32, 32)}], ValueError, r"one image \(3, H, W\)"),
        ([{"image": torch.zeros(3, 0, 32)}], ValueError, "must not be empty"),
        ([{"image": torch.zeros(3, 32, 32, dtype=torch.int32)}], TypeError, "uint8 or floating"),
        # passed the check, then failed in the first convolution (float32 weights)
        (
            [{"image": image(32, 32, 0).double()}],
            TypeError,
            r"\(float16, bfloat16 or float32\), got torch\.float64: convert it with image\.float",
        ),
        ([{"image": image(32, 32, 0).numpy()}], TypeError, "torch.Tensor"),
        (
            [{"image": image(32, 32, 0)}, {"image": torch.full((3, 32, 32), float("nan"))}],
            ValueError,
            r"batched_inputs\[1\]\[\"image\"\] has NaN",
        ),
        (
            [{"image": image(32, 32, 0), "height": 0, "width": 32}],
            ValueError,
            r"\"height\"\].*positive",
        ),
        (
            [{"image": image(32, 32, 0), "height": 32, "width": -4}],
            ValueError,
            r"\"width\"\].*positive",
        ),
        ([{"image": image(32, 32, 0), "height": 31.5}], ValueError, r"\"height\""),
    ],
)
def test_bad_inputs_are_named(small_model, inputs, error, named):
    with torch.no_grad(), pytest.raises(error, match=named):
        small_model(inputs)


def test_training_without_instances_is_named():
    model = build(SMALL)
    with pytest.raises(ValueError, match=r"batched_inputs\[0\] has \['image'\]"):
        model([{"image": image(32, 32, 0)}])


@pytest.fixture(scope="module")
def training_model():
    return build(SMALL)


def _with_instances(fields, h=32, w=48):
    """Two images, the second with Instances of these fields."""
    inst = Instances((h, w))
    for k, v in fields.items():
        inst.set(k, v)
    return [
        {"image": image(h, w, 0), "instances": instances(h, w, [], [])},
        {"image": image(h, w, 1), "instances": inst},
    ]


_BOX = Boxes(torch.tensor([[4.0, 6.0, 20.0, 30.0]]))


@pytest.mark.parametrize(
    "fields,error,named",
    [
        (
            {"gt_boxes": _BOX},
            ValueError,
            r"batched_inputs\[1\]\[\"instances\"\] must be Instances with gt_boxes and "
            r"gt_classes, got Instances with \['gt_boxes'\]",
        ),
        (
            {"gt_boxes": _BOX.tensor, "gt_classes": torch.tensor([1])},
            TypeError,
            r"gt_boxes must be Boxes",
        ),
        (
            {"gt_boxes": _BOX, "gt_classes": torch.tensor([1], dtype=torch.int32)},
            TypeError,
            r"gt_classes must be a 1-d int64",
        ),
        (
            {"gt_boxes": _BOX, "gt_classes": torch.tensor([3])},
            ValueError,
            r"\]\.gt_classes must lie in \[0, 3\) \(NUM_CLASSES\), got values in \[3, 3\]",
        ),
        (
            {"gt_boxes": _BOX, "gt_classes": torch.tensor([-1])},
            ValueError,
            r"gt_classes must lie in \[0, 3\)",
        ),
        (
            {
                "gt_boxes": Boxes(torch.tensor([[4.0, 6.0, float("nan"), 30.0]])),
                "gt_classes": torch.tensor([1]),
            },
            ValueError,
            r"batched_inputs\[1\]\[\"instances\"\]\.gt_boxes must be finite.*1 are not",
        ),
        (
            {
                "gt_boxes": Boxes(torch.tensor([[20.0, 6.0, 4.0, 30.0]])),
                "gt_classes": torch.tensor([1]),
            },
            ValueError,
            r"x1 <= x2 and y1 <= y2; 1 are not, e.g. \[20.0, 6.0, 4.0, 30.0\]",
        ),
    ],
)
def test_bad_instances_are_named_before_the_forward(
    training_model, fields, error, named, monkeypatch
):
    # checked at the boundary, with the images: the network never runs on them
    monkeypatch.setattr(training_model, "predict", lambda *args: pytest.fail("predict ran"))
    with pytest.raises(error, match=named):
        training_model(_with_instances(fields))


def test_uint8_images_and_output_sizes_are_accepted(small_model):
    x = image(48, 64, 3)
    with torch.no_grad():
        as_float = small_model([{"image": x, "height": 96, "width": 128}])[0]["instances"]
        as_uint8 = small_model(
            [{"image": x.to(torch.uint8), "height": torch.tensor(96), "width": 128}]
        )[0]["instances"]
    assert as_float.image_size == (96, 128)
    torch.testing.assert_close(as_uint8.scores, as_float.scores, rtol=0, atol=0)
