#!/usr/bin/env python
"""Deformable DETR training and evaluation with Detectron2's trainer.

  python train_net.py --config-file configs/ddetr_r50.yaml                      # train
  python train_net.py --config-file configs/ddetr_r50.yaml --eval-only MODEL.WEIGHTS model.pth
  python train_net.py --config-file configs/quickstart.yaml --num-gpus 2 MODEL.DEVICE cpu
  python train_net.py --config-file ... --resume                                # continue

Any dataset registered in Detectron2's DatasetCatalog works (see README.md); the built-in
synthetic shapes ("ddetr_shapes_train" / "ddetr_shapes_val") are written on first use.
"""
import os
import sys
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "projects",
                                "DeformableDETR"))

# deformable_detr first: it silences detectron2's import-time deprecation warning
from deformable_detr import get_config  # noqa: E402
from deformable_detr.data import register_shapes_datasets  # noqa: E402
from deformable_detr.engine import Trainer, WeightsCheckpointer  # noqa: E402
from detectron2.engine import default_argument_parser, default_setup, launch  # noqa: E402


def register_datasets(cfg):
    """Registers (and on first use writes) the built-in dataset when the config names it."""
    if any(name.startswith("ddetr_shapes") for name in cfg.DATASETS.TRAIN + cfg.DATASETS.TEST):
        register_shapes_datasets()


def main(args):
    cfg = get_config(args.config_file, args.opts)
    cfg.freeze()
    default_setup(cfg, args)
    register_datasets(cfg)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        WeightsCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(
            cfg.MODEL.WEIGHTS, resume=args.resume)
        return Trainer.test(cfg, model)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


def cli(argv=None):
    """Parses the command line (Detectron2's arguments), refuses an evaluation without weights,
    then trains or evaluates in args.num_gpus processes per machine."""
    parser = default_argument_parser()
    args = parser.parse_args(argv)
    cfg = get_config(args.config_file, args.opts)
    # fvcore's Checkpointer names the latest checkpoint of OUTPUT_DIR in this file
    resumable = args.resume and os.path.isfile(os.path.join(cfg.OUTPUT_DIR, "last_checkpoint"))
    if args.eval_only and not cfg.MODEL.WEIGHTS and not resumable:
        parser.error(f"--eval-only needs MODEL.WEIGHTS (or --resume with a last_checkpoint in "
                     f"OUTPUT_DIR {cfg.OUTPUT_DIR!r}); without it a randomly initialised model "
                     f"would be evaluated")
    # written once here, not by every process of a multi-process launch
    register_datasets(cfg)
    if cfg.MODEL.DEVICE == "cpu" and args.num_gpus * args.num_machines > 1:
        # launch picks NCCL whenever a GPU is visible; CPU processes need gloo
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    launch(main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
           dist_url=args.dist_url, args=(args,))


if __name__ == "__main__":
    cli()
