#!/usr/bin/env python
"""Convergence of H-Deformable-DETR's additions, measured on the built-in data: COCO box AP at
equal iterations and at equal training time, from scratch, for

  baseline  two-stage Deformable DETR with box refinement, dropout 0.1 (as released)
  tricks    + dropout 0, mixed query selection, look forward twice (ddetr_r50_plus_12ep.yaml)
  hybrid    + hybrid matching (hdetr_r50_12ep.yaml): 5x the one-to-one queries matched
            one-to-many to 6 copies of the targets, lambda 1

each on configs/quickstart.yaml's small model (ResNet-18, 2 + 2 layers, 30 queries; H-DETR's
ratio of 300 + 1500 becomes 30 + 150) and several seeds: CPU training varies run to run, so the
spread is shown. `--cost` adds the training cost of the 1,500 extra queries at full size (R50,
one 800x1066 image): seconds per iteration and peak resident memory, hybrid against tricks.
No AP is asserted anywhere: this is a measurement.

Usage:
  python tools/benchmark_convergence.py                      # 350 iterations, seeds 0 1
  python tools/benchmark_convergence.py --iters 200 --eval-every 50 --seeds 0 1 2 --cost
"""

import argparse
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "projects", "DeformableDETR"))
sys.path.insert(0, os.path.join(REPO, "tools"))

import ddetr_malloc  # noqa: E402  (standard library only)

if __name__ == "__main__":  # on mimalloc (ddetr_malloc), before torch's import, which it repeats
    ddetr_malloc.reexec_with_mimalloc()

import torch  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402
from detectron2.structures import Boxes, Instances  # noqa: E402
from detectron2.utils.logger import setup_logger  # noqa: E402

from deformable_detr import get_config  # noqa: E402
from deformable_detr.data import register_shapes_datasets  # noqa: E402
from deformable_detr.engine import Trainer  # noqa: E402
from resident_memory import peak_rss_growth_mib  # noqa: E402

D = "MODEL.DEFORMABLE_DETR."
TWO_STAGE = [D + "TWO_STAGE", "True", D + "TWO_STAGE_NUM_PROPOSALS", "30"]
TRICKS = [
    D + "DROPOUT", "0.0",
    D + "MIXED_QUERY_SELECTION", "True",
    D + "LOOK_FORWARD_TWICE", "True",
]  # fmt: skip
HYBRID = [
    D + "HYBRID_MATCHING.NUM_QUERIES_ONE2MANY", "150",
    D + "HYBRID_MATCHING.K_ONE2MANY", "6",
    D + "HYBRID_MATCHING.LAMBDA_ONE2MANY", "1.0",
]  # fmt: skip
ARMS = {
    "baseline": TWO_STAGE + [D + "DROPOUT", "0.1"],
    "tricks": TWO_STAGE + TRICKS,
    "hybrid": TWO_STAGE + TRICKS + HYBRID,
}
WARMUP = 5  # iterations left out of the time per iteration (allocator and thread-pool warm-up)


def train(arm: str, seed: int, args, out_dir: str):
    """Trains `arm` from scratch; returns [(iteration, AP, training seconds so far)] at every
    evaluation, and the mean seconds per iteration after WARMUP."""
    opts = [
        "SOLVER.MAX_ITER", str(args.iters),
        "SOLVER.STEPS", f"({int(0.8 * args.iters)},)",
        "SOLVER.CHECKPOINT_PERIOD", "1000000",
        "TEST.EVAL_PERIOD", str(args.eval_every),
        "SEED", str(seed),
        "OUTPUT_DIR", os.path.join(out_dir, f"{arm}_{seed}"),
        *ARMS[arm],
    ]  # fmt: skip
    cfg = get_config(os.path.join(REPO, "configs", "quickstart.yaml"), opts)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    # Detectron2's IterationTimer: each iteration's own time, evaluations excluded
    times = dict((it, t) for t, it in trainer.storage.history("time").values())
    points = []
    for ap, it in trainer.storage.history("bbox/AP").values():
        # the final evaluation is stored at iteration MAX_ITER, the others at the last one run
        done = min(it + 1, args.iters)
        points.append((done, ap, sum(t for i, t in times.items() if i < done)))
    per_iter = statistics.mean([t for i, t in times.items() if i >= WARMUP] or times.values())
    return points, per_iter


def at_time(points, budget: float) -> float:
    """AP after `budget` training seconds, interpolated linearly between the evaluations (from AP
    0 at 0 s); nan past the last evaluation."""
    for (_, ap0, t0), (_, ap1, t1) in zip([(0, 0.0, 0.0)] + points, points):
        if t0 <= budget <= t1:
            return ap0 + (ap1 - ap0) * (budget - t0) / (t1 - t0)
    return float("nan")


def _fmt(values):
    return f"{statistics.mean(values):.1f} ({min(values):.1f}-{max(values):.1f})"


def table(results, args):
    """The convergence table of `results`: arm -> [(points, seconds per iteration)] per seed."""
    evals = [it for it, _, _ in next(iter(results.values()))[0][0]]
    # the equal-time budget: the shortest run's training time, which every run reaches
    budget = min(points[-1][2] for runs in results.values() for points, _ in runs)
    print(
        f"\nbuilt-in data, {args.iters} iterations of 8 images, seeds {args.seeds}: "
        f"box AP, mean (min-max over seeds)\n"
    )
    head = " | ".join(f"AP @ {it} it" for it in evals)
    print(f"| arm | s / iteration | {head} | AP @ {budget:.0f} s of training |")
    print("| --- | ---: |" + " ---: |" * (len(evals) + 1))
    for arm, runs in results.items():
        cells = [_fmt([pts[k][1] for pts, _ in runs]) for k in range(len(evals))]
        timed = _fmt([at_time(pts, budget) for pts, _ in runs])
        per_iter = statistics.mean(s for _, s in runs)
        print(f"| {arm} | {per_iter:.2f} | {' | '.join(cells)} | {timed} |")
    print(
        f"\n(training time excludes the evaluations; the equal-time budget, {budget:.0f} s, is "
        f"the shortest run's; AP interpolated linearly between evaluations)"
    )


def convergence(args):
    register_shapes_datasets()
    results = {}
    with tempfile.TemporaryDirectory() as out_dir:
        for arm in args.arms:
            results[arm] = [train(arm, seed, args, out_dir) for seed in args.seeds]
            print(f"{arm}: {results[arm]}", flush=True)
    table(results, args)


def _full_size_batch():
    g = torch.Generator().manual_seed(0)
    h, w = 800, 1066
    inst = Instances((h, w))
    xy = torch.rand(10, 2, generator=g) * torch.tensor([w - 200.0, h - 200.0])
    inst.gt_boxes = Boxes(torch.cat([xy, xy + 50 + torch.rand(10, 2, generator=g) * 150], 1))
    inst.gt_classes = torch.randint(0, 80, (10,), generator=g)
    image = torch.randint(0, 256, (3, h, w), generator=g).float()
    return [{"image": image, "height": h, "width": w, "instances": inst}]


def _step_cost(config: str, repeats: int):
    """(median seconds, peak resident growth in MiB) of a training iteration of `config`."""
    cfg = get_config(
        os.path.join(REPO, "configs", config), ["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", ""]
    )
    torch.manual_seed(0)
    model = build_model(cfg).train()
    batch = _full_size_batch()

    def step():
        model.zero_grad(set_to_none=True)
        sum(model(batch).values()).backward()

    memory = peak_rss_growth_mib(step)  # the first iteration: the allocator grows to its peak
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds), memory


def cost(repeats: int = 3):
    """Seconds per training iteration and peak resident growth, full size, tricks vs hybrid."""
    configs = ("ddetr_r50_plus_12ep.yaml", "hdetr_r50_12ep.yaml")
    rows = []
    for config in configs:
        # a fresh process each: a process that has trained already reuses its freed memory
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            rows.append((config, *pool.submit(_step_cost, config, repeats).result()))
    print(
        f"\nfull size (R50, one 800x1066 image, 10 objects), {torch.get_num_threads()} threads: "
        f"the median of {repeats} training iterations after the first, and the peak resident "
        f"growth of the first, in a fresh process\n"
    )
    print("| config | s / iteration | peak resident growth (MiB) |")
    print("| --- | ---: | ---: |")
    for config, s, mib in rows:
        print(f"| {config} | {s:.2f} | {mib:.0f} |")
    (_, s0, m0), (_, s1, m1) = rows
    print(f"\nthe 1,500 one-to-many queries: x{s1 / s0:.2f} time, {m1 - m0:+.0f} MiB per iteration")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iters", type=int, default=350, help="iterations of each run")
    parser.add_argument("--eval-every", type=int, default=70, help="iterations between APs")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--arms", nargs="+", choices=list(ARMS), default=list(ARMS))
    parser.add_argument("--cost", action="store_true", help="also the full-size cost per iteration")
    parser.add_argument("--cost-only", action="store_true", help="only the full-size cost")
    args = parser.parse_args(argv)
    if args.iters < args.eval_every or args.eval_every < 1:
        parser.error("--eval-every must be between 1 and --iters")
    setup_logger(name="deformable_detr")
    setup_logger()
    if not args.cost_only:
        convergence(args)
    if args.cost or args.cost_only:
        cost()


if __name__ == "__main__":
    main()
