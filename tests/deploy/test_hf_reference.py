"""tools/hf_reference.py: transformers' DeformableDetrForObjectDetection with this model's weights
(the "vs HF" reference of tools/benchmark_deploy.py) computes this model's logits and boxes.

The weights are random, and every one of them is moved off its initial value (the released
initialisation zeroes the sampling offsets' and attention weights' matrices and the box head's
last layer, and sets BatchNorm to the identity, which would leave mapping errors there unseen).
Skipped where transformers is not installed (it comes with requirements-bench.txt only).
"""

import os

import pytest
import torch

from cli_cases import load_script
from deformable_detr.export import compare_detections, eager_detections
from model_cases import build, image, model_cfg

pytest.importorskip("transformers")

CONFIG = "ddetr_r50.yaml"
TOLERANCE = 1e-4


def perturb_weights_(model, seed):
    """Adds noise to every floating-point weight and buffer of model, in place: 0.02 of a
    standard normal to the weights, 0.1 to the norms' scales, shifts and running means, and the
    running variances to 1 + 0.1 |normal|."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for key, value in model.state_dict().items():
            if not value.is_floating_point():
                continue
            noise = torch.randn(value.shape, generator=g)
            if key.endswith("running_var"):
                value.copy_(1 + 0.1 * noise.abs())
            elif "norm" in key:
                value.add_(0.1 * noise)
            else:
                value.add_(0.02 * noise)
    return model


@pytest.fixture(scope="module")
def hf_reference():
    return load_script(os.path.join("tools", "hf_reference.py"))


@pytest.fixture(scope="module")
def models(hf_reference):
    model = perturb_weights_(build(CONFIG).eval(), seed=1)
    return model, hf_reference.build_hf_model(model_cfg(CONFIG), model)


@torch.no_grad()
def _max_differences(model, hf_model, batch):
    """Max |ours - HF| of the last layer's logits (N, Q, K) and boxes (N, Q, 4) on a batch."""
    images, mask = model.preprocess_image([{"image": x} for x in batch])
    ours = model.predict(images, mask)
    theirs = hf_model(pixel_values=images.tensor, pixel_mask=(~mask).long())
    return (
        (ours["pred_logits"] - theirs.logits).abs().max().item(),
        (ours["pred_boxes"] - theirs.pred_boxes).abs().max().item(),
    )


@pytest.mark.parametrize(
    "size", [(256, 320), pytest.param((800, 1333), marks=pytest.mark.slow)], ids=str
)
def test_hf_model_gives_our_logits_and_boxes(models, size):
    model, hf_model = models
    logits, boxes = _max_differences(model, hf_model, [image(*size, seed=2)])
    assert logits <= TOLERANCE and boxes <= TOLERANCE, (logits, boxes)


def test_single_scale_model_too(hf_reference):
    name = "ddetr_r50_single_scale.yaml"  # one level: C5 only
    model = perturb_weights_(build(name).eval(), seed=1)
    hf_model = hf_reference.build_hf_model(model_cfg(name), model)
    logits, boxes = _max_differences(model, hf_model, [image(256, 320, seed=2)])
    assert logits <= TOLERANCE and boxes <= TOLERANCE, (logits, boxes)


def test_hf_model_reads_the_padding_mask_as_we_do(models):
    """Two sizes in one padded batch: the padding masks, valid ratios and the masked values of
    the deformable attention map too (our padded path, not the per-image one)."""
    model, hf_model = models
    model.batch_invariant_inference = False
    try:
        batch = [image(256, 320, seed=3), image(192, 256, seed=4)]
        logits, boxes = _max_differences(model, hf_model, batch)
    finally:
        model.batch_invariant_inference = True
    assert logits <= TOLERANCE and boxes <= TOLERANCE, (logits, boxes)


def test_hf_detector_gives_our_detections(hf_reference, models):
    """HFDetector (our normalisation, HF's forward and its post_process_object_detection) keeps
    the eager model's 100 detections, once clipped to the image as the eager model clips them
    (HF does not)."""
    model, hf_model = models
    img = image(256, 320, seed=5)
    detections = hf_reference.HFDetector(model, hf_model, top_k=100)(img)
    clipped = hf_reference.clip_to_image(detections, 256, 320)
    diff = compare_detections(eager_detections(model, img), clipped)
    assert diff["ok"] and diff["count"] == (100, 100), diff


@pytest.mark.parametrize(
    "opts, key",
    [
        (("MODEL.DEFORMABLE_DETR.WITH_BOX_REFINE", "True"), "WITH_BOX_REFINE"),
        (("MODEL.RESNETS.RES5_DILATION", "2"), "RES5_DILATION"),
        (("MODEL.DEFORMABLE_DETR.POSITION_TEMPERATURE", "20"), "POSITION_TEMPERATURE"),
    ],
)
def test_configs_transformers_cannot_build_are_refused(hf_reference, opts, key):
    with pytest.raises(ValueError, match=key):
        hf_reference.hf_config(model_cfg(CONFIG, opts))
