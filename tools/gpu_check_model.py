"""The model's part of gpu_check.py (sections train and infer), each run in a child process of
its own (fresh CUDA memory statistics, one autocast precision per process).

train: a few iterations of configs/ddetr_r50.yaml through this project's Trainer (train_net.py's
  path: same config, trainer, data mapper and AMP trainer) on the built-in shapes data, 2 images
  per iteration at 800 pixels (the 128x160 images resized), no weights file (none can be
  downloaded), same seed in every precision: iteration 0 sees the same weights and batch, so its
  losses compare precisions. Checkpointing and evaluation hooks are left out.
infer: ddetr_r50 (random weights) in eval mode on uint8 images of 800x1333 and 800x1066 held on
  the host (the copy to the GPU is counted, as in a real loop), batch 1 and 4, float32 and
  bfloat16 autocast: images/s and peak memory.
"""

import os
import statistics
import tempfile
import time

import torch

__all__ = ["TRAIN_PRECISIONS", "infer_child", "train_child", "train_opts"]

TRAIN_PRECISIONS = ("float32", "float16", "bfloat16")
INFER_SIZES = ((800, 1333), (800, 1066))
INFER_BATCHES = (1, 4)
INFER_PRECISIONS = ("float32", "bfloat16")


def _config_file(repo):
    return os.path.join(repo, "configs", "ddetr_r50.yaml")


def train_opts(iterations, output_dir):
    """ddetr_r50's recipe with what a short run on the built-in data changes (KEY VALUE)."""
    opts = {
        "MODEL.WEIGHTS": "",  # no ImageNet file here: the same random start in every precision
        "MODEL.DEVICE": "cuda",
        "MODEL.DEFORMABLE_DETR.NUM_CLASSES": "3",
        # dropout's masks would be drawn apart in each dtype (as in tests/engine/test_amp.py)
        "MODEL.DEFORMABLE_DETR.DROPOUT": "0.0",
        "DATASETS.TRAIN": "('ddetr_shapes_train',)",
        "DATASETS.TEST": "()",
        # one size (the 128x160 images at 800x1000), no crop, no flip: the same batch each run
        "INPUT.MIN_SIZE_TRAIN": "(800,)",
        "INPUT.CROP.ENABLED": "False",
        "INPUT.RANDOM_FLIP": "none",
        "DATALOADER.NUM_WORKERS": "4",
        "SOLVER.IMS_PER_BATCH": "2",
        "SOLVER.MAX_ITER": str(iterations),
        "SOLVER.STEPS": "()",
        "TEST.EVAL_PERIOD": "0",
        "SEED": "0",
        "OUTPUT_DIR": output_dir,
    }
    return [item for pair in opts.items() for item in pair]


def _has_key(cfg, key):
    node = cfg
    for part in key.split("."):
        if part not in node:
            return False
        node = node[part]
    return True


class _FirstMatching(torch.nn.Module):
    """The criterion's matcher, except at iteration 0: there the float32 run records its
    assignments to a file and the half runs replay them. Randomly initialised queries are nearly
    tied in cost, so rounding can hand a target to another query: a discrete change of several
    percent in loss_ce that is no rounding error of the losses (tests/engine/test_amp.py does
    the same on the CPU)."""

    def __init__(self, matcher, path, replay):
        super().__init__()
        self.matcher, self.path, self.first = matcher, path, True
        self.replay = torch.load(path, weights_only=True) if replay else None
        self.calls = []

    def forward(self, outputs, targets):
        if not self.first:
            return self.matcher(outputs, targets)
        result = self.replay[len(self.calls)] if self.replay else self.matcher(outputs, targets)
        self.calls.append(result)
        return result

    def end_first(self):
        if self.replay is None:
            torch.save(self.calls, self.path)
        self.first = False


def train_child(repo, precision, iterations, amp_key, datasets_dir):
    """Trains `iterations` steps; returns iteration 0's losses, the seconds per iteration after
    Detectron2's timer warm-up, and the peak memory. Run float32 first: the half precisions
    replay its matching of iteration 0 (see _FirstMatching)."""
    os.environ["DETECTRON2_DATASETS"] = datasets_dir
    from deformable_detr import get_config
    from deformable_detr.data import register_shapes_datasets
    from deformable_detr.engine import Trainer
    from detectron2.engine import hooks
    from detectron2.utils.env import seed_all_rng

    with tempfile.TemporaryDirectory() as output_dir:
        cfg = get_config(_config_file(repo), train_opts(iterations, output_dir))
        if precision != "float32":
            if not _has_key(cfg, amp_key):
                return {"skipped": f"the config has no key {amp_key} (--amp-precision-key)"}
            cfg.merge_from_list(["SOLVER.AMP.ENABLED", "True", amp_key, precision])
        register_shapes_datasets()
        seed_all_rng(cfg.SEED)
        trainer = Trainer(cfg)
        trainer.resume_or_load(resume=False)
        dropped = (hooks.PeriodicCheckpointer, hooks.EvalHook, hooks.PeriodicWriter)
        trainer._hooks = [h for h in trainer._hooks if not isinstance(h, dropped)]
        criterion = trainer.model.criterion
        path = os.path.join(datasets_dir, "matching_iteration0.pt")
        replay = precision != "float32" and os.path.isfile(path)
        criterion.matcher = matching = _FirstMatching(criterion.matcher, path, replay)
        trainer.register_hooks([hooks.CallbackHook(after_step=lambda _: matching.end_first())])
        torch.cuda.reset_peak_memory_stats()
        trainer.train()
        histories = trainer.storage.histories()
    losses = {
        k: h.values()[0][0]
        for k, h in histories.items()
        if k == "total_loss" or k.startswith("loss_")
    }
    seconds = [v for v, _ in histories["time"].values()] if "time" in histories else []
    return {
        "trainer": type(trainer._trainer).__name__,
        "matching_replayed": replay,
        "losses": losses,
        "seconds_per_iter": statistics.median(seconds) if seconds else None,
        "images_per_iter": cfg.SOLVER.IMS_PER_BATCH,
        "peak_mib": torch.cuda.max_memory_allocated() / 2**20,
    }


def infer_child(repo, iterations):
    """Images/s and peak memory of each (size, batch, precision)."""
    from deformable_detr import get_config
    from deformable_detr.engine import Trainer

    cfg = get_config(_config_file(repo), ["MODEL.WEIGHTS", "", "MODEL.DEVICE", "cuda"])
    torch.manual_seed(0)
    model = Trainer.build_model(cfg).eval()
    rows = []
    for height, width in INFER_SIZES:
        for batch in INFER_BATCHES:
            images = [
                {
                    "image": torch.randint(0, 256, (3, height, width), dtype=torch.uint8),
                    "height": height,
                    "width": width,
                }
                for _ in range(batch)
            ]
            for precision in INFER_PRECISIONS:
                autocast = torch.autocast(
                    "cuda", dtype=getattr(torch, precision), enabled=precision != "float32"
                )
                with torch.inference_mode(), autocast:
                    for _ in range(2):  # warm-up: Triton autotuning, cuDNN's choices
                        model(images)
                    torch.cuda.synchronize()
                    torch.cuda.reset_peak_memory_stats()
                    start = time.perf_counter()
                    for _ in range(iterations):
                        model(images)
                    torch.cuda.synchronize()
                    seconds = time.perf_counter() - start
                rows.append(
                    dict(
                        size=f"{height}x{width}",
                        batch=batch,
                        precision=precision,
                        images_per_s=batch * iterations / seconds,
                        peak_mib=torch.cuda.max_memory_allocated() / 2**20,
                    )
                )
    return {"rows": rows}
