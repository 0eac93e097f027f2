#!/usr/bin/env python
"""Exports a Deformable DETR model to TorchScript, ONNX or an AOTInductor package and checks it
against the eager model.

  python tools/deploy/export_model.py --config-file configs/ddetr_r50.yaml --output out/ \
      --format onnx --export-method tracing --sample-image img.jpg MODEL.WEIGHTS model.pth

The interface of Detectron2's tool of this name. The exported model takes one float RGB image
(3, H, W) on a 0-255 scale, already resized as at test time (INPUT.MIN_SIZE_TEST /
MAX_SIZE_TEST), and returns boxes (K, 4) xyxy in its pixels, scores (K,) and classes (K,) int64:
the eager model's top TEST.DETECTIONS_PER_IMAGE. TorchScript is traced at the sample image's size
and only valid at that size (out/model.ts). ONNX (out/model.onnx, opset 17, default-domain
operators only) has dynamic height and width, unless the backbone's trace fixes the size
(MViTv2): then the file's input has the sample's fixed size. A dynamic two-stage model takes
images of at least a minimum side (its proposals are picked among the encoder's positions): the
tool prints it, writes it in the file's metadata (min_image_side) and refuses a smaller sample.
aoti writes an AOTInductor package (out/model.pt2: torch.export, then Inductor's compiled C++)
that takes every image with sides from a minimum (printed) to INPUT.MAX_SIZE_TEST, static on
MViTv2 as ONNX is, and on Swin and ViT (torch.export cannot follow their padding symbolically);
run_aoti refuses other sizes. Running it needs torch and the op's library,
not Detectron2 (torch.ops.load_library("deformable_detr/_C*.so"), or `import deformable_detr`,
then torch._inductor.aoti_load_package). After writing, the tool runs the file (torch.jit.load,
onnxruntime on the CPU, or aoti_load_package) on the sample image, and a dynamic file also at a
second size (the sample resized), compares it with the eager model, prints the differences and
exits with status 1 when they exceed 1e-4 in score or 1e-2 px in box, or the classes differ, or
the file fails at the second size.

--format aoti --int8 IMAGE... writes an int8 package (convolutions and linear layers on int8
weights and activations, oneDNN's kernels; deformable_detr/export/int8.py), its activations'
ranges calibrated on those images, read and resized as the sample image: a few dozen like the
ones it will serve. Its detections differ from float32's by more than the tolerances above, so
the tool prints the differences and fails only when the package fails to run; measure the AP
change on your data (tools/benchmark_int8.py measures it on the built-in data).
"""

import argparse
import logging
import os
import re
import sys

sys.path.insert(
    0,
    os.path.join(
        os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
        "projects",
        "DeformableDETR",
    ),
)

import ddetr_malloc  # noqa: E402  (standard library only)

if __name__ == "__main__":  # on mimalloc (ddetr_malloc), before torch's import, which it repeats
    ddetr_malloc.reexec_with_mimalloc()

# deformable_detr first: it silences detectron2's import-time deprecation warning
from deformable_detr import DeformableDETR, get_config  # noqa: E402
from deformable_detr.data import build_detr_augmentation, read_image  # noqa: E402
from deformable_detr.engine import WeightsCheckpointer  # noqa: E402
from deformable_detr.export import (  # noqa: E402
    compare_detections,
    eager_detections,
    export_aoti,
    export_onnx,
    export_torchscript,
    fixed_size_reason,
    format_size,
    min_image_side,
    package_sides,
    symbolic_min_side,
    run_aoti,
    run_onnx,
    run_torchscript,
    second_size,
)

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from detectron2.data import transforms as T  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402
from detectron2.utils.logger import setup_logger  # noqa: E402

logger = logging.getLogger("deformable_detr.export")

FORMATS = ("torchscript", "onnx", "aoti")
FILE_NAMES = {"torchscript": "model.ts", "onnx": "model.onnx", "aoti": "model.pt2"}
# each runs a file on an image (3, H, W) tensor
RUNNERS = {
    "torchscript": run_torchscript,
    "onnx": lambda path, image: run_onnx(path, image.cpu().numpy()),
    "aoti": run_aoti,
}
# the random sample's size before the test resize (a 4:3 landscape picture, as COCO's typical)
RANDOM_IMAGE_SIZE = (480, 640)


def get_parser():
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument("--output", required=True, help="folder for the exported file")
    parser.add_argument(
        "--format",
        choices=FORMATS,
        default="torchscript",
        help="torchscript is static: valid at the sample image's size only; onnx and aoti "
        "(AOTInductor) have dynamic height and width (static on MViTv2)",
    )
    parser.add_argument("--export-method", choices=("tracing",), default="tracing")
    parser.add_argument(
        "--sample-image",
        metavar="FILE",
        help="image to trace with and to check the export on; without it, a "
        f"random image of {RANDOM_IMAGE_SIZE[0]}x{RANDOM_IMAGE_SIZE[1]} "
        "pixels resized as at test time",
    )
    parser.add_argument(
        "--int8",
        nargs="+",
        metavar="IMAGE",
        help="with --format aoti: an int8 package, calibrated on these image files",
    )
    parser.add_argument(
        "opts",
        nargs=argparse.REMAINDER,
        help="config overrides as KEY VALUE pairs, e.g. MODEL.WEIGHTS model.pth",
    )
    return parser


def check_exportable(cfg, fmt: str) -> None:
    """Raises ValueError for a format or a config this tool cannot export."""
    if fmt not in FILE_NAMES:
        raise ValueError(f"--format must be one of {sorted(FILE_NAMES)}, got {fmt!r}")
    if cfg.MODEL.META_ARCHITECTURE != "DeformableDETR":
        raise ValueError(
            f"only MODEL.META_ARCHITECTURE 'DeformableDETR' can be exported, got "
            f"{cfg.MODEL.META_ARCHITECTURE!r}"
        )
    if cfg.INPUT.FORMAT != "RGB":
        raise ValueError(
            f"the exported model takes RGB images: INPUT.FORMAT must be 'RGB', got "
            f"{cfg.INPUT.FORMAT!r}"
        )


def sample_image(cfg, path):
    """(3, H, W) float32 RGB on a 0-255 scale at the config's test resize."""
    if path is None:
        rgb = np.random.default_rng(0).integers(0, 256, (*RANDOM_IMAGE_SIZE, 3), dtype=np.uint8)
    else:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"--sample-image {path!r} does not exist")
        rgb = read_image(path, "RGB")  # the project's reader: 16-bit images scaled, not clipped
    aug_input = T.AugInput(rgb)
    T.AugmentationList(build_detr_augmentation(cfg, is_train=False))(aug_input)
    return torch.as_tensor(np.ascontiguousarray(aug_input.image.transpose(2, 0, 1))).float()


def check_at(fmt: str, path: str, image, expected, int8: bool = False) -> bool:
    """Runs the file at path on image (3, H, W) and prints how far it is from expected, the eager
    model's detections; True when it agrees within the tolerances, or ran at all when int8."""
    actual = RUNNERS[fmt](path, image)
    diff = compare_detections(expected, actual)
    print(
        f"{fmt}{' int8' if int8 else ''} vs eager on {tuple(image.shape[1:])}: "
        f"{diff['count'][1]} detections (eager {diff['count'][0]}), max score difference "
        f"{diff['max_score_diff']:.3g}, max box difference {diff['max_box_diff']:.3g} px, "
        f"classes agree: {diff['classes_agree']}"
    )
    return int8 or diff["ok"]


def check_second_size(fmt: str, path: str, model, image, int8: bool = False) -> bool:
    """A dynamic file checked at a second size (the sample image resized): an export that
    recorded the size as a constant passes at the sample's size only. False, with the reason on
    stderr, when it fails or disagrees there."""
    min_side = min_image_side(model) if fmt == "onnx" else symbolic_min_side(model)
    size = second_size(tuple(image.shape[-2:]), min_side)
    other = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False)[0]
    expected = eager_detections(model, other)
    try:
        if check_at(fmt, path, other, expected, int8):
            return True
        failure = "disagrees with the eager model"
    except Exception as e:  # the runtimes' errors share no base class; any is the finding
        failure = f"fails ({type(e).__name__}: {e})"
    print(
        f"the {fmt} file declares dynamic height and width but {failure} at "
        f"{format_size(size)}: the model's export fixed the image size somewhere (e.g. a "
        f"backbone that computes sizes as Python ints); such a backbone must export at a fixed "
        f"size (deformable_detr/export/sizes.py, fixed_size_reason)",
        file=sys.stderr,
    )
    return False


def dynamic_line(fmt: str, path: str, model) -> str:
    """What the dynamic file of fmt at path takes, as the tool prints it."""
    if fmt == "aoti":
        low, high = package_sides(path)
        return f"aoti: dynamic, sides from {low} to {high} pixels"
    side = min_image_side(model)
    return "onnx: dynamic" + (f", images of at least {side} pixels a side" if side > 1 else "")


def main(argv=None) -> int:
    args = get_parser().parse_args(argv)
    setup_logger(name="deformable_detr")
    cfg = get_config(args.config_file, args.opts)
    check_exportable(cfg, args.format)
    if args.int8 and args.format != "aoti":
        raise ValueError(
            f"--int8 makes an int8 AOTInductor package: it needs --format aoti, not {args.format}"
        )
    missing = [p for p in args.int8 or () if not os.path.isfile(p)]
    if missing:
        hint = ""
        if any(re.fullmatch(r"[A-Z_]+(\.[A-Z0-9_]+)+", p) for p in missing):
            hint = (
                " (the config overrides were read as --int8 images: follow --int8's images with "
                "another flag, e.g. --sample-image FILE, before the KEY VALUE overrides)"
            )
        raise FileNotFoundError(f"--int8 images do not exist: {missing}{hint}")
    image = sample_image(cfg, args.sample_image).to(cfg.MODEL.DEVICE)
    calibration = [sample_image(cfg, p) for p in args.int8] if args.int8 else None
    model = build_model(cfg)
    if not isinstance(model, DeformableDETR):
        raise ValueError(f"the config builds a {type(model).__name__}, not a DeformableDETR")
    model.eval()
    if cfg.MODEL.WEIGHTS:
        WeightsCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    else:
        logger.warning("no MODEL.WEIGHTS given: exporting an untrained model")
    os.makedirs(args.output, exist_ok=True)
    path = os.path.join(args.output, FILE_NAMES[args.format])
    expected = eager_detections(model, image)
    # the longest side the test resize gives, or the sample's, if a config's is longer
    max_side = max(cfg.INPUT.MAX_SIZE_TEST, *image.shape[-2:])
    if args.format == "aoti":
        export_aoti(model, image, path, max_side=max_side, calibration=calibration)
    elif args.format == "onnx":  # onnx_predict.py resizes as the file's metadata says
        resize = (cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST)
        export_onnx(model, image, path, test_resize=resize)
    else:
        export_torchscript(model, image, path)
    logger.info(f"wrote {path}")
    int8 = calibration is not None
    ok = check_at(args.format, path, image, expected, int8)
    if args.format == "aoti":
        static = package_sides(path) is None  # Swin's and ViT's fall back to static (aoti.py)
    else:
        static = args.format == "torchscript" or fixed_size_reason(model) is not None
    if static:
        print(f"{args.format}: static, valid at {format_size(image.shape[1:])} only")
    else:
        print(dynamic_line(args.format, path, model))
        ok = check_second_size(args.format, path, model, image, int8) and ok
    if int8:
        print(
            f"int8: calibrated on {len(calibration)} images; not held to float32's tolerances "
            f"(measure the AP change on your data)"
        )
    if not ok:
        print(
            "the export disagrees with the eager model beyond scores 1e-4 / boxes 1e-2 px",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
