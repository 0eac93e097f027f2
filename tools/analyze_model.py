#!/usr/bin/env python
"""Counts the FLOPs and parameters of a Deformable DETR config on one image.

Builds the model of the config on the CPU (randomly initialised: FLOPs and parameter counts do
not depend on the weights), feeds one random image of --height x --width in eval mode and
prints the GFLOPs (fvcore's convention: one fused multiply-add is one flop) in total, per
top-level module and per operator, the operators counted as zero, and the parameters.

Usage: python tools/analyze_model.py --config-file configs/ddetr_r50.yaml \\
           [--height 800 --width 1333] [--opts KEY VALUE ...]

The image is taken as the network input (already resized, as Detectron2's test-time resize to
MIN_SIZE_TEST / MAX_SIZE_TEST would give), padded to the backbone's size divisibility. The trace
runs the whole model once: at 800 x 1333 on two CPU cores it took 15 s (20 s with start-up).
Operators that only produce unused outputs (the class heads of the earlier decoder layers, which
inference does not return) are dropped from the trace and not counted.
"""

import argparse
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "projects", "DeformableDETR"))

# deformable_detr first: it silences detectron2's import-time deprecation warning
from deformable_detr import get_config  # noqa: E402
from deformable_detr.flops import flop_count_analysis, flops_by_module  # noqa: E402

import torch  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402
from fvcore.nn import parameter_count  # noqa: E402


def load_config(args):
    cfg = get_config(args.config_file, args.opts)
    cfg.MODEL.DEVICE = "cpu"
    cfg.freeze()
    return cfg


def _g(flops):
    return f"{flops / 1e9:10.3f}"


def report(model, analysis, seconds):
    """Prints the per-module and per-operator tables of a finished analysis."""
    by_module = flops_by_module(analysis)
    params = parameter_count(model)
    total = by_module[""]
    print(
        f"total: {total / 1e9:.3f} GFLOPs, {params['']:,} parameters (traced in {seconds:.1f} s)\n"
    )
    print(f"{'module':<22}{'GFLOPs':>10}{'share':>8}{'parameters':>14}")
    inside = 0
    for name, _ in model.named_children():
        flops = by_module.get(name, 0)
        inside += flops
        share = 100.0 * flops / total if total else 0.0
        print(f"{name:<22}{_g(flops)}{share:7.1f}%{params.get(name, 0):>14,}")
    if total != inside:  # operators run by the model's own forward, outside any child
        print(f"{'(model itself)':<22}{_g(total - inside)}{100.0 * (total - inside) / total:7.1f}%")
    print(f"\n{'operator':<32}{'GFLOPs':>10}")
    for op, flops in analysis.by_operator().most_common():
        print(f"{op:<32}{_g(flops)}")
    unsupported = analysis.unsupported_ops()
    if unsupported:
        print(
            "\ncounted as zero (no FLOP handle): "
            + ", ".join(f"{op} x{n}" for op, n in sorted(unsupported.items()))
        )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument("--height", type=int, default=800, help="input image height (pixels)")
    parser.add_argument("--width", type=int, default=1333, help="input image width (pixels)")
    parser.add_argument(
        "--opts",
        nargs=argparse.REMAINDER,
        default=[],
        help="config KEY VALUE pairs, after everything else",
    )
    args = parser.parse_args(argv)
    if args.height < 1 or args.width < 1:
        parser.error(f"--height and --width must be positive, got {args.height} x {args.width}")
    cfg = load_config(args)
    model = build_model(cfg).eval()
    generator = torch.Generator().manual_seed(0)
    image = torch.rand((3, args.height, args.width), generator=generator) * 255.0
    inputs = [{"image": image, "height": args.height, "width": args.width}]
    print(
        f"{args.config_file}: one {args.height} x {args.width} image, "
        f"{cfg.MODEL.DEFORMABLE_DETR.NUM_CLASSES} classes"
    )
    analysis = flop_count_analysis(model, inputs)
    start = time.perf_counter()
    analysis.total()  # runs the trace
    report(model, analysis, time.perf_counter() - start)


if __name__ == "__main__":
    main()
