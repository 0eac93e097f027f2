"""A small Deformable DETR trained from scratch on the built-in synthetic shapes, on the CPU, in a
few minutes: the LazyConfig twin of quickstart.yaml (`python train_net.py --config-file
configs/quickstart.py`). Not a released model: ResNet-18 with trainable BatchNorm, a narrow
transformer of 2 + 2 layers, box refinement, 128x160 images. Every value below departs from the
released recipe of ddetr_r50.py, for the reason given."""

from detectron2.layers import ShapeSpec

from .ddetr_r50 import dataloader, lr_multiplier, model, optimizer, train

__all__ = ["dataloader", "lr_multiplier", "model", "optimizer", "train"]

train.device = "cpu"  # MODEL.DEVICE
# MODEL.WEIGHTS: from scratch; no ImageNet file can be downloaded here, and 3 shapes on textures
# need none
train.init_checkpoint = ""

model.backbone.depth = 18  # RESNETS.DEPTH
model.backbone.res2_out_channels = 64  # RESNETS.RES2_OUT_CHANNELS: ResNet-18's
model.backbone.norm = "BN"  # RESNETS.NORM: trainable statistics from scratch
model.backbone.freeze_at = 0  # BACKBONE.FREEZE_AT: nothing pretrained to keep
# the ResNet-18 maps the neck takes
model.neck.input_shape = {
    "res3": ShapeSpec(channels=128, stride=8),
    "res4": ShapeSpec(channels=256, stride=16),
    "res5": ShapeSpec(channels=512, stride=32),
}
model.transformer.num_classes = 3  # DEFORMABLE_DETR.NUM_CLASSES: circle, square, triangle
model.transformer.num_queries = (
    30  # DEFORMABLE_DETR.NUM_QUERIES: at most a handful of objects per image
)
model.transformer.d_model = 128  # DEFORMABLE_DETR.HIDDEN_DIM
model.position_embedding.num_pos_feats = 64  # half of HIDDEN_DIM
model.transformer.nhead = 4  # DEFORMABLE_DETR.NHEADS
model.transformer.num_encoder_layers = 2  # DEFORMABLE_DETR.ENC_LAYERS
model.transformer.num_decoder_layers = 2  # DEFORMABLE_DETR.DEC_LAYERS
model.transformer.dim_feedforward = 512  # DEFORMABLE_DETR.DIM_FEEDFORWARD
model.transformer.dropout = 0.0  # DEFORMABLE_DETR.DROPOUT: 350 iterations are too few to need it
model.neck.num_feature_levels = 3  # DEFORMABLE_DETR.NUM_FEATURE_LEVELS
model.transformer.with_box_refine = True  # DEFORMABLE_DETR.WITH_BOX_REFINE
# TEST.DETECTIONS_PER_IMAGE: at most NUM_QUERIES x NUM_CLASSES is meaningful; 30 are plenty
model.detections_per_image = 30

dataloader.train.dataset.names = ["ddetr_shapes_train"]  # DATASETS.TRAIN
dataloader.test.dataset.names = "ddetr_shapes_val"  # DATASETS.TEST
dataloader.train.num_workers = 1  # DATALOADER.NUM_WORKERS: one decodes while the other trains
dataloader.test.num_workers = 1  # DATALOADER.NUM_WORKERS
# the shapes images are 128x160: one size, no crop (a crop would cut the few objects)
dataloader.train.mapper.augmentations.min_size = [128]  # INPUT.MIN_SIZE_TRAIN
dataloader.train.mapper.augmentations.max_size = 256  # INPUT.MAX_SIZE_TRAIN
dataloader.train.mapper.augmentations.crop = False  # INPUT.CROP.ENABLED
dataloader.test.mapper.augmentations.min_size = 128  # INPUT.MIN_SIZE_TEST
dataloader.test.mapper.augmentations.max_size = 256  # INPUT.MAX_SIZE_TEST
# SOLVER.IMS_PER_BATCH: what 2 cores train at 0.45-0.8 s per iteration
dataloader.train.total_batch_size = 8

optimizer.lr = 4e-4  # SOLVER.BASE_LR: twice the released rate: a small model from scratch
# SOLVER.BACKBONE_MULTIPLIER: the backbone is not pretrained: it learns at the full rate
optimizer.params.backbone_multiplier = 1.0
train.max_iter = 350  # SOLVER.MAX_ITER: about 2.3 epochs of the 1,200 training images
lr_multiplier.scheduler.milestones = [280]  # SOLVER.STEPS
train.checkpointer.period = 350  # SOLVER.CHECKPOINT_PERIOD
train.eval_period = 350  # TEST.EVAL_PERIOD
train.output_dir = "output/quickstart"  # OUTPUT_DIR
train.seed = 0  # SEED
