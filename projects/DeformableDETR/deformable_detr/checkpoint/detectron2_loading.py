"""Detectron2's DetectionCheckpointer, reading every file through load_weights_file.

DetectionCheckpointer._load_file reads a .pkl with pickle.load (a crafted MODEL.WEIGHTS, or the
file that OUTPUT_DIR/last_checkpoint names on --resume, runs its code) and checks nothing about
what it read. load_detectron2_checkpoint reads the file safely, then converts it exactly as
Detectron2 does: model-zoo .pkl as they are, Caffe2 "blobs" and flat .pkl dicts with name-matching
heuristics, pycls .pyth "model_state", and any other file as a checkpoint or a bare state dict;
and it refuses weights that hold NaN or inf, naming them.

Loading into a model that fits files to itself (DeformableDETR.fit_state_dict: class heads and
queries of another count, when fine-tuning), every DetectionCheckpointer lets it do so first.
"""

from typing import Any, Dict, Mapping

import numpy as np
import torch
from urllib.parse import parse_qs

from detectron2.checkpoint import DetectionCheckpointer

from .files import load_weights_file

__all__ = [
    "install_safe_checkpoint_loading",
    "load_detectron2_checkpoint",
    "load_model_fitted",
]


def _from_pkl(checkpointer, filename: str, data: Mapping) -> Dict[str, Any]:
    if "model" in data and "__author__" in data:  # Detectron2's model zoo
        checkpointer.logger.info(f"Reading a file from '{data['__author__']}'")
        return dict(data)
    # Caffe2 / Detectron model zoo: detection models keep their weights under "blobs"
    blobs = data.get("blobs", data)
    if not isinstance(blobs, Mapping):
        raise ValueError(
            f"{filename}: 'blobs' must be a dict of arrays, found a {type(blobs).__name__}"
        )
    weights = {k: v for k, v in blobs.items() if not str(k).endswith("_momentum")}
    return {"model": weights, "__author__": "Caffe2", "matching_heuristics": True}


def _from_pyth(filename: str, data: Mapping) -> Dict[str, Any]:
    # pycls's checkpoints, the only ones known to use the .pyth extension
    if not isinstance(data.get("model_state"), Mapping):
        raise ValueError(
            f"{filename}: a .pyth file must be a pycls checkpoint with a "
            f"'model_state' dict; found keys {[str(k) for k in list(data)[:8]]}"
        )
    weights = {
        k: v for k, v in data["model_state"].items() if not str(k).endswith("num_batches_tracked")
    }
    return {"model": weights, "__author__": "pycls", "matching_heuristics": True}


def _from_torch_file(checkpointer, filename: str, data: Mapping) -> Dict[str, Any]:
    checkpoint = dict(data) if "model" in data else {"model": data}
    # DetectionCheckpointer.load keeps the "?matching_heuristics=True" query of the path here
    parsed_url = checkpointer._parsed_url_during_load
    queries = parse_qs(parsed_url.query) if parsed_url is not None else {}
    if queries.pop("matching_heuristics", "False") == ["True"]:
        checkpoint["matching_heuristics"] = True
    if queries:
        raise ValueError(
            f"{filename}: unsupported query {queries} in the weights path "
            f"{parsed_url.geturl()!r}; only matching_heuristics=True is known"
        )
    return checkpoint


def _check_finite(filename: str, weights: Mapping) -> None:
    """Raises ValueError naming the floating-point tensors of `weights` that hold NaN or inf: a
    model loaded with them would run, with wrong numbers (the deformable attention samples a NaN
    location as zero)."""
    bad = []
    for name, value in weights.items():
        if isinstance(value, np.ndarray) and np.issubdtype(value.dtype, np.floating):
            count, size = value.size - int(np.isfinite(value).sum()), value.size
        elif isinstance(value, torch.Tensor) and value.is_floating_point():
            count, size = value.numel() - int(torch.isfinite(value).sum()), value.numel()
        else:
            continue
        if count:
            bad.append(f"{name!r} ({count} of {size} values)")
    if bad:
        raise ValueError(
            f"{filename}: {len(bad)} weight tensor(s) hold NaN or inf: {', '.join(bad[:5])}"
            f"{' ...' if len(bad) > 5 else ''}; the file is damaged or its training diverged "
            f"(resume from an earlier checkpoint)"
        )


def load_detectron2_checkpoint(
    checkpointer: DetectionCheckpointer, filename: str
) -> Dict[str, Any]:
    """What DetectionCheckpointer._load_file returns ({"model": weights, ...}), with the file
    read by load_weights_file: no code in it runs. Raises ValueError naming the file when it is
    refused, is not a checkpoint, its "model" entry is not a dict of weights, or a weight is
    not finite."""
    data = load_weights_file(filename)
    if filename.endswith(".pkl"):
        checkpoint = _from_pkl(checkpointer, filename, data)
    elif filename.endswith(".pyth"):
        checkpoint = _from_pyth(filename, data)
    else:
        checkpoint = _from_torch_file(checkpointer, filename, data)
    if not isinstance(checkpoint["model"], Mapping):
        raise ValueError(
            f"{filename}: 'model' must be a dict of tensors or arrays, found a "
            f"{type(checkpoint['model']).__name__}"
        )
    _check_finite(filename, checkpoint["model"])
    return checkpoint


_detectron2_load_model = DetectionCheckpointer._load_model


def load_model_fitted(checkpointer: DetectionCheckpointer, checkpoint: Dict[str, Any]):
    """DetectionCheckpointer._load_model, after the model (when it has `fit_state_dict`) fitted
    the file's weights to itself, with the file's "class_names" when it has them. Files that
    need Detectron2's name-matching heuristics (Caffe2, pycls) are not fitted: their names are
    not the model's until those heuristics ran."""
    fit = getattr(checkpointer.model, "fit_state_dict", None)
    if fit is not None and not checkpoint.get("matching_heuristics", False):
        fit(checkpoint["model"], checkpoint.get("class_names"))
    return _detectron2_load_model(checkpointer, checkpoint)


def install_safe_checkpoint_loading() -> None:
    """Makes every DetectionCheckpointer in the process read files with
    load_detectron2_checkpoint (called by `import deformable_detr`).

    Why a process-wide patch: this project's WeightsCheckpointer reads files safely itself, but
    Detectron2's DefaultPredictor, its tools (train_net.py, lazyconfig_train_net.py...) and user
    code build a plain DetectionCheckpointer, whose .pkl reading would run a crafted file's code.
    Idempotent: installing again sets the same function. Subclasses that override _load_file
    themselves keep their own reading.

    Also makes their _load_model fit the weights to the model first (load_model_fitted), so that
    fine-tuning from a file with other classes works through any checkpointer (DefaultPredictor's
    too).
    """
    DetectionCheckpointer._load_file = load_detectron2_checkpoint
    DetectionCheckpointer._load_model = load_model_fitted
