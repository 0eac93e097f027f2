"""Shared builders for the training tests: a small config on the built-in data."""

from deformable_detr import get_config
from repo_paths import QUICKSTART


def quick_cfg_in(output_dir, opts=()):
    """configs/quickstart.yaml, made smaller and faster for tests, writing into output_dir (tests
    take the conftest fixture quick_cfg, which writes into their own temporary folder)."""
    return get_config(
        QUICKSTART,
        [
            "OUTPUT_DIR",
            str(output_dir),
            "SOLVER.IMS_PER_BATCH",
            "4",
            "DATALOADER.NUM_WORKERS",
            "0",
            "SOLVER.CHECKPOINT_PERIOD",
            "100000",
            "TEST.EVAL_PERIOD",
            "0",
            *opts,
        ],
    )
