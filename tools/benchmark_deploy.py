#!/usr/bin/env python
"""End-to-end inference of the deploy formats on the CPU, side by side in one process.

ddetr_r50 (random weights: time does not depend on them), batch 1, one 800x1333 image, through
the single-image module that every export runs (deformable_detr.export.DetectionExportWrapper):
eager float32, torch.compile (inductor), the AOTInductor package, ONNX Runtime and TorchScript.
Each path is built once, run once to warm up, then the paths take turns --repeat times (so that
the machine's drift hits all alike). Prints the median time per image, its ratio to eager, the
peak memory of one inference (growth of the resident set over the warm process, measured in a
child process per path whose allocator returns large blocks to the system, so that each run's
own peak shows) and the profile of eager by kind of operator. The machines are shared and
noisy: compare the ratios, not absolute times across runs.

Usage: python tools/benchmark_deploy.py [--repeat 5] [--height 800 --width 1333]
           [--paths eager compile aoti onnx torchscript]
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
from deformable_detr import export  # noqa: E402

import torch  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402

PATHS = ("eager", "compile", "aoti", "onnx", "torchscript")


def build_model_and_image(height, width):
    cfg = get_config(os.path.join(REPO, "configs", "ddetr_r50.yaml"), ["MODEL.DEVICE", "cpu"])
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    g = torch.Generator().manual_seed(0)
    return model, torch.randint(0, 256, (3, height, width), generator=g).float()


def make_runner(name, model, image, folder):
    """A callable image -> detections for the path, and its build time in seconds."""
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

        session = onnxruntime.InferenceSession(export.onnx_bytes(model, image),
                                               providers=["CPUExecutionProvider"])
        array = image.numpy()

        def run(_):
            return session.run(list(export.ONNX_OUTPUTS), {export.ONNX_INPUT: array})
    elif name == "aoti":
        if not hasattr(export, "export_aoti"):
            return None, 0.0
        path = os.path.join(folder, "model.pt2")
        export.export_aoti(model, image, path)
        package = torch._inductor.aoti_load_package(path)
        run = torch.no_grad()(package)
    else:
        raise ValueError(f"unknown path {name!r}; choose from {PATHS}")
    return run, time.perf_counter() - start


def _rss_kib(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def peak_memory_mib(name, height, width):
    """Child process: the growth of the resident set during one warm inference of the path."""
    model, image = build_model_and_image(height, width)
    with tempfile.TemporaryDirectory() as folder:
        run, _ = make_runner(name, model, image, folder)
        if run is None:
            return None
        run(image)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current resident set
        before = _rss_kib("VmRSS")
        run(image)
        return (_rss_kib("VmHWM") - before) / 1024


def measure_memory(name, height, width):
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0")
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--memory-of", name,
                          "--height", str(height), "--width", str(width)],
                         env=env, capture_output=True, text=True)
    if out.returncode != 0:
        return f"failed: {out.stderr.strip().splitlines()[-1] if out.stderr.strip() else '?'}"
    return json.loads(out.stdout.strip().splitlines()[-1])


def eager_profile(run, image):
    """Self CPU time of eager by kind of operator, in percent of the total."""
    kinds = {"convolutions": ("conv", "mkldnn_convolution"),
             "matrix products": ("addmm", "::mm", "bmm", "matmul", "linear", "baddbmm"),
             "deformable attention op": ("deformable_detr::",)}
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        run(image)
    totals = defaultdict(float)
    for event in prof.key_averages():
        kind = next((k for k, keys in kinds.items() if any(s in event.key for s in keys)),
                    "elementwise, copies and the rest")
        totals[kind] += event.self_cpu_time_total
    whole = sum(totals.values())
    return {k: 100 * v / whole for k, v in sorted(totals.items(), key=lambda kv: -kv[1])}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--height", type=int, default=800)
    parser.add_argument("--width", type=int, default=1333)
    parser.add_argument("--paths", nargs="+", default=list(PATHS), choices=PATHS)
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
            if run is None:
                print(f"{name}: not available (deformable_detr.export has no export_aoti yet)")
                continue
            run(image)  # warm-up
            runners[name], build_s[name] = run, seconds
        times = defaultdict(list)
        for _ in range(args.repeat):
            for name, run in runners.items():
                start = time.perf_counter()
                run(image)
                times[name].append(time.perf_counter() - start)
        profile = eager_profile(runners["eager"], image) if "eager" in runners else {}
    medians = {name: statistics.median(t) for name, t in times.items()}
    base = medians.get("eager")
    print(f"ddetr_r50, CPU, {torch.get_num_threads()} threads, batch 1, {args.height}x"
          f"{args.width}, median of {args.repeat}")
    print(f"{'path':<12} {'s / image':>10} {'speed-up':>9} {'peak MiB':>9} {'build s':>8}")
    for name, median in medians.items():
        memory = measure_memory(name, args.height, args.width)
        memory = f"{memory:9.0f}" if isinstance(memory, float) else f"{str(memory):>9}"
        ratio = f"{base / median:8.2f}x" if base else "-"
        print(f"{name:<12} {median:10.3f} {ratio:>9} {memory} {build_s[name]:8.1f}")
    if profile:
        print("eager profile (self CPU time): " +
              ", ".join(f"{k} {v:.0f}%" for k, v in profile.items()))


if __name__ == "__main__":
    main()
