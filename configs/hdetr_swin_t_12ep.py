"""H-Deformable-DETR on Swin-T: hdetr_r50_12ep.py's model and recipe on the backbone of
ddetr_swin_t.py (their Swin-T: 50.6 box AP at 12 epochs): the LazyConfig twin of
hdetr_swin_t_12ep.yaml. Any backbone config switches the keys on alike."""

from .ddetr_swin_t import model as swin
from .ddetr_swin_t import train as swin_train
from .hdetr_r50_12ep import dataloader, lr_multiplier, model, optimizer, train

__all__ = ["dataloader", "lr_multiplier", "model", "optimizer", "train"]

model.backbone = swin.backbone  # MODEL.BACKBONE.NAME "build_deformable_detr_swin_backbone"
model.neck.input_shape = swin.neck.input_shape  # Swin-T's maps at strides 8, 16, 32
model.neck.in_features = swin.neck.in_features  # DEFORMABLE_DETR.IN_FEATURES
train.init_checkpoint = swin_train.init_checkpoint  # MODEL.WEIGHTS: Swin-T's ImageNet file
