"""Deformable DETR (Zhu et al., ICLR 2021) as a Detectron2 project."""
