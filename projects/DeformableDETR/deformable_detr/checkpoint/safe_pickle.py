"""Reading .pkl weights (Detectron2's and Detectron's model zoo) without running code.

pickle.load calls whatever function a file names, so a crafted .pkl runs arbitrary code. The
model-zoo files hold only dicts, lists, tuples, strings, numbers and numpy arrays: the unpickler
here builds those and refuses every other global before anything is called.

Legend: a model-zoo .pkl is {"model": {name: ndarray}, "__author__": str, "matching_heuristics":
bool} (Detectron2's conversions) or {"blobs": {name: ndarray}, ...} / {name: ndarray} (Caffe2,
pickled by Python 2, hence encoding="latin1").
"""

import collections
import pickle

import numpy

__all__ = ["RefusedPickleError", "load_pickle_file"]


class RefusedPickleError(pickle.UnpicklingError):
    """The file names a global (function or class) that loading weights never needs."""


def _latin1_bytes(text, encoding):
    # protocol-2 pickles write bytes (e.g. an array's data) as _codecs.encode(text, "latin1");
    # other codec names are refused: no file of ours needs them
    if encoding not in ("latin1", "latin-1"):
        raise RefusedPickleError(f"_codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


# The functions numpy's own pickles call, taken from live objects: numpy 1.x keeps them in
# numpy.core.*, numpy 2.x in numpy._core.*, and a file may come from either.
_RECONSTRUCT = numpy.empty(0).__reduce__()[0]  # ndarray, pickle protocols 0-4
_SCALAR = numpy.float32(0).__reduce__()[0]  # numpy scalars, e.g. numpy.float32(1.0)
_FROMBUFFER = numpy.empty(1).__reduce_ex__(5)[0]  # contiguous ndarray, pickle protocol 5

_ALLOWED = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("numpy", "ndarray"): numpy.ndarray,
    ("numpy", "dtype"): numpy.dtype,
    ("_codecs", "encode"): _latin1_bytes,
}
for _core in ("numpy.core", "numpy._core"):
    _ALLOWED[(f"{_core}.multiarray", "_reconstruct")] = _RECONSTRUCT
    _ALLOWED[(f"{_core}.multiarray", "scalar")] = _SCALAR
    _ALLOWED[(f"{_core}.numeric", "_frombuffer")] = _FROMBUFFER


class _WeightsUnpickler(pickle.Unpickler):
    """pickle.Unpickler that resolves only the globals in _ALLOWED; every global (GLOBAL,
    STACK_GLOBAL, INST, OBJ and extension-registry opcodes) goes through find_class."""

    def find_class(self, module, name):
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise RefusedPickleError(f"{module}.{name}") from None


def load_pickle_file(path: str):
    """The object pickled in `path`, built by the restricted unpickler (encoding="latin1", as
    Detectron2 reads Python 2 pickles).

    Raises RefusedPickleError, whose message is the refused global (module.name), before that
    global is called; pickle's own errors (UnpicklingError, EOFError...) for what is not a pickle.
    """
    with open(path, "rb") as f:
        return _WeightsUnpickler(f, encoding="latin1").load()
