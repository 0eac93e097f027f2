"""Multi-scale Deformable DETR on MViTv2-T, with the released recipe: the LazyConfig twin of
ddetr_mvitv2_t.yaml. Not a released model; MViTv2-S / -B by the arguments of mvit_backbone (the
MODEL.MVIT keys of their names)."""

from detectron2.config import LazyCall as L
from detectron2.layers import ShapeSpec

from deformable_detr.modeling.backbones import mvit_backbone

from .ddetr_r50 import dataloader, lr_multiplier, model, optimizer, train

__all__ = ["dataloader", "lr_multiplier", "model", "optimizer", "train"]

EMBED_DIM = 96  # MODEL.MVIT.EMBED_DIM: width of stage 2, doubled at each stage
model.backbone = L(mvit_backbone)(  # MODEL.BACKBONE.NAME "build_deformable_detr_mvit_backbone"
    embed_dim=EMBED_DIM,
    depth=10,  # MODEL.MVIT.DEPTH: blocks
    num_heads=1,  # MODEL.MVIT.NUM_HEADS: of stage 2, doubled at each stage
    last_block_indexes=[0, 2, 7, 9],  # MODEL.MVIT.LAST_BLOCK_INDEXES: each stage's last block
    drop_path_rate=0.2,  # MODEL.MVIT.DROP_PATH_RATE: stochastic depth of the last block
    pretrain_img_size=224,  # MODEL.MVIT.PRETRAIN_IMG_SIZE: the relative positions' image side
    out_features=["scale3", "scale4", "scale5"],  # MODEL.MVIT.OUT_FEATURES: strides 8, 16, 32
)
# stage k: EMBED_DIM * 2^(k - 2) channels at stride 2^k
model.neck.input_shape = {
    f"scale{k}": ShapeSpec(channels=EMBED_DIM * 2 ** (k - 2), stride=2**k) for k in (3, 4, 5)
}
model.neck.in_features = ["scale3", "scale4", "scale5"]  # DEFORMABLE_DETR.IN_FEATURES
# MODEL.WEIGHTS: MViTv2's official ImageNet file, converted with tools/convert_mvit.py
train.init_checkpoint = "weights/imagenet_mvitv2_t.pth"
