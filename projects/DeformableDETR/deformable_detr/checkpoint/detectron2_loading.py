"""Detectron2's DetectionCheckpointer, reading every file through load_weights_file.

DetectionCheckpointer._load_file reads a .pkl with pickle.load (a crafted MODEL.WEIGHTS, or the
file that OUTPUT_DIR/last_checkpoint names on --resume, runs its code) and checks nothing about
what it read. load_detectron2_checkpoint reads the file safely, then converts it exactly as
Detectron2 does: model-zoo .pkl as they are, Caffe2 "blobs" and flat .pkl dicts with name-matching
heuristics, pycls .pyth "model_state", and any other file as a checkpoint or a bare state dict.
"""

from typing import Any, Dict, Mapping
from urllib.parse import parse_qs

from detectron2.checkpoint import DetectionCheckpointer

from .files import load_weights_file

__all__ = ["install_safe_checkpoint_loading", "load_detectron2_checkpoint"]


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


def load_detectron2_checkpoint(
    checkpointer: DetectionCheckpointer, filename: str
) -> Dict[str, Any]:
    """What DetectionCheckpointer._load_file returns ({"model": weights, ...}), with the file
    read by load_weights_file: no code in it runs. Raises ValueError naming the file when it is
    refused, is not a checkpoint, or its "model" entry is not a dict of weights."""
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
    return checkpoint


def install_safe_checkpoint_loading() -> None:
    """Makes every DetectionCheckpointer in the process read files with
    load_detectron2_checkpoint (called by `import deformable_detr`).

    Why a process-wide patch: this project's WeightsCheckpointer reads files safely itself, but
    Detectron2's DefaultPredictor, its tools (train_net.py, lazyconfig_train_net.py...) and user
    code build a plain DetectionCheckpointer, whose .pkl reading would run a crafted file's code.
    Idempotent: installing again sets the same function. Subclasses that override _load_file
    themselves keep their own reading.
    """
    DetectionCheckpointer._load_file = load_detectron2_checkpoint
