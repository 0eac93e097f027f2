#!/usr/bin/env python
"""End-to-end inference of the deploy formats on the CPU, each in its own process, taking turns.

ddetr_r50 (random weights: time does not depend on them), batch 1, one 800x1333 image, through
the single-image module that every export runs (deformable_detr.export.DetectionExportWrapper):
eager float32, torch.compile (inductor), the AOTInductor package (dynamic, static at this
size, and int8 with random calibration images: its speed; tools/benchmark_int8.py measures its
AP), ONNX Runtime, OpenVINO's CPU runtime (the same ONNX file, float32, torch's thread count),
TorchScript, and Hugging Face transformers' DeformableDetrForObjectDetection with the same
weights on the same normalised image, with its own top-k post-processing ("hf":
tools/hf_reference.py). The runners are in tools/deploy_runners.py; openvino and transformers
come with requirements-bench.txt (`make bench` installs it).

Each path runs in a worker process of its own, as a service would run it: runtimes sharing one
process slowed each other (the int8 package took 1.22 s among the others, 0.77 s alone). The
workers are built one after the other, each warms up twice, then the paths take turns --repeat
times, one inference each (so that the machine's drift hits all alike), while the others wait
idle. The workers run on this process's malloc (mimalloc, ddetr_malloc); one more runs eager on
glibc's malloc, to show what that saves.

Prints the median time per image, its ratio to eager ("speed-up") and Hugging Face's time over it
("vs HF"), the peak memory of one inference (growth of the resident set over the warm process, in
a child process per path whose allocator returns large blocks to the system, so that each run's
own peak shows), the build time, whether OpenVINO's and HF's detections agree with eager's
(compare_detections), and profiles (tools/deploy_profiles.py): eager and torch.compile by kind of
operator (what bounds the compiled paths), ONNX Runtime by operator type. The machines are shared
and noisy: compare the ratios, not absolute times across runs.

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
from deploy_profiles import format_profile, onnx_profile, torch_profile  # noqa: E402
from deploy_runners import PATHS, REQUIRES, build_model_and_image, make_runner  # noqa: E402
from resident_memory import peak_rss_growth_mib  # noqa: E402

# the paths whose detections are compared with the eager model's here (the others' are in tests)
CHECKED = ("openvino", "hf")
# the paths profiled, with the name of what falls in no kind of operator (None: ONNX Runtime's)
PROFILED = {
    "eager": ("eager profile (self CPU time)", "elementwise, copies and the rest"),
    "compile": ("torch.compile profile (self CPU time)", "generated fused kernels and the rest"),
    "onnx": ("ONNX Runtime profile (kernel time by operator type)", None),
}
GLIBC_EAGER = "eager on glibc's malloc"
REPLY = "@benchmark_deploy "  # marks a worker's replies on its stdout, where libraries print too


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


def last_line(text):
    return text.strip().splitlines()[-1] if text.strip() else "?"


def child_command(role, name, height, width):
    """This script's command line for a child process: role "--memory-of" or "--worker"."""
    script = os.path.abspath(__file__)
    return [sys.executable, script, role, name, "--height", str(height), "--width", str(width)]


def measure_memory(name, height, width):
    env = dict(ddetr_malloc.system_env(), MALLOC_MMAP_THRESHOLD_="65536")
    env["MALLOC_TRIM_THRESHOLD_"] = "0"
    cmd = child_command("--memory-of", name, height, width)
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        return f"failed: {last_line(out.stderr)}"
    return json.loads(out.stdout.strip().splitlines()[-1])


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


def reply(value):
    print(REPLY + json.dumps(value), flush=True)


def serve(name, height, width):
    """The worker (--worker NAME): builds the path and warms it up, replies its build time (and,
    for CHECKED, its agreement with eager), then one reply per line of stdin: "time" the seconds of
    one inference, "profile" the path's profile; until stdin closes."""
    cfg, model, image = build_model_and_image(height, width)
    with tempfile.TemporaryDirectory() as folder:
        run, build_s = make_runner(name, cfg, model, image, folder)
        for _ in range(2):  # warm-up; TorchScript's profiling executor optimises on the 2nd
            run(image)
        check = agreement(name, run, model, image) if name in CHECKED else None
        reply({"build_s": build_s, "agreement": check})
        for command in iter(sys.stdin.readline, ""):
            if command.strip() == "time":
                start = time.perf_counter()
                run(image)
                reply(time.perf_counter() - start)
            elif command.strip() == "profile":
                title, rest = PROFILED[name]
                shares = (
                    onnx_profile(model, image) if rest is None else torch_profile(run, image, rest)
                )
                reply(format_profile(title, shares))


class Worker:
    """A path's worker process; ask() sends it one command and returns its reply."""

    def __init__(self, name, args, env=None):
        cmd = child_command("--worker", name, args.height, args.width)
        self.stderr = tempfile.TemporaryFile("w+")
        self.process = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr, text=True,
            env=env,
        )  # fmt: skip
        self.name = name

    def ask(self, command=None):
        if command is not None:
            self.process.stdin.write(command + "\n")
            self.process.stdin.flush()
        for line in iter(self.process.stdout.readline, ""):
            if line.startswith(REPLY):
                return json.loads(line[len(REPLY) :])
        self.process.wait()
        self.stderr.seek(0)
        raise RuntimeError(f"{self.name}: the worker exited ({last_line(self.stderr.read())})")

    def close(self):
        self.process.stdin.close()
        self.process.wait()
        self.stderr.close()


def start_workers(args):
    """The workers of args.paths (and eager's on glibc), built one after the other: name ->
    (Worker, its first reply). A path whose build fails is left out, with its error."""
    wanted = [(name, name, None) for name in args.paths]
    if "eager" in args.paths and ddetr_malloc.allocator_in_use() != "system":
        wanted.append((GLIBC_EAGER, "eager", ddetr_malloc.system_env()))
    workers = {}
    for label, name, env in wanted:
        worker = Worker(name, args, env)
        try:
            workers[label] = (worker, worker.ask())
        except RuntimeError as error:
            print(f"left out: {error}", flush=True)
    return workers


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
    parser.add_argument("--worker", choices=PATHS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    one = args.memory_of or args.worker
    check_packages(parser, [one] if one else args.paths)
    if args.memory_of:
        print(json.dumps(peak_memory_mib(args.memory_of, args.height, args.width)))
        return
    if args.worker:
        serve(args.worker, args.height, args.width)
        return

    workers = start_workers(args)
    times = {label: [] for label in workers}
    for _ in range(args.repeat):
        for label, (worker, _) in workers.items():
            times[label].append(worker.ask("time"))
    profiles = [w.ask("profile") for label, (w, _) in workers.items() if label in PROFILED]
    for worker, _ in workers.values():
        worker.close()

    medians = {label: statistics.median(t) for label, t in times.items()}
    glibc = medians.pop(GLIBC_EAGER, None)
    base, hf = medians.get("eager"), medians.get("hf")
    print(
        f"ddetr_r50, CPU, {torch.get_num_threads()} threads, batch 1, {args.height}x"
        f"{args.width}, median of {args.repeat}, each path in its own process (malloc: "
        f"{ddetr_malloc.allocator_in_use()})"
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
        build_s = workers[name][1]["build_s"]
        print(f"{name:<12} {median:10.3f} {ratio:>9} {vs_hf:>7} {memory} {build_s:8.1f}")
    if glibc and base:
        print(f"{GLIBC_EAGER} (its own process, taking turns): {glibc:.3f} s / image; "
              f"{ddetr_malloc.allocator_in_use()} runs it {glibc / base:.2f}x faster")  # fmt: skip
    for _, first in workers.values():
        if first["agreement"]:
            print(first["agreement"])
    for line in profiles:
        print(line)


if __name__ == "__main__":
    main()
