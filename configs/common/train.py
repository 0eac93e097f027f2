"""What the training loop reads, as in Detectron2's LazyConfigs (model_zoo/configs/common/
train.py): the released run's length, checkpoints and evaluations, from Base-DeformableDETR.yaml
and Detectron2's defaults (each value is the key named in its comment)."""

train = dict(
    output_dir="./output",  # OUTPUT_DIR
    # MODEL.WEIGHTS: torchvision's ImageNet ResNet-50 (IMAGENET1K_V1), as released, in the layout
    # Detectron2 publishes it; read by this project's restricted unpickler
    init_checkpoint="detectron2://ImageNetPretrained/torchvision/R-50.pkl",
    # SOLVER.MAX_ITER: 50 epochs of COCO train2017, 3,696 iterations of 32 images each
    max_iter=184800,
    # SOLVER.AMP.ENABLED: float32, as released; SOLVER.AMP.PRECISION: the autocast dtype with
    # enabled, "float16" (loss scaled) or "bfloat16"
    amp=dict(enabled=False, precision="float16"),
    # DistributedDataParallel: buffers (frozen BatchNorm's) are not broadcast, every parameter
    # gets a gradient
    ddp=dict(broadcast_buffers=False, find_unused_parameters=False),
    # SOLVER.CHECKPOINT_PERIOD: a checkpoint every epoch, as released; all kept
    checkpointer=dict(period=3696, max_to_keep=None),
    # TEST.EVAL_PERIOD: COCO val every 5 epochs and after the last iteration (the release
    # evaluates after every epoch: 3696 for that)
    eval_period=18480,
    log_period=20,  # iterations between metric writes (DefaultTrainer's)
    device="cuda",  # MODEL.DEVICE
    seed=-1,  # SEED: random
)
