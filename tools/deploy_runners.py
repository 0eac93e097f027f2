"""The inference paths that tools/benchmark_deploy.py measures, each built into a callable
image -> detections: eager, torch.compile, AOTInductor (dynamic, static, int8), ONNX Runtime,
OpenVINO, TorchScript, and Hugging Face transformers' model with the same weights (hf_reference).

Shapes: H x W the image (3, H, W), float on a 0-255 scale in the model's input format.
"""

import os
import time

# deformable_detr first: it silences detectron2's import-time deprecation warning
from deformable_detr import export, get_config

import torch
from detectron2.modeling import build_model

__all__ = ["PATHS", "REQUIRES", "build_model_and_image", "make_runner"]

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PATHS = (
    "eager",
    "compile",
    "aoti",
    "aoti_static",
    "aoti_int8",
    "onnx",
    "openvino",
    "torchscript",
    "hf",
)
# the package each path needs (openvino and transformers come with requirements-bench.txt)
REQUIRES = {
    "aoti_int8": "torchao",
    "onnx": "onnxruntime",
    "openvino": "openvino",
    "hf": "transformers",
}


def build_model_and_image(height, width):
    """ddetr_r50's config, the model (random weights, seed 0, eval) and one random image."""
    cfg = get_config(os.path.join(REPO, "configs", "ddetr_r50.yaml"), ["MODEL.DEVICE", "cpu"])
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    g = torch.Generator().manual_seed(0)
    return cfg, model, torch.randint(0, 256, (3, height, width), generator=g).float()


def _onnx_runtime(model, image, arena):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.enable_cpu_mem_arena = arena
    session = onnxruntime.InferenceSession(
        export.onnx_bytes(model, image), options, providers=["CPUExecutionProvider"]
    )
    array = image.numpy()
    return lambda _: session.run(list(export.ONNX_OUTPUTS), {export.ONNX_INPUT: array})


def _openvino(model, image, folder):
    """The same ONNX file (dynamic H and W) compiled by OpenVINO's CPU plugin with torch's
    thread count, in float32: on a CPU with bf16 units its default precision is bf16."""
    import openvino

    path = os.path.join(folder, "model.onnx")
    with open(path, "wb") as f:
        f.write(export.onnx_bytes(model, image))
    core = openvino.Core()
    compiled = core.compile_model(
        core.read_model(path),
        "CPU",
        {"INFERENCE_NUM_THREADS": torch.get_num_threads(), "INFERENCE_PRECISION_HINT": "f32"},
    )
    request = compiled.create_infer_request()
    outputs = [compiled.output(name) for name in export.ONNX_OUTPUTS]
    array = image.numpy()

    def run(_):
        result = request.infer({export.ONNX_INPUT: array})
        return tuple(result[o] for o in outputs)

    return run


def _hf(cfg, model):
    import hf_reference  # tools/, the scripts' folder

    hf_model = hf_reference.build_hf_model(cfg, model)
    return hf_reference.HFDetector(model, hf_model, top_k=model.detections_per_image)


def make_runner(name, cfg, model, image, folder, arena=True):
    """A callable image -> detections for the path, and its build time in seconds. Files go
    to folder. arena=False turns off ONNX Runtime's memory arena, which keeps its peak
    allocated between runs."""
    start = time.perf_counter()
    wrapper = export.DetectionExportWrapper(model)
    if name == "eager":
        run = torch.no_grad()(wrapper)
    elif name == "compile":
        run = torch.no_grad()(torch.compile(wrapper))
        run(image)  # the compile happens on the first call
    elif name == "torchscript":
        path = os.path.join(folder, "model.ts")
        export.export_torchscript(model, image, path)
        run = torch.no_grad()(torch.jit.load(path))
    elif name == "onnx":
        run = _onnx_runtime(model, image, arena)
    elif name == "openvino":
        run = _openvino(model, image, folder)
    elif name in ("aoti", "aoti_static"):  # one package for every size, or this size's
        path = os.path.join(folder, f"{name}.pt2")
        export.export_aoti(model, image, path, dynamic=name == "aoti")
        run = torch.no_grad()(torch._inductor.aoti_load_package(path))
    elif name == "aoti_int8":  # dynamic, calibrated on two other random images of this size
        path, g = os.path.join(folder, f"{name}.pt2"), torch.Generator().manual_seed(1)
        calibration = [torch.randint(0, 256, image.shape, generator=g).float() for _ in range(2)]
        export.export_aoti(model, image, path, calibration=calibration)
        run = torch.no_grad()(torch._inductor.aoti_load_package(path))
    elif name == "hf":
        run = _hf(cfg, model)
    else:
        raise ValueError(f"unknown path {name!r}; choose from {PATHS}")
    return run, time.perf_counter() - start
