"""Conversion of the released Deformable DETR checkpoints (fundamentalvision/Deformable-DETR,
*-checkpoint.pth) to this project's Detectron2 models; H-Deformable-DETR's R50 files
(HDETR/H-Deformable-DETR) have the same layout and convert alike (see hdetr_layout.py).

Shapes: K = 91 released class rows (row i = COCO category id i), K' = 80 contiguous COCO classes
of Detectron2 (class j = the j-th category id in ascending order: id 1 -> 0, ..., id 90 -> 79),
C = 256 model width.

The released file is a dict: "model" (the state dict), "optimizer", "lr_scheduler", "epoch" and
"args" (an argparse.Namespace). Only "model" is converted ("args" helps to detect the variant):
  backbone.0.body.<torchvision name> -> backbone.<Detectron2 name> (see torchvision_resnet.py)
  input_proj.*                       -> neck.input_proj.*
  class_embed.{i}, i < 6             -> the same name, rows gathered: K -> K' by category id
  class_embed.6 (two-stage proposals)-> the same name, rows kept in place (the first K')
  transformer.decoder.{class,bbox}_embed.* (aliases of the heads) -> dropped
  *.total_ops, *.total_params (thop's profiling counters, if any)  -> dropped
  everything else                    -> the same name
"""

import argparse
import re
from collections import OrderedDict
from typing import Dict, List, Mapping, Optional, Sequence

import torch
from detectron2.data import MetadataCatalog

from .files import check_layout, read_weights_file, save_detectron2_checkpoint
from .official_layout import (
    ALIAS_PREFIXES,
    BACKBONE_PREFIX,
    CLASS_ROWS,
    DEC_LAYERS,
    Variant,
    detect_variant,
    released_layout,
)
from .torchvision_resnet import torchvision_to_detectron2_name

__all__ = [
    "coco_category_ids",
    "convert_official_checkpoint",
    "convert_official_state_dict",
    "load_official_checkpoint",
    "official_to_detectron2_name",
]

_CLASS_HEAD = re.compile(r"class_embed\.(\d+)\.(weight|bias)")
# counters that the thop profiler adds to every module; the authors' main.py ignores them on resume
_PROFILER_COUNTERS = ("total_ops", "total_params")


def load_official_checkpoint(path: str) -> dict:
    """The released file as a dict with "model", read by read_weights_file (a .pth with
    torch.load(weights_only=True), only argparse.Namespace, the stored args, allow-listed).
    Raises ValueError when the file is not such a checkpoint, is damaged or holds any other
    object."""
    checkpoint = read_weights_file(path, allowed_globals=(argparse.Namespace,))
    if not isinstance(checkpoint, dict):
        raise ValueError(
            f"{path} is not a released Deformable DETR checkpoint: expected a dict "
            f"with 'model', got {type(checkpoint).__name__}"
        )
    if "model" not in checkpoint:
        raise ValueError(
            f"{path} is not a released Deformable DETR checkpoint: it has no 'model' "
            f"entry (entries: {[str(k) for k in list(checkpoint)[:8]]})"
        )
    if not isinstance(checkpoint["model"], Mapping):
        raise ValueError(
            f"{path}: 'model' must be a state dict, got {type(checkpoint['model']).__name__}"
        )
    return checkpoint


def coco_category_ids(dataset: str = "coco_2017_val") -> List[int]:
    """COCO category ids in the order of Detectron2's contiguous classes (from the dataset's
    thing_dataset_id_to_contiguous_id): [1, 2, ..., 90] without the ten unused ids."""
    id_to_class = MetadataCatalog.get(dataset).thing_dataset_id_to_contiguous_id
    return sorted(id_to_class, key=id_to_class.__getitem__)


def official_to_detectron2_name(name: str) -> Optional[str]:
    """Our name of a released parameter; None for the aliases, which are dropped."""
    if name.startswith(ALIAS_PREFIXES):
        return None
    if name.startswith(BACKBONE_PREFIX):
        return "backbone." + torchvision_to_detectron2_name(name[len(BACKBONE_PREFIX) :])
    if name.startswith("input_proj."):
        return "neck." + name
    return name


def _check_copies(state_dict: Mapping[str, torch.Tensor], variant: Variant) -> None:
    """The release stores a module registered under several names as equal copies: aliases equal
    their heads, and shared heads (no box refinement) are equal under every index."""
    for name, value in state_dict.items():
        if name.startswith(ALIAS_PREFIXES):
            source = name[len("transformer.decoder.") :]
        elif not variant.with_box_refine and name.startswith(("class_embed.", "bbox_embed.")):
            head, _, rest = name.split(".", 2)
            source = f"{head}.0.{rest}"
        else:
            continue
        if not torch.equal(value, state_dict[source]):
            raise ValueError(
                f"{name} differs from {source}; the released model stores the same "
                f"module under both names, so they must be equal"
            )


def _class_rows(name: str, value: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    match = _CLASS_HEAD.fullmatch(name)
    if match is None:
        return value
    if int(match.group(1)) < DEC_LAYERS:
        return value.index_select(0, ids)
    # The two-stage proposal head: proposals are ranked by its column 0 alone (trained with every
    # target as class 0), so its rows are not COCO classes. Keep them where they are; our head
    # has as many rows as classes, of which only row 0 ever ranks proposals.
    return value[: len(ids)].clone()


def convert_official_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    variant: Variant,
    category_ids: Optional[Sequence[int]] = None,
) -> Dict[str, torch.Tensor]:
    """Released state dict of `variant` -> state dict of this project's model (its config:
    variant.config). `category_ids[j]` is the released class row of our class j (default: COCO,
    coco_category_ids()). thop's profiling counters (*.total_ops, *.total_params) are dropped.
    Raises ValueError for a missing, unknown or misshapen key, or copies that differ."""
    state_dict = {
        k: v
        for k, v in state_dict.items()
        if not (isinstance(k, str) and k.rpartition(".")[2] in _PROFILER_COUNTERS)
    }
    check_layout(state_dict, released_layout(variant), f"the released {variant.name} state dict")
    _check_copies(state_dict, variant)
    ids = list(coco_category_ids() if category_ids is None else category_ids)
    if not ids or not all(isinstance(i, int) and 0 <= i < CLASS_ROWS for i in ids):
        raise ValueError(f"category_ids must be ints in [0, {CLASS_ROWS}), got {ids!r}")
    ids = torch.tensor(ids, dtype=torch.long)
    converted = OrderedDict()
    for name, value in state_dict.items():
        new_name = official_to_detectron2_name(name)
        if new_name is not None:
            converted[new_name] = _class_rows(name, value, ids)
    return converted


def convert_official_checkpoint(
    input_path: str, output_path: str, variant: Optional[str] = None
) -> Variant:
    """Reads a released checkpoint, detects its variant (see detect_variant; `variant` is the
    user's choice, needed for a single-scale file without args), converts its "model" and writes
    a Detectron2 checkpoint to `output_path` (optimizer, lr_scheduler, epoch and args dropped).
    Returns the variant; load the output as MODEL.WEIGHTS with configs/<variant.config> and
    the keys variant.opts."""
    checkpoint = load_official_checkpoint(input_path)
    try:
        found = detect_variant(checkpoint["model"], checkpoint.get("args"), variant)
        converted = convert_official_state_dict(checkpoint["model"], found)
    except ValueError as e:
        raise ValueError(f"{input_path}: {e}") from None
    save_detectron2_checkpoint(
        output_path,
        converted,
        author=f"{found.source} ({found.name}), converted for Detectron2",
        # the rows' classes, in Detectron2's contiguous order (coco_category_ids)
        class_names=MetadataCatalog.get("coco_2017_val").thing_classes,
    )
    return found
