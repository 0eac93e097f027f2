"""Export to TorchScript (tracing), ONNX (default-domain operators only) and AOTInductor
packages (torch.export), and comparison of an export's detections with the eager model's.
Nothing here is imported by `import deformable_detr`; the ONNX symbolic is registered by
export_onnx."""

from .aoti import export_aoti, run_aoti
from .compare import BOX_TOLERANCE_PX, SCORE_TOLERANCE, compare_detections, eager_detections
from .exporting import (
    ONNX_INPUT,
    ONNX_OUTPUTS,
    export_onnx,
    export_torchscript,
    onnx_bytes,
    run_onnx,
    run_torchscript,
)
from .onnx_symbolic import ONNX_OPSET, register_ms_deform_attn_symbolic
from .wrapper import DetectionExportWrapper

__all__ = [
    "BOX_TOLERANCE_PX",
    "DetectionExportWrapper",
    "ONNX_INPUT",
    "ONNX_OPSET",
    "ONNX_OUTPUTS",
    "SCORE_TOLERANCE",
    "compare_detections",
    "eager_detections",
    "export_aoti",
    "export_onnx",
    "export_torchscript",
    "onnx_bytes",
    "register_ms_deform_attn_symbolic",
    "run_aoti",
    "run_onnx",
    "run_torchscript",
]
