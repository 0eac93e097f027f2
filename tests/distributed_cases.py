"""The functions the processes of the distributed tests run (importable, for spawn)."""

import json
import os

import torch
from detectron2.utils import comm

from deformable_detr.data import register_shapes_datasets
from deformable_detr.engine import Trainer
from training_cases import quick_cfg_in


def train_and_compare(shapes_root, output_dir, iterations):
    """Trains a few iterations under DDP, then checks on rank 0 that every process holds the same
    parameters; writes what it saw to output_dir/sync.json."""
    register_shapes_datasets(shapes_root)
    cfg = quick_cfg_in(output_dir, ["SOLVER.MAX_ITER", str(iterations)])
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    params = torch.cat([p.detach().flatten() for p in trainer.model.parameters()])
    sums = comm.all_gather((params.double().sum().item(), params.abs().double().sum().item()))
    if comm.is_main_process():
        with open(os.path.join(output_dir, "sync.json"), "w") as f:
            json.dump(
                {
                    "world_size": comm.get_world_size(),
                    "sums": sums,
                    "ddp": type(trainer.model).__name__,
                },
                f,
            )


def write_world(output_dir):
    """Writes this process's rank, the world size and the ranks all_gather collects to
    output_dir/rank<rank>.json."""
    rank = comm.get_rank()
    with open(os.path.join(output_dir, f"rank{rank}.json"), "w") as f:
        json.dump({"world_size": comm.get_world_size(), "ranks": comm.all_gather(rank)}, f)
