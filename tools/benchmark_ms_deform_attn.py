#!/usr/bin/env python
"""Benchmark of the compiled multi-scale deformable attention op against the PyTorch reference.

Runs both side by side in one process (the machines are shared and noisy: compare the ratios,
not absolute times across runs) at the shapes of Deformable DETR on an 800x1333 image (encoder
and decoder, see ms_deform_attn_shapes.py).
Prints median times, speed-up ratios and the peak extra memory of each call. On the CPU the
memory is the growth of the resident set (/proc/self/status VmHWM after resetting it), measured in
a child process on glibc's malloc set to return every large block to the OS
(MALLOC_MMAP_THRESHOLD_), so that each call's own peak shows; the timings run in this process, on
mimalloc as every script of the project (ddetr_malloc).
Then the op's batch scaling at the encoder shape: per-image time at batch 1, 2 and 4 and its ratio
to batch 1, with the system time per call: in this process, and on the CPU again in a child
process on glibc's malloc, where the page faults of fresh output memory show (glibc maps every
block over 32 MiB afresh: an encoder output from batch 2 on).

Usage: python tools/benchmark_ms_deform_attn.py [--repeat 3] [--device cpu] \\
           [--dtypes float32 bfloat16]
"""

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import ddetr_malloc

if __name__ == "__main__":  # on mimalloc (ddetr_malloc), before torch's import, which it repeats
    ddetr_malloc.reexec_with_mimalloc()

import torch  # noqa: E402

from deformable_detr.layers.ms_deform_attn_op import kernel_available, ms_deform_attn  # noqa: E402
from deformable_detr.layers.ms_deform_attn_ref import ms_deform_attn_pytorch  # noqa: E402
from ms_deform_attn_shapes import make_inputs  # noqa: E402  (tools/, the script's folder)
from resident_memory import peak_rss_growth_mib  # noqa: E402


def peak_extra_mb(fn):
    """Peak growth of the resident set while fn runs, in MB (CPU); on CUDA the allocator's peak."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    return peak_rss_growth_mib(fn)


def median_seconds(fn, repeat, warm_up=True):
    if warm_up:
        fn()
    times = []
    for _ in range(repeat):
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def runners(impl, inputs, backward):
    value, shapes, starts, loc, weights, grad_out = inputs
    if impl == "op":
        call = lambda v, loc, w: ms_deform_attn(v, shapes, starts, loc, w)  # noqa: E731
    else:
        call = lambda v, loc, w: ms_deform_attn_pytorch(v, shapes, loc, w)  # noqa: E731
    if not backward:

        def run():
            with torch.no_grad():
                return call(value, loc, weights)

        return run
    leaves = [t.detach().requires_grad_() for t in (value, loc, weights)]

    def run_backward():
        out = call(*leaves)
        return torch.autograd.grad(out, leaves, grad_out)

    return run_backward


def megabytes(*tensors):
    return sum(t.numel() * t.element_size() for t in tensors) / 2**20


BATCHES = (1, 2, 4)
CASES = (("encoder", 1, None), ("encoder", 2, None), ("decoder", 1, 300), ("decoder", 2, 300))


def each_case(dtypes, device):
    """Yields (label, dtype name, pass name, op runner, reference runner, io MB) for every case."""
    for dtype_name in dtypes:
        dtype = getattr(torch, dtype_name)
        if not kernel_available(device, dtype):
            print(f"no compiled kernel for {device} {dtype_name}: skipped")
            continue
        for name, batch, queries in CASES:
            inputs = make_inputs(batch, queries, dtype, device)
            value, _, _, loc, weights, grad_out = inputs
            for backward in (False, True):
                # What the call reads and writes: inputs, output, and (backward) gradients.
                io = megabytes(value, loc, weights, grad_out)
                if backward:
                    io += megabytes(value, loc, weights)
                yield (
                    f"{name} b{batch}",
                    dtype_name,
                    "fwd+bwd" if backward else "fwd",
                    runners("op", inputs, backward),
                    runners("ref", inputs, backward),
                    io,
                )


def batch_scaling(dtypes, device, title, rounds=7):
    """Prints the op's per-image time at the encoder shape at each batch of BATCHES and its ratio
    to batch 1, forward and forward+backward. The batches take turns in each round, so that they
    share the machine's noise; medians over the rounds. sys: the process's system time per call,
    on the CPU mostly page faults of freshly mapped memory (module docstring)."""
    print(
        f"\nbatch scaling, encoder, {title}: median of {rounds} rounds; x b1 = per-image ms / b1's"
    )
    header = (
        f"{'dtype':<10}{'pass':<9}{'batch':>6}{'ms':>9}{'ms/image':>10}{'x b1':>7}{'sys ms':>8}"
    )
    print(header)
    print("-" * len(header))
    for dtype_name in dtypes:
        dtype = getattr(torch, dtype_name)
        if not kernel_available(device, dtype):
            continue
        inputs = {b: make_inputs(b, None, dtype, device) for b in BATCHES}
        for backward in (False, True):
            run = {b: runners("op", inputs[b], backward) for b in BATCHES}
            times = {b: [] for b in BATCHES}
            system = {b: [] for b in BATCHES}
            for b in BATCHES:
                run[b]()  # warm-up
            for _ in range(rounds):
                for b in BATCHES:
                    s0 = resource.getrusage(resource.RUSAGE_SELF).ru_stime
                    times[b].append(median_seconds(run[b], 1, warm_up=False))
                    system[b].append(resource.getrusage(resource.RUSAGE_SELF).ru_stime - s0)
            per_image = {b: statistics.median(times[b]) / b for b in BATCHES}
            for b in BATCHES:
                sys_ms = statistics.median(system[b]) * 1e3
                print(
                    f"{dtype_name:<10}{'fwd+bwd' if backward else 'fwd':<9}{b:>6}"
                    f"{per_image[b] * b * 1e3:>9.1f}{per_image[b] * 1e3:>10.1f}"
                    f"{per_image[b] / per_image[1]:>6.2f}x{sys_ms:>8.1f}",
                    flush=True,
                )


def measure_memory(dtypes, device):
    """Peak extra MB of op and reference per case, measured in a child process (see module doc)."""
    if device.type != "cpu":
        return {
            (c, d, p): (peak_extra_mb(op), peak_extra_mb(ref))
            for c, d, p, op, ref, _ in each_case(dtypes, device)
        }
    env = dict(ddetr_malloc.system_env(), MALLOC_MMAP_THRESHOLD_="65536")
    cmd = [sys.executable, __file__, "--memory-child", "--device", str(device), "--dtypes", *dtypes]
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
    return {tuple(k): tuple(v) for k, v in json.loads(out.splitlines()[-1])}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per case (median)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--memory-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--scaling-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.scaling_child:
        batch_scaling(args.dtypes, device, "glibc's malloc (child process)")
        return
    if args.memory_child:
        rows = [
            [[c, d, p], [peak_extra_mb(op), peak_extra_mb(ref)]]
            for c, d, p, op, ref, _ in each_case(args.dtypes, device)
        ]
        print(json.dumps(rows))
        return
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}")
    memory = measure_memory(args.dtypes, device)
    header = (
        f"{'case':<12}{'dtype':<10}{'pass':<9}{'op ms':>9}{'ref ms':>9}{'speed-up':>10}"
        f"{'op MB':>9}{'ref MB':>9}{'io MB':>8}"
    )
    print(header)
    print("-" * len(header))
    for case, dtype_name, pass_name, op_fn, ref_fn, io in each_case(args.dtypes, device):
        t_op = median_seconds(op_fn, args.repeat)
        # the reference is slow enough that a warm-up changes nothing but the run time
        t_ref = median_seconds(ref_fn, args.repeat, warm_up=False)
        mem_op, mem_ref = memory[(case, dtype_name, pass_name)]
        print(
            f"{case:<12}{dtype_name:<10}{pass_name:<9}{t_op * 1e3:>9.1f}{t_ref * 1e3:>9.1f}"
            f"{t_ref / t_op:>9.1f}x{mem_op:>9.0f}{mem_ref:>9.0f}{io:>8.0f}",
            flush=True,
        )
    batch_scaling(args.dtypes, device, f"{ddetr_malloc.allocator_in_use()} malloc")
    if device.type == "cpu":
        cmd = [sys.executable, __file__, "--scaling-child", "--dtypes", *args.dtypes]
        subprocess.run(cmd, env=ddetr_malloc.system_env(), check=True)


if __name__ == "__main__":
    main()
