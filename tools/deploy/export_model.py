#!/usr/bin/env python
"""Exports a Deformable DETR model to TorchScript, ONNX or an AOTInductor package and checks it
against the eager model.

  python tools/deploy/export_model.py --config-file configs/ddetr_r50.yaml --output out/ \
      --format onnx --export-method tracing --sample-image img.jpg MODEL.WEIGHTS model.pth

The interface of Detectron2's tool of this name. The exported model takes one float RGB image
(3, H, W) on a 0-255 scale, already resized as at test time (INPUT.MIN_SIZE_TEST /
MAX_SIZE_TEST), and returns boxes (K, 4) xyxy in its pixels, scores (K,) and classes (K,) int64:
the eager model's top TEST.DETECTIONS_PER_IMAGE. TorchScript is traced at the sample image's size
and only valid at that size (out/model.ts); ONNX (out/model.onnx, opset 17, default-domain
operators only) has dynamic height and width. aoti writes an AOTInductor package (out/model.pt2:
torch.export, then Inductor's compiled C++), static: exported at the sample image's size and only
valid at that size; running it needs torch and the op's library, not Detectron2
(torch.ops.load_library("deformable_detr/_C*.so"), or `import deformable_detr`, then
torch._inductor.aoti_load_package). After writing, the tool runs the file (torch.jit.load,
onnxruntime on the CPU, or aoti_load_package) on the sample image, compares it with the eager
model, prints the differences and exits with status 1 when they exceed 1e-4 in score or 1e-2 px
in box, or the classes differ.
"""

import argparse
import logging
import os
import sys

sys.path.insert(
    0,
    os.path.join(
        os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
        "projects",
        "DeformableDETR",
    ),
)

# deformable_detr first: it silences detectron2's import-time deprecation warning
from deformable_detr import DeformableDETR, get_config  # noqa: E402
from deformable_detr.data import build_detr_augmentation  # noqa: E402
from deformable_detr.engine import WeightsCheckpointer  # noqa: E402
from deformable_detr.export import (
    compare_detections,
    eager_detections,
    export_aoti,  # noqa: E402
    export_onnx,
    export_torchscript,
    run_aoti,
    run_onnx,
    run_torchscript,
)

import numpy as np  # noqa: E402
import torch  # noqa: E402
from detectron2.data import transforms as T  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402
from detectron2.utils.logger import setup_logger  # noqa: E402
from PIL import Image  # noqa: E402

logger = logging.getLogger("deformable_detr.export")

FORMATS = ("torchscript", "onnx", "aoti")
FILE_NAMES = {"torchscript": "model.ts", "onnx": "model.onnx", "aoti": "model.pt2"}
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
        help="torchscript and aoti (AOTInductor) are static: valid at the sample "
        "image's size only; onnx has dynamic height and width",
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
        with Image.open(path) as img:
            rgb = np.asarray(img.convert("RGB"))
    aug_input = T.AugInput(rgb)
    T.AugmentationList(build_detr_augmentation(cfg, is_train=False))(aug_input)
    return torch.as_tensor(np.ascontiguousarray(aug_input.image.transpose(2, 0, 1))).float()


def main(argv=None) -> int:
    args = get_parser().parse_args(argv)
    setup_logger(name="deformable_detr")
    cfg = get_config(args.config_file, args.opts)
    check_exportable(cfg, args.format)
    image = sample_image(cfg, args.sample_image).to(cfg.MODEL.DEVICE)
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
    if args.format == "torchscript":
        export_torchscript(model, image, path)
        actual = run_torchscript(path, image)
    elif args.format == "aoti":
        export_aoti(model, image, path)
        actual = run_aoti(path, image)
    else:
        export_onnx(model, image, path)
        actual = run_onnx(path, image.cpu().numpy())
    logger.info(f"wrote {path}")
    diff = compare_detections(expected, actual)
    print(
        f"{args.format} vs eager on {tuple(image.shape[1:])}: {diff['count'][1]} detections "
        f"(eager {diff['count'][0]}), max score difference {diff['max_score_diff']:.3g}, max "
        f"box difference {diff['max_box_diff']:.3g} px, classes agree: {diff['classes_agree']}"
    )
    if not diff["ok"]:
        print(
            "the export disagrees with the eager model beyond scores 1e-4 / boxes 1e-2 px",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
