"""Multi-scale Deformable DETR, ResNet-50 (released: 44.5 box AP): the LazyConfig twin of
ddetr_r50.yaml, the released model and recipe of configs/common/."""

from .common.data import dataloader
from .common.model import model
from .common.optim import optimizer
from .common.schedule import lr_multiplier
from .common.train import train

__all__ = ["dataloader", "lr_multiplier", "model", "optimizer", "train"]
