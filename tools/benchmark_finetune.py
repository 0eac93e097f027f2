#!/usr/bin/env python
"""Fine-tuning on the built-in data, measured: COCO AP after N iterations on a dataset of some of
the classes that a checkpoint was trained for (e.g. circle and triangle of the quickstart's
circle, square, triangle; the other classes' objects stay in the images, unlabelled), from:

  kept          the checkpoint, the class heads' rows of the shared classes kept
                (MODEL.DEFORMABLE_DETR.KEEP_MATCHING_CLASSES True)
  kept-frozen   the same, with the whole backbone frozen (MODEL.BACKBONE.FREEZE_AT 5)
  reinit        the checkpoint, the class heads re-initialised (the default)
  scratch       no weights

each with several seeds (CPU training is not bitwise repeatable: the spread is shown). The runs
use the fine-tuning recipe of docs (configs/quickstart.yaml with SOLVER.BASE_LR --lr, the
learning rate divided by 10 at 80% of the iterations). No AP is asserted anywhere: this is a
measurement.

Usage:
  python tools/benchmark_finetune.py --weights output/quickstart/model_final.pth
  python tools/benchmark_finetune.py --iters 0 50 150 --seeds 0 1 2 --classes circle triangle
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(
    0,
    os.path.join(
        os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "projects", "DeformableDETR"
    ),
)

import ddetr_malloc  # noqa: E402  (standard library only)

if __name__ == "__main__":  # on mimalloc (ddetr_malloc), before torch's import, which it repeats
    ddetr_malloc.reexec_with_mimalloc()

from deformable_detr import get_config  # noqa: E402
from deformable_detr.data import register_shapes_datasets  # noqa: E402
from deformable_detr.engine import Trainer  # noqa: E402
from detectron2.data import DatasetCatalog, MetadataCatalog  # noqa: E402
from detectron2.data.datasets import register_coco_instances  # noqa: E402
from detectron2.utils.logger import setup_logger  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARMS = {
    "kept": ["MODEL.DEFORMABLE_DETR.KEEP_MATCHING_CLASSES", "True"],
    "kept-frozen": [
        "MODEL.DEFORMABLE_DETR.KEEP_MATCHING_CLASSES",
        "True",
        "MODEL.BACKBONE.FREEZE_AT",
        "5",
    ],
    "reinit": [],
    "scratch": ["MODEL.WEIGHTS", ""],
}


def subset_dataset(split: str, classes, out_dir: str) -> str:
    """The built-in split with the annotations of `classes` only, registered under a new name
    (its json written to out_dir); returns the name."""
    root = os.path.dirname(MetadataCatalog.get(f"ddetr_shapes_{split}").json_file)
    with open(os.path.join(root, "annotations.json")) as f:
        data = json.load(f)
    known = [c["name"] for c in data["categories"]]
    missing = sorted(set(classes) - set(known))
    if missing:
        raise SystemExit(f"--classes {missing} are not classes of the built-in data ({known})")
    data["categories"] = [c for c in data["categories"] if c["name"] in classes]
    ids = {c["id"] for c in data["categories"]}
    data["annotations"] = [a for a in data["annotations"] if a["category_id"] in ids]
    name = f"ddetr_shapes_{split}_{'_'.join(sorted(classes))}"
    path = os.path.join(out_dir, f"{name}.json")
    with open(path, "w") as f:
        json.dump(data, f)
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    register_coco_instances(name, {}, path, os.path.join(root, "images"))
    return name


def run(arm: str, iters: int, seed: int, args, train: str, val: str, out_dir: str) -> float:
    """Box AP on `val` after `iters` iterations of fine-tuning in `arm`."""
    opts = [
        "MODEL.WEIGHTS", args.weights,
        "MODEL.DEFORMABLE_DETR.NUM_CLASSES", str(len(args.classes)),
        "DATASETS.TRAIN", f"('{train}',)",
        "DATASETS.TEST", f"('{val}',)",
        "SOLVER.BASE_LR", str(args.lr),
        "SOLVER.MAX_ITER", str(max(iters, 1)),
        "SOLVER.STEPS", f"({max(2, int(0.8 * iters))},)",  # beyond MAX_ITER 1: ignored
        "SOLVER.CHECKPOINT_PERIOD", "100000",
        "TEST.EVAL_PERIOD", "0",
        "SEED", str(seed),
        "OUTPUT_DIR", os.path.join(out_dir, f"{arm}_{iters}_{seed}"),
        *ARMS[arm],
    ]  # fmt: skip
    cfg = get_config(os.path.join(REPO, "configs", "quickstart.yaml"), opts)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    if not iters:
        return Trainer.test(cfg, trainer.model)["bbox"]["AP"]
    trainer.train()  # ends with the evaluation of DefaultTrainer's EvalHook
    return trainer.storage.latest()["bbox/AP"][0]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--weights",
        default=os.path.join(REPO, "output/quickstart/model_final.pth"),
        help="a checkpoint of the built-in classes (make quickstart's)",
    )
    parser.add_argument("--classes", nargs="+", default=["circle", "triangle"])
    parser.add_argument("--iters", type=int, nargs="+", default=[0, 100])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--arms", nargs="+", choices=sorted(ARMS), default=list(ARMS))
    parser.add_argument("--lr", type=float, default=1e-4, help="SOLVER.BASE_LR of fine-tuning")
    args = parser.parse_args(argv)
    if not os.path.isfile(args.weights):
        raise SystemExit(f"--weights {args.weights!r} does not exist: run `make quickstart`")
    setup_logger(name="deformable_detr")
    setup_logger()
    register_shapes_datasets()
    with tempfile.TemporaryDirectory() as out_dir:
        train = subset_dataset("train", args.classes, out_dir)
        val = subset_dataset("val", args.classes, out_dir)
        rows = []
        for arm in args.arms:
            for iters in args.iters:
                if iters == 0 and arm in ("scratch", "kept-frozen"):
                    continue  # nothing to measure / the same as "kept"
                start = time.perf_counter()
                aps = [run(arm, iters, seed, args, train, val, out_dir) for seed in args.seeds]
                rows.append((arm, iters, aps, time.perf_counter() - start))
                print(f"{arm} after {iters} iterations: AP {aps}", flush=True)
    print(
        f"\nfine-tuning {args.weights} onto {args.classes}, SOLVER.BASE_LR {args.lr}, "
        f"seeds {args.seeds}\n"
    )
    print("| start | iterations | AP per seed | mean | spread (max - min) | s per run |")
    print("| --- | ---: | --- | ---: | ---: | ---: |")
    for arm, iters, aps, seconds in rows:
        print(
            f"| {arm} | {iters} | {', '.join(f'{ap:.1f}' for ap in aps)} | "
            f"{statistics.mean(aps):.1f} | {max(aps) - min(aps):.1f} | "
            f"{seconds / len(aps):.0f} |"
        )


if __name__ == "__main__":
    main()
