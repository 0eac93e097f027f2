"""Multi-scale Deformable DETR on Swin-T, with the released recipe: the LazyConfig twin of
ddetr_swin_t.yaml. Not a released model; Swin-S / -B by the arguments of swin_backbone (the
MODEL.SWIN keys of their names)."""

from detectron2.config import LazyCall as L
from detectron2.layers import ShapeSpec

from deformable_detr.modeling.backbones import swin_backbone

from .ddetr_r50 import dataloader, lr_multiplier, model, optimizer, train

__all__ = ["dataloader", "lr_multiplier", "model", "optimizer", "train"]

EMBED_DIM = 96  # MODEL.SWIN.EMBED_DIM: width of stage 0, doubled at each stage
model.backbone = L(swin_backbone)(  # MODEL.BACKBONE.NAME "build_deformable_detr_swin_backbone"
    embed_dim=EMBED_DIM,
    depths=[2, 2, 6, 2],  # MODEL.SWIN.DEPTHS: blocks per stage
    num_heads=[3, 6, 12, 24],  # MODEL.SWIN.NUM_HEADS: attention heads per stage
    window_size=7,  # MODEL.SWIN.WINDOW_SIZE: window side in patches (the 224 px files)
    mlp_ratio=4.0,  # MODEL.SWIN.MLP_RATIO
    drop_path_rate=0.2,  # MODEL.SWIN.DROP_PATH_RATE: stochastic depth of the last block
    out_features=["p1", "p2", "p3"],  # MODEL.SWIN.OUT_FEATURES: strides 8, 16, 32
    frozen_stages=-1,  # MODEL.SWIN.FROZEN_STAGES: nothing frozen
)
# stage i: EMBED_DIM * 2^i channels at stride 2^(i + 2)
model.neck.input_shape = {
    f"p{i}": ShapeSpec(channels=EMBED_DIM * 2**i, stride=2 ** (i + 2)) for i in (1, 2, 3)
}
model.neck.in_features = ["p1", "p2", "p3"]  # DEFORMABLE_DETR.IN_FEATURES
# MODEL.WEIGHTS: Swin's official ImageNet file, converted with tools/convert_swin.py
train.init_checkpoint = "weights/imagenet_swin_t.pth"
