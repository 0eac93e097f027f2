"""Our H-Deformable-DETR configs against H-DETR's own code (HDETR/H-Deformable-DETR), side by side:
one training step (every loss term, the "_one2many" ones too, every gradient, and one AdamW step
with their optimizer groups and clipping) and inference (the top-100 detections), from the same
weights and batch, on the CPU.

Their repository is not part of this project: put a copy in an ignored folder and name it, e.g.

    git clone https://github.com/HDETR/H-Deformable-DETR third_party/H-Deformable-DETR
    python tools/compare_hdetr.py --hdetr-root third_party/H-Deformable-DETR

Their deformable attention op is CUDA-only; both models run this project's op, so that the
comparison is of the models. The modules their code imports but this comparison never runs
(wandb, mmcv, timm's Swin pieces, their dataset code) are stubbed.

Shapes: N images, Q_1 + Q_2 queries, K classes (91 on both sides: their COCO head, no row gather).
"""

import argparse
import copy
import os
import sys
import types

import torch

from deformable_detr import get_config
from deformable_detr.checkpoint.official import official_to_detectron2_name
from deformable_detr.layers import ms_deform_attn
from deformable_detr.solver import build_optimizer
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
K = 91
# variant -> (our config, their script's arguments that differ between the variants)
VARIANTS = {
    "tricks": ("ddetr_r50_plus_12ep.yaml", dict(num_queries_one2many=0, k_one2many=0)),
    "hybrid": ("hdetr_r50_12ep.yaml", dict(num_queries_one2many=1500, k_one2many=6)),
}
ALIASES = ("transformer.decoder.class_embed.", "transformer.decoder.bbox_embed.")


def _import_hdetr(root):
    """Their modules, with what this comparison never runs stubbed, and their op replaced."""
    stubs = {
        "MultiScaleDeformableAttention": {},
        "wandb": {},
        "timm": {},
        "timm.models": {},
        "timm.models.layers": dict(DropPath=None, to_2tuple=None, trunc_normal_=None),
        "mmcv_custom": dict(load_checkpoint=None),
        "mmdet": {},
        "mmdet.utils": dict(get_root_logger=None),
        "datasets": {},
        "datasets.coco_eval": dict(CocoEvaluator=None),
        "datasets.panoptic_eval": dict(PanopticEvaluator=None),
        "datasets.data_prefetcher": dict(data_prefetcher=None),
    }
    for name, attrs in stubs.items():
        module = types.ModuleType(name)
        module.__dict__.update(attrs)
        sys.modules[name] = module
    sys.path.insert(0, os.path.abspath(root))
    import engine
    import models.backbone
    import models.deformable_detr as detr
    import models.deformable_transformer as transformer
    import models.matcher as matcher
    from models.ops.functions import ms_deform_attn_func

    def op(value, shapes, starts, locations, weights, im2col_step):
        return ms_deform_attn(value, shapes, starts, locations, weights)

    ms_deform_attn_func.MSDeformAttnFunction.apply = staticmethod(op)
    models.backbone.is_main_process = lambda: False  # no ImageNet download: weights are copied
    return detr, transformer, matcher, models.backbone, engine


def _their_args(extra):
    """Their main.py defaults with the arguments of their 12-epoch scripts."""
    return argparse.Namespace(
        backbone="resnet50",
        dilation=False,
        position_embedding="sine",
        hidden_dim=256,
        nheads=8,
        enc_layers=6,
        dec_layers=6,
        dim_feedforward=2048,
        dropout=0.0,
        num_feature_levels=4,
        dec_n_points=4,
        enc_n_points=4,
        two_stage=True,
        with_box_refine=True,
        num_queries_one2one=300,
        mixed_selection=True,
        look_forward_twice=True,
        use_checkpoint=False,
        lr_backbone=2e-5,
        masks=False,
        set_cost_class=2.0,
        set_cost_bbox=5.0,
        set_cost_giou=2.0,
        focal_alpha=0.25,
        lambda_one2many=1.0,
        **extra,
    )


def _build_theirs(hdetr, args):
    detr, transformer, matcher, backbone, _ = hdetr
    model = detr.DeformableDETR(
        backbone.build_backbone(args),
        transformer.build_deforamble_transformer(args),
        num_classes=K,
        num_feature_levels=args.num_feature_levels,
        aux_loss=True,
        with_box_refine=args.with_box_refine,
        two_stage=args.two_stage,
        num_queries_one2one=args.num_queries_one2one,
        num_queries_one2many=args.num_queries_one2many,
        mixed_selection=args.mixed_selection,
    )
    weights = {"loss_ce": 2.0, "loss_bbox": 5.0, "loss_giou": 2.0}
    for i in range(args.dec_layers - 1):
        weights.update({f"{k}_{i}": v for k, v in list(weights.items())[:3]})
    weights.update({f"{k}_enc": v for k, v in list(weights.items())[:3]})
    weights.update({f"{k}_one2many": v for k, v in list(weights.items())})
    criterion = detr.SetCriterion(
        K, matcher.build_matcher(args), weights, ["labels", "boxes"], args.focal_alpha
    )
    return model, criterion


def _batch(seed=0):
    """Two images (0-255 RGB) of different sizes, their (cx, cy, w, h) targets normalised."""
    g = torch.Generator().manual_seed(seed)
    sizes, images, targets = [(320, 480), (288, 416)], [], []
    for h, w in sizes:
        images.append(torch.randint(0, 256, (3, h, w), generator=g).float())
        T = 5
        xy = torch.rand(T, 2, generator=g) * 0.6
        wh = 0.1 + torch.rand(T, 2, generator=g) * 0.3
        labels = torch.randint(0, K, (T,), generator=g)
        targets.append({"labels": labels, "boxes": torch.cat([xy + wh / 2, wh], 1)})
    return images, targets


def _our_inputs(images, targets):
    inputs = []
    for image, t in zip(images, targets):
        h, w = image.shape[1:]
        cx, cy, bw, bh = (t["boxes"] * torch.tensor([w, h, w, h])).unbind(1)
        inst = Instances((h, w))
        inst.gt_boxes = Boxes(torch.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], 1))
        inst.gt_classes = t["labels"]
        inputs.append({"image": image, "height": h, "width": w, "instances": inst})
    return inputs


def _their_inputs(hdetr, model_cfg, images):
    from util.misc import nested_tensor_from_tensor_list

    mean = torch.tensor(model_cfg.MODEL.PIXEL_MEAN).view(3, 1, 1)
    std = torch.tensor(model_cfg.MODEL.PIXEL_STD).view(3, 1, 1)
    return nested_tensor_from_tensor_list([(x - mean) / std for x in images])


def _their_optimizer(model):
    """Their main.py's three groups: backbone at 2e-5, sampling offsets and reference points at
    2e-5, the rest at 2e-4; weight decay 1e-4."""

    def has(n, names):
        return any(k in n for k in names)

    linear = ["reference_points", "sampling_offsets"]
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = [
        {"params": [p for n, p in params if not has(n, ["backbone.0"] + linear)], "lr": 2e-4},
        {"params": [p for n, p in params if has(n, ["backbone.0"])], "lr": 2e-5},
        {"params": [p for n, p in params if has(n, linear)], "lr": 2e-5},
    ]
    return torch.optim.AdamW(groups, lr=2e-4, weight_decay=1e-4)


def _ours_by_their_name(ours, name):
    """Our parameter or buffer of their name (aliases of the heads map to the heads)."""
    for alias in ALIASES:
        if name.startswith(alias):
            name = name[len("transformer.decoder.") :]
    return ours[official_to_detectron2_name(name)]


def _report(title, pairs):
    worst = max(((a - b).abs().max().item(), n, a.abs().max().item()) for n, a, b in pairs)
    print(
        f"  {title}: {len(pairs)} tensors, max |ours - theirs| {worst[0]:.3g} ({worst[1]}, "
        f"max |value| there {worst[2]:.3g})"
    )
    return worst[0]


def compare(hdetr, variant):
    config, extra = VARIANTS[variant]
    cfg = get_config(
        os.path.join(REPO, "configs", config),
        [
            "MODEL.DEVICE",
            "cpu",
            "MODEL.WEIGHTS",
            "",
            "MODEL.DEFORMABLE_DETR.NUM_CLASSES",
            str(K),
            "MODEL.DEFORMABLE_DETR.BATCH_INVARIANT_INFERENCE",
            "False",
        ],
    )
    torch.manual_seed(0)
    theirs, criterion = _build_theirs(hdetr, _their_args(extra))
    ours = build_model(cfg)
    state = {official_to_detectron2_name(k): v for k, v in theirs.state_dict().items()}
    ours.load_state_dict({k: v for k, v in state.items() if k is not None}, strict=True)
    print(
        f"{variant} ({config}): their model {sum(p.numel() for p in theirs.parameters())} "
        f"parameters, ours {sum(p.numel() for p in ours.parameters())}"
    )

    images, targets = _batch()
    theirs.train(), ours.train()
    outputs = theirs(_their_inputs(hdetr, cfg, images))
    if extra["k_one2many"]:
        loss_dict = hdetr[4].train_hybrid(
            outputs, copy.deepcopy(targets), extra["k_one2many"], criterion, 1.0
        )
    else:
        loss_dict = criterion(outputs, copy.deepcopy(targets))
    their_losses = {
        k: v * criterion.weight_dict[k] for k, v in loss_dict.items() if k in criterion.weight_dict
    }
    our_losses = ours(_our_inputs(images, targets))
    assert set(our_losses) == set(their_losses), set(our_losses) ^ set(their_losses)
    _report(
        "loss terms",
        [(k, our_losses[k].detach(), their_losses[k].detach()) for k in sorted(their_losses)],
    )
    sum(their_losses.values()).backward()
    sum(our_losses.values()).backward()
    mine = ours.state_dict(keep_vars=True)
    grads = [
        (n, _ours_by_their_name(mine, n).grad, p.grad)
        for n, p in theirs.named_parameters()
        if p.requires_grad
    ]
    missing = [n for n, a, b in grads if (a is None) != (b is None)]
    assert not missing, f"gradient on one side only: {missing[:5]}"
    _report("gradients", [(n, a, b) for n, a, b in grads if a is not None])

    their_opt = _their_optimizer(theirs)
    torch.nn.utils.clip_grad_norm_(theirs.parameters(), 0.1)
    their_opt.step()
    our_opt = build_optimizer(cfg, ours)
    our_opt.step()  # build_optimizer's AdamW clips the whole model's norm at 0.1 first
    mine = ours.state_dict()
    _report(
        "weights after one AdamW step",
        [(n, _ours_by_their_name(mine, n), v) for n, v in theirs.state_dict().items()],
    )

    # inference as their evaluate() runs it: the one-to-one queries alone
    theirs.eval(), ours.eval()
    theirs.num_queries = theirs.num_queries_one2one
    theirs.transformer.two_stage_num_proposals = theirs.num_queries
    with torch.no_grad():
        sizes = torch.tensor([list(x.shape[1:]) for x in images])
        post = hdetr[0].PostProcess(topk=100)(theirs(_their_inputs(hdetr, cfg, images)), sizes)
        mine = [r["instances"] for r in ours(_our_inputs(images, targets))]
    for i, (a, b) in enumerate(zip(mine, post)):
        same = torch.equal(a.pred_classes, b["labels"])
        # Detectron2's detector_postprocess clips the boxes to the image; their PostProcess not
        theirs_clipped = Boxes(b["boxes"].clone())
        theirs_clipped.clip(tuple(sizes[i].tolist()))
        box_diff = (a.pred_boxes.tensor - theirs_clipped.tensor).abs().amax(1)  # (100,)
        far = (box_diff > 1e-2).nonzero().flatten().tolist()
        print(
            f"  image {i}: top-100 classes {'identical' if same else 'DIFFER'}; max |score "
            f"diff| {(a.scores - b['scores']).abs().max():.3g}; max |box diff| "
            f"{box_diff.max():.3g} px; ranks with a box over 0.01 px apart: {far}, their "
            f"scores {[round(b['scores'][j].item(), 7) for j in far]}"
        )


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hdetr-root", required=True, help="a copy of HDETR/H-Deformable-DETR")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    hdetr = _import_hdetr(args.hdetr_root)
    for variant in args.variants:
        compare(hdetr, variant)


if __name__ == "__main__":
    main()
