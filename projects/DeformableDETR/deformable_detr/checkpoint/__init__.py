"""Checkpoint conversion: the authors' released Deformable DETR checkpoints and torchvision's
ImageNet ResNet weights -> Detectron2 checkpoints of this project's models (MODEL.WEIGHTS);
reading every weights file without running code (files.py, safe_pickle.py), also for Detectron2's
DetectionCheckpointer (detectron2_loading.py).

Command-line front ends: tools/convert_official_checkpoint.py, tools/convert_torchvision_resnet.py.
"""
from .detectron2_loading import install_safe_checkpoint_loading, load_detectron2_checkpoint
from .files import (
    check_layout,
    load_torch_file,
    load_weights_file,
    read_weights_file,
    save_detectron2_checkpoint,
)
from .official import (
    coco_category_ids,
    convert_official_checkpoint,
    convert_official_state_dict,
    load_official_checkpoint,
    official_to_detectron2_name,
)
from .official_layout import RELEASED_VARIANTS, Variant, detect_variant, released_layout
from .torchvision_resnet import (
    convert_torchvision_resnet,
    convert_torchvision_resnet_file,
    torchvision_resnet_layout,
    torchvision_to_detectron2_name,
)

__all__ = [
    "RELEASED_VARIANTS",
    "Variant",
    "check_layout",
    "coco_category_ids",
    "convert_official_checkpoint",
    "convert_official_state_dict",
    "convert_torchvision_resnet",
    "convert_torchvision_resnet_file",
    "detect_variant",
    "install_safe_checkpoint_loading",
    "load_detectron2_checkpoint",
    "load_official_checkpoint",
    "load_torch_file",
    "load_weights_file",
    "official_to_detectron2_name",
    "read_weights_file",
    "released_layout",
    "save_detectron2_checkpoint",
    "torchvision_resnet_layout",
    "torchvision_to_detectron2_name",
]
