"""Every YAML config has a LazyConfig (.py) twin that builds the same run: the same parameters,
the same outputs and losses from the same weights, the same optimizer groups and steps, the same
schedule, data and train values; train_net.py trains and evaluates from a .py config; bad input
on the lazy path is named.

The models are built at their released sizes (building is cheap) and run on small images.
"""
import json
import math
import os
import re
import subprocess
import sys

import pytest
import torch
from detectron2.config import instantiate
from detectron2.data import transforms as T
from detectron2.engine import default_argument_parser
from detectron2.solver import LRMultiplier, build_lr_scheduler

from cli_cases import load_script
from deformable_detr import get_config
from deformable_detr.data import (
    DetrDatasetMapper,
    build_detr_augmentation,
    detr_test_augmentation,
    detr_train_augmentation,
)
from deformable_detr.lazy_engine import load_lazy_config
from deformable_detr.solver import build_optimizer
from model_cases import RELEASED_CONFIGS, build, image, instances, model_cfg
from repo_paths import CONFIG_DIR, REPO

# every YAML config with its Python twin
PAIRS = [(name, name[:-len(".yaml")] + ".py") for name in sorted(os.listdir(CONFIG_DIR))
         if name.endswith(".yaml") and os.path.isfile(os.path.join(CONFIG_DIR, name[:-5] + ".py"))]
QUICKSTART_PY = os.path.join(CONFIG_DIR, "quickstart.py")


def lazy_cfg(name, overrides=()):
    return load_lazy_config(os.path.join(CONFIG_DIR, name), overrides)


def test_the_released_quickstart_and_fpn_configs_have_python_twins():
    assert {yaml for yaml, _ in PAIRS} >= {*RELEASED_CONFIGS, "ddetr_r50_fpn.yaml",
                                           "quickstart.yaml"}


# ViT pads every image to its 1024 x 1024 square, minutes of CPU for the four passes below: its
# pair is compared at a 256 square, set alike on both sides (the same modules, smaller relative
# position tables)
SMALLER = {"ddetr_vit_b.yaml": (
    ["MODEL.VIT.IMG_SIZE", "256", "INPUT.MAX_SIZE_TRAIN", "256", "INPUT.MAX_SIZE_TEST", "256"],
    ["model.backbone.img_size=256", "dataloader.train.mapper.augmentations.max_size=256",
     "dataloader.test.mapper.augmentations.max_size=256"])}


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
        {"image": image(64, 80, 0), "height": 64, "width": 80,
         "instances": instances(64, 80, [[4, 6, 40, 50], [44, 10, 76, 60]], [2, 0])},
        {"image": image(48, 64, 1), "height": 48, "width": 64,
         "instances": instances(48, 64, [], [])},
    ]


def test_same_parameter_names_shapes_and_trainability(pair):
    _, lazy, yaml_model, lazy_model = pair
    # the neck's input_shape, written in the config, is what the backbone outputs
    assert ({k: instantiate(v) for k, v in lazy.model.neck.input_shape.items()}
            == lazy_model.backbone.output_shape())
    shapes = {k: tuple(v.shape) for k, v in yaml_model.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in lazy_model.state_dict().items()} == shapes
    assert ({n: p.requires_grad for n, p in lazy_model.named_parameters()}
            == {n: p.requires_grad for n, p in yaml_model.named_parameters()})


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
        torch.testing.assert_close(actual.pred_boxes.tensor, expected.pred_boxes.tensor,
                                   rtol=0, atol=0)
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
    grad_norm = torch.linalg.vector_norm(torch.stack(
        [p.grad.double().norm() for p in lazy_model.parameters() if p.grad is not None]))
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
    for build_scheduler in (lambda opt: build_lr_scheduler(cfg, opt),
                            lambda opt: LRMultiplier(opt, instantiate(lazy.lr_multiplier),
                                                     max_iter)):
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
        cfg.SOLVER.MAX_ITER, cfg.SOLVER.CHECKPOINT_PERIOD, cfg.TEST.EVAL_PERIOD)
    assert lazy.dataloader.train.total_batch_size == cfg.SOLVER.IMS_PER_BATCH
    assert (train.init_checkpoint, train.output_dir) == (cfg.MODEL.WEIGHTS, cfg.OUTPUT_DIR)
    assert (train.amp.enabled, train.seed, train.device) == (cfg.SOLVER.AMP.ENABLED, cfg.SEED,
                                                            cfg.MODEL.DEVICE)


def _describe(aug):
    """An augmentation as nested (type, its settings), comparable across instances."""
    if isinstance(aug, T.AugmentationList):
        return [_describe(a) for a in aug.augs]
    if hasattr(aug, "choices"):
        return (type(aug).__name__, [_describe(c) for c in aug.choices])
    return (type(aug).__name__, {k: list(v) if isinstance(v, (list, tuple)) else v
                                 for k, v in vars(aug).items()})


@pytest.mark.parametrize("yaml_name,py_name", PAIRS)
def test_same_data(yaml_name, py_name):
    cfg, lazy = model_cfg(yaml_name), lazy_cfg(py_name)
    train, test = lazy.dataloader.train, lazy.dataloader.test
    assert list(train.dataset.names) == list(cfg.DATASETS.TRAIN)
    assert [test.dataset.names] == list(cfg.DATASETS.TEST)
    assert train.dataset.filter_empty == cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS
    assert (train.aspect_ratio_grouping, train.num_workers, test.num_workers) == (
        cfg.DATALOADER.ASPECT_RATIO_GROUPING, cfg.DATALOADER.NUM_WORKERS,
        cfg.DATALOADER.NUM_WORKERS)
    for is_train, mapper_cfg in ((True, train.mapper), (False, test.mapper)):
        expected, actual = DetrDatasetMapper(cfg, is_train), instantiate(mapper_cfg)
        assert vars(actual).keys() == vars(expected).keys()
        for key, value in vars(expected).items():
            if key == "augmentations":
                assert _describe(actual.augmentations) == _describe(value)
            else:
                assert getattr(actual, key) == value, key
    assert lazy.dataloader.evaluator.output_dir == os.path.join(
        cfg.OUTPUT_DIR, "inference", cfg.DATASETS.TEST[0])


# train_net.py

SMALL_VAL = "ddetr_shapes_val_4"  # the conftest's shapes_val_subset(4)


@pytest.fixture
def small_val(shapes_val_subset):
    """The first 4 images of the built-in validation split, registered as dataset SMALL_VAL:
    (its COCO json, the image folder)."""
    name, json_file, images = shapes_val_subset(4)
    assert name == SMALL_VAL
    return json_file, images


# a quick run: 2 iterations of 2 images, evaluated on the 4 images of small_val
QUICK_RUN = ["train.max_iter=2", "lr_multiplier.scheduler.milestones=[1]",
             "dataloader.train.total_batch_size=2", "dataloader.train.num_workers=0",
             f"dataloader.test.dataset.names={SMALL_VAL}", "dataloader.test.num_workers=0"]


def _steps_and_evaluation(output):
    """metrics.json's training iterations, and its last line (the final evaluation's)."""
    metrics = [json.loads(line) for line in (output / "metrics.json").read_text().splitlines()]
    return [m for m in metrics if "total_loss" in m], metrics[-1]


@pytest.mark.slow  # 2 iterations, then 2 evaluations of 4 images
def test_train_net_trains_and_evaluates_from_the_python_quickstart(small_val, tmp_path,
                                                                   builtin_datasets_env):
    output = tmp_path / "out"
    train_net = load_script("train_net.py")
    train_net.cli(["--config-file", QUICKSTART_PY, *QUICK_RUN, f"train.output_dir={output}"])
    assert (output / "model_final.pth").is_file()
    steps, evaluation = _steps_and_evaluation(output)
    assert steps[-1]["iteration"] == 1 and math.isfinite(steps[-1]["total_loss"])
    assert steps[-1]["lr"] == pytest.approx(4e-5)  # 4e-4, x0.1 from the milestone at 1
    assert "bbox/AP" in evaluation  # evaluated after the last iteration
    args = default_argument_parser().parse_args([
        "--config-file", QUICKSTART_PY, "--eval-only", *QUICK_RUN,
        f"train.init_checkpoint={output / 'model_final.pth'}", f"train.output_dir={output}"])
    results = train_net.main(args)
    assert 0 <= results["bbox"]["AP"] <= 100 and "AP-circle" in results["bbox"]
    assert (output / "inference" / SMALL_VAL / "coco_instances_results.json").is_file()


@pytest.mark.slow  # two fresh processes
def test_train_net_trains_a_python_config_in_two_cpu_processes(small_val, tmp_path,
                                                                 builtin_datasets_env):
    json_file, images = small_val
    config = tmp_path / "two_processes.py"
    # each process loads the config, and so registers the small test set
    config.write_text(
        "from detectron2.config import LazyConfig\n"
        "from detectron2.data import DatasetCatalog\n"
        "from detectron2.data.datasets import register_coco_instances\n"
        f"if {SMALL_VAL!r} not in DatasetCatalog.list():\n"
        f"    register_coco_instances({SMALL_VAL!r}, {{}}, {json_file!r}, {images!r})\n"
        f"_base = LazyConfig.load({QUICKSTART_PY!r})\n"
        "model, dataloader, optimizer, lr_multiplier, train = (\n"
        "    _base[k] for k in ('model', 'dataloader', 'optimizer', 'lr_multiplier', 'train'))\n")
    output = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, os.path.join(REPO, "train_net.py"), "--config-file", str(config),
         "--num-gpus", "2", *QUICK_RUN, f"train.output_dir={output}"],
        capture_output=True, text=True, timeout=300, env=builtin_datasets_env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "World size: 2" in (output / "log.txt").read_text()
    assert (output / "model_final.pth").is_file()
    steps, evaluation = _steps_and_evaluation(output)
    assert steps[-1]["iteration"] == 1 and "bbox/AP" in evaluation


# bad input

def _cli_error(train_net_dry, capsys, argv):
    """train_net.cli(argv)'s argument error (exit status 2) with launch recorded, not run."""
    with pytest.raises(SystemExit) as exit_info:
        train_net_dry.cli(argv)
    assert exit_info.value.code == 2
    return capsys.readouterr().err


def test_eval_only_without_weights_is_refused(train_net_dry, capsys, tmp_path):
    err = _cli_error(train_net_dry, capsys, ["--config-file", QUICKSTART_PY, "--eval-only",
                                             f"train.output_dir={tmp_path}"])
    assert "--eval-only needs train.init_checkpoint" in err and str(tmp_path) in err
    assert not os.listdir(tmp_path)


def test_config_file_of_another_extension_is_refused(train_net_dry, capsys, tmp_path):
    path = tmp_path / "config.txt"
    path.write_text("model = 1\n")
    err = _cli_error(train_net_dry, capsys, ["--config-file", str(path)])
    assert re.search(r"must be a yacs config \(\.yaml, \.yml\) or a LazyConfig \(\.py\), "
                     rf"got '{re.escape(str(path))}'", err)


def test_missing_python_config_is_named(tmp_path):
    path = str(tmp_path / "missing.py")
    with pytest.raises(FileNotFoundError, match=re.escape(f"config_file {path!r} does not exist")):
        load_lazy_config(path)


def test_python_config_without_a_model_is_named(tmp_path):
    path = tmp_path / "no_model.py"
    path.write_text("from detectron2.config import LazyCall as L\n"
                    "train = dict(max_iter=10, output_dir='out')\n")
    with pytest.raises(ValueError, match=rf"{re.escape(repr(str(path)))} lacks \['model', "):
        load_lazy_config(str(path))


@pytest.mark.parametrize("override,message", [
    ("train.max_itr=3", r"'train.max_itr' is not a key of .*quickstart.py' \(train has \[.*"
                        r"'max_iter'"),
    ("modl.num_classes=3", r"'modl.num_classes' is not a key .*its top level has \['dataloader'"),
    ("SOLVER.MAX_ITER", r"are key=value, e.g. train.max_iter=100; got 'SOLVER.MAX_ITER'"),
])
def test_bad_override_is_named(override, message):
    with pytest.raises(ValueError, match=message):
        lazy_cfg("quickstart.py", [override])


def test_an_added_override_key_is_kept():
    assert lazy_cfg("quickstart.py", ["+train.note=first"]).train.note == "first"


@pytest.mark.parametrize("override,key,got", [
    ("train.max_iter=0", "train.max_iter", "0"),
    ("train.checkpointer.period=0", "train.checkpointer.period", "0"),
    ("dataloader.train.total_batch_size=0", "dataloader.train.total_batch_size", "0"),
    ("optimizer.lr=-1e-4", "optimizer.lr", "-0.0001"),
    ("optimizer.lr=nan", "optimizer.lr", "nan"),
    ("optimizer.params.backbone_multiplier=-0.1", "optimizer.params.backbone_multiplier",
     "-0.1"),
    ("lr_multiplier.scheduler.milestones=[300,200]", "lr_multiplier.scheduler.milestones",
     "[300, 200]"),
    ("lr_multiplier.scheduler.milestones=[500]", "lr_multiplier.scheduler.milestones", "[500]"),
    ("lr_multiplier.warmup_length=2", "lr_multiplier.warmup_length", "2"),
    ("optimizer.name=ADAM", "optimizer.name", "'ADAM'"),
    ("optimizer.clip_type=full", "optimizer.clip_type", "'full'"),
    ("optimizer.clip_value=0", "optimizer.clip_value", "0"),
])
def test_bad_solver_value_is_named_by_its_lazy_key(override, key, got):
    with pytest.raises(ValueError, match=rf"^{re.escape(key)} must be .*, got "
                                         rf"{re.escape(got)}$"):
        lazy_cfg("quickstart.py", [override])


def test_bad_augmentation_and_image_format_arguments_are_named():
    args = dict(min_size=[128], max_size=256, random_flip="horizontal", crop=True,
                resize_before_crop=[400], crop_type="absolute_range", crop_size=[384, 600])
    with pytest.raises(ValueError, match=r"^min_size must be .*, got \[0\]$"):
        detr_train_augmentation(**{**args, "min_size": [0]})
    with pytest.raises(ValueError, match=r"^crop_size must be .* for crop_type 'absolute_range'"):
        detr_train_augmentation(**{**args, "crop_size": [600, 384]})
    with pytest.raises(ValueError, match=r"^max_size must be a positive int, got -1$"):
        detr_test_augmentation(min_size=800, max_size=-1)
    with pytest.raises(ValueError, match=r"^image_format must be one of .*, got 'rgb'$"):
        DetrDatasetMapper(True, augmentations=[], image_format="rgb")
    # the explicit builder and the config's give the same augmentation
    assert _describe(T.AugmentationList(detr_train_augmentation(**args))) == _describe(
        T.AugmentationList(build_detr_augmentation(model_cfg("quickstart.yaml", [
            "INPUT.CROP.ENABLED", "True", "INPUT.RESIZE_BEFORE_CROP", "[400]"]), True)))
