"""H-Deformable-DETR's keys (issue 20) pinned without H-DETR's code (tools/compare_hdetr.py compares
with it): K-fold targets, the attention mask's blocks and what it shields, the hybrid criterion's
sum, gradient through the undetached boxes only with LOOK_FORWARD_TWICE, learned content queries,
the one-to-many queries absent at inference, the config errors, and each new config's parameters.

The models are configs/quickstart.yaml's small one (ResNet-18, 2 encoder + 3 decoder layers,
C = 128, dropout 0, box refinement) with the keys switched on, on 128x160 images (S = 420 encoder
pixels over 3 levels, enough for Q_1 + Q_2 two-stage proposals). Equalities are exact (no
tolerance): the compared values come from the same float operations.
"""

import pytest
import torch
from detectron2.config import instantiate
from torch import nn

from deformable_detr.modeling import HungarianMatcher, HybridMatchingCriterion, SetCriterion
from deformable_detr.modeling.hybrid_matching import group_attention_mask, repeat_targets
from lazy_cases import lazy_cfg
from model_cases import NO_WEIGHTS, build, image, instances

D = "MODEL.DEFORMABLE_DETR."
ONE_STAGE_Q1 = 30  # quickstart's NUM_QUERIES
Q1, Q2 = 10, 20  # two-stage: one-to-one proposals, one-to-many queries
TWO_STAGE = (D + "TWO_STAGE", "True", D + "TWO_STAGE_NUM_PROPOSALS", str(Q1))
MIXED = (D + "MIXED_QUERY_SELECTION", "True")
LFT = (D + "LOOK_FORWARD_TWICE", "True")
H = D + "HYBRID_MATCHING."
HYBRID = (H + "NUM_QUERIES_ONE2MANY", str(Q2), H + "K_ONE2MANY", "3")


def _small(*opts, seed=0):
    return build("quickstart.yaml", (D + "DEC_LAYERS", "3", *opts), seed=seed)


def _batch():
    boxes = [[10, 12, 60, 70], [80, 20, 150, 100]]
    return [
        {"image": image(128, 160, 0), "instances": instances(128, 160, boxes, [0, 2])},
        {"image": image(128, 160, 1), "instances": instances(128, 160, boxes[:1], [1])},
    ]


def _predict(model):
    images, mask = model.preprocess_image(_batch())
    return model.predict(images, mask)


def _blocks(q, q1):
    """(q, q) bool: True between the first q1 queries and the rest, written block by block."""
    mask = torch.zeros(q, q, dtype=torch.bool)
    mask[:q1, q1:] = True
    mask[q1:, :q1] = True
    return mask


def test_targets_are_repeated_k_times_one_copy_after_another():
    targets = [
        {"labels": torch.tensor([3, 1]), "boxes": torch.tensor([[0.1, 0.2, 0.3, 0.4], [0.5] * 4])},
        {"labels": torch.zeros(0, dtype=torch.long), "boxes": torch.zeros(0, 4)},
    ]
    repeated = repeat_targets(targets, 3)
    assert repeated[0]["labels"].tolist() == [3, 1, 3, 1, 3, 1]  # (k T,)
    expected = torch.tensor([[0.1, 0.2, 0.3, 0.4], [0.5] * 4] * 3)  # (k T, 4)
    assert torch.equal(repeated[0]["boxes"], expected)
    assert repeated[1]["labels"].shape == (0,) and repeated[1]["boxes"].shape == (0, 4)
    assert repeated[1]["labels"].dtype == torch.long


def test_the_mask_separates_the_two_groups():
    expected = torch.tensor(
        [
            [0, 0, 1, 1, 1],
            [0, 0, 1, 1, 1],
            [1, 1, 0, 0, 0],
            [1, 1, 0, 0, 0],
            [1, 1, 0, 0, 0],
        ],
        dtype=torch.bool,
    )
    assert torch.equal(group_attention_mask(5, 2, "cpu"), expected)
    assert torch.equal(_blocks(5, 2), expected)  # the helper the model tests compare with
    assert group_attention_mask(2, 2, "cpu") is None
    assert group_attention_mask(1, 2, "cpu") is None


def _self_attention_masks(model):
    """The attn_mask of every call of the first decoder layer's self-attention."""
    seen = []
    attention = model.transformer.decoder.layers[0].self_attn
    hook = attention.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs.get("attn_mask", "absent")),
        with_kwargs=True,
    )
    return seen, hook


def test_the_decoder_gets_the_mask_in_training_only():
    model = _small(*HYBRID)
    seen, hook = _self_attention_masks(model)
    _predict(model.train())
    with torch.no_grad():
        _predict(model.eval())
    hook.remove()
    assert len(seen) == 2
    assert torch.equal(seen[0], _blocks(ONE_STAGE_Q1 + Q2, ONE_STAGE_Q1))  # (50, 50)
    assert seen[1] is None
    plain = _small()  # the keys off
    seen, _ = _self_attention_masks(plain)
    _predict(plain.train())
    assert seen == [None]


def _moving_boxes(model):
    """The model with weights in its box heads' last layers, which start at zero (each layer's
    boxes then equal its references, whatever the decoder's outputs)."""
    torch.manual_seed(1)
    for head in model.transformer.heads.bbox_embed:
        nn.init.normal_(head.layers[-1].weight, std=0.1)
    return model


def test_one_to_many_queries_do_not_change_the_one_to_one_outputs(monkeypatch):
    """One-stage, training mode, dropout 0: moving the one-to-many queries' embeddings leaves the
    one-to-one queries' outputs bit for bit; without the mask (the control) they change."""

    def perturbed(model):
        before = _predict(model)
        with torch.no_grad():
            model.transformer.queries.query_embed.weight[ONE_STAGE_Q1:] += 1.0
        return before, _predict(model)

    before, after = perturbed(_moving_boxes(_small(*HYBRID)).train())
    for key in ("pred_logits", "pred_boxes"):  # (N, Q_1, K), (N, Q_1, 4)
        assert torch.equal(after[key], before[key]), key
    # the perturbation does reach the one-to-many queries
    assert not torch.equal(after["one2many"]["pred_logits"], before["one2many"]["pred_logits"])
    monkeypatch.setattr("deformable_detr.modeling.queries.group_attention_mask", lambda *a: None)
    before, after = perturbed(_moving_boxes(_small(*HYBRID)).train())
    assert (after["pred_logits"] - before["pred_logits"]).abs().max() > 1e-3
    assert (after["pred_boxes"] - before["pred_boxes"]).abs().max() > 1e-5


def _hand_outputs(q, k, seed):
    """A SetCriterion's outputs of q queries, K = k classes, 2 images, 2 layers."""
    g = torch.Generator().manual_seed(seed)

    def layer():
        return {
            "pred_logits": torch.randn(2, q, k, generator=g),  # (N, Q, K)
            "pred_boxes": 0.2 + 0.6 * torch.rand(2, q, 4, generator=g),  # (N, Q, 4)
        }

    out = layer()
    out["aux_outputs"] = [layer()]
    return out


def test_the_criterion_adds_lambda_times_the_one_to_many_terms():
    criterion = SetCriterion(4, HungarianMatcher(), {"loss_ce": 2, "loss_bbox": 5, "loss_giou": 2})
    hybrid = HybridMatchingCriterion(criterion, k_one2many=3, lambda_one2many=0.5)
    outputs = _hand_outputs(6, 4, 0)
    outputs["one2many"] = _hand_outputs(12, 4, 1)
    targets = [
        {"labels": torch.tensor([0, 3]), "boxes": torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.6] * 4])},
        {"labels": torch.tensor([2]), "boxes": torch.tensor([[0.5, 0.4, 0.3, 0.2]])},
    ]
    one2one = criterion({k: v for k, v in outputs.items() if k != "one2many"}, targets)
    one2many = criterion(outputs["one2many"], repeat_targets(targets, 3))
    expected = {**one2one, **{k + "_one2many": 0.5 * v for k, v in one2many.items()}}
    assert len(expected) == 2 * 2 * 3  # two groups, two layers, three terms
    for losses in (hybrid(outputs, targets), hybrid.compute(outputs, targets)):
        assert set(losses) == set(expected)
        for name, value in expected.items():
            assert torch.equal(losses[name], value), name
    with pytest.raises(ValueError, match="one2many"):
        hybrid(_hand_outputs(6, 4, 0), targets)


@pytest.mark.parametrize("k", [0, True, 1.5])
def test_bad_k_is_refused(k):
    with pytest.raises(ValueError, match="HYBRID_MATCHING.K_ONE2MANY"):
        HybridMatchingCriterion(nn.Identity(), k_one2many=k)


@pytest.mark.parametrize("lam", [-1, float("nan"), "1"])
def test_bad_lambda_is_refused(lam):
    with pytest.raises(ValueError, match="HYBRID_MATCHING.LAMBDA_ONE2MANY"):
        HybridMatchingCriterion(nn.Identity(), lambda_one2many=lam)


def _box_head_grads(model, layer):
    """Which decoder layers' box heads the boxes of `layer` alone pass gradient to (nonzero: the
    stacked layers give the others exact zeros), and those boxes (N, Q_1, 4)."""
    model.train().zero_grad(set_to_none=True)
    out = _predict(model)
    boxes = out["aux_outputs"][layer]["pred_boxes"] if layer < 2 else out["pred_boxes"]
    boxes.sum().backward()
    heads = model.transformer.heads.bbox_embed
    return [
        any(p.grad is not None and p.grad.abs().max() > 0 for p in heads[i].parameters())
        for i in range(3)
    ], boxes.detach()


def test_look_forward_twice_passes_gradient_one_layer_back():
    plain, lft = _small(*TWO_STAGE), _small(*TWO_STAGE, *LFT)
    lft.load_state_dict(plain.state_dict())
    for layer in (1, 2):
        reached, boxes = _box_head_grads(plain, layer)
        assert reached == [i == layer for i in range(3)], layer
        reached_lft, boxes_lft = _box_head_grads(lft, layer)
        # one layer back, never two: layer 2's boxes leave bbox_embed.0 alone
        assert reached_lft == [i in (layer - 1, layer) for i in range(3)], layer
        assert torch.equal(boxes_lft, boxes)  # the same values, more gradient


def _decoder_queries(model):
    """The Queries every call of the decoder receives."""
    seen = []
    hook = model.transformer.decoder.register_forward_pre_hook(
        lambda module, args: seen.append(args[0])  # (queries, memory, levels, heads)
    )
    return seen, hook


def test_mixed_selection_content_is_the_learned_rows():
    model = _small(*TWO_STAGE, *MIXED, *HYBRID)
    embed = model.transformer.queries.query_embed.weight
    assert embed.shape == (Q1 + Q2, 128)  # (Q_1 + Q_2, C)
    seen, hook = _decoder_queries(model)
    _predict(model.train())
    with torch.no_grad():
        _predict(model.eval())
    hook.remove()
    assert torch.equal(seen[0].content, embed.unsqueeze(0).expand(2, -1, -1))  # (N, Q1 + Q2, C)
    assert torch.equal(seen[1].content, embed[:Q1].unsqueeze(0).expand(2, -1, -1))  # (N, Q1, C)
    plain = _small(*TWO_STAGE)  # without the key: no learned content
    assert not hasattr(plain.transformer.queries, "query_embed")


def test_the_one_to_many_queries_are_absent_at_inference():
    model = _moving_boxes(_small(*TWO_STAGE, *MIXED, *LFT, *HYBRID))
    seen, hook = _decoder_queries(model)
    decoded = []  # (logits (J, N, Q, K), boxes (J, N, Q, 4)) of every layer, both groups
    model.transformer.decoder.register_forward_hook(lambda m, args, out: decoded.append(out))
    out = _predict(model.train())
    assert seen[-1].content.shape[1] == Q1 + Q2
    logits, boxes = decoded[-1]
    assert logits.shape[:3] == (3, 2, Q1 + Q2)
    # the groups as the decoder made them: queries [0, Q1) one-to-one, [Q1, Q1 + Q2) one-to-many
    for group, rows in ((out, slice(0, Q1)), (out["one2many"], slice(Q1, Q1 + Q2))):
        layers = [*group["aux_outputs"], group]
        assert len(layers) == 3
        for j, layer in enumerate(layers):
            assert torch.equal(layer["pred_logits"], logits[j, :, rows])  # (N, Q_g, K)
            assert torch.equal(layer["pred_boxes"], boxes[j, :, rows])  # (N, Q_g, 4)
    assert "enc_outputs" in out and "enc_outputs" not in out["one2many"]
    with torch.no_grad():
        out = _predict(model.eval())
    hook.remove()
    assert seen[-1].content.shape[1] == Q1 and "one2many" not in out
    assert out["pred_logits"].shape[1] == Q1
    losses = model.train()(_batch())
    assert len(losses) == 2 * 3 * 3 + 3  # both groups on 3 layers; the proposals: one-to-one
    assert sum(name.endswith("_one2many") for name in losses) == 3 * 3
    assert all(torch.isfinite(v) for v in losses.values())


@pytest.mark.parametrize(
    "opts, key",
    [
        (MIXED, "MIXED_QUERY_SELECTION"),
        ((D + "WITH_BOX_REFINE", "False", *LFT), "LOOK_FORWARD_TWICE"),
        ((D + "HYBRID_MATCHING.NUM_QUERIES_ONE2MANY", "-1"), "NUM_QUERIES_ONE2MANY"),
    ],
)
def test_config_errors_name_the_key(opts, key):
    with pytest.raises(ValueError, match=key):
        _small(*opts)


def _rebuild(model, criterion):
    return type(model)(
        backbone=model.backbone,
        neck=model.neck,
        position_embedding=model.position_embedding,
        transformer=model.transformer,
        criterion=criterion,
        aux_loss=True,
        pixel_mean=[0.0, 0.0, 0.0],
        pixel_std=[1.0, 1.0, 1.0],
    )


def test_the_two_halves_of_hybrid_matching_must_come_together():
    hybrid, plain = _small(*HYBRID), _small()
    _rebuild(hybrid, hybrid.criterion)  # the two halves together
    _rebuild(plain, plain.criterion)  # neither
    with pytest.raises(ValueError, match="HybridMatchingCriterion"):
        _rebuild(hybrid, hybrid.criterion.criterion)  # one-to-many queries, plain SetCriterion
    with pytest.raises(ValueError, match="HybridMatchingCriterion"):
        _rebuild(plain, HybridMatchingCriterion(plain.criterion))  # no one-to-many queries


# The released two-stage model (docs/model.md; pinned below), then per new config:
# - 12 wider feed-forward networks (6 encoder + 6 decoder layers, 1024 -> 2048): linear1
#   (256 -> F) gains 256 x 1024 weights + 1024 biases, linear2 (F -> 256) 1024 x 256 weights
#   (its 256 biases stay);
# - the learned content queries of mixed selection: 256 per query, Q_1 = 300 (+ Q_2 = 1500).
TWO_STAGE_PARAMS = 41_161_740
FFN_GROWTH = 12 * (256 * 1024 + 1024 + 1024 * 256)
PLUS = TWO_STAGE_PARAMS + FFN_GROWTH + 300 * 256
HDETR = TWO_STAGE_PARAMS + FFN_GROWTH + (300 + 1500) * 256
# Swin-T for ResNet-50. ResNet-50's parameters (torchvision: 25,557,032) less the classifier
# (2048 x 1000 + 1000) and the BatchNorm affine parameters (frozen here: buffers; 2 x 26,560
# channels); Swin-T's (official: 28,288,354) less the classifier (768 x 1000 + 1000) and the final
# LayerNorm (2 x 768), plus a LayerNorm on each output (2 x (192 + 384 + 768)); the neck's 1x1
# projections read 192 + 384 + 768 channels instead of 512 + 1024 + 2048, the extra level's 3x3
# stride-2 conv 768 instead of 2048.
R50 = 25_557_032 - (2048 * 1000 + 1000) - 2 * 26_560
SWIN_T = 28_288_354 - (768 * 1000 + 1000) - 2 * 768 + 2 * (192 + 384 + 768)
NECK_SHRINK = (512 + 1024 + 2048 - 192 - 384 - 768) * 256 + (2048 - 768) * 3 * 3 * 256
PARAMS = {
    "ddetr_r50_plus_12ep": PLUS,
    "ddetr_r50_plus_36ep": PLUS,
    "hdetr_r50_12ep": HDETR,
    "hdetr_r50_36ep": HDETR,
    "hdetr_swin_t_12ep": HDETR - R50 + SWIN_T - NECK_SHRINK,
}


def _count(model):
    return sum(p.numel() for p in model.parameters())


def test_parameter_count_of_the_released_two_stage_model():
    model = build("ddetr_r50_two_stage.yaml", NO_WEIGHTS)
    assert _count(model) == TWO_STAGE_PARAMS
    assert _count(model.backbone) == R50


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_parameter_count_of_each_new_config(name):
    assert _count(build(name + ".yaml", NO_WEIGHTS)) == PARAMS[name]
    assert _count(instantiate(lazy_cfg(name + ".py").model)) == PARAMS[name]
