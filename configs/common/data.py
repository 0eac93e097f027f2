"""COCO 2017 with DETR's augmentation, as a LazyConfig dataloader: the INPUT, DATALOADER and
DATASETS keys of Base-DeformableDETR.yaml (each argument below is the key named in its comment),
with the COCO evaluation of the test set."""

from detectron2.config import LazyCall as L
from detectron2.data import (
    build_detection_test_loader,
    build_detection_train_loader,
    get_detection_dataset_dicts,
)
from omegaconf import OmegaConf

from deformable_detr.data import DetrDatasetMapper, detr_test_augmentation, detr_train_augmentation
from deformable_detr.engine import coco_evaluator

dataloader = OmegaConf.create()

dataloader.train = L(build_detection_train_loader)(
    dataset=L(get_detection_dataset_dicts)(
        names=["coco_2017_train"],  # DATASETS.TRAIN
        # DATALOADER.FILTER_EMPTY_ANNOTATIONS: images without objects are kept, as released
        filter_empty=False,
    ),
    mapper=L(DetrDatasetMapper)(
        is_train=True,  # augmented, with the ground-truth instances
        # horizontal flip; then half the time a resize of the shorter side to one of 480, 512,
        # ..., 800 (longer side at most 1333), half the time a resize to one of 400/500/600, a
        # random crop of 384..600 pixels per side, then that multi-scale resize
        augmentations=L(detr_train_augmentation)(
            random_flip="horizontal",  # INPUT.RANDOM_FLIP
            min_size=[480, 512, 544, 576, 608, 640, 672, 704, 736, 768, 800],  # MIN_SIZE_TRAIN
            max_size=1333,  # INPUT.MAX_SIZE_TRAIN
            crop=True,  # INPUT.CROP.ENABLED
            resize_before_crop=[400, 500, 600],  # INPUT.RESIZE_BEFORE_CROP
            crop_type="absolute_range",  # INPUT.CROP.TYPE
            crop_size=[384, 600],  # INPUT.CROP.SIZE
        ),
        image_format="RGB",  # INPUT.FORMAT: torchvision's ResNet, as released
    ),
    # SOLVER.IMS_PER_BATCH: 32 images per iteration over all processes (released: 2 per GPU on
    # 16 GPUs), not rescaled with the number of GPUs (docs/training.md, "Scaling")
    total_batch_size=32,
    aspect_ratio_grouping=True,  # DATALOADER.ASPECT_RATIO_GROUPING
    num_workers=4,  # DATALOADER.NUM_WORKERS, per process
)

dataloader.test = L(build_detection_test_loader)(
    dataset=L(get_detection_dataset_dicts)(
        names="coco_2017_val",  # DATASETS.TEST (one dataset: the evaluator takes one)
        filter_empty=False,  # every test image is evaluated
    ),
    mapper=L(DetrDatasetMapper)(
        is_train=False,  # one resize, no annotations
        # INPUT.MIN_SIZE_TEST / MAX_SIZE_TEST: shorter side 800, longer at most 1333
        augmentations=L(detr_test_augmentation)(min_size=800, max_size=1333),
        image_format="${...train.mapper.image_format}",  # INPUT.FORMAT, the training's
    ),
    num_workers=4,  # DATALOADER.NUM_WORKERS
)

# COCO box AP of the test set
dataloader.evaluator = L(coco_evaluator)(
    dataset_name="${..test.dataset.names}",  # the test loader's dataset
    # its result files, where the YAML path writes them: OUTPUT_DIR/inference/<dataset>
    output_dir="${...train.output_dir}/inference/${..test.dataset.names}",
)
