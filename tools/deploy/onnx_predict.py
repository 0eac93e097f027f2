#!/usr/bin/env python
"""Runs a Deformable DETR ONNX export (tools/deploy/export_model.py --format onnx) on images and
draws the detections, with onnxruntime, numpy and Pillow only (no torch, no Detectron2).

  python tools/deploy/onnx_predict.py --model out/model.onnx --input a.jpg b.png --output pics/

Each image is resized as the model's test resize does (shorter side --min-size, longer side at
most --max-size, the released rounding), run, and its boxes above --confidence-threshold are drawn
on the original image, written to the --output folder under the image's file name.
"""

import argparse
import math
import os
import sys

import numpy as np
import onnxruntime
from PIL import Image, ImageDraw


def resized_size(h: int, w: int, short: int, max_size: int):
    """(new_h, new_w) of the test resize. The same rounding as
    deformable_detr.data.detr_resized_size (the released code's), repeated here because this
    script must not import torch: the longer side is truncated, int(short * long / shorter)."""
    lo, hi = float(min(h, w)), float(max(h, w))
    if hi / lo * short > max_size:
        short = int(round(max_size * lo / hi))
    if min(h, w) == short:
        return h, w
    if w < h:
        return int(short * h / w), short
    return short, int(short * w / h)


def probability(text):
    """argparse type: a finite number in [0, 1]."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 <= value <= 1:  # also false for nan
        raise argparse.ArgumentTypeError(f"must be a number in [0, 1], got {text!r}")
    return value


def get_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].replace("\n", " "))
    parser.add_argument("--model", required=True, metavar="FILE", help="the .onnx file")
    parser.add_argument("--input", required=True, nargs="+", help="image files")
    parser.add_argument("--output", required=True, help="folder for the pictures")
    parser.add_argument("--min-size", type=int, default=800, help="INPUT.MIN_SIZE_TEST")
    parser.add_argument("--max-size", type=int, default=1333, help="INPUT.MAX_SIZE_TEST")
    parser.add_argument(
        "--confidence-threshold",
        type=probability,
        default=0.5,
        help="minimum score of the boxes drawn",
    )
    return parser


def predict(session, rgb: Image.Image, min_size: int, max_size: int):
    """boxes (K, 4) xyxy in the original image's pixels, scores (K,), classes (K,)."""
    w, h = rgb.size
    new_h, new_w = resized_size(h, w, min_size, max_size)
    # bilinear on uint8, as Detectron2's ResizeTransform does at test time
    resized = np.asarray(rgb.resize((new_w, new_h), Image.BILINEAR), dtype=np.float32)
    boxes, scores, classes = session.run(
        ["boxes", "scores", "classes"], {"image": np.ascontiguousarray(resized.transpose(2, 0, 1))}
    )
    scale = np.array([w / new_w, h / new_h, w / new_w, h / new_h], dtype=np.float32)
    return boxes * scale, scores, classes


def draw(rgb: Image.Image, boxes, scores, classes, threshold: float) -> Image.Image:
    picture = rgb.copy()
    pen = ImageDraw.Draw(picture)
    for box, score, cls in zip(boxes, scores, classes):
        if score >= threshold:
            pen.rectangle([float(v) for v in box], outline=(255, 0, 0), width=2)
            pen.text(
                (float(box[0]) + 2, float(box[1]) + 2), f"{int(cls)} {score:.2f}", fill=(255, 0, 0)
            )
    return picture


def main(argv=None) -> int:
    args = get_parser().parse_args(argv)
    for name in ("min_size", "max_size"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    missing = [p for p in [args.model, *args.input] if not os.path.isfile(p)]
    if missing:
        raise FileNotFoundError(f"no such file: {missing}")
    session = onnxruntime.InferenceSession(args.model, providers=["CPUExecutionProvider"])
    os.makedirs(args.output, exist_ok=True)
    for path in args.input:
        with Image.open(path) as img:
            rgb = img.convert("RGB")
        boxes, scores, classes = predict(session, rgb, args.min_size, args.max_size)
        out = os.path.join(args.output, os.path.basename(path))
        draw(rgb, boxes, scores, classes, args.confidence_threshold).save(out)
        kept = int((scores >= args.confidence_threshold).sum())
        print(f"{path}: {kept} of {len(scores)} detections drawn -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
