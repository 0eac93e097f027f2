#!/usr/bin/env python
"""End-to-end inference of the deploy formats on the CPU, side by side in one process.

ddetr_r50 (random weights: time does not depend on them), batch 1, one 800x1333 image, through
the single-image module that every export runs (deformable_detr.export.DetectionExportWrapper):
eager float32, torch.compile (inductor), the AOTInductor package (dynamic, static at this
size, and int8 with random calibration images: its speed; tools/benchmark_int8.py measures its
AP), ONNX Runtime, OpenVINO's CPU runtime (the same ONNX file, float32, torch's thread count),
TorchScript, and Hugging Face transformers' DeformableDetrForObjectDetection with the same
weights on the same normalised image, with its own top-k post-processing ("hf":
tools/hf_reference.py). The runners are in tools/deploy_runners.py; openvino and transformers
come with requirements-bench.txt (`make bench` installs it).
Each path is built once, run twice to warm up, then the paths take turns --repeat times (so that
the machine's drift hits all alike). Prints the median time per image, its ratio to eager
("speed-up") and Hugging Face's time over it ("vs HF"), the peak memory of one inference
(growth of the resident set over the warm process, measured in a child process per path whose
allocator returns large blocks to the system, so that each run's own peak shows), the build time,
whether OpenVINO's and HF's detections agree with eager's (compare_detections), and profiles:
eager and torch.compile by kind of operator (what bounds the compiled paths), ONNX Runtime by
operator type. The machines are shared and noisy: compare the ratios, not absolute times across
runs.

Usage: python tools/benchmark_deploy.py [--repeat 5] [--height 800 --width 1333] [--no-memory]
           [--paths eager compile aoti aoti_static aoti_int8 onnx openvino torchscript hf]
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
from importlib.util import find_spec

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "projects", "DeformableDETR"))

import ddetr_malloc  # noqa: E402  (standard library only)

if __name__ == "__main__":  # on mimalloc (ddetr_malloc), before torch's import, which it repeats
    ddetr_malloc.reexec_with_mimalloc()

# deformable_detr first: it silences detectron2's import-time deprecation warning
from deformable_detr import export  # noqa: E402

import torch  # noqa: E402

# tools/, the script's folder
import hf_reference  # noqa: E402
from deploy_runners import PATHS, REQUIRES, build_model_and_image, make_runner  # noqa: E402
from resident_memory import peak_rss_growth_mib  # noqa: E402

# the paths whose detections are compared with the eager model's here (the others' are in tests)
CHECKED = ("openvino", "hf")


def peak_memory_mib(name, height, width):
    """Child process: the growth of the resident set during one warm inference of the path.
    OpenVINO keeps what its first inference allocates in the compiled model (a new infer request
    does not give it back), so for it the first inference is measured, its kernel caches
    included."""
    cfg, model, image = build_model_and_image(height, width)
    with tempfile.TemporaryDirectory() as folder:
        run, _ = make_runner(name, cfg, model, image, folder, arena=False)
        if name != "openvino":
            run(image)
            run(image)
        return peak_rss_growth_mib(lambda: run(image))


def measure_memory(name, height, width):
    env = dict(ddetr_malloc.system_env(), MALLOC_MMAP_THRESHOLD_="65536")
    env["MALLOC_TRIM_THRESHOLD_"] = "0"
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


def check_packages(parser, paths):
    missing = sorted({REQUIRES[p] for p in paths if p in REQUIRES and not find_spec(REQUIRES[p])})
    if missing:
        parser.error(
            f"--paths {' '.join(paths)} need {', '.join(missing)}, not installed here: "
            f"pip install -r requirements-bench.txt (or leave those paths out)"
        )


def agreement(name, run, model, image):
    """compare_detections of the path's detections with the eager model's; HF's boxes are
    clipped to the image first, as the eager model (Detectron2's postprocess) clips them."""
    detections = run(image)
    if name == "hf":
        detections = hf_reference.clip_to_image(detections, *image.shape[-2:])
    diff = export.compare_detections(export.eager_detections(model, image), detections)
    return (
        f"{name} vs eager: {diff['count'][1]} of {diff['count'][0]} detections, classes "
        f"{'agree' if diff['classes_agree'] else 'DIFFER'}, max score diff "
        f"{diff['max_score_diff']:.1e}, max box diff {diff['max_box_diff']:.1e} px: "
        f"{'ok' if diff['ok'] else 'NOT WITHIN TOLERANCE'}"
    )


def glibc_eager_seconds(args):
    """Median s/image of the eager path in a child process on glibc's malloc: what this process's
    mimalloc (ddetr_malloc) saves."""
    cmd = [sys.executable, os.path.abspath(__file__), "--glibc-eager", "--repeat", str(args.repeat)]
    cmd += ["--height", str(args.height), "--width", str(args.width)]
    out = subprocess.run(cmd, env=ddetr_malloc.system_env(), capture_output=True, text=True)
    if out.returncode != 0:
        return None
    return json.loads(out.stdout.strip().splitlines()[-1])


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
    parser.add_argument("--glibc-eager", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.glibc_eager:
        args.paths = ["eager"]
    check_packages(parser, [args.memory_of] if args.memory_of else args.paths)
    if args.memory_of:
        print(json.dumps(peak_memory_mib(args.memory_of, args.height, args.width)))
        return

    cfg, model, image = build_model_and_image(args.height, args.width)
    runners, build_s = {}, {}
    with tempfile.TemporaryDirectory() as folder:
        for name in args.paths:
            run, seconds = make_runner(name, cfg, model, image, folder)
            for _ in range(2):  # warm-up; TorchScript's profiling executor optimises on the 2nd
                run(image)
            runners[name], build_s[name] = run, seconds
        times = defaultdict(list)
        for _ in range(args.repeat):
            for name, run in runners.items():
                start = time.perf_counter()
                run(image)
                times[name].append(time.perf_counter() - start)
        if args.glibc_eager:
            print(json.dumps(statistics.median(times["eager"])))
            return
        agreements = [agreement(n, runners[n], model, image) for n in CHECKED if n in runners]
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
    base, hf = medians.get("eager"), medians.get("hf")
    print(
        f"ddetr_r50, CPU, {torch.get_num_threads()} threads, batch 1, {args.height}x"
        f"{args.width}, median of {args.repeat}"
    )
    print(
        f"{'path':<12} {'s / image':>10} {'speed-up':>9} {'vs HF':>7} {'peak MiB':>9} "
        f"{'build s':>8}"
    )
    for name, median in medians.items():
        memory = "-" if args.no_memory else measure_memory(name, args.height, args.width)
        memory = f"{memory:9.0f}" if isinstance(memory, float) else f"{str(memory):>9}"
        ratio = f"{base / median:8.2f}x" if base else "-"
        vs_hf = f"{hf / median:6.2f}x" if hf else "-"
        print(f"{name:<12} {median:10.3f} {ratio:>9} {vs_hf:>7} {memory} {build_s[name]:8.1f}")
    glibc = glibc_eager_seconds(args) if base else None
    if glibc:
        print(
            f"eager on glibc's malloc (child process): {glibc:.3f} s / image; this process "
            f"({ddetr_malloc.allocator_in_use()} malloc) runs it {glibc / base:.2f}x faster"
        )
    for line in agreements:
        print(line)
    for title, shares in profiles.items():
        print(format_profile(title, shares))


if __name__ == "__main__":
    main()
