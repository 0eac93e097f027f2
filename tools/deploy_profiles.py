"""Where one inference's time goes, for tools/benchmark_deploy.py: PyTorch's profiler by kind of
operator (eager, torch.compile), ONNX Runtime's own profile by operator type. Shares in percent of
the total."""

import json
import os
import tempfile
from collections import defaultdict

# deformable_detr first: it silences detectron2's import-time deprecation warning
from deformable_detr import export

import torch

__all__ = ["format_profile", "onnx_profile", "torch_profile"]

KINDS = {
    "convolutions": ("conv", "mkldnn_convolution"),
    "matrix products": ("addmm", "::mm", "bmm", "matmul", "linear", "baddbmm"),
    "deformable attention op": ("deformable_detr::",),
}


def torch_profile(run, image, rest):
    """Self CPU time of one run by kind of operator. `rest` names what falls in no kind:
    elementwise ops and copies in eager; in the compiled path, the kernels that inductor generated
    and fused (the profiler sees only the operators they call out to)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        run(image)
    totals = defaultdict(float)
    for event in prof.key_averages():
        kind = next((k for k, keys in KINDS.items() if any(s in event.key for s in keys)), rest)
        totals[kind] += event.self_cpu_time_total
    whole = sum(totals.values())
    return {k: 100 * v / whole for k, v in sorted(totals.items(), key=lambda kv: -kv[1])}


def onnx_profile(model, image, top=5):
    """ONNX Runtime's profile of one run of a new session: kernel time by operator type."""
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
