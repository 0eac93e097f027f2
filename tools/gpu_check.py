#!/usr/bin/env python
"""Everything about this project that only a GPU can verify, in one command and one markdown
report (with the same data as JSON beside it). Each section is skipped, with its reason in the
report, where what it needs is absent (a CUDA device, compute-sanitizer, detectron2, the C++ CUDA
kernels, the authors' op).

  tests      pytest tests/layers/test_ms_deform_attn_cuda.py once per CUDA backend
             (DEFORMABLE_DETR_CUDA_BACKEND=triton, then =cpp), in child processes
  sanitizer  compute-sanitizer memcheck and racecheck on the forward and backward of each backend
             at a mid-size shape (gpu_check_op.sanitize_workload)
  bench      the op at the decoder shape (batch 4, 300 queries, the levels of 800x1333, 8 heads of
             32, 4 points) and the encoder shape (all pixels, batch 1 and 2), float32, bfloat16
             and float16, forward and forward+backward: Triton (and its deterministic backward),
             C++ CUDA, the grid_sample reference, the authors' op when given (gpu_check_op.py)
  bandwidth  the bytes each call must move against a device-to-device copy's bandwidth
  train      a few iterations of ddetr_r50 on the built-in data: float32, float16 and bfloat16
             AMP; iteration 0's losses compared (gpu_check_model.py)
  infer      ddetr_r50 images/s and peak memory at 800x1333 and 800x1066, batch 1 and 4, float32
             and bfloat16 autocast
tests and sanitizer check correctness only and run concurrently; the timed sections run alone.

Usage, on a machine with a GPU (issue 19):
  python3 tools/gpu_check.py --out report.md [--authors-op DIR] [--quick] [--sections ...]
and, with no GPU, the CPU-side logic and a tiny CPU benchmark of the reference and C++ kernels:
  python tools/gpu_check.py --dry-run --out report.md
"""

import argparse
import concurrent.futures
import json
import os
import platform
import shutil
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from functools import partial

import torch

import gpu_check_op as op  # tools/, the script's folder
import gpu_check_report as report

TOOLS = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(TOOLS)
PACKAGE_DIR = os.path.join(REPO, "projects", "DeformableDETR")
SECTIONS = ("tests", "sanitizer", "bench", "bandwidth", "train", "infer")
CUDA_TESTS = ("tests/layers/test_ms_deform_attn_cuda.py",)
BACKEND_IMPLS = {"triton": ("triton", "triton_det"), "cpp": ("cpp",)}
SANITIZER_TOOLS = ("memcheck", "racecheck")
RESULT_MARK = "GPU_CHECK_RESULT "
LOSS_RTOL = 1e-2  # iteration 0's losses of AMP against float32 (issue 18, item 7)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].replace("\n", " "))
    parser.add_argument("--out", default="gpu_check_report.md", help="the markdown report")
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="no GPU: CPU-side logic, skip paths, a tiny CPU benchmark",
    )
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    parser.add_argument("--quick", action="store_true", help="fewer cases, repeats, iterations")
    parser.add_argument(
        "--authors-op",
        metavar="DIR",
        help="folder holding the authors' built MultiScaleDeformableAttention*.so",
    )
    parser.add_argument("--sanitizer", default=_find_sanitizer(), help="compute-sanitizer path")
    parser.add_argument(
        "--dtypes",
        nargs="+",
        default=["float32", "bfloat16", "float16"],
        choices=["float32", "bfloat16", "float16"],
    )
    parser.add_argument(
        "--half-locations",
        choices=["float32", "half"],
        default="float32",
        help="dtype of locations and weights in half rows (float32: as autocast "
        "gives them in the model)",
    )
    parser.add_argument("--repeat", type=int, help="timed calls per benchmark row (median)")
    parser.add_argument(
        "--time-limit",
        type=float,
        default=450,
        help="seconds for the whole run (default 450): tests and sanitizer get 40%%, the "
        "benchmark stops starting cases and the model runs shrink or skip to end within it",
    )
    parser.add_argument(
        "--amp-precision-key",
        default="SOLVER.AMP.PRECISION",
        help="the config key of the AMP dtype",
    )
    parser.add_argument("--child", choices=["sanitize", "train", "infer"], help=argparse.SUPPRESS)
    parser.add_argument("--child-args", default="{}", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if "bandwidth" in args.sections and "bench" not in args.sections:
        args.sections.append("bench")  # bandwidth is computed from the benchmark's rows
    return args


def _find_sanitizer():
    homes = [os.environ.get("CUDA_HOME"), "/usr/local/cuda"]
    candidates = [shutil.which("compute-sanitizer")]
    candidates += [os.path.join(h, "bin", "compute-sanitizer") for h in homes if h]
    return next((c for c in candidates if c and os.path.isfile(c)), None)


# ----------------------------------------------------------------------------------------------
# Child processes
# ----------------------------------------------------------------------------------------------


def child_env(**extra):
    path = os.pathsep.join(p for p in (PACKAGE_DIR, os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path, "PYTHONUNBUFFERED": "1", **extra}


def child_command(mode, **kwargs):
    return [
        sys.executable,
        os.path.abspath(__file__),
        "--child",
        mode,
        "--child-args",
        json.dumps(kwargs),
    ]


def run_process(cmd, env, timeout):
    """(exit code or "timeout", output, the child's result dict or None). The child runs in a
    process group of its own, killed whole on timeout (compute-sanitizer's python too)."""
    proc = subprocess.Popen(
        cmd,
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=timeout)
        rc = proc.returncode
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, rc = proc.communicate()[0], "timeout"
    lines = [line for line in out.splitlines() if line.startswith(RESULT_MARK)]
    return rc, out, json.loads(lines[-1][len(RESULT_MARK) :]) if lines else None


def run_child(mode, args):
    """The child processes' side: run one workload, print its result after RESULT_MARK."""
    kwargs = json.loads(args.child_args)
    if mode == "sanitize":
        layers, _ = op.load_layers(PACKAGE_DIR)
        result = op.sanitize_workload(layers, **kwargs)
    else:
        import gpu_check_model as model

        sys.path.insert(0, PACKAGE_DIR)
        child = model.train_child if mode == "train" else model.infer_child
        result = child(REPO, **kwargs)
    print(RESULT_MARK + json.dumps(result), flush=True)


# ----------------------------------------------------------------------------------------------
# Sections
# ----------------------------------------------------------------------------------------------


def correctness_jobs(args, facts, sections):
    """(section, label, command, env, timeout, interpret) of the tests and sanitizer runs; the
    sections whose prerequisites are absent are marked skipped here."""
    jobs = []
    timeout = 0.4 * args.time_limit  # they run at once; the timed sections need the rest
    tests, sanitizer = sections["tests"], sections["sanitizer"]
    for backend, impls in BACKEND_IMPLS.items():
        missing = facts["missing"][impls[0]]
        if tests.selected:
            why = missing or facts["no_detectron2"]  # the tests import deformable_detr
            xml = os.path.join(facts["tmp"], f"pytest-{backend}.xml")
            cmd = [
                sys.executable,
                "-m",
                "pytest",
                *CUDA_TESTS,
                "-q",
                "-rfE",
                "-p",
                "no:cacheprovider",
                f"--junitxml={xml}",
            ]
            tests.plan(backend, cmd, why)
            if not why:
                env = child_env(DEFORMABLE_DETR_CUDA_BACKEND=backend)
                jobs.append((tests, backend, cmd, env, timeout, partial(report.pytest_record, xml)))
        for tool in SANITIZER_TOOLS if sanitizer.selected else ():
            why = missing or (None if args.sanitizer else "compute-sanitizer not found")
            dtypes = args.dtypes[:2] if args.quick else args.dtypes
            workload = child_command("sanitize", impls=list(impls), dtypes=dtypes)
            cmd = [
                args.sanitizer or "compute-sanitizer",
                "--tool",
                tool,
                "--error-exitcode",
                "9",
                "--print-limit",
                "20",
                *workload,
            ]
            sanitizer.plan(f"{backend} {tool}", cmd, why)
            if not why:
                # without the caching allocator, an overrun of a tensor is outside any block
                env = child_env(PYTORCH_NO_CUDA_MEMORY_CACHING="1")
                label = f"{backend} {tool}"
                jobs.append((sanitizer, label, cmd, env, timeout, report.sanitizer_record))
    return jobs


def run_correctness(jobs):
    def run(job):
        section, label, cmd, env, timeout, interpret = job
        start = time.time()
        rc, out, result = run_process(cmd, env, timeout)
        ok, line, detail = interpret(rc, out, result)
        section.record(label, ok, f"{line} ({time.time() - start:.0f} s)", detail)

    with concurrent.futures.ThreadPoolExecutor(max(1, len(jobs))) as pool:
        list(pool.map(run, jobs))


def run_bench(args, facts, sections):
    bench, bandwidth = sections["bench"], sections["bandwidth"]
    device = facts["device"]
    if facts["layers"] is None:
        return bench.skip(facts["layers_error"]), bandwidth.skip(facts["layers_error"])
    impls, skipped = op.implementations(
        facts["layers"], device, facts["authors"], facts["authors_reason"], args.dry_run
    )
    repeat = args.repeat or (3 if args.dry_run else 10 if args.quick else 30)
    model_reserve = 60 * sections["train"].selected + 30 * sections["infer"].selected
    rows, baseline = op.run_bench(
        facts["layers"],
        device,
        impls,
        args.dtypes,
        op.bench_cases(args.dry_run, args.quick),
        repeat,
        args.half_locations == "float32",
        deadline=facts["deadline"] - model_reserve,
    )
    choices = {}
    if "triton" in [i.name for i in impls]:
        choices = facts["layers"].ms_deform_attn_triton.autotune_choices()
    report.bench_section(
        bench, rows, baseline, skipped, choices, repeat, device, args.half_locations
    )
    if bandwidth.selected:
        gbps = op.copy_bandwidth(device, 16 if args.dry_run else 2048) / 1e9
        report.bandwidth_section(bandwidth, rows, gbps)


def run_model(args, facts, sections):
    train, infer = sections["train"], sections["infer"]
    why = facts["no_cuda"] or facts["no_detectron2"]
    iterations = 4 if args.quick else 8
    with tempfile.TemporaryDirectory() as datasets:
        results = {}
        for precision in ("float32", "float16", "bfloat16") if train.selected else ():
            cmd = child_command(
                "train",
                precision=precision,
                iterations=iterations,
                amp_key=args.amp_precision_key,
                datasets_dir=datasets,
            )
            train.plan(precision, cmd, why)
            left = facts["deadline"] - time.time() - 30 * infer.selected
            if why:
                continue
            if left < 20:
                results[precision] = {"skipped": f"--time-limit {args.time_limit:.0f} s reached"}
                continue
            rc, out, result = run_process(cmd, child_env(), left)
            results[precision] = result or {"failed": f"exit {rc}", "output": out[-3000:]}
        if results:
            report.train_section(train, results, LOSS_RTOL)
    if infer.selected:
        cmd = child_command("infer", iterations=3 if args.quick else 10)
        infer.plan("all sizes", cmd, why)
        left = facts["deadline"] - time.time()
        if not why and left < 20:
            infer.skip(f"--time-limit {args.time_limit:.0f} s reached")
        elif not why:
            rc, out, result = run_process(cmd, child_env(), left)
            report.infer_section(infer, result, f"exit {rc}\n{out[-3000:]}")


def gather_facts(args, tmp):
    """What is present: CUDA, detectron2, the op's backends, the tools; and the reasons for
    each absence, which the sections give as theirs."""
    import importlib.util

    cuda = torch.cuda.is_available() and not args.dry_run
    facts = {"tmp": tmp, "device": torch.device("cuda" if cuda else "cpu")}
    facts["no_cuda"] = None if cuda else "dry run: no GPU" if args.dry_run else "no CUDA device"
    has_d2 = importlib.util.find_spec("detectron2") is not None
    facts["no_detectron2"] = None if has_d2 else "detectron2 is not installed (carry its wheels)"
    try:
        facts["layers"], facts["layers_note"] = op.load_layers(PACKAGE_DIR)
        facts["layers_error"] = None
    except Exception as e:  # the report says why; the other sections still run
        facts["layers"], facts["layers_note"] = None, None
        facts["layers_error"] = f"deformable_detr.layers does not import: {e!r}"
    authors, reason = op.load_authors_op(args.authors_op)
    facts["authors"], facts["authors_reason"] = authors, reason
    skipped = {}
    if cuda and facts["layers"] is not None:
        skipped = op.implementations(
            facts["layers"], facts["device"], authors, reason, args.dry_run
        )[1]
    facts["missing"] = {
        k: facts["no_cuda"] or facts["layers_error"] or skipped.get(k)
        for k in ("triton", "triton_det", "cpp")
    }
    facts["missing"]["authors"] = reason if authors is None else facts["no_cuda"]
    return facts


def environment(args, facts):
    rows = {
        "python": platform.python_version(),
        "torch": f"{torch.__version__} (CUDA build {torch.version.cuda})",
    }
    try:
        import triton

        rows["triton"] = triton.__version__
    except ImportError:
        rows["triton"] = "absent"
    if facts["device"].type == "cuda":
        p = torch.cuda.get_device_properties(0)
        l2_mib = op.l2_cache_bytes(facts["device"]) / 2**20
        rows["device"] = (
            f"{p.name}, sm_{p.major}{p.minor}, {p.multi_processor_count} SMs, "
            f"{p.total_memory / 2**30:.0f} GiB, L2 {l2_mib:.0f} MiB"
        )
        smi = shutil.which("nvidia-smi")
        if smi:
            q = "--query-gpu=driver_version,clocks.sm,clocks.mem,power.draw"
            rows["driver, clocks"] = subprocess.run(
                [smi, q, "--format=csv,noheader"], capture_output=True, text=True
            ).stdout.strip()
    else:
        rows["device"] = facts["no_cuda"]
    rows["detectron2"] = facts["no_detectron2"] or "installed"
    rows["deformable_detr.layers"] = facts["layers_error"] or facts["layers_note"] or "imported"
    for k, v in facts["missing"].items():
        rows[f"op: {k}"] = v or "available"
    rows["compute-sanitizer"] = args.sanitizer or "not found"
    git = subprocess.run(
        ["git", "describe", "--always", "--dirty"], cwd=REPO, capture_output=True, text=True
    )
    rows["commit"] = git.stdout.strip() or "unknown (no git here)"
    return rows


def main(argv=None):
    args = parse_args(argv)
    if args.child:
        return run_child(args.child, args)
    start = time.time()
    command = shlex.join(["tools/gpu_check.py", *(sys.argv[1:] if argv is None else argv)])
    sections = {name: report.Section(name, name in args.sections) for name in SECTIONS}
    with tempfile.TemporaryDirectory() as tmp:
        facts = gather_facts(args, tmp)
        facts["deadline"] = start + args.time_limit
        env = environment(args, facts)

        def write():  # after every phase: a run killed later still leaves what it did
            report.write(args.out, command, time.time() - start, env, list(sections.values()))

        jobs = correctness_jobs(args, facts, sections)
        print(f"tests and sanitizer: {len(jobs)} runs at once", flush=True)
        run_correctness(jobs)
        write()
        if sections["bench"].selected:
            print("bench", flush=True)
            run_bench(args, facts, sections)
            write()
        run_model(args, facts, sections)
        write()
    print(open(args.out).read().split("## 1.")[0])
    return 1 if any(s.status == "failed" for s in sections.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
