#!/usr/bin/env python
"""The int8 AOTInductor package against float32, measured: COCO AP on the built-in val data
(Detectron2's COCOEvaluator, the test loader's resize) of the eager model, the float32 package
and the int8 package, all from the same weights, with each one's seconds per image (batch 1,
torch's threads) and the int8 package's detections against the float package's on the first
val image. The int8 package is calibrated on the first --calibration images of the train split
at the test resize. No AP is asserted anywhere: this is a measurement.

Usage (after `make quickstart`, whose checkpoint it reads by default):
  python tools/benchmark_int8.py
  python tools/benchmark_int8.py --weights model.pth --config-file configs/quickstart.yaml
"""

import argparse
import itertools
import os
import sys
import tempfile
import time

sys.path.insert(
    0,
    os.path.join(
        os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "projects", "DeformableDETR"
    ),
)

import ddetr_malloc  # noqa: E402  (standard library only)

if __name__ == "__main__":  # on mimalloc (ddetr_malloc), before torch's import, which it repeats
    ddetr_malloc.reexec_with_mimalloc()

from deformable_detr import export, get_config  # noqa: E402
from deformable_detr.data import register_shapes_datasets  # noqa: E402
from deformable_detr.engine import Trainer, WeightsCheckpointer  # noqa: E402

import torch  # noqa: E402
from detectron2.evaluation import inference_on_dataset  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402
from detectron2.modeling.postprocessing import detector_postprocess  # noqa: E402
from detectron2.structures import Boxes, Instances  # noqa: E402
from detectron2.utils.logger import setup_logger  # noqa: E402
from torch import nn  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class PackageModel(nn.Module):
    """A package at path as a Detectron2 model for inference_on_dataset: each input's image
    (3, H, W) at the test resize -> its detections in the original image's pixels, as the eager
    model's forward returns them."""

    def __init__(self, path: str):
        super().__init__()
        self.runner = torch._inductor.aoti_load_package(path)

    def forward(self, batched_inputs):
        results = []
        for item in batched_inputs:
            image = item["image"].float()
            boxes, scores, classes = self.runner(image)
            instances = Instances(tuple(image.shape[-2:]))
            instances.pred_boxes, instances.scores = Boxes(boxes), scores
            instances.pred_classes = classes
            height, width = item.get("height", image.shape[-2]), item.get("width", image.shape[-1])
            results.append({"instances": detector_postprocess(instances, height, width)})
        return results


def evaluate(cfg, model, name, folder):
    """(AP, seconds per image) of model on the dataset `name`."""
    loader = Trainer.build_test_loader(cfg, name)
    evaluator = Trainer.build_evaluator(cfg, name, os.path.join(folder, "eval"))
    start = time.perf_counter()
    with torch.no_grad():
        results = inference_on_dataset(model, loader, evaluator)
    return results["bbox"]["AP"], (time.perf_counter() - start) / len(loader)


def calibration_images(cfg, count):
    """The first `count` train images, resized as at test time, (3, H, W) float."""
    loader = Trainer.build_test_loader(cfg, cfg.DATASETS.TRAIN[0])
    return [batch[0]["image"].float() for batch in itertools.islice(loader, count)]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config-file", default=os.path.join(REPO, "configs", "quickstart.yaml"))
    parser.add_argument(
        "--weights", default=os.path.join(REPO, "output", "quickstart", "model_final.pth")
    )
    parser.add_argument("--calibration", type=int, default=32, help="calibration images")
    args = parser.parse_args()
    if not os.path.isfile(args.weights):
        parser.error(f"--weights {args.weights!r} does not exist (run `make quickstart` first)")
    setup_logger(name="deformable_detr")
    register_shapes_datasets()
    cfg = get_config(args.config_file, ["MODEL.DEVICE", "cpu"])
    model = build_model(cfg).eval()
    WeightsCheckpointer(model).load(args.weights)
    val = cfg.DATASETS.TEST[0]
    images = calibration_images(cfg, args.calibration)
    rows, paths = {}, {}  # rows: path -> (AP, s / image, build s)
    with tempfile.TemporaryDirectory() as folder:
        rows["eager float32"] = (*evaluate(cfg, model, val, folder), 0.0)
        for name, calibration in (("float32", None), ("int8", images)):
            start = time.perf_counter()
            paths[name] = export.export_aoti(
                model,
                images[0],
                os.path.join(folder, f"{name}.pt2"),
                max_side=cfg.INPUT.MAX_SIZE_TEST,
                calibration=calibration,
            )
            built = time.perf_counter() - start
            rows[f"AOTInductor {name}"] = (
                *evaluate(cfg, PackageModel(paths[name]), val, folder),
                built,
            )
        first = next(iter(Trainer.build_test_loader(cfg, val)))[0]["image"].float()
        diff = export.compare_detections(
            export.run_aoti(paths["float32"], first), export.run_aoti(paths["int8"], first)
        )
    print(
        f"{os.path.basename(args.config_file)}, {args.weights}, {val}, CPU, "
        f"{torch.get_num_threads()} threads, int8 calibrated on {len(images)} images"
    )
    print(f"{'path':<22} {'AP':>6} {'s / image':>10} {'build s':>8}")
    for name, (ap, seconds, built) in rows.items():
        print(f"{name:<22} {ap:6.1f} {seconds:10.4f} {built:8.1f}")
    print(
        f"int8 vs float32 package on the first val image: {diff['count'][1]} of "
        f"{diff['count'][0]} detections, classes {'agree' if diff['classes_agree'] else 'differ'}"
        f", max score difference {diff['max_score_diff']:.3g}, max box difference "
        f"{diff['max_box_diff']:.3g} px"
    )


if __name__ == "__main__":
    main()
