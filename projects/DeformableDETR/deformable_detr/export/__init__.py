"""Export to TorchScript (tracing), ONNX (default-domain operators only) and AOTInductor
packages (torch.export; float32, or int8 with int8.py), the image sizes each export takes, and
comparison of an export's detections with the eager model's. Nothing here is imported by `import
deformable_detr`; the ONNX symbolic is registered by export_onnx."""

from .aoti import (
    IMAGE_SIZE_KEY,
    INT8_KEY,
    MAX_SIDE,
    SIDES_KEY,
    export_aoti,
    package_sides,
    run_aoti,
)
from .compare import BOX_TOLERANCE_PX, SCORE_TOLERANCE, compare_detections, eager_detections
from .exporting import (
    ONNX_INPUT,
    ONNX_MIN_SIDE_KEY,
    ONNX_OUTPUTS,
    ONNX_RESIZE_KEYS,
    export_onnx,
    export_torchscript,
    onnx_bytes,
    run_onnx,
    run_torchscript,
)
from .int8 import quantize_int8, quantized_layers
from .onnx_symbolic import ONNX_OPSET, register_ms_deform_attn_symbolic
from .sizes import (
    check_sample_size,
    fixed_size_reason,
    format_size,
    min_image_side,
    second_size,
    symbolic_min_side,
)
from .wrapper import DetectionExportWrapper

__all__ = [
    "BOX_TOLERANCE_PX",
    "DetectionExportWrapper",
    "IMAGE_SIZE_KEY",
    "INT8_KEY",
    "MAX_SIDE",
    "ONNX_INPUT",
    "ONNX_MIN_SIDE_KEY",
    "ONNX_OPSET",
    "ONNX_OUTPUTS",
    "ONNX_RESIZE_KEYS",
    "SCORE_TOLERANCE",
    "SIDES_KEY",
    "check_sample_size",
    "compare_detections",
    "eager_detections",
    "export_aoti",
    "export_onnx",
    "export_torchscript",
    "fixed_size_reason",
    "format_size",
    "min_image_side",
    "onnx_bytes",
    "package_sides",
    "quantize_int8",
    "quantized_layers",
    "register_ms_deform_attn_symbolic",
    "run_aoti",
    "run_onnx",
    "run_torchscript",
    "second_size",
    "symbolic_min_side",
]
