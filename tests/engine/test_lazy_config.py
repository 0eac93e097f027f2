"""Every YAML config has a LazyConfig (.py) twin that builds the same run: the same parameters,
the same outputs and losses from the same weights, the same optimizer groups and steps, the same
schedule, data and train values (train_net.py with .py configs: test_lazy_train_net.py).

The models are built at their released sizes (building is cheap) and run on small images.
"""

import os

import pytest
import torch
from detectron2.config import instantiate
from detectron2.solver import LRMultiplier, build_lr_scheduler

from deformable_detr import get_config
from deformable_detr.data import DetrDatasetMapper
from deformable_detr.solver import build_optimizer
from lazy_cases import describe_augmentation, lazy_cfg
from model_cases import RELEASED_CONFIGS, build, image, instances, model_cfg
from repo_paths import CONFIG_DIR

# every YAML config with its Python twin
PAIRS = [
    (name, name[: -len(".yaml")] + ".py")
    for name in sorted(os.listdir(CONFIG_DIR))
    if name.endswith(".yaml") and os.path.isfile(os.path.join(CONFIG_DIR, name[:-5] + ".py"))
]


def test_the_released_quickstart_and_fpn_configs_have_python_twins():
    assert {yaml for yaml, _ in PAIRS} >= {
        *RELEASED_CONFIGS,
        "ddetr_r50_fpn.yaml",
        "quickstart.yaml",
    }


# ViT pads every image to its 1024 x 1024 square, minutes of CPU for the four passes below: its
# pair is compared at a 256 square, set alike on both sides (the same modules, smaller relative
# position tables)
SMALLER = {
    "ddetr_vit_b.yaml": (
        ["MODEL.VIT.IMG_SIZE", "256", "INPUT.MAX_SIZE_TRAIN", "256", "INPUT.MAX_SIZE_TEST", "256"],
        [
            "model.backbone.img_size=256",
            "dataloader.train.mapper.augmentations.max_size=256",
            "dataloader.test.mapper.augmentations.max_size=256",
        ],
    )
}


@pytest.fixture(scope="module", params=PAIRS, ids=[yaml for yaml, _ in PAIRS])
def pair(request):
    """(YAML config, LazyConfig, YAML model, lazy model), the lazy model holding the YAML
    model's weights."""
    yaml_name, py_name = request.param
    opts, overrides = SMALLER.get(yaml_name, ((), ()))
    yaml_model = build(yaml_name, opts)
    lazy = lazy_cfg(py_name, overrides)
    torch.manual_seed(1)  # other initial weights than the YAML model's
    lazy_model = instantiate(lazy.model)
    return model_cfg(yaml_name, opts), lazy, yaml_model, lazy_model


def _batch():
    """Two images of different sizes (so one is padded), the second without objects."""
    return [
        {
            "image": image(64, 80, 0),
            "height": 64,
            "width": 80,
            "instances": instances(64, 80, [[4, 6, 40, 50], [44, 10, 76, 60]], [2, 0]),
        },
        {
            "image": image(48, 64, 1),
            "height": 48,
            "width": 64,
            "instances": instances(48, 64, [], []),
        },
    ]


def test_same_parameter_names_shapes_and_trainability(pair):
    _, lazy, yaml_model, lazy_model = pair
    # the neck's input_shape, written in the config, is what the backbone outputs
    assert {
        k: instantiate(v) for k, v in lazy.model.neck.input_shape.items()
    } == lazy_model.backbone.output_shape()
    shapes = {k: tuple(v.shape) for k, v in yaml_model.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in lazy_model.state_dict().items()} == shapes
    assert {n: p.requires_grad for n, p in lazy_model.named_parameters()} == {
        n: p.requires_grad for n, p in yaml_model.named_parameters()
    }


def test_same_outputs_and_losses_from_the_same_weights(pair):
    _, _, yaml_model, lazy_model = pair
    lazy_model.load_state_dict(yaml_model.state_dict())
    outputs = []
    for model in (yaml_model, lazy_model):
        model.eval()
        with torch.no_grad():
            outputs.append([r["instances"] for r in model(_batch())])
    for expected, actual in zip(*outputs):
        assert len(expected) > 0
        torch.testing.assert_close(
            actual.pred_boxes.tensor, expected.pred_boxes.tensor, rtol=0, atol=0
        )
        torch.testing.assert_close(actual.scores, expected.scores, rtol=0, atol=0)
        assert torch.equal(actual.pred_classes, expected.pred_classes)
    # the criterion: matcher costs, loss weights, focal parameters, auxiliary losses
    losses = []
    for model in (yaml_model, lazy_model):
        model.train()
        torch.manual_seed(0)  # the same dropout
        with torch.no_grad():
            losses.append({k: v.item() for k, v in model(_batch()).items()})
    assert "loss_giou_0" in losses[0] and losses[1] == losses[0]


def _names(model, group):
    ids = {id(p) for p in group["params"]}
    return [n for n, p in model.named_parameters() if id(p) in ids]


def test_same_optimizer_groups_and_clipped_step(pair):
    cfg, lazy, yaml_model, lazy_model = pair
    lazy_model.load_state_dict(yaml_model.state_dict())
    yaml_optimizer = build_optimizer(cfg, yaml_model)
    lazy.optimizer.params.model = lazy_model
    lazy_optimizer = instantiate(lazy.optimizer)
    assert type(lazy_optimizer).__name__ == type(yaml_optimizer).__name__
    assert type(lazy_optimizer).__mro__[1:] == type(yaml_optimizer).__mro__[1:]
    assert lazy_optimizer.defaults == yaml_optimizer.defaults
    assert len(lazy_optimizer.param_groups) == len(yaml_optimizer.param_groups) >= 2
    for expected, actual in zip(yaml_optimizer.param_groups, lazy_optimizer.param_groups):
        assert _names(lazy_model, actual) == _names(yaml_model, expected)
        for key in ("name", "lr", "weight_decay"):
            assert actual[key] == expected[key], key
    # one step from the same weights and gradients, on the first parameter of each group (the
    # others have no gradient): 3.0 everywhere is clipped to the norm 0.1
    for model, optimizer in ((yaml_model, yaml_optimizer), (lazy_model, lazy_optimizer)):
        model.zero_grad(set_to_none=True)
        for group in optimizer.param_groups:
            group["params"][0].grad = torch.full_like(group["params"][0], 3.0)
        optimizer.step()
    grad_norm = torch.linalg.vector_norm(
        torch.stack([p.grad.double().norm() for p in lazy_model.parameters() if p.grad is not None])
    )
    assert grad_norm == pytest.approx(cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE, rel=1e-5)
    stepped = lazy_model.state_dict()
    for name, expected in yaml_model.state_dict().items():
        assert torch.equal(stepped[name], expected), name


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)` before")
@pytest.mark.parametrize("yaml_name,py_name", PAIRS)
def test_same_schedule(yaml_name, py_name):
    cfg, lazy = model_cfg(yaml_name), lazy_cfg(py_name)
    max_iter = lazy.train.max_iter
    assert max_iter == cfg.SOLVER.MAX_ITER
    (step,) = cfg.SOLVER.STEPS
    iterations = [0, 1, max_iter // 2, step - 1, step, step + 1, max_iter - 1]
    lrs = []
    for build_scheduler in (
        lambda opt: build_lr_scheduler(cfg, opt),
        lambda opt: LRMultiplier(opt, instantiate(lazy.lr_multiplier), max_iter),
    ):
        optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        scheduler = build_scheduler(optimizer)
        lrs.append([])
        for iteration in iterations:
            scheduler.last_epoch = iteration - 1
            scheduler.step()  # sets the learning rate of `iteration`
            lrs[-1].append(optimizer.param_groups[0]["lr"])
    assert lrs[1] == pytest.approx(lrs[0], rel=1e-12, abs=0)
    assert lrs[1] == pytest.approx([1, 1, 1, 1, 0.1, 0.1, 0.1])


@pytest.mark.parametrize("yaml_name,py_name", PAIRS)
def test_same_train_values(yaml_name, py_name):
    cfg, lazy = get_config(os.path.join(CONFIG_DIR, yaml_name)), lazy_cfg(py_name)
    train = lazy.train
    assert (train.max_iter, train.checkpointer.period, train.eval_period) == (
        cfg.SOLVER.MAX_ITER,
        cfg.SOLVER.CHECKPOINT_PERIOD,
        cfg.TEST.EVAL_PERIOD,
    )
    assert lazy.dataloader.train.total_batch_size == cfg.SOLVER.IMS_PER_BATCH
    assert (train.init_checkpoint, train.output_dir) == (cfg.MODEL.WEIGHTS, cfg.OUTPUT_DIR)
    assert (train.amp.enabled, train.amp.precision, train.seed, train.device) == (
        cfg.SOLVER.AMP.ENABLED,
        cfg.SOLVER.AMP.PRECISION,
        cfg.SEED,
        cfg.MODEL.DEVICE,
    )


@pytest.mark.parametrize("yaml_name,py_name", PAIRS)
def test_same_data(yaml_name, py_name):
    cfg, lazy = model_cfg(yaml_name), lazy_cfg(py_name)
    train, test = lazy.dataloader.train, lazy.dataloader.test
    assert list(train.dataset.names) == list(cfg.DATASETS.TRAIN)
    assert [test.dataset.names] == list(cfg.DATASETS.TEST)
    assert train.dataset.filter_empty == cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS
    assert (train.aspect_ratio_grouping, train.num_workers, test.num_workers) == (
        cfg.DATALOADER.ASPECT_RATIO_GROUPING,
        cfg.DATALOADER.NUM_WORKERS,
        cfg.DATALOADER.NUM_WORKERS,
    )
    for is_train, mapper_cfg in ((True, train.mapper), (False, test.mapper)):
        expected, actual = DetrDatasetMapper(cfg, is_train), instantiate(mapper_cfg)
        assert vars(actual).keys() == vars(expected).keys()
        for key, value in vars(expected).items():
            if key == "augmentations":
                assert describe_augmentation(actual.augmentations) == describe_augmentation(value)
            else:
                assert getattr(actual, key) == value, key
    assert lazy.dataloader.evaluator.output_dir == os.path.join(
        cfg.OUTPUT_DIR, "inference", cfg.DATASETS.TEST[0]
    )
