#!/usr/bin/env python
"""Deformable DETR training and evaluation with Detectron2's trainer, from a yacs config (.yaml,
.yml) or a LazyConfig (.py), told apart by the file's extension as Detectron2's tools do.

  python train_net.py --config-file configs/ddetr_r50.yaml                      # train
  python train_net.py --config-file configs/ddetr_r50.yaml --eval-only MODEL.WEIGHTS model.pth
  python train_net.py --config-file configs/quickstart.yaml --num-gpus 2 MODEL.DEVICE cpu
  python train_net.py --config-file ... --resume                                # continue
  python train_net.py --config-file configs/ddetr_r50.py train.max_iter=1000   # LazyConfig
  python train_net.py --config-file configs/ddetr_r50.yaml \
      --coco-dataset mine_train train.json train_images/ DATASETS.TRAIN "('mine_train',)" ...

Overrides: KEY VALUE pairs for a yacs config, key=value (Hydra's syntax) for a LazyConfig.
Any dataset registered in Detectron2's DatasetCatalog works (docs/own_data_and_finetuning.md):
--coco-dataset NAME JSON IMAGE_ROOT (repeatable) registers COCO-format files under NAME for the
config to name; the built-in synthetic shapes ("ddetr_shapes_train" / "ddetr_shapes_val") are
written on first use. Before anything is built, each dataset the config names is checked
(registered, its COCO json sound, as many categories as the model has classes).
"""

import os
import sys
from typing import List, NamedTuple

sys.path.insert(
    0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "projects", "DeformableDETR")
)

import ddetr_malloc  # noqa: E402  (standard library only)

if __name__ == "__main__":  # on mimalloc (ddetr_malloc), before torch's import, which it repeats
    ddetr_malloc.reexec_with_mimalloc()

# deformable_detr first: it silences detectron2's import-time deprecation warning
from deformable_detr import get_config  # noqa: E402
from deformable_detr import lazy_engine  # noqa: E402
from deformable_detr.data import (  # noqa: E402
    add_coco_dataset_argument,
    register_coco_datasets,
    register_shapes_datasets,
)
from deformable_detr.engine import Trainer, WeightsCheckpointer  # noqa: E402
from deformable_detr.launcher import JOIN_TIMEOUT_S, check_launch_args, launch  # noqa: E402
from detectron2.engine import default_argument_parser, default_setup  # noqa: E402
from detectron2.utils import comm  # noqa: E402
from detectron2.utils.logger import setup_logger  # noqa: E402

YAML_EXTENSIONS = (".yaml", ".yml")
LAZY_EXTENSIONS = (".py",)


def is_lazy(config_file: str) -> bool:
    return os.path.splitext(config_file)[1] in LAZY_EXTENSIONS


def load_config(args):
    """The config of args.config_file (of either kind) with the overrides args.opts."""
    if is_lazy(args.config_file):
        return lazy_engine.load_lazy_config(args.config_file, args.opts)
    return get_config(args.config_file, args.opts)


class Settings(NamedTuple):
    """What cli and main read of either kind of config, with the keys to name in errors."""

    weights_key: str
    weights: str
    output_key: str
    output_dir: str
    device: str
    datasets: List[str]


def read_settings(cfg, lazy: bool) -> Settings:
    if lazy:
        train = cfg.train
        return Settings(
            "train.init_checkpoint",
            train.init_checkpoint,
            "train.output_dir",
            train.output_dir,
            train.device,
            sum(lazy_engine.dataset_names(cfg), []),
        )
    return Settings(
        "MODEL.WEIGHTS",
        cfg.MODEL.WEIGHTS,
        "OUTPUT_DIR",
        cfg.OUTPUT_DIR,
        cfg.MODEL.DEVICE,
        list(cfg.DATASETS.TRAIN + cfg.DATASETS.TEST),
    )


def register_datasets(names):
    """Registers (and on first use writes) the built-in dataset when the config names it."""
    if any(name.startswith("ddetr_shapes") for name in names):
        register_shapes_datasets()


def main(args):
    # again in each process of a launch; args of Detectron2's own parser have no coco_dataset
    register_coco_datasets(getattr(args, "coco_dataset", None) or [])
    lazy = is_lazy(args.config_file)
    cfg = load_config(args)
    if not lazy:
        cfg.freeze()
    default_setup(cfg, args)
    settings = read_settings(cfg, lazy)
    # this project's log lines (e.g. fine-tuning's "class heads: ...") go where Detectron2's go
    logger = setup_logger(
        settings.output_dir, distributed_rank=comm.get_rank(), name="deformable_detr"
    )
    logger.info(f"malloc: {ddetr_malloc.allocator_in_use()} (ddetr_malloc)")
    register_datasets(settings.datasets)
    if lazy:
        run = lazy_engine.evaluate if args.eval_only else lazy_engine.do_train
        return run(cfg, args.resume)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        WeightsCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(
            cfg.MODEL.WEIGHTS, resume=args.resume
        )
        return Trainer.test(cfg, model)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


def get_parser():
    """Detectron2's default_argument_parser with --join-timeout and --coco-dataset."""
    parser = default_argument_parser()
    parser.add_argument(
        "--join-timeout",
        type=float,
        default=JOIN_TIMEOUT_S,
        metavar="SECONDS",
        help="with --num-machines > 1: how long the machines have to meet at --dist-url before "
        "the run fails, naming whom it waited for (default: %(default)g)",
    )
    add_coco_dataset_argument(
        parser,
        "name it in the config: DATASETS.TRAIN / DATASETS.TEST, or a LazyConfig's "
        "dataloader.train.dataset.names / dataloader.test.dataset.names",
    )
    return parser


def cli(argv=None):
    """Parses the command line (get_parser), refuses a config file of another extension and an
    evaluation without weights, then trains or evaluates in args.num_gpus processes per
    machine."""
    parser = get_parser()
    args = parser.parse_args(argv)
    try:
        check_launch_args(
            args.num_gpus, args.num_machines, args.machine_rank, args.dist_url, args.join_timeout
        )
    except ValueError as e:
        parser.error(str(e))
    extension = os.path.splitext(args.config_file)[1]
    if args.config_file and extension not in YAML_EXTENSIONS + LAZY_EXTENSIONS:
        parser.error(
            f"--config-file must be a yacs config ({', '.join(YAML_EXTENSIONS)}) or a "
            f"LazyConfig ({', '.join(LAZY_EXTENSIONS)}), got {args.config_file!r}"
        )
    register_coco_datasets(args.coco_dataset)
    settings = read_settings(load_config(args), is_lazy(args.config_file))
    # fvcore's Checkpointer names the latest checkpoint of the output dir in this file
    resumable = args.resume and os.path.isfile(os.path.join(settings.output_dir, "last_checkpoint"))
    if args.eval_only and not settings.weights and not resumable:
        parser.error(
            f"--eval-only needs {settings.weights_key} (or --resume with a "
            f"last_checkpoint in {settings.output_key} {settings.output_dir!r}); without "
            f"it a randomly initialised model would be evaluated"
        )
    # written once here, not by every process of a multi-process launch
    register_datasets(settings.datasets)
    if settings.device == "cpu" and args.num_gpus * args.num_machines > 1:
        # launch picks NCCL whenever a GPU is visible; CPU processes need gloo
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
        join_timeout_s=args.join_timeout,
    )


if __name__ == "__main__":
    cli()
