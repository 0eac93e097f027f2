"""Deformable DETR (Zhu et al., ICLR 2021) as a Detectron2 project.

Importing the package loads the compiled op (when built), registers the meta-architecture
`DeformableDETR`, the backbone builder, the neck and the transformer, and makes Detectron2's
DetectionCheckpointer read weights files without running code (see
checkpoint.install_safe_checkpoint_loading).
"""
import warnings

# detectron2 0.7 scripts a helper at import time, which torch 2.14 reports as deprecated: nothing
# for a user to act on. Silenced while this package imports detectron2 (first, when this package
# is imported first, as our scripts do), without touching the caller's warning filters.
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message="`torch.jit.script` is deprecated",
                            category=FutureWarning)
    from .checkpoint import install_safe_checkpoint_loading
    from .config import add_deformable_detr_config, get_config
    from .layers import (
        MSDeformAttn,
        extension_available,
        kernel_available,
        ms_deform_attn,
        ms_deform_attn_pytorch,
    )
    from .modeling import DeformableDETR

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
