"""Shared builders for the training tests: a small config on the built-in data."""
import os

from deformable_detr import get_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def quick_cfg(output_dir, opts=()):
    """configs/quickstart.yaml, made smaller and faster for tests."""
    return get_config(os.path.join(REPO, "configs", "quickstart.yaml"), [
        "OUTPUT_DIR", str(output_dir), "SOLVER.IMS_PER_BATCH", "4", "DATALOADER.NUM_WORKERS",
        "0", "SOLVER.CHECKPOINT_PERIOD", "100000", "TEST.EVAL_PERIOD", "0", *opts])
