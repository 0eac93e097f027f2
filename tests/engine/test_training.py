"""Training, evaluation and resume on the built-in data, with the project's Trainer.

The runs are a few iterations of configs/quickstart.yaml (batch 4) on the CPU.
"""

import os

import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import DatasetCatalog

from deformable_detr.engine import Trainer


def _train(cfg, resume=False):
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=resume)
    trainer.train()
    return trainer


def test_short_training_lowers_the_loss(shapes_root, quick_cfg):
    cfg = quick_cfg(["SOLVER.MAX_ITER", "40"])
    trainer = _train(cfg)
    losses = [v for v, _ in trainer.storage.history("total_loss").values()]
    assert len(losses) == 40
    first, last = sum(losses[:8]) / 8, sum(losses[-8:]) / 8
    print(f"total_loss: first 8 iterations {first:.3f}, last 8 {last:.3f}")
    assert last < 0.9 * first
    # every loss term reaches the event storage (and so the JSON/TensorBoard/console writers)
    for name in ("loss_ce", "loss_bbox", "loss_giou", "loss_ce_0", "loss_giou_0"):
        assert name in trainer.storage.histories(), name


def test_evaluation_yields_coco_metrics(shapes_root, tmp_path, quick_cfg):
    cfg = quick_cfg(["SOLVER.MAX_ITER", "2"])
    model = Trainer.build_model(cfg)
    results = Trainer.test(cfg, model)
    bbox = results["bbox"]
    for key in ("AP", "AP50", "AP75", "APs", "APm", "AP-circle", "AP-square", "AP-triangle"):
        assert key in bbox, key
    assert 0 <= bbox["AP50"] <= 100
    assert os.path.exists(
        tmp_path / "inference" / "ddetr_shapes_val" / "coco_instances_results.json"
    )


def test_resume_continues_at_the_saved_iteration(shapes_root, quick_cfg):
    first = _train(quick_cfg(["SOLVER.MAX_ITER", "6"]))
    saved = {k: v.clone() for k, v in first.model.state_dict().items()}
    saved_lr = first.optimizer.param_groups[0]["lr"]

    # "stopped" after 6 of 12 iterations; the lr steps down at 9
    cfg = quick_cfg(["SOLVER.MAX_ITER", "12", "SOLVER.STEPS", "(9,)"])
    resumed = Trainer(cfg)
    resumed.resume_or_load(resume=True)
    assert resumed.start_iter == 6
    for k, v in resumed.model.state_dict().items():
        assert torch.equal(v, saved[k]), k
    assert resumed.optimizer.param_groups[0]["lr"] == saved_lr
    state = resumed.optimizer.state[resumed.optimizer.param_groups[0]["params"][0]]
    assert int(state["step"]) == 6  # AdamW's moments came back too
    resumed.train()
    assert resumed.iter == 12  # Detectron2 leaves iter at max_iter after the loop
    assert resumed.optimizer.param_groups[0]["lr"] == pytest.approx(0.1 * saved_lr)


def test_resume_without_a_checkpoint_starts_from_scratch(shapes_root, quick_cfg):
    trainer = Trainer(quick_cfg(["SOLVER.MAX_ITER", "1"]))
    trainer.resume_or_load(resume=True)
    assert trainer.start_iter == 0


def test_images_without_objects_are_kept(shapes_root, quick_cfg):
    from detectron2.data import get_detection_dataset_dicts

    from deformable_detr.data import DetrDatasetMapper

    cfg = quick_cfg()
    empty = dict(DatasetCatalog.get("ddetr_shapes_val")[0], annotations=[], image_id=-1)
    DatasetCatalog.register("ddetr_test_with_empty", lambda: [empty])
    try:
        dicts = get_detection_dataset_dicts(
            ["ddetr_test_with_empty"], filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS
        )
        assert len(dicts) == 1  # Detectron2's default would have dropped it
        mapped = DetrDatasetMapper(cfg, True)(dicts[0])
        assert len(mapped["instances"]) == 0
    finally:
        DatasetCatalog.remove("ddetr_test_with_empty")


def test_weights_that_match_nothing_are_refused(shapes_root, tmp_path, quick_cfg):
    cfg = quick_cfg()
    model = Trainer.build_model(cfg)
    path = tmp_path / "other.pth"
    torch.save({"model": {"foo.weight": torch.zeros(3)}}, path)
    from deformable_detr.engine import WeightsCheckpointer

    with pytest.raises(ValueError, match="matches none of the model's"):
        WeightsCheckpointer(model).load(str(path))
    # a partial match (here: the model's own weights minus the class heads) loads
    partial = {k: v for k, v in model.state_dict().items() if "class_embed" not in k}
    DetectionCheckpointer(model, save_dir=str(tmp_path)).save("partial")
    torch.save({"model": partial}, tmp_path / "partial.pth")
    WeightsCheckpointer(model).load(str(tmp_path / "partial.pth"))
