"""Reading weights files without running code (.pkl with a restricted unpickler, anything else
with torch.load(weights_only=True)), writing Detectron2 checkpoints, and checking a state dict
against the layout it should have.

Legend: a state dict maps parameter/buffer names to tensors (or numpy arrays in .pkl files); a
layout maps the same names to the shapes (tuples of ints) the tensors must have.
"""

import os
import pickle
import re
import uuid
import zipfile
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple

import numpy
import torch

from .safe_pickle import RefusedPickleError, load_pickle_file

__all__ = [
    "Layout",
    "check_layout",
    "convert_weights_file",
    "load_torch_file",
    "load_weights_file",
    "read_weights_file",
    "save_detectron2_checkpoint",
]

Layout = Dict[str, Tuple[int, ...]]

_SHOWN = 6  # names quoted per kind of problem; the rest are counted


def _first_bytes(path: str) -> str:
    # pickle's errors on a file of another kind ("invalid load key", "Memo value not found")
    # say little; its first bytes show what it is (text, HTML, a zip...)
    with open(path, "rb") as f:
        return f"its first bytes are {f.read(32)!r}"


def _check_zip_checksums(path: str) -> None:
    """torch.save writes a zip whose members carry CRC-32 checksums that torch.load never
    verifies: a file altered after it was written (same size) would load without complaint."""
    if not zipfile.is_zipfile(path):
        return  # torch's legacy format has no checksums
    try:
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()
    except (zipfile.BadZipFile, EOFError) as e:
        raise ValueError(f"{path} is a damaged zip (PyTorch) file: {e}") from None
    if damaged is not None:
        raise ValueError(
            f"{path} is damaged: its member {damaged!r} does not match its CRC-32 checksum (the "
            f"file was altered or corrupted after it was written); refusing to load it"
        )


def load_torch_file(path: str, allowed_globals: Sequence[type] = ()):
    """torch.load(path, weights_only=True) onto the CPU, with `allowed_globals` (e.g.
    argparse.Namespace) allow-listed for this call only.

    Raises ValueError when the file is not a PyTorch file, when a member of its zip does not
    match its checksum, or when it holds an object of any other class: unpickling that could run
    arbitrary code, so it is refused and never executed. FileNotFoundError and other OSErrors
    propagate.
    """
    _check_zip_checksums(path)
    try:
        with torch.serialization.safe_globals(list(allowed_globals)):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        message = str(e)
        if "Weights only load failed" not in message:
            raise ValueError(
                f"{path} is not a PyTorch checkpoint file ({message}; {_first_bytes(path)})"
            ) from e
        # torch's own message suggests weights_only=False: quote only the line saying what stopped
        # the weights-only unpickler
        found = re.search(r"(?:Unsupported|Trying to)[^\n]*", message)
        detail = found.group(0).strip() if found else message.strip().splitlines()[-1]
        if "GLOBAL" not in message and "reduce" not in message:
            raise ValueError(
                f"{path} is not a PyTorch checkpoint file ({detail}; {_first_bytes(path)})"
            ) from None
        allowed = ", ".join(f"{c.__module__}.{c.__qualname__}" for c in allowed_globals)
        raise ValueError(
            f"{path}: refused: the file holds an object that torch.load(weights_only=True) does "
            f"not allow ({detail}). Only tensors, plain containers, numbers and "
            f"strings{', ' + allowed if allowed else ''} are loaded: unpickling anything else is "
            f"unsafe (it can run arbitrary code)."
        ) from None
    except OSError:
        raise
    except Exception as e:  # torch raises RuntimeError, KeyError, EOFError... on other files
        raise ValueError(
            f"{path} is not a PyTorch checkpoint file ({type(e).__name__}: {e}; "
            f"{_first_bytes(path)})"
        ) from e


def read_weights_file(path: str, allowed_globals: Sequence[type] = ()) -> Any:
    """The object stored in a weights file, read without running code: a .pkl (Detectron2's and
    Detectron's model zoo) by the restricted unpickler of safe_pickle.py, anything else (.pth,
    .pyth...) by load_torch_file with `allowed_globals`.

    Raises ValueError naming the file for an empty file, a file of another kind (with its first
    bytes), a damaged zip, or a refused global (named as module.name). FileNotFoundError and
    other OSErrors propagate. The object is returned as found: see load_weights_file for one
    that must hold weights.
    """
    if os.path.getsize(path) == 0:
        raise ValueError(f"{path} is empty (0 bytes), not a weights file")
    if not path.endswith(".pkl"):
        return load_torch_file(path, allowed_globals)
    try:
        return load_pickle_file(path)
    except RefusedPickleError as e:
        raise ValueError(
            f"{path}: refused to unpickle {e}: a .pkl weights file may hold only dicts, lists, "
            f"tuples, strings, bytes, numbers and numpy arrays; anything else could run "
            f"arbitrary code, so nothing in the file was run"
        ) from None
    except OSError:
        raise
    except Exception as e:  # pickle raises UnpicklingError, EOFError, KeyError, ValueError...
        raise ValueError(
            f"{path} is not a pickle file ({type(e).__name__}: {e}; {_first_bytes(path)})"
        ) from None


def _holds_weights(value) -> bool:
    if isinstance(value, (torch.Tensor, numpy.ndarray)):
        return True
    return isinstance(value, Mapping) and any(_holds_weights(v) for v in value.values())


def _found(value) -> str:
    if isinstance(value, Mapping):
        return f"a dict without any tensor or array (keys: {[str(k) for k in list(value)[:8]]})"
    if isinstance(value, (list, tuple)):
        return f"a {type(value).__name__} of length {len(value)}"
    return f"a value of type {type(value).__name__}: {repr(value)[:60]}"


def load_weights_file(path: str) -> Mapping:
    """read_weights_file(path), which must be a checkpoint: a dict holding tensors or numpy
    arrays (a state dict, or one under "model", "blobs", "model_state"...).

    Raises ValueError naming the file and what it holds otherwise (a list, a string, a number, a
    dict without weights), besides read_weights_file's errors.
    """
    loaded = read_weights_file(path)
    if not _holds_weights(loaded):
        raise ValueError(
            f"{path} is not a checkpoint: expected a dict of tensors or numpy "
            f"arrays (possibly under 'model'), found {_found(loaded)}"
        )
    return loaded


def save_detectron2_checkpoint(
    path: str,
    state_dict: Mapping[str, torch.Tensor],
    author: str,
    class_names: Optional[Sequence[str]] = None,
) -> None:
    """Writes {"model": state_dict, "__author__": author, "matching_heuristics": False}, the
    layout of Detectron2's checkpoints: DetectionCheckpointer (MODEL.WEIGHTS) then loads every
    name as it is, without its name-matching heuristics. `class_names` (of the class heads'
    rows) are stored too when given: fine-tuning matches them by name.

    The file appears whole or not at all: it is written beside `path` under a temporary name,
    then renamed (os.replace), so that a full disk or an interruption leaves no truncated
    checkpoint at `path` (and keeps a file already there). Raises OSError naming `path` when the
    folder cannot be made or written to, or the disk is full."""
    checkpoint = {"model": dict(state_dict), "__author__": author, "matching_heuristics": False}
    if class_names is not None:
        checkpoint["class_names"] = list(class_names)
    directory, name = os.path.split(os.path.abspath(path))
    # a name of its own per writer; opened by open(), so that the file gets the umask's
    # permissions (tempfile.mkstemp's would be the owner's only)
    temporary = os.path.join(directory, f".{name}.{uuid.uuid4().hex[:12]}.part")
    try:
        os.makedirs(directory, exist_ok=True)
        # through a Python file: torch.save to a path reports a full disk as a RuntimeError
        # of its zip writer ("unexpected pos..."), a file's write as the OSError it is
        with open(temporary, "xb") as f:
            torch.save(checkpoint, f)
            f.flush()
            os.fsync(f.fileno())  # on disk before the rename makes it the checkpoint
        os.replace(temporary, path)
    except OSError as e:
        raise OSError(e.errno, f"cannot write the checkpoint {path}: {e.strerror or e}") from e
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def convert_weights_file(
    input_path: str,
    output_path: str,
    convert: Callable[[Any], Tuple[Mapping[str, torch.Tensor], str, Any]],
) -> Any:
    """The file-to-file step of every converter: reads `input_path` with read_weights_file,
    calls `convert` on what it holds, which returns (state dict, author, result), writes the state
    dict with save_detectron2_checkpoint and returns the result. A ValueError of `convert` is
    raised again with the input's path in front; nothing is written then."""
    loaded = read_weights_file(input_path)
    try:
        state_dict, author, result = convert(loaded)
    except ValueError as e:
        raise ValueError(f"{input_path}: {e}") from None
    save_detectron2_checkpoint(output_path, state_dict, author=author)
    return result


def _listing(kind: str, items: Sequence[str]) -> str:
    shown = ", ".join(items[:_SHOWN])
    more = f" and {len(items) - _SHOWN} more" if len(items) > _SHOWN else ""
    return f"{len(items)} {kind}: {shown}{more}"


def check_layout(state_dict: Mapping, expected: Layout, what: str) -> None:
    """Raises ValueError naming every missing key, unknown key, non-tensor value and wrong shape of
    `state_dict` against `expected`; `what` names the state dict in the message."""
    not_tensors = [str(k) for k, v in state_dict.items() if not isinstance(v, torch.Tensor)]
    missing = [k for k in expected if k not in state_dict]
    unknown = [str(k) for k in state_dict if k not in expected]
    wrong = [
        f"{k} expected {expected[k]}, got {tuple(v.shape)}"
        for k, v in state_dict.items()
        if k in expected and isinstance(v, torch.Tensor) and tuple(v.shape) != expected[k]
    ]
    problems = [
        _listing(kind, items)
        for kind, items in (
            ("missing key(s)", missing),
            ("unknown key(s)", unknown),
            ("wrong shape(s)", wrong),
            ("value(s) not tensors", not_tensors),
        )
        if items
    ]
    if problems:
        raise ValueError(f"{what} does not have the expected layout: " + "; ".join(problems))
