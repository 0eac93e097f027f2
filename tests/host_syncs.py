"""Counting host syncs on the CPU: every place where the host would wait for the device on a GPU.

Two kinds of operation make the host wait: reading a value back (`.item()`, `bool(t)`, `int(t)`,
`if t.any()`, all through aten::_local_scalar_dense; `.tolist()`, `.numpy()`, `np.asarray(t)`)
and operators whose output size depends on the data (nonzero, masked_select, unique, indexing
with a boolean mask), which must read the count back to allocate their output.

On CPU tensors `.tolist()` and `.numpy()` read the memory directly and never reach the
dispatcher, so a TorchFunctionMode catches them; a TorchDispatchMode catches the operators. Every
sync is recorded with where it came from: the innermost frame inside the deformable_detr package
(the line to change), and the innermost frame outside torch when that is another library's.

On the CPU every tensor is on the host, so a read of a tensor that stays on the host on a GPU
too counts unless it is listed in _HOST_SIDE. Not seen: what one operator does inside its own
implementation (a C++ or CUDA kernel's checks); on a GPU, torch.cuda.set_sync_debug_mode shows
those.
"""

import collections
import os
import sys
from typing import NamedTuple, Optional

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

import deformable_detr

__all__ = ["Sync", "count_host_syncs"]

_PACKAGE = os.path.dirname(os.path.abspath(deformable_detr.__file__)) + os.sep
_TORCH = os.path.dirname(os.path.abspath(torch.__file__)) + os.sep
_HERE = os.path.abspath(__file__)

aten = torch.ops.aten
# operators that return a value to Python, or whose output size depends on the data
_DATA_DEPENDENT = {
    aten._local_scalar_dense.default: "item",
    aten.equal.default: "equal",
    aten.nonzero.default: "nonzero",
    aten.masked_select.default: "masked_select",
    aten._unique.default: "unique",
    aten._unique2.default: "unique",
    aten.unique_dim.default: "unique",
    aten.unique_consecutive.default: "unique",
    aten.unique_dim_consecutive.default: "unique",
    aten.repeat_interleave.Tensor: "repeat_interleave",
    aten.bincount.default: "bincount",
}
# tensor methods that copy the data into Python or NumPy
_READS = {
    torch.Tensor.tolist: "tolist",
    torch.Tensor.numpy: "numpy",
    torch.Tensor.__array__: "numpy",
}
# (file, function) of reads of tensors that stay on the host on every device, so no sync:
# Detectron2's ImageList.from_tensors keeps the image sizes in CPU tensors (shapes_to_tensor with
# no device) and reads the padded size back from them.
_HOST_SIDE = {("detectron2/structures/image_list.py", "from_tensors")}


class Sync(NamedTuple):
    """One host sync: `op` (item, tolist, numpy, nonzero, bool_index...), `where` the package
    file and function ("modeling/matcher.py:match"), `line` its line, `via` the innermost frame
    outside torch when it is not the package's own ("detectron2/structures/boxes.py:191")."""

    op: str
    where: str
    line: int
    via: str

    def __str__(self):
        via = f" via {self.via}" if self.via else ""
        return f"{self.op} at {self.where}:{self.line}{via}"


def _bool_index(indices) -> bool:
    return any(
        isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in indices
    )


def _kind(func, args):
    if func in _DATA_DEPENDENT:
        return _DATA_DEPENDENT[func]
    if func in (aten.index.Tensor, aten.index_put.default, aten.index_put_.default):
        return "bool_index" if _bool_index(args[1]) else None
    return None


def _short(path: str) -> str:
    if path.startswith(_PACKAGE):
        return os.path.relpath(path, _PACKAGE)
    parts = path.split(os.sep)
    return os.sep.join(parts[-3:])


def _locate(op: str) -> Optional[Sync]:
    """The sync seen from the innermost frame of the package, and the innermost frame outside
    torch and this file if that is elsewhere; None for a read that is no sync (_HOST_SIDE)."""
    frame, via, where, line = sys._getframe(2), "", "outside deformable_detr", 0
    while frame is not None:
        path = os.path.abspath(frame.f_code.co_filename)
        if path.startswith(_PACKAGE):
            where, line = f"{_short(path)}:{frame.f_code.co_name}", frame.f_lineno
            break
        if not via and not path.startswith(_TORCH) and path != _HERE:
            if (_short(path), frame.f_code.co_name) in _HOST_SIDE:
                return None
            via = f"{_short(path)}:{frame.f_lineno}"
        frame = frame.f_back
    return Sync(op, where, line, via)


class _Dispatch(TorchDispatchMode):
    def __init__(self, syncs):
        super().__init__()
        self.syncs = syncs

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kind = _kind(func, args)
        sync = _locate(kind) if kind else None
        if sync:
            self.syncs.append(sync)
        return func(*args, **(kwargs or {}))


class _Function(TorchFunctionMode):
    def __init__(self, syncs):
        super().__init__()
        self.syncs = syncs

    def __torch_function__(self, func, types, args=(), kwargs=None):
        sync = _locate(_READS[func]) if func in _READS else None
        if sync:
            self.syncs.append(sync)
        return func(*args, **(kwargs or {}))


class count_host_syncs:
    """Context manager recording the host syncs of the code it runs: `.syncs` the list of Sync
    in order, `.counts()` a Counter of (op, where) pairs."""

    def __init__(self):
        self.syncs = []
        self._modes = (_Function(self.syncs), _Dispatch(self.syncs))

    def __enter__(self):
        for mode in self._modes:
            mode.__enter__()
        return self

    def __exit__(self, *exc):
        for mode in reversed(self._modes):
            mode.__exit__(*exc)

    def counts(self) -> collections.Counter:
        return collections.Counter((s.op, s.where) for s in self.syncs)

    def report(self) -> str:
        """One line per distinct sync, with its count."""
        lines = collections.Counter(str(s) for s in self.syncs)
        return "\n".join(f"{n} x {s}" for s, n in sorted(lines.items()))
