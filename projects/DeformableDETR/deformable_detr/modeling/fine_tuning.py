"""Weights from a file with other classes or another number of queries: fine-tuning released or
own weights on a new dataset.

Detectron2's checkpointer skips every tensor whose shape differs from the model's, with one
warning per tensor. For this model two kinds of tensors legitimately differ, and are fitted to the
model before that check, with one log line each:
- the class heads (`class_embed.{i}`, K_file rows -> K rows), re-initialised, or, with
  `keep_matching_classes`, with the file's rows of the classes that the model has too (by name);
- the learned queries (`query_embed`, Q_file rows -> Q rows), re-initialised.
"Re-initialised" keeps the model's own values, the released initialisation of a model just built.

Shapes: K classes of the model, K_file of the file; C channels; Q queries.
"""

import functools
import json
import logging
import os
from typing import Dict, List, Optional, Sequence

import torch
from detectron2.data import MetadataCatalog

__all__ = ["dataset_class_names", "fit_state_dict"]

logger = logging.getLogger(__name__)


def _fit_class_heads(model, state_dict: Dict, own: Dict, file_names) -> None:
    heads = [k for k in own if k.startswith("class_embed.") and k in state_dict]
    if not heads:
        return
    K, K_file = own[heads[0]].shape[0], state_dict[heads[0]].shape[0]
    names = model.class_names
    keep = model.keep_matching_classes
    if file_names is not None and len(file_names) != K_file:
        file_names = None  # a list that does not describe the rows cannot place them
    matching = keep and names is not None and file_names is not None
    if K == K_file and not (matching and list(names) != list(file_names)):
        return
    # for each of the model's K classes, the file's row that it keeps (None: its own)
    index = {name: i for i, name in enumerate(file_names)} if matching else {}
    rows = [index.get(name) for name in names] if matching else [None] * K
    for k in heads:
        fitted = own[k].detach().clone()  # (K, C) or (K,)
        for j, row in enumerate(rows):
            if row is not None:
                fitted[j] = torch.as_tensor(state_dict[k][row])
        state_dict[k] = fitted
    what = f"class heads: the file has {K_file} classes, the model {K}"
    kept = [names[j] for j, row in enumerate(rows) if row is not None]
    if kept:
        logger.warning(
            f"{what}; kept the file's rows of the {len(kept)} classes of the same name "
            f"({', '.join(kept)}), re-initialised {K - len(kept)}"
        )
    elif keep:
        reason = (
            "the file names no classes"
            if file_names is None
            else "the model's dataset names no classes"
            if names is None
            else "no class name is in both"
        )
        logger.warning(f"{what}; re-initialised ({reason})")
    else:
        logger.warning(
            f"{what}; re-initialised (MODEL.DEFORMABLE_DETR.KEEP_MATCHING_CLASSES keeps the "
            f"rows of classes of the same name)"
        )


def _fit_queries(state_dict: Dict, own: Dict) -> None:
    key = "query_embed.weight"
    if key in own and key in state_dict and own[key].shape != state_dict[key].shape:
        Q_file, Q = state_dict[key].shape[0], own[key].shape[0]
        state_dict[key] = own[key].detach().clone()  # (Q, 2C)
        logger.warning(f"query_embed: the file has {Q_file} queries, the model {Q}; re-initialised")


def fit_state_dict(
    model, state_dict: Dict[str, torch.Tensor], file_class_names: Optional[Sequence[str]]
) -> None:
    """Fits, in place, the class heads and the learned queries of `state_dict` (released names)
    to `model` (a DeformableDETR), as the module docstring says.

    Args:
        file_class_names: the K_file class names the file was trained for, when it says.
    """
    own = model.state_dict()
    _fit_class_heads(model, state_dict, own, file_class_names)
    _fit_queries(state_dict, own)


@functools.lru_cache(maxsize=8)
def _json_class_names(json_file: str, mtime: float) -> Optional[List[str]]:
    with open(json_file) as f:
        categories = json.load(f).get("categories")
    if not isinstance(categories, list):
        return None  # the data checks name the problem
    # Detectron2's load_coco_json: thing_classes in the order of the category ids
    return [c.get("name") for c in sorted(categories, key=lambda c: c.get("id", 0))]


def dataset_class_names(datasets: Sequence[str], num_classes: int) -> Optional[List[str]]:
    """The thing_classes of the first of `datasets` (the training ones, else the test ones), when
    they are num_classes many (a mismatch is the data checks' to report); None otherwise. A COCO
    dataset whose json has not been loaded yet (Detectron2 sets thing_classes then) gives the
    names of its json's categories, in the order Detectron2 will give them."""
    if not datasets:
        return None
    metadata = MetadataCatalog.get(datasets[0])
    names = metadata.get("thing_classes")
    json_file = metadata.get("json_file")
    if names is None and json_file and os.path.isfile(json_file):
        try:
            names = _json_class_names(json_file, os.path.getmtime(json_file))
        except (OSError, ValueError, AttributeError, TypeError):
            return None  # unreadable or malformed: the data checks name the problem
    if names is None or len(names) != num_classes:
        return None
    return list(names)
