"""The op's part of gpu_check.py: its implementations side by side, the compute-sanitizer
workload, and the benchmark with its bytes model (sections sanitizer, bench and bandwidth).

Implementations, each a forward and a forward+backward on the same inputs:
  triton      torch.ops.deformable_detr.ms_deform_attn_triton and its backward (atomic grad_value)
  triton_det  the same with deterministic=True (the backward without float atomics)
  cpp         torch.ops.deformable_detr.ms_deform_attn and its backward (C++; CUDA when built
              with nvcc, the CPU kernels in a dry run)
  reference   ms_deform_attn_pytorch (grid_sample), backward through autograd
  authors     the authors' MultiScaleDeformableAttention extension (--authors-op), float32 only:
              half inputs are handed to it upcast to float32 (not timed), as AMP users must
Kernel implementations are called as forward op then backward op, without autograd.

Shapes: see the legend in deformable_detr/__init__.py.
"""

import glob
import importlib
import importlib.util
import math
import os
import statistics
import sys
import time
import types
from typing import Callable, NamedTuple

import torch

from ms_deform_attn_shapes import LEVELS, make_inputs  # tools/, the script's folder

__all__ = [
    "Impl",
    "bench_cases",
    "copy_bandwidth",
    "implementations",
    "load_authors_op",
    "load_layers",
    "min_bytes",
    "run_bench",
    "sanitize_workload",
]

AUTHORS_IM2COL_STEP = 64  # their module's value; any batch up to it runs in one step
HALF = (torch.float16, torch.bfloat16)
# Small levels of the dry run (CPU) and of the sanitizer's mid-size shape.
TINY_LEVELS = ((10, 16), (5, 8), (3, 4), (2, 2))
SANITIZE_LEVELS = ((24, 40), (12, 20), (6, 10), (3, 5))


def load_layers(package_dir):
    """(deformable_detr.layers, note). deformable_detr/__init__.py imports detectron2, which the
    GPU machine lacks unless carried; the layers subpackage needs only torch (and triton), so
    without detectron2 it is imported alone, under an empty parent package."""
    if package_dir not in sys.path:
        sys.path.insert(0, package_dir)
    note = None
    if importlib.util.find_spec("detectron2") is None and "deformable_detr" not in sys.modules:
        parent = types.ModuleType("deformable_detr")
        parent.__path__ = [os.path.join(package_dir, "deformable_detr")]
        sys.modules["deformable_detr"] = parent
        note = "detectron2 absent: deformable_detr.layers imported without its parent package"
    return importlib.import_module("deformable_detr.layers"), note


def load_authors_op(path):
    """(the authors' MultiScaleDeformableAttention module or None, reason when None)."""
    if not path:
        return None, "not given (--authors-op DIR)"
    found = glob.glob(os.path.join(path, "**", "MultiScaleDeformableAttention*.so"), recursive=True)
    if not found:
        return None, f"no MultiScaleDeformableAttention*.so under {path!r}"
    sys.path.insert(0, os.path.dirname(found[0]))
    try:
        module = importlib.import_module("MultiScaleDeformableAttention")
    except ImportError as e:
        return None, f"{found[0]} does not import: {e}"
    missing = [
        f for f in ("ms_deform_attn_forward", "ms_deform_attn_backward") if not hasattr(module, f)
    ]
    if missing:
        return None, f"{found[0]} lacks {missing}"
    return module, None


class Impl(NamedTuple):
    """prepare(inputs) -> the inputs as this implementation takes them; forward(inputs) and
    forward_backward(inputs) run it; note says what differs from the others."""

    name: str
    prepare: Callable
    forward: Callable
    forward_backward: Callable
    note: str = ""


def _same(inputs):
    return inputs


def _triton(deterministic):
    ops = torch.ops.deformable_detr

    def forward(x):
        return ops.ms_deform_attn_triton(*x[:5], deterministic)

    def forward_backward(x):
        ops.ms_deform_attn_triton(*x[:5], deterministic)
        return ops.ms_deform_attn_triton_backward(*x, deterministic)

    name = "triton_det" if deterministic else "triton"
    return Impl(name, _same, forward, forward_backward, "deterministic backward" * deterministic)


def _cpp(device_type):
    ops = torch.ops.deformable_detr

    def forward_backward(x):
        ops.ms_deform_attn(*x[:5])
        return ops.ms_deform_attn_backward(*x)

    return Impl("cpp", _same, lambda x: ops.ms_deform_attn(*x[:5]), forward_backward, device_type)


def _reference(layers):
    ref = layers.ms_deform_attn_pytorch

    def prepare(x):
        """The levels as a list: the reference then never reads them back from the device (a
        sync would expose its launch overhead in the timings)."""
        value, s, st, loc, w, g = x
        shapes = [tuple(hw) for hw in s.tolist()]
        value, loc, w = (t.detach().requires_grad_() for t in (value, loc, w))
        return value, shapes, st, loc, w, g

    def forward(x):
        with torch.no_grad():
            return ref(x[0], x[1], x[3], x[4])

    def forward_backward(x):
        value, shapes, _, loc, w, g = x
        return torch.autograd.grad(ref(value, shapes, loc, w), (value, loc, w), g)

    return Impl("reference", prepare, forward, forward_backward, "grid_sample, autograd")


def _authors(module):
    step = AUTHORS_IM2COL_STEP

    def prepare(x):
        value, s, st, loc, w, g = x
        if value.dtype in HALF:  # their kernels dispatch float32 and float64 only
            value, loc, w, g = (t.float() for t in (value, loc, w, g))
        return value, s, st, loc, w, g

    def forward_backward(x):
        module.ms_deform_attn_forward(*x[:5], step)
        return module.ms_deform_attn_backward(*x, step)

    forward = lambda x: module.ms_deform_attn_forward(*x[:5], step)  # noqa: E731
    return Impl("authors", prepare, forward, forward_backward, "half inputs run in float32")


def implementations(layers, device, authors, authors_reason, dry_run):
    """(list of Impl available on this device, {name: reason} of those that are not)."""
    impls, skipped = [], {}
    has_kernel = torch._C._dispatch_has_kernel_for_dispatch_key
    if device.type != "cuda":
        for name in ("triton", "triton_det"):
            skipped[name] = "dry run: Triton kernels need a GPU" if dry_run else "no CUDA device"
    elif not hasattr(torch.ops.deformable_detr, "ms_deform_attn_triton"):
        skipped["triton"] = skipped["triton_det"] = "operator ms_deform_attn_triton not registered"
    else:
        impls += [_triton(False), _triton(True)]
    if not layers.extension_available():
        skipped["cpp"] = "the extension deformable_detr._C is not built for this Python/torch"
    elif not has_kernel("deformable_detr::ms_deform_attn", device.type.upper()):
        skipped["cpp"] = (
            f"deformable_detr._C has no {device.type.upper()} kernels (built without nvcc)"
        )
    else:
        impls.append(_cpp(device.type))
    impls.append(_reference(layers))
    if authors is None:
        skipped["authors"] = authors_reason
    elif device.type != "cuda":
        skipped["authors"] = "their op runs on CUDA only" + " (dry run)" * dry_run
    else:
        impls.append(_authors(authors))
    return impls, skipped


def min_bytes(inputs, backward):
    """The fewest bytes a call must move through device memory: every input read once, every
    output written once (the whole value is counted, although the decoder samples only part
    of it; level tables are left out). Forward+backward adds the backward's reads (value,
    locations, weights, grad_output) and writes (the three gradients)."""

    def size(*tensors):
        return sum(t.numel() * t.element_size() for t in tensors)

    value, _, _, loc, w, g = inputs
    forward = size(value, loc, w) + g.numel() * value.element_size()
    return forward + (size(value, loc, w, g) + size(value, loc, w) if backward else 0)


class CudaTimer:
    """Device time per call with CUDA events. A sleep kernel queued before each call keeps the
    host ahead of the device, so the events see the kernels back to back: launch overhead
    (Python, dispatcher, autograd) is excluded."""

    def __init__(self):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda._sleep(1000)  # load the sleep kernel before calibrating it
        start.record()
        torch.cuda._sleep(10_000_000)
        end.record()
        end.synchronize()
        self.cycles_per_ms = 10_000_000 / start.elapsed_time(end)

    def median_ms(self, fn, input_sets, repeat):
        fn(input_sets[0])  # warm-up: compilation, autotuning, allocator
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn(input_sets[-1])
        host_ms = (time.perf_counter() - t0) * 1e3
        torch.cuda.synchronize()
        lead = int(self.cycles_per_ms * min(max(2 * host_ms, 0.05), 50))
        events = [
            (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
            for _ in range(repeat)
        ]
        for i, (start, end) in enumerate(events):
            torch.cuda._sleep(lead)
            start.record()
            fn(input_sets[i % len(input_sets)])
            end.record()
        torch.cuda.synchronize()
        return statistics.median(s.elapsed_time(e) for s, e in events)


class HostTimer:
    """Wall-clock time per call (the CPU, in a dry run)."""

    def median_ms(self, fn, input_sets, repeat):
        fn(input_sets[0])
        times = []
        for i in range(repeat):
            t0 = time.perf_counter()
            fn(input_sets[i % len(input_sets)])
            times.append((time.perf_counter() - t0) * 1e3)
        return statistics.median(times)


def copy_bandwidth(device, megabytes):
    """Bytes read plus bytes written per second by a device-to-device copy of that size."""
    src = torch.empty(megabytes * 2**20, dtype=torch.uint8, device=device).random_()
    dst = torch.empty_like(src)
    timer = CudaTimer() if device.type == "cuda" else HostTimer()
    ms = timer.median_ms(lambda x: dst.copy_(x), [src], 10)
    return 2 * src.numel() / (ms * 1e-3)


def bench_cases(dry_run, quick):
    """(label, batch, queries or None for the encoder, levels)."""
    if dry_run:
        return [("decoder b2", 2, 20, TINY_LEVELS), ("encoder b1", 1, None, TINY_LEVELS)]
    cases = [("decoder b4", 4, 300, LEVELS), ("encoder b1", 1, None, LEVELS)]
    return cases if quick else cases + [("encoder b2", 2, None, LEVELS)]


def l2_cache_bytes(device):
    """The device's L2 cache (60 MiB on an H200; 0 on the CPU)."""
    if device.type != "cuda":
        return 0
    return getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 60 * 2**20)


def _input_sets(inputs, cache_bytes):
    """The inputs and clones of them, together several times the L2 cache, so that a call
    rotating through them finds its inputs in device memory, not in the cache."""
    set_bytes = min_bytes(inputs, backward=True)
    copies = max(2, min(8, -(-4 * cache_bytes // set_bytes)))
    return [inputs] + [tuple(t.clone() for t in inputs) for _ in range(copies - 1)]


def _relative_error(out, expected):
    return float((out.double() - expected).norm() / expected.norm().clamp_min(1e-30))


def case_inputs(batch, queries, levels, dtype, device, float32_locations):
    value, s, st, loc, w, g = make_inputs(batch, queries, dtype, device, levels=levels)
    if float32_locations and dtype in HALF:  # as autocast gives them to the op in the model
        loc, w = loc.float(), w.float()
    return value, s, st, loc, w, g


_NOT_MEASURED = dict(ms=None, gbps=None, bytes=0, error=None, speedup=None)


def _row(case, dtype, pass_, impl, copies):
    return dict(case=case, dtype=dtype, pass_=pass_, impl=impl.name, note=impl.note, copies=copies)


def _time(timer, impl, sets, backward, repeat, expected):
    """One benchmark row's measurements; an implementation that raises gives its error."""
    try:
        prepared = [impl.prepare(x) for x in sets]
        run = impl.forward_backward if backward else impl.forward
        ms = timer.median_ms(run, prepared, repeat)
        error = None if backward else _relative_error(run(prepared[0]), expected)
    except Exception as e:  # reported in its row; the other implementations still run
        return dict(_NOT_MEASURED, bytes=min_bytes(sets[0], backward), failure=repr(e)[:300])
    nbytes = min_bytes(prepared[0], backward)
    return dict(ms=ms, gbps=nbytes / ms / 1e6, bytes=nbytes, error=error, failure=None)


def run_bench(
    layers, device, impls, dtypes, cases, repeat, float32_locations, deadline=None, log=print
):
    """One row per (case, dtype, pass, implementation): median ms, speed-up over the baseline
    (authors, else cpp, else reference), minimum bytes, achieved GB/s, forward error. No new
    (case, dtype) starts after the deadline (time.time()); their rows say so."""
    timer = CudaTimer() if device.type == "cuda" else HostTimer()
    cache = l2_cache_bytes(device)
    names = [impl.name for impl in impls]
    baseline = next(n for n in ("authors", "cpp", "reference") if n in names)
    rows = []
    for label, batch, queries, levels in cases:
        for dtype_name in dtypes:
            if deadline is not None and time.time() > deadline:
                for pass_ in ("fwd", "fwd+bwd"):
                    rows.append(_row(label, dtype_name, pass_, impls[0], 0))
                    rows[-1].update(_NOT_MEASURED, failure="not run: --time-limit reached")
                continue
            dtype = getattr(torch, dtype_name)
            base = case_inputs(batch, queries, levels, dtype, device, float32_locations)
            sets = _input_sets(base, cache)
            v, _, _, loc, w, _ = base
            expected = layers.ms_deform_attn_pytorch(v.double(), levels, loc.double(), w.double())
            for backward in (False, True):
                pass_ = "fwd+bwd" if backward else "fwd"
                group = []
                for impl in impls:
                    if impl.name == "triton_det" and not backward:
                        continue  # its forward is triton's
                    row = _row(label, dtype_name, pass_, impl, len(sets))
                    row.update(_time(timer, impl, sets, backward, repeat, expected))
                    group.append(row)
                    done = f"{row['ms']:.4f} ms" if row["ms"] else row["failure"]
                    log(f"  {label} {dtype_name} {pass_} {impl.name}: {done}", flush=True)
                base_ms = next(r["ms"] for r in group if r["impl"] == baseline)
                for row in group:
                    row["speedup"] = base_ms / row["ms"] if base_ms and row["ms"] else None
                rows += group
            del sets, expected
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return rows, baseline


def sanitize_inputs(dtype, device):
    """The mid-size shape of the sanitizer runs, with locations that exercise every mask:
    some outside [0, 1] and some NaN or inf (which make their query and head's output NaN)."""
    inputs = case_inputs(2, 400, SANITIZE_LEVELS, dtype, device, float32_locations=True)
    loc = inputs[3]
    loc[:, ::7] += 0.6  # partly or wholly outside the map
    loc[:, 1::11] -= 0.6
    loc[0, 3, 0, 0, 0, 0] = float("nan")
    loc[1, 5, 1, 2, 3, 1] = float("inf")
    return inputs


def sanitize_workload(layers, impls, dtypes, device="cuda"):
    """Forward and backward of each implementation named in impls at the mid-size shape, in each
    dtype, with the forward's error against the float64 reference over its finite outputs (inf
    unless the outputs are NaN exactly where the reference's are) and whether the gradients are
    finite, apart from the location and weight gradients of the NaN and inf samples, whose weight
    gradients must be NaN (the op's contract). device: "cpu" only to test this code."""
    device = torch.device(device)
    by_name = {i.name: i for i in implementations(layers, device, None, "", dry_run=False)[0]}
    result = {}
    for dtype_name in dtypes:
        inputs = sanitize_inputs(getattr(torch, dtype_name), device)
        v, _, _, loc, w, _ = inputs
        expected = layers.ms_deform_attn_pytorch(
            v.double(), SANITIZE_LEVELS, loc.double(), w.double()
        )
        nan = expected.isnan()
        bad = ~torch.isfinite(loc).all(-1)  # (N, Lq, M, L, P)
        for name in impls:
            impl = by_name[name]
            x = impl.prepare(inputs)
            out = impl.forward(x)
            same_nan = torch.equal(out.isnan(), nan)
            error = _relative_error(out[~nan], expected[~nan]) if same_nan else math.inf
            g_value, g_loc, g_w = impl.forward_backward(x)
            finite = all(bool(torch.isfinite(g).all()) for g in (g_value, g_loc[~bad], g_w[~bad]))
            finite = finite and bool(g_w[bad].isnan().all())
            result[f"{name} {dtype_name}"] = dict(error=error, finite_grads=finite)
    return result
