"""Shared builders for the training tests: a small config on the built-in data."""
import os

from detectron2.config import get_cfg

from deformable_detr import add_deformable_detr_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def quick_cfg(output_dir, opts=()):
    """configs/quickstart.yaml, made smaller and faster for tests."""
    cfg = get_cfg()
    add_deformable_detr_config(cfg)
    cfg.merge_from_file(os.path.join(REPO, "configs", "quickstart.yaml"))
    cfg.merge_from_list([
        "OUTPUT_DIR", str(output_dir), "SOLVER.IMS_PER_BATCH", "4", "DATALOADER.NUM_WORKERS",
        "0", "SOLVER.CHECKPOINT_PERIOD", "100000", "TEST.EVAL_PERIOD", "0", *opts])
    return cfg
