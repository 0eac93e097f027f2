"""Checkpoint conversion: the authors' released Deformable DETR checkpoints (and
H-Deformable-DETR's R50 ones), torchvision's ImageNet ResNet weights and the official ImageNet
weights of Swin, MViTv2, ViT (MAE, DeiT) and RegNet (pycls, torchvision) -> Detectron2
checkpoints of this project's models (MODEL.WEIGHTS); reading every weights file without running
code (files.py, safe_pickle.py), also for Detectron2's DetectionCheckpointer
(detectron2_loading.py).

Command-line front ends: tools/convert_official_checkpoint.py, tools/convert_torchvision_resnet.py,
tools/convert_{swin,mvit,vit,regnet}.py.
"""

from .detectron2_loading import install_safe_checkpoint_loading, load_detectron2_checkpoint
from .files import (
    check_layout,
    convert_weights_file,
    load_torch_file,
    load_weights_file,
    read_weights_file,
    save_detectron2_checkpoint,
)
from .imagenet import (
    BackboneFamily,
    BackboneVariant,
    convert_backbone,
    convert_backbone_file,
    identify_layout,
    run_converter,
)
from .mvit import MVIT, mvit_layout, mvit_to_detectron2_name
from .official import (
    coco_category_ids,
    convert_official_checkpoint,
    convert_official_state_dict,
    load_official_checkpoint,
    official_to_detectron2_name,
)
from .official_layout import (
    HDETR_VARIANTS,
    KNOWN_VARIANTS,
    RELEASED_VARIANTS,
    Variant,
    detect_variant,
    released_layout,
)
from .regnet import (
    PYCLS_REGNET,
    TORCHVISION_REGNET,
    pycls_regnet_layout,
    torchvision_regnet_layout,
    torchvision_to_detectron2_regnet_name,
)
from .swin import SWIN, swin_layout, swin_to_detectron2_name
from .torchvision_resnet import (
    convert_torchvision_resnet,
    convert_torchvision_resnet_file,
    torchvision_resnet_layout,
    torchvision_to_detectron2_name,
)
from .vit import VIT, vit_layout, vit_to_detectron2_name

__all__ = [
    "BackboneFamily",
    "BackboneVariant",
    "MVIT",
    "PYCLS_REGNET",
    "HDETR_VARIANTS",
    "KNOWN_VARIANTS",
    "RELEASED_VARIANTS",
    "SWIN",
    "TORCHVISION_REGNET",
    "VIT",
    "Variant",
    "check_layout",
    "coco_category_ids",
    "convert_backbone",
    "convert_backbone_file",
    "convert_official_checkpoint",
    "convert_official_state_dict",
    "convert_torchvision_resnet",
    "convert_torchvision_resnet_file",
    "convert_weights_file",
    "detect_variant",
    "identify_layout",
    "install_safe_checkpoint_loading",
    "load_detectron2_checkpoint",
    "load_official_checkpoint",
    "load_torch_file",
    "load_weights_file",
    "mvit_layout",
    "mvit_to_detectron2_name",
    "official_to_detectron2_name",
    "pycls_regnet_layout",
    "read_weights_file",
    "released_layout",
    "run_converter",
    "save_detectron2_checkpoint",
    "swin_layout",
    "swin_to_detectron2_name",
    "torchvision_regnet_layout",
    "torchvision_resnet_layout",
    "torchvision_to_detectron2_name",
    "torchvision_to_detectron2_regnet_name",
    "vit_layout",
    "vit_to_detectron2_name",
]
