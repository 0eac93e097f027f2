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
import warnings

# detectron2 0.7 scripts a helper at import time; nothing for a user to act on
warnings.filterwarnings("ignore", message="`torch.jit.script` is deprecated", category=FutureWarning)
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "projects",
                                "DeformableDETR"))

from detectron2.config import get_cfg  # noqa: E402
from detectron2.engine import default_argument_parser, default_setup, launch  # noqa: E402

from deformable_detr import add_deformable_detr_config  # noqa: E402
from deformable_detr.data import register_shapes_datasets  # noqa: E402
from deformable_detr.engine import Trainer, WeightsCheckpointer  # noqa: E402


def load_config(args):
    cfg = get_cfg()
    add_deformable_detr_config(cfg)
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    return cfg


def register_datasets(cfg):
    """Registers (and on first use writes) the built-in dataset when the config names it."""
    if any(name.startswith("ddetr_shapes") for name in cfg.DATASETS.TRAIN + cfg.DATASETS.TEST):
        register_shapes_datasets()


def main(args):
    cfg = load_config(args)
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


if __name__ == "__main__":
    args = default_argument_parser().parse_args()
    cfg = load_config(args)
    # written once here, not by every process of a multi-process launch
    register_datasets(cfg)
    if cfg.MODEL.DEVICE == "cpu" and args.num_gpus * args.num_machines > 1:
        # launch picks NCCL whenever a GPU is visible; CPU processes need gloo
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    launch(main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
           dist_url=args.dist_url, args=(args,))
