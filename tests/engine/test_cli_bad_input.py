"""Bad input to the command-line tools and their config files fails at once, naming the input:
demo.py's threshold and outputs, train_net.py's --eval-only without weights, the solver keys of
a training run, and config files that are missing, empty, not a mapping or carry code."""

import math
import os
import re
import subprocess
import sys

import cv2
import pytest
import torch
import yaml

from cli_cases import load_script, val_images, write_video
from deformable_detr import get_config
from deformable_detr.engine import Trainer
from deformable_detr.solver import build_optimizer, check_solver_config
from repo_paths import CONFIG_DIR, QUICKSTART, REPO


# demo.py


@pytest.mark.parametrize("value", ["5", "-1", "nan", "inf"])
def test_demo_threshold_outside_0_1_is_an_argument_error(shapes_root, capsys, value):
    (image,) = val_images(shapes_root, 1)
    with pytest.raises(SystemExit) as exit_info:
        load_script("demo.py").main(
            ["--config-file", QUICKSTART, "--input", image, "--confidence-threshold", value]
        )
    assert exit_info.value.code == 2
    assert f"argument --confidence-threshold: must be a number in [0, 1], got '{value}'" in (
        capsys.readouterr().err
    )


@pytest.mark.parametrize("value", ["0", "-2", "nan", "inf", "big"])
def test_demo_scale_not_a_finite_positive_number_is_an_argument_error(shapes_root, capsys, value):
    (image,) = val_images(shapes_root, 1)
    with pytest.raises(SystemExit) as exit_info:
        load_script("demo.py").main(
            ["--config-file", QUICKSTART, "--input", image, "--scale", value]
        )
    assert exit_info.value.code == 2
    assert f"argument --scale: must be a finite number > 0, got '{value}'" in (
        capsys.readouterr().err
    )


def test_demo_output_without_an_image_extension_is_refused(shapes_root, tmp_path):
    (image,) = val_images(shapes_root, 1)
    out = str(tmp_path / "picture.notanimage")
    with pytest.raises(ValueError, match=re.escape(repr(out))):
        load_script("demo.py").main(
            ["--config-file", QUICKSTART, "--input", image, "--output", out]
        )


def test_demo_output_folder_that_cannot_be_made_is_an_error(shapes_root, tmp_path):
    (image,) = val_images(shapes_root, 1)
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(OSError, match=re.escape(str(blocker))):
        load_script("demo.py").main(
            [
                "--config-file",
                QUICKSTART,
                "--input",
                image,
                "--output",
                str(blocker / "picture.jpg"),
            ]
        )


def test_demo_picture_that_cannot_be_written_is_an_error(shapes_root, tmp_path, monkeypatch):
    (image,) = val_images(shapes_root, 1)
    out = str(tmp_path / "picture.jpg")
    monkeypatch.setattr(cv2, "imwrite", lambda *args: False)  # as for a full disk
    with pytest.raises(OSError, match=re.escape(repr(out))):
        load_script("demo.py").main(
            ["--config-file", QUICKSTART, "--input", image, "--output", out]
        )


def test_demo_video_that_cannot_be_written_is_an_error(shapes_root, tmp_path):
    video_in = tmp_path / "clip.mp4"
    write_video(video_in, [cv2.imread(p) for p in val_images(shapes_root, 1)])
    # an existing folder: OpenCV's writer does not open
    with pytest.raises(OSError, match=re.escape(repr(str(tmp_path)))):
        load_script("demo.py").main(
            ["--config-file", QUICKSTART, "--video-input", str(video_in), "--output", str(tmp_path)]
        )


# train_net.py


def _train_net_cli(train_net_dry, argv):
    """train_net.cli on the quickstart config with launch recorded instead of run; returns the
    recorded calls."""
    train_net_dry.cli(["--config-file", QUICKSTART, *argv])
    return train_net_dry.launched


def test_eval_only_without_weights_is_refused_before_any_model(train_net_dry, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        _train_net_cli(train_net_dry, ["--eval-only", "OUTPUT_DIR", str(tmp_path)])
    assert exit_info.value.code == 2
    assert "--eval-only needs MODEL.WEIGHTS" in capsys.readouterr().err
    # --resume finds nothing to resume from in an empty OUTPUT_DIR
    with pytest.raises(SystemExit):
        _train_net_cli(train_net_dry, ["--eval-only", "--resume", "OUTPUT_DIR", str(tmp_path)])


@pytest.mark.parametrize("with_weights", [True, False])
def test_eval_only_with_weights_or_a_checkpoint_to_resume_is_launched(
    train_net_dry, tmp_path, with_weights
):
    no_data = ["DATASETS.TRAIN", "()", "DATASETS.TEST", "()", "OUTPUT_DIR", str(tmp_path)]
    if with_weights:
        argv = ["--eval-only", *no_data, "MODEL.WEIGHTS", str(tmp_path / "model.pth")]
    else:
        (tmp_path / "last_checkpoint").write_text("model_0000009.pth")
        argv = ["--eval-only", "--resume", *no_data]
    assert len(_train_net_cli(train_net_dry, argv)) == 1


@pytest.mark.slow  # a fresh interpreter imports torch and Detectron2
def test_train_net_eval_only_without_weights_exits_non_zero(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            os.path.join(REPO, "train_net.py"),
            "--config-file",
            QUICKSTART,
            "--eval-only",
            "OUTPUT_DIR",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
    )
    assert result.returncode == 2
    assert "--eval-only needs MODEL.WEIGHTS" in result.stderr
    assert not os.listdir(tmp_path)  # nothing set up, nothing evaluated


# solver keys


def _with(cfg, key, value):
    node = cfg.SOLVER
    *parents, last = key.split(".")
    for part in parents:
        node = node[part]
    node[last] = value
    return cfg


BAD_SOLVER_KEYS = [
    ("MAX_ITER", 0),
    ("MAX_ITER", -5),
    ("IMS_PER_BATCH", 0),
    ("CHECKPOINT_PERIOD", 0),
    ("WARMUP_ITERS", -1),
    ("BASE_LR", 0.0),
    ("BASE_LR", -1e-4),
    ("BASE_LR", math.nan),
    ("BASE_LR", math.inf),
    ("BACKBONE_MULTIPLIER", -0.1),
    ("LINEAR_PROJ_MULTIPLIER", math.nan),
    ("STEPS", (0,)),
    ("STEPS", (300, 200)),
    ("STEPS", (100, 100)),
    ("STEPS", (500,)),
    ("CLIP_GRADIENTS.CLIP_TYPE", "full"),
    ("CLIP_GRADIENTS.CLIP_VALUE", 0.0),
    ("CLIP_GRADIENTS.CLIP_VALUE", math.nan),
    ("CLIP_GRADIENTS.NORM_TYPE", 0.0),
]


@pytest.mark.parametrize("key,value", BAD_SOLVER_KEYS)
def test_wrong_solver_key_is_named_when_the_optimizer_is_built(quick_cfg, key, value):
    # STEPS (500,) is a step at MAX_ITER, which fvcore refuses
    cfg = _with(quick_cfg(["SOLVER.MAX_ITER", "500"]), key, value)
    with pytest.raises(
        ValueError,
        match=rf"^SOLVER\.{re.escape(key)} must be .*, "
        rf"got {re.escape(repr(value))}$",
    ):
        build_optimizer(cfg, torch.nn.Linear(2, 2))


def test_trainer_refuses_max_iter_zero(quick_cfg, shapes_root):
    with pytest.raises(ValueError, match=r"SOLVER\.MAX_ITER must be an integer >= 1, got 0"):
        Trainer(quick_cfg(["SOLVER.MAX_ITER", "0"]))


@pytest.mark.parametrize("name", sorted(f for f in os.listdir(CONFIG_DIR) if f.endswith(".yaml")))
def test_shipped_configs_pass_the_solver_check(name):
    cfg = get_config(os.path.join(CONFIG_DIR, name))
    check_solver_config(cfg)
    # a run shortened below the recipe's STEPS is allowed (Detectron2 ignores those steps)
    check_solver_config(get_config(os.path.join(CONFIG_DIR, name), ["SOLVER.MAX_ITER", "10"]))


# config files


@pytest.mark.parametrize(
    "content,problem",
    [
        ("", "is empty"),
        ("# nothing\n", "is empty"),
        ("- a\n- b\n", "got a YAML list"),
        ("just text\n", "got a YAML str"),
    ],
)
def test_config_file_that_is_not_a_mapping_is_named(tmp_path, content, problem):
    path = tmp_path / "bad.yaml"
    path.write_text(content)
    with pytest.raises(
        ValueError, match=re.escape(f"config file {str(path)!r} ") + ".*" + re.escape(problem)
    ):
        get_config(str(path))


def test_empty_base_config_is_named(tmp_path):
    (tmp_path / "base.yaml").write_text("")
    (tmp_path / "child.yaml").write_text('_BASE_: "base.yaml"\nSEED: 3\n')
    base = str(tmp_path / "base.yaml")
    with pytest.raises(ValueError, match=re.escape(repr(base)) + " is empty"):
        get_config(str(tmp_path / "child.yaml"))


def test_missing_config_file_is_named(tmp_path):
    path = str(tmp_path / "missing.yaml")
    with pytest.raises(FileNotFoundError, match=re.escape(f"config_file {path!r} does not exist")):
        get_config(path)


def test_config_file_with_python_tags_is_refused_unrun(tmp_path):
    made = tmp_path / "made_by_the_config"
    path = tmp_path / "code.yaml"
    path.write_text(f'SEED: !!python/object/apply:os.mkdir ["{made}"]\n')
    with pytest.raises(yaml.constructor.ConstructorError, match="python/object/apply"):
        get_config(str(path))
    assert not made.exists()
