"""Deformable DETR (Zhu et al., ICLR 2021) as a Detectron2 project.

Importing the package loads the compiled op (when built), registers the meta-architecture
`DeformableDETR`, the backbone builder, the neck and the transformer, and makes Detectron2's
DetectionCheckpointer read weights files without running code (see
checkpoint.install_safe_checkpoint_loading).
"""
import warnings

# detectron2 0.7 scripts a helper at import time, which torch 2.14 reports as deprecated: nothing
# for a user to act on. Silenced here, before the first import of detectron2, when this package
# is imported first (as our scripts do).
warnings.filterwarnings("ignore", message="`torch.jit.script` is deprecated", category=FutureWarning)

from .checkpoint import install_safe_checkpoint_loading  # noqa: E402
from .config import add_deformable_detr_config, get_config  # noqa: E402
from .layers import (  # noqa: E402
    MSDeformAttn,
    extension_available,
    kernel_available,
    ms_deform_attn,
    ms_deform_attn_pytorch,
)
from .modeling import DeformableDETR  # noqa: E402

install_safe_checkpoint_loading()

__all__ = [
    "DeformableDETR",
    "MSDeformAttn",
    "add_deformable_detr_config",
    "get_config",
    "extension_available",
    "kernel_available",
    "ms_deform_attn",
    "ms_deform_attn_pytorch",
]
