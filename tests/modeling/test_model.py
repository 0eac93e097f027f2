"""Tests of the Deformable DETR model built from each config: construction and parameter counts,
the released initial values, training losses and gradients, and inference outputs.

All on the CPU at tiny image sizes (64x96), with the full-size architecture.
"""

import math

import pytest
import torch
from torch import nn

from deformable_detr.layers import MSDeformAttn
from model_cases import ALL_CONFIGS, build, image, training_batch

PAPER_PARAMS = 40e6


def count(model):
    return sum(p.numel() for p in model.parameters())


def test_parameter_count_matches_the_paper():
    n = count(build("ddetr_r50.yaml"))
    print(f"ddetr_r50: {n} parameters")
    assert abs(n - PAPER_PARAMS) / PAPER_PARAMS < 0.01, n


@pytest.mark.parametrize("name", ALL_CONFIGS)
def test_training_returns_finite_named_losses_and_reaches_every_parameter(name):
    model = build(name)
    model.train()
    losses = model(training_batch())
    dec_layers = len(model.transformer.decoder.layers)
    expected = {"loss_ce", "loss_bbox", "loss_giou"}
    expected |= {
        f"{k}_{i}" for k in ("loss_ce", "loss_bbox", "loss_giou") for i in range(dec_layers - 1)
    }
    if model.transformer.queries.two_stage:
        expected |= {"loss_ce_enc", "loss_bbox_enc", "loss_giou_enc"}
    assert set(losses) == expected
    for k, v in losses.items():
        assert v.dim() == 0 and torch.isfinite(v), k
    sum(losses.values()).backward()
    # DistributedDataParallel rejects parameters that get no gradient.
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, missing
    print(f"{name}: {count(model)} parameters")


@pytest.mark.parametrize(
    "name", ["ddetr_r50.yaml", "ddetr_r50_box_refine.yaml", "ddetr_r50_two_stage.yaml"]
)
def test_initial_values(name):
    model = build(name)
    heads, queries = model.transformer.heads, model.transformer.queries
    prior_logit = -math.log((1 - 0.01) / 0.01)
    for head in heads.class_embed:
        assert torch.allclose(head.bias, torch.full_like(head.bias, prior_logit))
    for i, head in enumerate(heads.bbox_embed):
        last = head.layers[-1]
        assert torch.count_nonzero(last.weight) == 0
        assert torch.count_nonzero(last.bias[:2]) == 0
        if heads.two_stage:
            expected_wh = 0.0
        elif heads.refine:
            expected_wh = -2.0 if i == 0 else 0.0
        else:
            expected_wh = -2.0
        assert torch.all(last.bias[2:] == expected_wh), (i, last.bias)
    # the transformer's Xavier pass must not overwrite the deformable attention's own init
    attns = [m for m in model.modules() if isinstance(m, MSDeformAttn)]
    assert len(attns) == 12
    for attn in attns:
        assert torch.count_nonzero(attn.sampling_offsets.weight) == 0
        assert torch.count_nonzero(attn.attention_weights.weight) == 0
        assert torch.allclose(
            attn.sampling_offsets.bias.view(8, 4, 4, 2)[0, 0, :, 0],
            torch.tensor([1.0, 2.0, 3.0, 4.0]),
        )
    if not queries.two_stage:
        assert torch.count_nonzero(queries.reference_points.bias) == 0
        # the learned queries keep nn.Embedding's N(0, 1) (300 x 512 draws), not Xavier's
        # uniform (std 0.05 for this shape)
        assert abs(queries.query_embed.weight.std().item() - 1.0) < 0.01
    # level embedding from N(0, 1): 4 x 256 draws
    assert abs(model.transformer.level_embed.std().item() - 1.0) < 0.1
    # input projections: Xavier-uniform convs with zero bias
    for proj in model.neck.input_proj:
        assert isinstance(proj[1], nn.GroupNorm) and torch.count_nonzero(proj[0].bias) == 0


@pytest.mark.parametrize("name", ["ddetr_r50.yaml", "ddetr_r50_two_stage.yaml"])
def test_inference_outputs_are_well_formed(name):
    model = build(name, ["TEST.DETECTIONS_PER_IMAGE", "50"])
    model.eval()
    # the second image is shown at 48x72 but its original size is 96x144
    inputs = [
        {"image": image(64, 96, 0), "height": 64, "width": 96},
        {"image": image(48, 72, 1), "height": 96, "width": 144},
    ]
    with torch.no_grad():
        outputs = model(inputs)
    for out, (h, w) in zip(outputs, [(64, 96), (96, 144)]):
        inst = out["instances"]
        assert inst.image_size == (h, w)
        assert 0 < len(inst) <= 50
        boxes = inst.pred_boxes.tensor
        assert torch.all(boxes[:, 0] >= 0) and torch.all(boxes[:, 2] <= w)
        assert torch.all(boxes[:, 1] >= 0) and torch.all(boxes[:, 3] <= h)
        assert torch.all((inst.scores >= 0) & (inst.scores <= 1))
        assert torch.all((inst.pred_classes >= 0) & (inst.pred_classes < 80))
        assert torch.all(inst.scores[:-1] >= inst.scores[1:])  # ranked


def test_dilated_res5_follows_torchvision():
    """DC5: torchvision (and so the released model) keeps the first res5 block undilated."""
    import torchvision

    tv = torchvision.models.resnet50(replace_stride_with_dilation=[False, False, True])
    ours = build("ddetr_r50_single_scale_dc5.yaml").backbone
    tv_convs = [(b.conv2.stride, b.conv2.dilation, b.conv2.padding) for b in tv.layer4]
    our_convs = [(b.conv2.stride, b.conv2.dilation, b.conv2.padding) for b in ours.res5]
    assert our_convs == tv_convs == [((1, 1), (1, 1), (1, 1))] + [((1, 1), (2, 2), (2, 2))] * 2
    assert ours.output_shape()["res5"].stride == 16
