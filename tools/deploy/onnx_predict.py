#!/usr/bin/env python
"""Runs a Deformable DETR ONNX export (tools/deploy/export_model.py --format onnx) on images and
draws the detections, with onnxruntime, numpy and Pillow only (no torch, no Detectron2).

  python tools/deploy/onnx_predict.py --model out/model.onnx --input a.jpg b.png --output pics/

Each image is resized as the model's test resize does (shorter side --min-size, longer side at
most --max-size, the released rounding; by default the config's INPUT.MIN_SIZE_TEST and
INPUT.MAX_SIZE_TEST, which export_model.py writes into the file's metadata, or the released
800 and 1333 for a file without them), run, and its boxes above --confidence-threshold are drawn
on the original image, written to the --output folder under the image's path relative to the
deepest folder all the images share, as demo.py does (a/x.jpg and b/x.jpg become OUT/a/x.jpg and
OUT/b/x.jpg; one folder's images keep their file names).

An image the model cannot take after the resize is refused before it runs, with its size and the
model's: a static export (fixed input height and width, e.g. on MViTv2) takes its one size, and a
dynamic one takes images of at least its metadata's min_image_side pixels a side (a two-stage
model picks its proposals among the encoder's positions; ONNX Runtime's TopK fails on fewer).
"""

import argparse
import importlib.util
import math
import os
import sys

import numpy as np
import onnxruntime
from PIL import Image, ImageDraw

# The package's image reader (16-bit grayscale scaled to 8 bits, EXIF orientation), loaded by
# its path: importing deformable_detr would import torch. It needs numpy and Pillow only.
_IMAGE_FILE = os.path.join(
    os.path.dirname(os.path.abspath(__file__)),
    *("..", "..", "projects", "DeformableDETR", "deformable_detr", "data", "image_file.py"),
)
_spec = importlib.util.spec_from_file_location("deformable_detr_image_file", _IMAGE_FILE)
image_file = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(image_file)


DEFAULT_RESIZE = (800, 1333)  # the released INPUT.MIN_SIZE_TEST and INPUT.MAX_SIZE_TEST


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
    parser.add_argument(
        "--min-size", type=int, help="INPUT.MIN_SIZE_TEST (default: the file's, else 800)"
    )
    parser.add_argument(
        "--max-size", type=int, help="INPUT.MAX_SIZE_TEST (default: the file's, else 1333)"
    )
    parser.add_argument(
        "--confidence-threshold",
        type=probability,
        default=0.5,
        help="minimum score of the boxes drawn",
    )
    return parser


def input_sizes(session):
    """(fixed, min_side) of an export_model.py ONNX file: the (height, width) of a static one
    (None when dynamic) and the smallest side a dynamic one takes (its min_image_side metadata,
    deformable_detr.export.ONNX_MIN_SIDE_KEY)."""
    _, height, width = session.get_inputs()[0].shape
    fixed = (height, width) if isinstance(height, int) and isinstance(width, int) else None
    min_side = int(session.get_modelmeta().custom_metadata_map.get("min_image_side", 1))
    return fixed, min_side


def chosen_resize(session, args):
    """(min_size, max_size) of the test resize: --min-size and --max-size where given, else the
    file's metadata (export_model.py writes the config's; deformable_detr.export.ONNX_RESIZE_KEYS),
    else the released defaults; and a line saying where they came from. ValueError names a size
    below 1 or metadata that is not a number."""
    stored = session.get_modelmeta().custom_metadata_map
    sizes, sources = [], []
    for flag, key, default in (
        ("--min-size", "min_size_test", DEFAULT_RESIZE[0]),
        ("--max-size", "max_size_test", DEFAULT_RESIZE[1]),
    ):
        given = getattr(args, flag[2:].replace("-", "_"))
        if given is not None:
            value, source = given, flag
        elif key in stored:
            value, source = stored[key], "the file's metadata"
            if not value.lstrip("-").isdigit():
                raise ValueError(f"{args.model}: metadata {key} must be an int, got {value!r}")
            value = int(value)
        else:
            value, source = default, "the released default (the file does not record its own)"
        if value < 1:
            raise ValueError(f"{flag} must be >= 1, got {value} (from {source})")
        sizes.append(value)
        sources.append(f"{flag.lstrip('-').replace('-', ' ')} {value} from {source}")
    return tuple(sizes), "test resize: " + ", ".join(sources)


def check_size(path: str, size, fixed, min_side: int, args) -> None:
    """Raises ValueError when the model cannot take the image at path resized to size (h, w)."""
    resize = f"the test resize (--min-size {args.min_size}, --max-size {args.max_size})"
    h, w = size
    if fixed is not None and tuple(size) != fixed:
        raise ValueError(
            f"{path}: this model was exported for {fixed[0]}x{fixed[1]} images only (static: its "
            f"backbone's trace fixes the size), and {resize} makes this image {h}x{w}: give "
            f"images that resize to {fixed[0]}x{fixed[1]}, or export the model again with a "
            f"sample image of this size (export_model.py --sample-image)"
        )
    if min(h, w) < min_side:
        raise ValueError(
            f"{path}: {resize} makes this image {h}x{w}, and this model takes images of at least "
            f"{min_side} pixels a side (a two-stage model picks its proposals among the "
            f"encoder's positions): raise --min-size"
        )


def picture_paths(paths, output: str):
    """The file each image's picture goes to (see the module's docstring), folders created."""
    paths = [os.path.abspath(p) for p in paths]
    shared = os.path.commonpath([os.path.dirname(p) for p in paths])
    outs = [os.path.join(output, os.path.relpath(p, shared)) for p in paths]
    for out in outs:
        os.makedirs(os.path.dirname(out), exist_ok=True)
    return outs


def predict(session, rgb: Image.Image, size):
    """boxes (K, 4) xyxy in the original image's pixels, scores (K,), classes (K,) of rgb
    resized to size (h, w)."""
    w, h = rgb.size
    new_h, new_w = size
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
    missing = [p for p in [args.model, *args.input] if not os.path.isfile(p)]
    if missing:
        raise FileNotFoundError(f"no such file: {missing}")
    session = onnxruntime.InferenceSession(args.model, providers=["CPUExecutionProvider"])
    (args.min_size, args.max_size), line = chosen_resize(session, args)
    print(line)
    fixed, min_side = input_sizes(session)
    for path, out in zip(args.input, picture_paths(args.input, args.output)):
        rgb = image_file.open_image(path).convert("RGB")
        size = resized_size(rgb.height, rgb.width, args.min_size, args.max_size)
        check_size(path, size, fixed, min_side, args)
        boxes, scores, classes = predict(session, rgb, size)
        draw(rgb, boxes, scores, classes, args.confidence_threshold).save(out)
        kept = int((scores >= args.confidence_threshold).sum())
        print(f"{path}: {kept} of {len(scores)} detections drawn -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
