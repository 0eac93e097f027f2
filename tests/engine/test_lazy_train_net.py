"""train_net.py trains and evaluates from a LazyConfig (.py) file, in one process and in two; bad
input on the lazy path (extension, file, model, overrides, solver and augmentation values) is
named."""

import json
import math
import os
import re
import subprocess
import sys

import pytest
from detectron2.data import transforms as T
from detectron2.engine import default_argument_parser

from cli_cases import load_script
from deformable_detr.data import (
    DetrDatasetMapper,
    build_detr_augmentation,
    detr_test_augmentation,
    detr_train_augmentation,
)
from deformable_detr.lazy_engine import build_model, load_lazy_config
from lazy_cases import QUICK_RUN, QUICKSTART_PY, SMALL_VAL, describe_augmentation, lazy_cfg
from model_cases import model_cfg
from repo_paths import REPO


# train_net.py


@pytest.fixture
def small_val(shapes_val_subset):
    """The first 4 images of the built-in validation split, registered as dataset SMALL_VAL:
    (its COCO json, the image folder)."""
    name, json_file, images = shapes_val_subset(4)
    assert name == SMALL_VAL
    return json_file, images


def _steps_and_evaluation(output):
    """metrics.json's training iterations, and its last line (the final evaluation's)."""
    metrics = [json.loads(line) for line in (output / "metrics.json").read_text().splitlines()]
    return [m for m in metrics if "total_loss" in m], metrics[-1]


@pytest.mark.slow  # 2 iterations, then 2 evaluations of 4 images
def test_train_net_trains_and_evaluates_from_the_python_quickstart(
    small_val, tmp_path, builtin_datasets_env
):
    output = tmp_path / "out"
    train_net = load_script("train_net.py")
    train_net.cli(["--config-file", QUICKSTART_PY, *QUICK_RUN, f"train.output_dir={output}"])
    assert (output / "model_final.pth").is_file()
    steps, evaluation = _steps_and_evaluation(output)
    assert steps[-1]["iteration"] == 1 and math.isfinite(steps[-1]["total_loss"])
    assert steps[-1]["lr"] == pytest.approx(4e-5)  # 4e-4, x0.1 from the milestone at 1
    assert "bbox/AP" in evaluation  # evaluated after the last iteration
    args = default_argument_parser().parse_args(
        [
            "--config-file",
            QUICKSTART_PY,
            "--eval-only",
            *QUICK_RUN,
            f"train.init_checkpoint={output / 'model_final.pth'}",
            f"train.output_dir={output}",
        ]
    )
    results = train_net.main(args)
    assert 0 <= results["bbox"]["AP"] <= 100 and "AP-circle" in results["bbox"]
    assert (output / "inference" / SMALL_VAL / "coco_instances_results.json").is_file()


@pytest.mark.slow  # two fresh processes
def test_train_net_trains_a_python_config_in_two_cpu_processes(
    small_val, tmp_path, builtin_datasets_env
):
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
        "    _base[k] for k in ('model', 'dataloader', 'optimizer', 'lr_multiplier', 'train'))\n"
    )
    output = tmp_path / "out"
    result = subprocess.run(
        [
            sys.executable,
            os.path.join(REPO, "train_net.py"),
            "--config-file",
            str(config),
            "--num-gpus",
            "2",
            *QUICK_RUN,
            f"train.output_dir={output}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=builtin_datasets_env,
    )
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
    err = _cli_error(
        train_net_dry,
        capsys,
        ["--config-file", QUICKSTART_PY, "--eval-only", f"train.output_dir={tmp_path}"],
    )
    assert "--eval-only needs train.init_checkpoint" in err and str(tmp_path) in err
    assert not os.listdir(tmp_path)


def test_config_file_of_another_extension_is_refused(train_net_dry, capsys, tmp_path):
    path = tmp_path / "config.txt"
    path.write_text("model = 1\n")
    err = _cli_error(train_net_dry, capsys, ["--config-file", str(path)])
    assert re.search(
        r"must be a yacs config \(\.yaml, \.yml\) or a LazyConfig \(\.py\), "
        rf"got '{re.escape(str(path))}'",
        err,
    )


def test_missing_python_config_is_named(tmp_path):
    path = str(tmp_path / "missing.py")
    with pytest.raises(FileNotFoundError, match=re.escape(f"config_file {path!r} does not exist")):
        load_lazy_config(path)


def test_python_config_without_a_model_is_named(tmp_path):
    path = tmp_path / "no_model.py"
    path.write_text(
        "from detectron2.config import LazyCall as L\ntrain = dict(max_iter=10, output_dir='out')\n"
    )
    with pytest.raises(ValueError, match=rf"{re.escape(repr(str(path)))} lacks \['model', "):
        load_lazy_config(str(path))


@pytest.mark.parametrize(
    "model,got",
    [
        ("dict(num_classes=3)", r"a dict without '_target_' \(keys: \['num_classes'\]\)"),
        ("L(SimpleNamespace)(num_classes=3)", r"a types.SimpleNamespace"),
    ],
)
def test_python_config_whose_model_is_not_a_module_is_named(tmp_path, model, got):
    """A plain dict instantiates to itself: without the check, model.to(...) failed with
    omegaconf's "Missing key to"."""
    path = tmp_path / "dict_model.py"
    path.write_text(
        "from types import SimpleNamespace\n"
        "from detectron2.config import LazyCall as L, LazyConfig\n"
        f"_base = LazyConfig.load({QUICKSTART_PY!r})\n"
        "dataloader, optimizer, lr_multiplier, train = (\n"
        "    _base[k] for k in ('dataloader', 'optimizer', 'lr_multiplier', 'train'))\n"
        f"model = {model}\n"
    )
    with pytest.raises(
        TypeError, match=r"`model` must instantiate to a torch.nn.Module: .*got " + got
    ):
        build_model(load_lazy_config(str(path)))


@pytest.mark.parametrize(
    "override,message",
    [
        (
            "train.max_itr=3",
            r"'train.max_itr' is not a key of .*quickstart.py' \(train has \[.*"
            r"'max_iter'",
        ),
        (
            "modl.num_classes=3",
            r"'modl.num_classes' is not a key .*its top level has \['dataloader'",
        ),
        ("SOLVER.MAX_ITER", r"are key=value, e.g. train.max_iter=100; got 'SOLVER.MAX_ITER'"),
    ],
)
def test_bad_override_is_named(override, message):
    with pytest.raises(ValueError, match=message):
        lazy_cfg("quickstart.py", [override])


def test_an_added_override_key_is_kept():
    assert lazy_cfg("quickstart.py", ["+train.note=first"]).train.note == "first"


@pytest.mark.parametrize(
    "override,key,got",
    [
        ("train.max_iter=0", "train.max_iter", "0"),
        ("train.checkpointer.period=0", "train.checkpointer.period", "0"),
        ("dataloader.train.total_batch_size=0", "dataloader.train.total_batch_size", "0"),
        ("optimizer.lr=-1e-4", "optimizer.lr", "-0.0001"),
        ("optimizer.lr=nan", "optimizer.lr", "nan"),
        (
            "optimizer.params.backbone_multiplier=-0.1",
            "optimizer.params.backbone_multiplier",
            "-0.1",
        ),
        (
            "lr_multiplier.scheduler.milestones=[300,200]",
            "lr_multiplier.scheduler.milestones",
            "[300, 200]",
        ),
        ("lr_multiplier.scheduler.milestones=[500]", "lr_multiplier.scheduler.milestones", "[500]"),
        ("lr_multiplier.warmup_length=2", "lr_multiplier.warmup_length", "2"),
        ("optimizer.name=ADAM", "optimizer.name", "'ADAM'"),
        ("optimizer.clip_type=full", "optimizer.clip_type", "'full'"),
        ("optimizer.clip_value=0", "optimizer.clip_value", "0"),
    ],
)
def test_bad_solver_value_is_named_by_its_lazy_key(override, key, got):
    with pytest.raises(
        ValueError,
        match=rf"^{re.escape(key)} must be .*, got "
        rf"{re.escape(got)}$",
    ):
        lazy_cfg("quickstart.py", [override])


def test_bad_augmentation_and_image_format_arguments_are_named():
    args = dict(
        min_size=[128],
        max_size=256,
        random_flip="horizontal",
        crop=True,
        resize_before_crop=[400],
        crop_type="absolute_range",
        crop_size=[384, 600],
    )
    with pytest.raises(ValueError, match=r"^min_size must be .*, got \[0\]$"):
        detr_train_augmentation(**{**args, "min_size": [0]})
    with pytest.raises(ValueError, match=r"^crop_size must be .* for crop_type 'absolute_range'"):
        detr_train_augmentation(**{**args, "crop_size": [600, 384]})
    with pytest.raises(ValueError, match=r"^max_size must be a positive int, got -1$"):
        detr_test_augmentation(min_size=800, max_size=-1)
    with pytest.raises(ValueError, match=r"^image_format must be one of .*, got 'rgb'$"):
        DetrDatasetMapper(True, augmentations=[], image_format="rgb")
    # the explicit builder and the config's give the same augmentation
    assert describe_augmentation(
        T.AugmentationList(detr_train_augmentation(**args))
    ) == describe_augmentation(
        T.AugmentationList(
            build_detr_augmentation(
                model_cfg(
                    "quickstart.yaml",
                    ["INPUT.CROP.ENABLED", "True", "INPUT.RESIZE_BEFORE_CROP", "[400]"],
                ),
                True,
            )
        )
    )
