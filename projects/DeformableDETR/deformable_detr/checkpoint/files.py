"""Reading checkpoint files without unpickling arbitrary objects, writing Detectron2 checkpoints,
and checking a state dict against the layout it should have.

Legend: a state dict maps parameter/buffer names to tensors; a layout maps the same names to the
shapes (tuples of ints) the tensors must have.
"""
import os
import pickle
import re
from typing import Dict, Mapping, Sequence, Tuple

import torch

__all__ = ["Layout", "check_layout", "load_torch_file", "save_detectron2_checkpoint"]

Layout = Dict[str, Tuple[int, ...]]

_SHOWN = 6  # names quoted per kind of problem; the rest are counted


def load_torch_file(path: str, allowed_globals: Sequence[type] = ()):
    """torch.load(path, weights_only=True) onto the CPU, with `allowed_globals` (e.g.
    argparse.Namespace) allow-listed for this call only.

    Raises ValueError when the file is not a PyTorch file, or when it holds an object of any other
    class: unpickling that could run arbitrary code, so it is refused and never executed.
    FileNotFoundError and other OSErrors propagate.
    """
    try:
        with torch.serialization.safe_globals(list(allowed_globals)):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        message = str(e)
        if "Weights only load failed" not in message:
            raise ValueError(f"{path} is not a PyTorch checkpoint file ({message})") from e
        # torch's own message suggests weights_only=False: quote only the line saying what stopped
        # the weights-only unpickler
        found = re.search(r"(?:Unsupported|Trying to)[^\n]*", message)
        detail = found.group(0).strip() if found else message.strip().splitlines()[-1]
        if "GLOBAL" not in message and "reduce" not in message:
            raise ValueError(f"{path} is not a PyTorch checkpoint file ({detail})") from None
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
            f"{path} is not a PyTorch checkpoint file ({type(e).__name__}: {e})") from e


def save_detectron2_checkpoint(path: str, state_dict: Mapping[str, torch.Tensor],
                               author: str) -> None:
    """Writes {"model": state_dict, "__author__": author, "matching_heuristics": False}, the
    layout of Detectron2's checkpoints: DetectionCheckpointer (MODEL.WEIGHTS) then loads every
    name as it is, without its name-matching heuristics."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    torch.save({"model": dict(state_dict), "__author__": author, "matching_heuristics": False},
               path)


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
        for kind, items in (("missing key(s)", missing), ("unknown key(s)", unknown),
                            ("wrong shape(s)", wrong), ("value(s) not tensors", not_tensors))
        if items
    ]
    if problems:
        raise ValueError(f"{what} does not have the expected layout: " + "; ".join(problems))
