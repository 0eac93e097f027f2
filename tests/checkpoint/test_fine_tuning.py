"""Fine-tuning: weights of another class count (or query count) load through every entry point,
with every other tensor from the file, the class heads re-initialised (or, opt-in, the rows of
classes of the same name kept) and one log line; every released name is a module path; weights
holding NaN are refused by name."""

import json
import logging
import math

import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_coco_instances
from detectron2.engine import DefaultPredictor, default_argument_parser
from detectron2.modeling import build_model

from cli_cases import load_script
from deformable_detr import lazy_engine
from deformable_detr.checkpoint import convert_official_checkpoint
from deformable_detr.engine import Trainer, WeightsCheckpointer
from checkpoint_cases import RELEASES, released_checkpoint
from lazy_cases import QUICK_RUN, QUICKSTART_PY
from model_cases import model_cfg
from repo_paths import EXPORT_TOOL, QUICKSTART

PRIOR_BIAS = -math.log((1 - 0.01) / 0.01)  # the released initialisation of the class bias
FIT_LOGGER = "deformable_detr.modeling.fine_tuning"
FILE_NAMES = ["square", "ring", "circle", "triangle", "star"]  # a superset of the built-in's


def _other_class_file(path, quick_cfg, num_classes=5, class_names=None, opts=()):
    """A checkpoint of the quickstart model for `num_classes`, every tensor random (seed 1) and
    the class biases row i = i, so that rows are traceable; returns its state dict."""
    torch.manual_seed(1)
    model = build_model(quick_cfg(["MODEL.DEFORMABLE_DETR.NUM_CLASSES", str(num_classes), *opts]))
    state = {
        k: torch.randn_like(v) if v.is_floating_point() else v
        for k, v in model.state_dict().items()
    }
    for k in state:
        if k.startswith("class_embed.") and k.endswith(".bias"):
            state[k] = torch.arange(num_classes, dtype=torch.float32)
    checkpoint = {"model": state}
    if class_names is not None:
        checkpoint["class_names"] = class_names
    torch.save(checkpoint, path)
    return state


def _assert_fitted(model, file_state, kept_rows=None):
    """Every tensor but the class heads is the file's; the class heads have the released
    initialisation (bias = the prior), or the file's rows of kept_rows {model row: file row}."""
    own = model.state_dict()
    heads = [k for k in own if k.startswith("class_embed.")]
    assert heads
    for k, v in own.items():
        if k in heads:
            continue
        assert torch.equal(v, file_state[k]), k
    kept_rows = kept_rows or {}
    for k in heads:
        for j in range(own[k].shape[0]):
            if j in kept_rows:
                assert torch.equal(own[k][j], file_state[k][kept_rows[j]]), (k, j)
            elif k.endswith(".bias"):
                assert own[k][j].item() == pytest.approx(PRIOR_BIAS), (k, j)
            else:
                assert not torch.equal(own[k][j], file_state[k][j]), (k, j)


@pytest.mark.parametrize(
    "config", ["ddetr_r50.yaml", "ddetr_r50_box_refine.yaml", "ddetr_r50_two_stage.yaml"]
)
def test_every_released_name_is_a_module_path(config):
    """What maps a state_dict key back to its module (fvcore's shape check walks getattr;
    get_submodule) finds the tensor that the key saves."""
    model = build_model(
        model_cfg(
            config,
            [
                "MODEL.WEIGHTS",
                "",
                "MODEL.RESNETS.DEPTH",
                "18",
                "MODEL.RESNETS.RES2_OUT_CHANNELS",
                "64",
            ],
        )
    )
    state = model.state_dict()
    assert "class_embed.0.weight" in state and "transformer.queries.reference_points" not in str(
        list(state)
    )
    for key, tensor in state.items():
        path, _, leaf = key.rpartition(".")
        module = model
        for part in path.split("."):
            module = getattr(module, part)
        assert getattr(module, leaf) is tensor or torch.equal(getattr(module, leaf), tensor), key
        assert model.get_submodule(path) is module
    # parameters are not counted twice
    names = [n for n, _ in model.named_parameters()]
    assert len(names) == len(set(names)) and not any(n.startswith("class_embed") for n in names)


def test_another_class_count_loads_with_one_log_line(quick_cfg, shapes_root, tmp_path, caplog):
    path = tmp_path / "five.pth"
    file_state = _other_class_file(path, quick_cfg)
    model = build_model(quick_cfg())  # 3 classes
    with caplog.at_level(logging.WARNING, logger=FIT_LOGGER):
        DetectionCheckpointer(model).load(str(path))
    _assert_fitted(model, file_state)
    lines = [r.getMessage() for r in caplog.records if r.name == FIT_LOGGER]
    assert lines == [
        "class heads: the file has 5 classes, the model 3; re-initialised "
        "(MODEL.DEFORMABLE_DETR.KEEP_MATCHING_CLASSES keeps the rows of classes of the same name)"
    ]


def test_keep_matching_classes_copies_the_rows_of_the_same_names(
    quick_cfg, shapes_root, tmp_path, caplog
):
    """The built-in classes are (square, circle, triangle): the file of FILE_NAMES has them at
    rows 0, 2, 3."""
    path = tmp_path / "five.pth"
    file_state = _other_class_file(path, quick_cfg, class_names=FILE_NAMES)
    names = MetadataCatalog.get("ddetr_shapes_train").thing_classes
    rows = {j: FILE_NAMES.index(n) for j, n in enumerate(names) if n in FILE_NAMES}
    assert len(rows) == len(names)  # the test's premise
    model = build_model(quick_cfg(["MODEL.DEFORMABLE_DETR.KEEP_MATCHING_CLASSES", "True"]))
    assert model.class_names == list(names)
    with caplog.at_level(logging.WARNING, logger=FIT_LOGGER):
        WeightsCheckpointer(model).load(str(path))
    _assert_fitted(model, file_state, kept_rows=rows)
    assert f"kept the file's rows of the {len(rows)} classes of the same name" in caplog.text
    # the same count with other names: rows still placed by name
    path3 = tmp_path / "three.pth"
    shuffled = list(reversed(names))
    file_state = _other_class_file(path3, quick_cfg, num_classes=3, class_names=shuffled)
    model = build_model(quick_cfg(["MODEL.DEFORMABLE_DETR.KEEP_MATCHING_CLASSES", "True"]))
    WeightsCheckpointer(model).load(str(path3))
    _assert_fitted(model, file_state, kept_rows={0: 2, 1: 1, 2: 0})


def test_checkpoints_store_the_class_names_that_fitting_matches(quick_cfg, shapes_root, tmp_path):
    model = build_model(quick_cfg())
    WeightsCheckpointer(model, save_dir=str(tmp_path)).save("model_final")
    saved = torch.load(tmp_path / "model_final.pth", weights_only=True)
    assert saved["class_names"] == list(MetadataCatalog.get("ddetr_shapes_train").thing_classes)


def test_another_query_count_loads_with_one_log_line(quick_cfg, shapes_root, tmp_path, caplog):
    path = tmp_path / "q.pth"
    queries = build_model(quick_cfg()).transformer.queries.num_queries
    file_state = _other_class_file(
        path, quick_cfg, num_classes=3, opts=("MODEL.DEFORMABLE_DETR.NUM_QUERIES", str(queries * 2))
    )
    model = build_model(quick_cfg())
    init = model.state_dict()["query_embed.weight"].clone()
    with caplog.at_level(logging.WARNING, logger=FIT_LOGGER):
        WeightsCheckpointer(model).load(str(path))
    assert torch.equal(model.state_dict()["query_embed.weight"], init)
    assert torch.equal(
        model.state_dict()["transformer.reference_points.weight"],
        file_state["transformer.reference_points.weight"],
    )
    assert f"query_embed: the file has {queries * 2} queries, the model {queries}" in caplog.text


def test_two_stage_fits_the_encoder_class_head_too(quick_cfg, shapes_root, tmp_path):
    opts = (
        "MODEL.DEFORMABLE_DETR.WITH_BOX_REFINE",
        "True",
        "MODEL.DEFORMABLE_DETR.TWO_STAGE",
        "True",
    )
    path = tmp_path / "two_stage.pth"
    file_state = _other_class_file(path, quick_cfg, opts=opts)
    model = build_model(quick_cfg(opts))
    layers = model.transformer.heads.num_layers
    assert f"class_embed.{layers}.weight" in model.state_dict()  # the encoder's head
    DetectionCheckpointer(model).load(str(path))
    _assert_fitted(model, file_state)


@pytest.mark.parametrize("name", ["multi_scale", "two_stage"])
def test_a_converted_released_checkpoint_fine_tunes_onto_four_classes(name, tmp_path):
    """80 COCO classes (converted from the released 91 rows) into a 4-class model; with
    KEEP_MATCHING_CLASSES, person and car keep their COCO rows."""
    torch.save(released_checkpoint(name), tmp_path / "released.pth")
    convert_official_checkpoint(str(tmp_path / "released.pth"), str(tmp_path / "coco.pth"))
    converted = torch.load(tmp_path / "coco.pth", weights_only=True)
    coco = MetadataCatalog.get("coco_2017_val").thing_classes
    assert converted["class_names"] == list(coco)
    classes = ["person", "car", "kangaroo", "dodo"]
    MetadataCatalog.get("ddetr_test_four_classes").thing_classes = classes
    opts = [
        "MODEL.DEFORMABLE_DETR.NUM_CLASSES",
        "4",
        "DATASETS.TRAIN",
        "('ddetr_test_four_classes',)",
        "DATASETS.TEST",
        "()",
    ]
    for keep in (False, True):
        model = build_model(
            model_cfg(
                RELEASES[name][1], opts + ["MODEL.DEFORMABLE_DETR.KEEP_MATCHING_CLASSES", str(keep)]
            )
        )
        DetectionCheckpointer(model).load(str(tmp_path / "coco.pth"))
        rows = {0: coco.index("person"), 1: coco.index("car")} if keep else {}
        _assert_fitted(model, converted["model"], kept_rows=rows)


# every entry point that loads weights: each builds its model and loads the 5-class file


class _Stop(Exception):
    pass


def _captured(monkeypatch, owner, name, argument):
    """Replaces owner.name with a function that records its positional argument `argument`
    (the model) and raises _Stop; returns the list of recorded models."""
    models = []

    def record(*args):
        models.append(args[argument])
        raise _Stop

    monkeypatch.setattr(owner, name, record)
    return models


def test_train_net_yaml_trains_resumes_and_evaluates_from_other_classes(
    quick_cfg, shapes_root, tmp_path, builtin_datasets_env, monkeypatch
):
    path = tmp_path / "five.pth"
    file_state = _other_class_file(path, quick_cfg)
    trainer = Trainer(quick_cfg(["MODEL.WEIGHTS", str(path)]))
    trainer.resume_or_load(resume=False)
    _assert_fitted(trainer.model, file_state)
    # --resume from an output folder whose last checkpoint has other classes
    (tmp_path / "last_checkpoint").write_text("five.pth")
    trainer = Trainer(quick_cfg(["MODEL.WEIGHTS", ""]))
    trainer.resume_or_load(resume=True)
    _assert_fitted(trainer.model, file_state)
    # --eval-only through train_net.main (Trainer.test(cfg, model))
    train_net = load_script("train_net.py")
    models = _captured(monkeypatch, train_net.Trainer, "test", 1)
    args = ["--config-file", QUICKSTART, "--eval-only", "MODEL.WEIGHTS", str(path)]
    with pytest.raises(_Stop):
        train_net.main(default_argument_parser().parse_args(args + ["OUTPUT_DIR", str(tmp_path)]))
    _assert_fitted(models[0], file_state)
    # the log line is in the run's log, beside Detectron2's
    assert "class heads: the file has 5 classes, the model 3" in (tmp_path / "log.txt").read_text()


@pytest.mark.slow  # 2 training iterations of 2 images, an evaluation of 4
def test_train_net_lazy_trains_and_evaluates_from_other_classes(
    quick_cfg, shapes_val_subset, tmp_path, builtin_datasets_env, monkeypatch
):
    shapes_val_subset(4)  # QUICK_RUN's test set
    path = tmp_path / "five.pth"
    file_state = _other_class_file(path, quick_cfg)
    train_net = load_script("train_net.py")
    base = [
        "--config-file",
        QUICKSTART_PY,
        *QUICK_RUN,
        f"train.init_checkpoint={path}",
        f"train.output_dir={tmp_path / 'out'}",
    ]
    with monkeypatch.context() as patch:  # lazy_engine.do_test(cfg, model)
        models = _captured(patch, lazy_engine, "do_test", 1)
        with pytest.raises(_Stop):
            train_net.main(default_argument_parser().parse_args(["--eval-only", *base]))
    _assert_fitted(models[0], file_state)
    train_net.main(default_argument_parser().parse_args(base))  # trains, then evaluates
    saved = torch.load(tmp_path / "out" / "model_final.pth", weights_only=True)
    assert saved["class_names"] == list(MetadataCatalog.get("ddetr_shapes_train").thing_classes)


def test_predictors_and_the_export_tool_load_other_classes(
    quick_cfg, shapes_root, tmp_path, monkeypatch
):
    path = tmp_path / "five.pth"
    file_state = _other_class_file(path, quick_cfg)
    cfg = quick_cfg(["MODEL.WEIGHTS", str(path)])
    _assert_fitted(DefaultPredictor(cfg).model, file_state)  # Detectron2's
    # this project's (deformable_detr.DefaultPredictor), which demo.py uses
    _assert_fitted(load_script("demo.py").DefaultPredictor(cfg).model, file_state)
    tool = load_script(EXPORT_TOOL)
    models = _captured(monkeypatch, tool, "eager_detections", 0)  # (model, image)
    argv = [
        "--config-file",
        QUICKSTART,
        "--output",
        str(tmp_path / "export"),
        "--format",
        "torchscript",
        "MODEL.DEVICE",
        "cpu",
        "MODEL.WEIGHTS",
        str(path),
    ]
    with pytest.raises(_Stop):
        tool.main(argv)
    _assert_fitted(models[0], file_state)


def test_weights_holding_nan_are_refused_by_name(quick_cfg, shapes_root, tmp_path):
    model = build_model(quick_cfg())
    state = model.state_dict()
    key = next(k for k in state if k.endswith("sampling_offsets.weight"))
    state[key] = state[key].clone()
    state[key][0, 0] = float("nan")
    torch.save({"model": state}, tmp_path / "nan.pth")
    for checkpointer in (DetectionCheckpointer, WeightsCheckpointer):
        with pytest.raises(
            ValueError, match=rf"1 weight tensor\(s\) hold NaN or inf: '{key}' \(1 of"
        ):
            checkpointer(model).load(str(tmp_path / "nan.pth"))


def test_class_names_of_a_coco_dataset_not_loaded_yet(quick_cfg, shapes_root, tmp_path):
    """A registered COCO json (as --coco-dataset or register_coco_instances leave it: no
    thing_classes until Detectron2 loads it) names the model's classes in Detectron2's order."""
    categories = [{"id": 7, "name": "b"}, {"id": 2, "name": "a"}, {"id": 9, "name": "c"}]
    path = tmp_path / "data.json"
    path.write_text(json.dumps({"images": [], "annotations": [], "categories": categories}))
    register_coco_instances("ddetr_test_unloaded", {}, str(path), str(tmp_path))
    try:
        model = build_model(quick_cfg(["DATASETS.TRAIN", "('ddetr_test_unloaded',)"]))
        assert model.class_names == ["a", "b", "c"]
    finally:
        DatasetCatalog.remove("ddetr_test_unloaded")
        MetadataCatalog.remove("ddetr_test_unloaded")
