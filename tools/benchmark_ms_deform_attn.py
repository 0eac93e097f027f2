#!/usr/bin/env python
"""Benchmark of the compiled multi-scale deformable attention op against the PyTorch reference.

Runs both side by side in one process (the machines are shared and noisy: compare the ratios,
not absolute times across runs) at the shapes of Deformable DETR on an 800x1333 image:
  encoder: levels (100,167) (50,84) (25,42) (13,21), S = Lq = 22,223, M=8, L=4, P=4, D=32
  decoder: the same value, Lq = 300 object queries
with realistic locations (each query's reference point plus offsets of a few pixels).
Prints median times, speed-up ratios and the peak extra memory of each call. On the CPU the
memory is the growth of the resident set (/proc/self/status VmHWM after resetting it), measured in
a child process whose allocator returns every large block to the OS (MALLOC_MMAP_THRESHOLD_), so
that each call's own peak shows; the timings run in this process, with the allocator as usual.

Usage: python tools/benchmark_ms_deform_attn.py [--repeat 3] [--device cpu] \\
           [--dtypes float32 bfloat16]
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch

from deformable_detr.layers.ms_deform_attn_op import kernel_available, ms_deform_attn
from deformable_detr.layers.ms_deform_attn_ref import ms_deform_attn_pytorch
from resident_memory import peak_rss_growth_mib  # tools/, the script's folder

LEVELS = ((100, 167), (50, 84), (25, 42), (13, 21))
M, P, D = 8, 4, 32


def make_inputs(batch, num_queries, dtype, device, seed=0):
    """Returns (value, spatial_shapes, level_start_index, locations, weights, grad_output).

    Encoder queries (num_queries None) sit at every pixel centre of every level; decoder queries at
    uniform random points. Offsets are N(0, 2 pixels) of each level, as a trained model's are.
    """
    g = torch.Generator().manual_seed(seed)
    shapes = torch.tensor(LEVELS, dtype=torch.long)
    sizes = shapes.prod(1)
    starts = torch.cat([sizes.new_zeros(1), sizes.cumsum(0)[:-1]])
    S, L = int(sizes.sum()), len(LEVELS)
    if num_queries is None:
        refs = []
        for h, w in LEVELS:
            ys, xs = torch.meshgrid(
                (torch.arange(h) + 0.5) / h, (torch.arange(w) + 0.5) / w, indexing="ij"
            )
            refs.append(torch.stack([xs.reshape(-1), ys.reshape(-1)], -1))
        ref = torch.cat(refs)  # (Lq, 2)
    else:
        ref = torch.rand(num_queries, 2, generator=g)
    Lq = ref.shape[0]
    wh = shapes.flip(1).to(torch.float32)  # (L, 2) rows (W, H)
    offsets = torch.randn(batch, Lq, M, L, P, 2, generator=g) * 2.0 / wh[:, None, :]
    loc = ref[None, :, None, None, None, :] + offsets  # (N, Lq, M, L, P, 2)
    weights = torch.randn(batch, Lq, M, L * P, generator=g).softmax(-1).view(batch, Lq, M, L, P)
    value = torch.randn(batch, S, M, D, generator=g)
    grad_out = torch.randn(batch, Lq, M * D, generator=g)
    cast = lambda t: t.to(device=device, dtype=dtype)  # noqa: E731
    return (
        cast(value),
        shapes.to(device),
        starts.to(device),
        cast(loc),
        cast(weights),
        cast(grad_out),
    )


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


def measure_memory(dtypes, device):
    """Peak extra MB of op and reference per case, measured in a child process (see module doc)."""
    if device.type != "cpu":
        return {
            (c, d, p): (peak_extra_mb(op), peak_extra_mb(ref))
            for c, d, p, op, ref, _ in each_case(dtypes, device)
        }
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    cmd = [sys.executable, __file__, "--memory-child", "--device", str(device), "--dtypes", *dtypes]
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
    return {tuple(k): tuple(v) for k, v in json.loads(out.splitlines()[-1])}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per case (median)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--memory-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    device = torch.device(args.device)
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


if __name__ == "__main__":
    main()
