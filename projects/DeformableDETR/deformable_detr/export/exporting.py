"""Writing the model as TorchScript (tracing) or ONNX (standard operators), and running the files.

Shapes: H x W the image's size at the test-time resize, R detections.
"""

import contextlib
import io
import warnings
from typing import Optional, Tuple

import numpy as np
import torch
from torch import nn

from .onnx_symbolic import ONNX_OPSET, register_ms_deform_attn_symbolic
from .sizes import check_sample_size, fixed_size_reason, min_image_side
from .wrapper import DetectionExportWrapper

__all__ = [
    "export_onnx",
    "export_torchscript",
    "onnx_bytes",
    "run_onnx",
    "run_torchscript",
    "ONNX_INPUT",
    "ONNX_MIN_SIDE_KEY",
    "ONNX_OUTPUTS",
    "ONNX_RESIZE_KEYS",
]

ONNX_INPUT = "image"
ONNX_OUTPUTS = ("boxes", "scores", "classes")
# metadata_props key of a dynamic export: the smallest side of the images it takes (sizes.py);
# tools/deploy/onnx_predict.py reads it under this name
ONNX_MIN_SIDE_KEY = "min_image_side"
# metadata_props keys of the test resize the file's images take (INPUT.MIN_SIZE_TEST and
# INPUT.MAX_SIZE_TEST), which onnx_predict.py resizes with unless told otherwise
ONNX_RESIZE_KEYS = ("min_size_test", "max_size_test")
Detections = Tuple[np.ndarray, np.ndarray, np.ndarray]


@contextlib.contextmanager
def _quiet_export():
    """Silences the tracer's warnings about Python values recorded as constants (the
    comparisons with the eager model, in the tool and the tests, are what tells whether a trace
    is right), the notice that the TorchScript-based ONNX exporter is legacy (its successor
    needs onnxscript, which this project does not install) and torch.jit's deprecation notices
    (TorchScript is the format asked for)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings(
            "ignore", message=".*legacy TorchScript-based ONNX export", category=DeprecationWarning
        )
        warnings.filterwarnings(
            "ignore", message="The feature will be removed", category=DeprecationWarning
        )
        warnings.filterwarnings(
            "ignore", message="`torch.jit.* is deprecated", category=FutureWarning
        )
        yield


def _as_numpy(outputs) -> Detections:
    return tuple(o.detach().cpu().numpy() for o in outputs)


@torch.no_grad()
def export_torchscript(model: nn.Module, image: torch.Tensor, path: str) -> None:
    """Traces model on image (3, H, W) and saves it to path. The traced module reproduces the
    eager model at this image size; the size is fixed in the trace."""
    with _quiet_export():
        traced = torch.jit.trace(DetectionExportWrapper(model), (image,), check_trace=False)
        torch.jit.save(traced, path)


@torch.no_grad()
def export_onnx(
    model: nn.Module, image: torch.Tensor, path, test_resize: Optional[Tuple[int, int]] = None
) -> None:
    """Writes model to path (a file name or a binary file object) as ONNX (opset 17, default-
    domain operators only): input "image" (3, height, width), outputs "boxes" (R, 4), "scores"
    (R,), "classes" (R,).

    Height and width are dynamic, unless the model's trace fixes them (sizes.fixed_size_reason):
    then the input's dims are the sample's, and runtimes refuse other sizes. A dynamic two-stage
    model takes images of at least min_image_side pixels a side: the file's metadata says so
    (ONNX_MIN_SIDE_KEY), and a smaller sample is refused (ValueError).

    test_resize: (INPUT.MIN_SIZE_TEST, INPUT.MAX_SIZE_TEST) of the config the model was trained
    with, written to the file's metadata (ONNX_RESIZE_KEYS): the sizes its images are resized
    to, which onnx_predict.py reads. A model trained on small images finds nothing in a
    picture resized to the released 800/1333."""
    import onnx

    if test_resize is not None and (
        len(test_resize) != 2 or not all(isinstance(v, int) and v >= 1 for v in test_resize)
    ):
        raise ValueError(
            f"test_resize must be (INPUT.MIN_SIZE_TEST, INPUT.MAX_SIZE_TEST), two ints >= 1, "
            f"got {test_resize!r}"
        )
    dynamic = fixed_size_reason(model) is None
    if dynamic:
        check_sample_size(model, image)
    register_ms_deform_attn_symbolic(ONNX_OPSET)
    buffer = io.BytesIO()
    with _quiet_export():
        torch.onnx.export(
            DetectionExportWrapper(model),
            (image,),
            buffer,
            dynamo=False,
            opset_version=ONNX_OPSET,
            input_names=[ONNX_INPUT],
            output_names=list(ONNX_OUTPUTS),
            dynamic_axes={
                **({ONNX_INPUT: {1: "height", 2: "width"}} if dynamic else {}),
                **{name: {0: "detections"} for name in ONNX_OUTPUTS},
            },
        )
    proto = onnx.load_from_string(buffer.getvalue())
    props = {ONNX_MIN_SIDE_KEY: str(min_image_side(model))} if dynamic else {}
    if test_resize is not None:
        props.update(zip(ONNX_RESIZE_KEYS, map(str, test_resize)))
    if props:
        onnx.helper.set_model_props(proto, props)
    onnx.save(proto, path)


def onnx_bytes(model: nn.Module, image: torch.Tensor) -> bytes:
    """The ONNX file of export_onnx, in memory."""
    buffer = io.BytesIO()
    export_onnx(model, image, buffer)
    return buffer.getvalue()


def run_torchscript(path: str, image: torch.Tensor) -> Detections:
    """(boxes, scores, classes) of a saved TorchScript export on image (3, H, W)."""
    with torch.no_grad(), _quiet_export():
        return _as_numpy(torch.jit.load(path, map_location=image.device)(image))


def run_onnx(model_file, image: np.ndarray) -> Detections:
    """(boxes, scores, classes) of an ONNX export (a path or bytes) on image (3, H, W) float32,
    with onnxruntime on the CPU."""
    import onnxruntime

    session = onnxruntime.InferenceSession(model_file, providers=["CPUExecutionProvider"])
    return tuple(session.run(list(ONNX_OUTPUTS), {ONNX_INPUT: np.asarray(image, np.float32)}))
