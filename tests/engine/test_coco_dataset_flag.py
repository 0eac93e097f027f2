"""Your own COCO-format data from the command line: --coco-dataset NAME JSON IMAGE_ROOT of
train_net.py (yacs and LazyConfig) and demo.py registers it for the config to name; the class
count is checked against the model's at start-up, naming the key to set; the flag's bad values
are named. The data is a copy of the first 4 images of the built-in validation split."""

import json
import math
import re

import pytest
from detectron2.data import MetadataCatalog

from cli_cases import load_script, val_images
from deformable_detr.data.shapes import SHAPE_CLASSES
from lazy_cases import QUICK_RUN, QUICKSTART_PY
from repo_paths import QUICKSTART

NAME = "mine"
FEW_ITERATIONS = [
    "SOLVER.MAX_ITER",
    "1",
    "SOLVER.IMS_PER_BATCH",
    "2",
    "DATALOADER.NUM_WORKERS",
    "0",
    "TEST.EVAL_PERIOD",
    "0",
]


@pytest.fixture
def mine(shapes_val_subset, tmp_path, registered):
    """mine(names=None) -> ["--coco-dataset", "mine", JSON, IMAGE_ROOT]: the 4 images' json with
    its categories renamed to `names` (fewer names: fewer categories, their objects only);
    removed from the catalogs after the test."""
    _, json_file, images = shapes_val_subset(4)
    registered.append(NAME)

    def flag(names=None):
        with open(json_file) as f:
            data = json.load(f)
        if names is not None:
            data["categories"] = [
                dict(c, name=n) for c, n in zip(data["categories"], names, strict=False)
            ]
            kept = {c["id"] for c in data["categories"]}
            data["annotations"] = [a for a in data["annotations"] if a["category_id"] in kept]
        path = tmp_path / "mine.json"
        path.write_text(json.dumps(data))
        return ["--coco-dataset", NAME, str(path), images]

    return flag


def _run_train_net(argv):
    """train_net.py's main in this process, on the command line's arguments."""
    train_net = load_script("train_net.py")
    return train_net.main(train_net.get_parser().parse_args(argv))


@pytest.mark.slow  # 1 iteration of 2 images, an evaluation of 4
def test_train_net_trains_and_evaluates_a_dataset_given_on_the_command_line(mine, tmp_path):
    out = tmp_path / "out"
    datasets = ["DATASETS.TRAIN", f"('{NAME}',)", "DATASETS.TEST", f"('{NAME}',)"]
    train_net = load_script("train_net.py")
    train_net.cli(
        ["--config-file", QUICKSTART, *mine(), *datasets, *FEW_ITERATIONS, "OUTPUT_DIR", str(out)]
    )
    assert (out / "model_final.pth").is_file()
    assert (out / "inference" / NAME / "coco_instances_results.json").is_file()
    metrics = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines()]
    assert math.isfinite(metrics[-1]["bbox/AP"])
    assert MetadataCatalog.get(NAME).thing_classes == list(SHAPE_CLASSES)


@pytest.mark.slow  # 2 iterations of 2 images, an evaluation of 4
def test_train_net_lazy_config_trains_on_a_dataset_given_on_the_command_line(mine, tmp_path):
    out = tmp_path / "out"
    names = [f"dataloader.train.dataset.names=[{NAME}]", f"dataloader.test.dataset.names={NAME}"]
    load_script("train_net.py").cli(
        ["--config-file", QUICKSTART_PY, *mine(), *QUICK_RUN, *names, f"train.output_dir={out}"]
    )
    assert (out / "model_final.pth").is_file()
    assert (out / "inference" / NAME / "coco_instances_results.json").is_file()


@pytest.mark.parametrize(
    "config,overrides,key",
    [
        (
            QUICKSTART,
            ["DATASETS.TRAIN", f"('{NAME}',)", "MODEL.DEFORMABLE_DETR.NUM_CLASSES", "10"]
            + ["OUTPUT_DIR", "{out}"],
            "MODEL.DEFORMABLE_DETR.NUM_CLASSES",
        ),
        (
            QUICKSTART_PY,
            [f"dataloader.train.dataset.names=[{NAME}]", "model.transformer.num_classes=10"]
            + ["train.output_dir={out}"],
            "model.transformer.num_classes",
        ),
    ],
    ids=["yacs", "lazy"],
)
def test_num_classes_other_than_the_datasets_is_refused_naming_the_key(
    mine, tmp_path, config, overrides, key
):
    overrides = [o.format(out=tmp_path) for o in overrides]
    with pytest.raises(
        ValueError,
        match=rf"^{re.escape(key)} is 10, but the dataset '{NAME}' has 3 categories "
        rf"\['circle', 'square', 'triangle'\]: set {re.escape(key)} to 3",
    ):
        _run_train_net(["--config-file", config, *mine(), *overrides])


def test_bad_coco_dataset_values_are_named(mine, tmp_path, train_net_dry):
    _, _, json_file, images = mine()
    cases = [
        ([NAME, str(tmp_path / "none.json"), images], FileNotFoundError, "JSON .*none.json"),
        ([NAME, json_file, str(tmp_path / "none")], FileNotFoundError, "IMAGE_ROOT .*none'"),
        # Detectron2's builtin name: its registration asserted
        (
            ["coco_2017_train", json_file, images],
            ValueError,
            "'coco_2017_train' is already registered .* give this one another name",
        ),
    ]
    for values, error, named in cases:
        with pytest.raises(error, match=rf"--coco-dataset {re.escape(values[0])} .*{named}"):
            train_net_dry.cli(["--config-file", QUICKSTART, "--coco-dataset", *values])
    assert not train_net_dry.launched
    # the same files again (as in the process launch runs main in) are no second dataset
    for _ in range(2):
        train_net_dry.cli(["--config-file", QUICKSTART, "--coco-dataset", NAME, json_file, images])
    assert len(train_net_dry.launched) == 2


def _demo_labels(argv, shapes_root, monkeypatch):
    """The class names demo.py labels the picture of one image with."""
    demo = load_script("demo.py")
    labels = []

    def draw(predictor, metadata, bgr, *args):
        labels.append(metadata.thing_classes)
        return bgr, 0

    monkeypatch.setattr(demo, "draw", draw)
    demo.main(["--config-file", QUICKSTART, "--input", val_images(shapes_root, 1)[0], *argv])
    return labels[0]


def test_demo_labels_come_from_the_coco_dataset_given(mine, shapes_root, monkeypatch):
    names = ["disc", "box", "wedge"]
    assert _demo_labels(mine(names), shapes_root, monkeypatch) == names
    # without the flag: the config's DATASETS.TEST[0], as Detectron2's demo
    assert _demo_labels([], shapes_root, monkeypatch) == list(SHAPE_CLASSES)


def test_demo_refuses_labels_of_another_class_count(mine, shapes_root, monkeypatch):
    with pytest.raises(
        ValueError,
        match=r"MODEL\.DEFORMABLE_DETR\.NUM_CLASSES is 3, but the dataset 'mine' has 2 "
        r"categories \['disc', 'box'\]",
    ):
        _demo_labels(mine(["disc", "box"]), shapes_root, monkeypatch)
