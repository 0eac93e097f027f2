"""Multi-scale Deformable DETR on ViTDet's backbone (ViT-B/16 with window attention and a simple
feature pyramid), with the released recipe: the LazyConfig twin of ddetr_vit_b.yaml. Not a
released model."""

from detectron2.config import LazyCall as L
from detectron2.layers import ShapeSpec

from deformable_detr.modeling.backbones import vit_backbone

from .ddetr_r50 import dataloader, lr_multiplier, model, optimizer, train

__all__ = ["dataloader", "lr_multiplier", "model", "optimizer", "train"]

IMG_SIZE = 1024  # MODEL.VIT.IMG_SIZE: every image is padded to this square, as in ViTDet
OUT_CHANNELS = 256  # MODEL.VIT.OUT_CHANNELS: width of every pyramid map
model.backbone = L(vit_backbone)(  # MODEL.BACKBONE.NAME "build_deformable_detr_vit_backbone"
    img_size=IMG_SIZE,
    patch_size=16,  # MODEL.VIT.PATCH_SIZE: the ViT's stride
    embed_dim=768,  # MODEL.VIT.EMBED_DIM
    depth=12,  # MODEL.VIT.DEPTH
    num_heads=12,  # MODEL.VIT.NUM_HEADS
    mlp_ratio=4.0,  # MODEL.VIT.MLP_RATIO
    drop_path_rate=0.1,  # MODEL.VIT.DROP_PATH_RATE: stochastic depth of the last block
    window_size=14,  # MODEL.VIT.WINDOW_SIZE: in patches
    # MODEL.VIT.WINDOW_BLOCK_INDEXES: window attention; blocks 2, 5, 8, 11 attend globally
    window_block_indexes=[0, 1, 3, 4, 6, 7, 9, 10],
    use_rel_pos=True,  # MODEL.VIT.USE_REL_POS: relative position biases
    pretrain_img_size=224,  # MODEL.VIT.PRETRAIN_IMG_SIZE: of the ImageNet position table
    scale_factors=[2.0, 1.0, 0.5],  # MODEL.VIT.SCALE_FACTORS: p3, p4, p5 from the stride-16 map
    out_channels=OUT_CHANNELS,
)
model.neck.input_shape = {f"p{k}": ShapeSpec(channels=OUT_CHANNELS, stride=2**k) for k in (3, 4, 5)}
model.neck.in_features = ["p3", "p4", "p5"]  # DEFORMABLE_DETR.IN_FEATURES
# INPUT.MAX_SIZE_TRAIN / MAX_SIZE_TEST: the longer side must fit the square (the model refuses
# a larger image)
dataloader.train.mapper.augmentations.max_size = IMG_SIZE
dataloader.test.mapper.augmentations.max_size = IMG_SIZE
# MODEL.WEIGHTS: MAE's ImageNet file, converted with tools/convert_vit.py
train.init_checkpoint = "weights/imagenet_vit_b_mae.pth"
