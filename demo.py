#!/usr/bin/env python
"""Deformable DETR on images or a video, drawn with Detectron2's Visualizer.

  python demo.py --config-file configs/quickstart.yaml --input 'images/*.jpg' --output out/ \
      --opts MODEL.WEIGHTS output/quickstart/model_final.pth
  python demo.py --config-file ... --video-input clip.mp4 --output out/clip.mp4 --opts ...

Images are read as in training and evaluation (deformable_detr.data.read_image). The labels are
the class names of the first --coco-dataset NAME JSON IMAGE_ROOT given (its json's categories),
else of the config's first test dataset (DATASETS.TEST[0], as Detectron2's demo); they must be
as many as MODEL.DEFORMABLE_DETR.NUM_CLASSES.

--output is a folder when several images are given, when it is an existing folder or when it ends
with a path separator; the folder is created. Each picture keeps its image's path relative to the
deepest folder all the images share (a/x.jpg and b/x.jpg become OUT/a/x.jpg and OUT/b/x.jpg; one
folder's images keep their file names). Otherwise --output is the file of the one picture or of
the video, and its folder is created.
"""

import argparse
import glob
import logging
import math
import os
import sys

sys.path.insert(
    0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "projects", "DeformableDETR")
)

import ddetr_malloc  # noqa: E402  (standard library only)

if __name__ == "__main__":  # on mimalloc (ddetr_malloc), before torch's import, which it repeats
    ddetr_malloc.reexec_with_mimalloc()

# deformable_detr first: it silences detectron2's import-time deprecation warning
from deformable_detr import DefaultPredictor, get_config  # noqa: E402
from deformable_detr.data import (  # noqa: E402
    add_coco_dataset_argument,
    check_num_classes,
    read_image,
    register_coco_datasets,
    register_shapes_datasets,
)
from deformable_detr.data.coco_checks import check_coco_datasets  # noqa: E402
from deformable_detr.data.dataset_checks import YACS_KEYS  # noqa: E402
from deformable_detr.data.image_file import READ_ERRORS  # noqa: E402

import cv2  # noqa: E402
from detectron2.data import MetadataCatalog  # noqa: E402
from detectron2.utils.logger import setup_logger  # noqa: E402
from detectron2.utils.visualizer import ColorMode, Visualizer  # noqa: E402

logger = logging.getLogger("deformable_detr.demo")


def number(holds, expected):
    """argparse type: a number for which holds(value) is true (never for nan), else an error that
    says what was expected."""

    def parse(text):
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not holds(value):
            raise argparse.ArgumentTypeError(f"must be {expected}, got {text!r}")
        return value

    return parse


probability = number(lambda v: 0 <= v <= 1, "a number in [0, 1]")
positive = number(lambda v: 0 < v < math.inf, "a finite number > 0")


def get_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument("--input", nargs="+", help="image files or glob patterns")
    parser.add_argument("--video-input", help="a video file")
    parser.add_argument("--output", help="a folder for images (or a file for one image / video)")
    parser.add_argument(
        "--confidence-threshold",
        type=probability,
        default=0.5,
        help="minimum score of the detections drawn",
    )
    parser.add_argument(
        "--scale",
        type=positive,
        default=1.0,
        help="size of the pictures relative to the images (the Visualizer's scale; e.g. 3 for "
        "small images, whose labels would otherwise cover the objects)",
    )
    add_coco_dataset_argument(
        parser, "the labels are the first one's class names (else DATASETS.TEST[0]'s)"
    )
    parser.add_argument(
        "--opts", default=[], nargs=argparse.REMAINDER, help="config overrides as KEY VALUE pairs"
    )
    return parser


def draw(predictor, metadata, bgr, threshold, scale=1.0):
    instances = predictor(bgr)["instances"].to("cpu")
    instances = instances[instances.scores >= threshold]
    vis = Visualizer(bgr[:, :, ::-1], metadata, scale=scale, instance_mode=ColorMode.IMAGE)
    return vis.draw_instance_predictions(instances).get_image()[:, :, ::-1], len(instances)


def image_paths(patterns):
    """The files the patterns match, in order, each once."""
    paths = []
    for pattern in patterns:
        matched = sorted(glob.glob(os.path.expanduser(pattern)))
        if not matched:
            raise FileNotFoundError(f"--input {pattern!r} matches no file")
        paths += [os.path.abspath(p) for p in matched]
    return list(dict.fromkeys(paths))


def picture_paths(paths, output):
    """The file each image's picture goes to (see the module's docstring), their folders created;
    None for each without --output."""
    if not output:
        return [None] * len(paths)
    if len(paths) > 1 or os.path.isdir(output) or output.endswith(os.sep):
        shared = os.path.commonpath([os.path.dirname(p) for p in paths])
        outs = [os.path.join(output, os.path.relpath(p, shared)) for p in paths]
    else:
        outs = [output]
    for out in outs:
        if not cv2.haveImageWriter(out):
            raise ValueError(f"--output: OpenCV has no image writer for {out!r} (its extension)")
        os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    return outs


def run_images(predictor, metadata, paths, outs, threshold, scale=1.0):
    for path, out in zip(paths, outs):
        try:
            bgr = read_image(path, "BGR")
        except READ_ERRORS as e:
            raise ValueError(f"cannot read {path!r} as an image ({e})") from e
        picture, n = draw(predictor, metadata, bgr, threshold, scale)
        logger.info(f"{path}: {n} detections")
        if out and not cv2.imwrite(out, picture):
            raise OSError(f"cannot write the picture of {path!r} to {out!r}")


def run_video(predictor, metadata, args):
    video = cv2.VideoCapture(args.video_input)
    if not video.isOpened():
        raise ValueError(f"cannot open {args.video_input!r} as a video")
    fps = video.get(cv2.CAP_PROP_FPS) or 25
    writer = None
    frames = 0
    while True:
        ok, bgr = video.read()
        if not ok:
            break
        picture, _ = draw(predictor, metadata, bgr, args.confidence_threshold, args.scale)
        if args.output:
            if writer is None:
                h, w = picture.shape[:2]
                writer = cv2.VideoWriter(args.output, cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
                if not writer.isOpened():
                    raise OSError(f"--output: OpenCV cannot write an mp4v video to {args.output!r}")
            writer.write(picture)
        frames += 1
    video.release()
    if writer is not None:
        writer.release()
    logger.info(f"{args.video_input}: {frames} frames")


def label_metadata(cfg, coco_names):
    """The metadata whose thing_classes label the pictures (see the module's docstring), checked
    against NUM_CLASSES."""
    name = coco_names[0] if coco_names else next(iter(cfg.DATASETS.TEST), "__unused")
    if name.startswith("ddetr_shapes"):
        register_shapes_datasets()
    metadata = MetadataCatalog.get(name)
    if metadata.get("thing_classes") is None:
        check_coco_datasets([name], require_annotations=False)  # its json's categories
    check_num_classes([name], cfg.MODEL.DEFORMABLE_DETR.NUM_CLASSES, YACS_KEYS.num_classes)
    return metadata


def main(argv=None):
    setup_logger(name="deformable_detr")
    setup_logger(name="fvcore")
    parser = get_parser()
    args = parser.parse_args(argv)
    if bool(args.input) == bool(args.video_input):
        parser.error("give exactly one of --input and --video-input")
    # the outputs are checked (and their folders made) before the model is built
    if args.input:
        paths = image_paths(args.input)
        outs = picture_paths(paths, args.output)
    elif args.output:
        os.makedirs(os.path.dirname(args.output) or ".", exist_ok=True)
    coco_names = register_coco_datasets(args.coco_dataset)
    cfg = get_config(args.config_file, args.opts)
    cfg.freeze()
    metadata = label_metadata(cfg, coco_names)
    predictor = DefaultPredictor(cfg)
    if args.input:
        run_images(predictor, metadata, paths, outs, args.confidence_threshold, args.scale)
    else:
        run_video(predictor, metadata, args)


if __name__ == "__main__":
    main()
