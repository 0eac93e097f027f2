#!/usr/bin/env python
"""End-to-end inference of the deploy formats on the CPU, side by side in one process.

ddetr_r50 (random weights: time does not depend on them), batch 1, one 800x1333 image, through
the single-image module that every export runs (deformable_detr.export.DetectionExportWrapper):
eager float32, torch.compile (inductor), the AOTInductor package (dynamic, and static at this
size), ONNX Runtime and TorchScript.
Each path is built once, run twice to warm up, then the paths take turns --repeat times (so that
the machine's drift hits all alike). Prints the median time per image, its ratio to eager, the
peak memory of one inference (growth of the resident set over the warm process, measured in a
child process per path whose allocator returns large blocks to the system, so that each run's
own peak shows), and profiles: eager and torch.compile by kind of operator (what bounds the
compiled paths), ONNX Runtime by operator type. The machines are shared and
noisy: compare the ratios, not absolute times across runs.

Usage: python tools/benchmark_deploy.py [--repeat 5] [--height 800 --width 1333]
           [--paths eager compile aoti aoti_static onnx torchscript] [--no-memory]
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "projects", "DeformableDETR"))

# deformable_detr first: it silences detectron2's import-time deprecation warning
from deformable_detr import get_config  # noqa: E402
from resident_memory import peak_rss_growth_mib  # noqa: E402  (tools/, the script's folder)
from deformable_detr import export  # noqa: E402

import torch  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402

PATHS = ("eager", "compile", "aoti", "aoti_static", "onnx", "torchscript")


def build_model_and_image(height, width):
    cfg = get_config(os.path.join(REPO, "configs", "ddetr_r50.yaml"), ["MODEL.DEVICE", "cpu"])
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    g = torch.Generator().manual_seed(0)
    return model, torch.randint(0, 256, (3, height, width), generator=g).float()


def make_runner(name, model, image, folder, arena=True):
    """A callable image -> detections for the path, and its build time in seconds. arena=False
    turns off ONNX Runtime's memory arena, which keeps its peak allocated between runs."""
    start = time.perf_counter()
    wrapper = export.DetectionExportWrapper(model)
    if name == "eager":
        run = torch.no_grad()(wrapper)
    elif name == "compile":
        compiled = torch.compile(wrapper)
        run = torch.no_grad()(compiled)
        run(image)  # the compile happens on the first call
    elif name == "torchscript":
        path = os.path.join(folder, "model.ts")
        export.export_torchscript(model, image, path)
        loaded = torch.jit.load(path)
        run = torch.no_grad()(loaded)
    elif name == "onnx":
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.enable_cpu_mem_arena = arena
        session = onnxruntime.InferenceSession(
            export.onnx_bytes(model, image), options, providers=["CPUExecutionProvider"]
        )
        array = image.numpy()

        def run(_):
            return session.run(list(export.ONNX_OUTPUTS), {export.ONNX_INPUT: array})
    elif name in ("aoti", "aoti_static"):  # one package for every size, or this size's
        path = os.path.join(folder, f"{name}.pt2")
        export.export_aoti(model, image, path, dynamic=name == "aoti")
        package = torch._inductor.aoti_load_package(path)
        run = torch.no_grad()(package)
    else:
        raise ValueError(f"unknown path {name!r}; choose from {PATHS}")
    return run, time.perf_counter() - start


def peak_memory_mib(name, height, width):
    """Child process: the growth of the resident set during one warm inference of the path."""
    model, image = build_model_and_image(height, width)
    with tempfile.TemporaryDirectory() as folder:
        run, _ = make_runner(name, model, image, folder, arena=False)
        run(image)
        run(image)
        return peak_rss_growth_mib(lambda: run(image))


def measure_memory(name, height, width):
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0")
    out = subprocess.run(
        [
            sys.executable,
            os.path.abspath(__file__),
            "--memory-of",
            name,
            "--height",
            str(height),
            "--width",
            str(width),
        ],
        env=env,
        capture_output=True,
        text=True,
    )
    if out.returncode != 0:
        return f"failed: {out.stderr.strip().splitlines()[-1] if out.stderr.strip() else '?'}"
    return json.loads(out.stdout.strip().splitlines()[-1])


KINDS = {
    "convolutions": ("conv", "mkldnn_convolution"),
    "matrix products": ("addmm", "::mm", "bmm", "matmul", "linear", "baddbmm"),
    "deformable attention op": ("deformable_detr::",),
}


def torch_profile(run, image, rest):
    """Self CPU time of one run by kind of operator, in percent of the total. `rest` names what
    falls in no kind: elementwise ops and copies in eager; in the compiled path, the kernels that
    inductor generated and fused (the profiler sees only the operators they call out to)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        run(image)
    totals = defaultdict(float)
    for event in prof.key_averages():
        kind = next((k for k, keys in KINDS.items() if any(s in event.key for s in keys)), rest)
        totals[kind] += event.self_cpu_time_total
    whole = sum(totals.values())
    return {k: 100 * v / whole for k, v in sorted(totals.items(), key=lambda kv: -kv[1])}


def onnx_profile(model, image, top=5):
    """ONNX Runtime's own profile of one run: time by operator type, in percent of the total."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.enable_profiling = True
    with tempfile.TemporaryDirectory() as folder:
        options.profile_file_prefix = os.path.join(folder, "ort")
        session = onnxruntime.InferenceSession(
            export.onnx_bytes(model, image), options, providers=["CPUExecutionProvider"]
        )
        session.run(list(export.ONNX_OUTPUTS), {export.ONNX_INPUT: image.numpy()})
        with open(session.end_profiling()) as f:
            events = json.load(f)
    totals = defaultdict(float)
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            totals[event["args"]["op_name"]] += event["dur"]
    whole = sum(totals.values())
    ranked = sorted(totals.items(), key=lambda kv: -kv[1])
    shares = {k: 100 * v / whole for k, v in ranked[:top]}
    shares["the rest"] = 100 * sum(v for _, v in ranked[top:]) / whole
    return shares


def format_profile(title, shares):
    return f"{title}: " + ", ".join(f"{k} {v:.0f}%" for k, v in shares.items())


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--height", type=int, default=800)
    parser.add_argument("--width", type=int, default=1333)
    parser.add_argument("--paths", nargs="+", default=list(PATHS), choices=PATHS)
    parser.add_argument(
        "--no-memory",
        action="store_true",
        help="skip the peak memory (a child process per path builds it again)",
    )
    parser.add_argument("--memory-of", choices=PATHS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_of:
        print(json.dumps(peak_memory_mib(args.memory_of, args.height, args.width)))
        return

    model, image = build_model_and_image(args.height, args.width)
    runners, build_s = {}, {}
    with tempfile.TemporaryDirectory() as folder:
        for name in args.paths:
            run, seconds = make_runner(name, model, image, folder)
            for _ in range(2):  # warm-up; TorchScript's profiling executor optimises on the 2nd
                run(image)
            runners[name], build_s[name] = run, seconds
        times = defaultdict(list)
        for _ in range(args.repeat):
            for name, run in runners.items():
                start = time.perf_counter()
                run(image)
                times[name].append(time.perf_counter() - start)
        profiles = {}
        if "eager" in runners:
            profiles["eager profile (self CPU time)"] = torch_profile(
                runners["eager"], image, "elementwise, copies and the rest"
            )
        if "compile" in runners:
            profiles["torch.compile profile (self CPU time)"] = torch_profile(
                runners["compile"], image, "generated fused kernels and the rest"
            )
        if "onnx" in runners:
            profiles["ONNX Runtime profile (kernel time by operator type)"] = onnx_profile(
                model, image
            )
    medians = {name: statistics.median(t) for name, t in times.items()}
    base = medians.get("eager")
    print(
        f"ddetr_r50, CPU, {torch.get_num_threads()} threads, batch 1, {args.height}x"
        f"{args.width}, median of {args.repeat}"
    )
    print(f"{'path':<12} {'s / image':>10} {'speed-up':>9} {'peak MiB':>9} {'build s':>8}")
    for name, median in medians.items():
        memory = "-" if args.no_memory else measure_memory(name, args.height, args.width)
        memory = f"{memory:9.0f}" if isinstance(memory, float) else f"{str(memory):>9}"
        ratio = f"{base / median:8.2f}x" if base else "-"
        print(f"{name:<12} {median:10.3f} {ratio:>9} {memory} {build_s[name]:8.1f}")
    for title, shares in profiles.items():
        print(format_profile(title, shares))


if __name__ == "__main__":
    main()
