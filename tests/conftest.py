"""Shared pytest configuration and fixtures of the test suite."""

import os

import pytest
import torch

# Without a GPU, the Triton kernels run on CPU tensors in Triton's interpreter. Triton reads the
# variable when a kernel is defined, at `import deformable_detr`, so it is set here, first.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "slow: a test that takes several seconds (deselect with -m 'not slow')"
    )


@pytest.fixture(scope="session")
def shapes_root(tmp_path_factory):
    """The built-in shapes dataset, written once per test session to a temporary folder and
    registered as "ddetr_shapes_train" / "ddetr_shapes_val"."""
    from deformable_detr.data import register_shapes_datasets

    root = str(tmp_path_factory.mktemp("datasets") / "ddetr_shapes")
    register_shapes_datasets(root)
    return root


@pytest.fixture(autouse=True)
def _restore_loggers():
    """Scripts run in-process (demo.main, train_net.cli) call Detectron2's setup_logger, which
    gives these loggers handlers bound to the test's captured stream and stops their propagation;
    later tests would then log into a closed stream and caplog would see nothing."""
    import logging

    names = ("deformable_detr", "detectron2", "d2", "fvcore")
    saved = {n: (logging.getLogger(n).handlers[:], logging.getLogger(n).propagate) for n in names}
    yield
    for name, (handlers, propagate) in saved.items():
        logger = logging.getLogger(name)
        logger.handlers[:] = handlers
        logger.propagate = propagate


@pytest.fixture
def quick_cfg(tmp_path):
    """quick_cfg(opts=()): configs/quickstart.yaml made small and fast for tests
    (training_cases.quick_cfg_in), with OUTPUT_DIR this test's own temporary folder."""
    from training_cases import quick_cfg_in

    return lambda opts=(): quick_cfg_in(tmp_path, opts)


@pytest.fixture
def builtin_datasets_env(shapes_root, monkeypatch):
    """DETECTRON2_DATASETS points at the session's built-in dataset for this test, so that the
    scripts (train_net.py, demo.py) run in-process find it there and do not write it again under
    the repository; returns the environment for running them as a subprocess (one OpenMP
    thread)."""
    import os

    monkeypatch.setenv("DETECTRON2_DATASETS", os.path.dirname(shapes_root))
    return {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="session")
def shapes_val_subset(shapes_root, tmp_path_factory):
    """subset(n) -> (name, json_file, image_folder): the first n images of the built-in
    validation split as a COCO dataset of their own, registered as "ddetr_shapes_val_<n>" (its
    json written once per session, in a temporary folder)."""
    import json
    import os

    from detectron2.data import DatasetCatalog
    from detectron2.data.datasets import register_coco_instances

    split = os.path.join(shapes_root, "ddetr_shapes_val")
    images = os.path.join(split, "images")
    out = tmp_path_factory.mktemp("val_subsets")

    def subset(n):
        name = f"ddetr_shapes_val_{n}"
        path = str(out / f"{name}.json")
        if name not in DatasetCatalog.list():
            with open(os.path.join(split, "annotations.json")) as f:
                data = json.load(f)
            data["images"] = data["images"][:n]
            ids = {im["id"] for im in data["images"]}
            data["annotations"] = [a for a in data["annotations"] if a["image_id"] in ids]
            with open(path, "w") as f:
                json.dump(data, f)
            register_coco_instances(name, {}, path, images)
        return name, path, images

    return subset


@pytest.fixture
def registered():
    """A list to which a test appends the names of the datasets it registers (DatasetCatalog
    and MetadataCatalog), removed again after the test."""
    from detectron2.data import DatasetCatalog, MetadataCatalog

    names = []
    yield names
    for name in names:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
