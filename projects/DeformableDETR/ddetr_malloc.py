"""Runs this project's scripts on mimalloc, a caching malloc, in place of glibc's.

Why: glibc gives every freed block over 32 MiB back to the kernel, so the next block of that size
is mapped afresh and the kernel zeroes it page by page. At 800x1333 most of the model's tensors
are that large (res2's output is 68 MB, the encoder's FFN 91 MB per image), and on the CPU the page
faults slow every large op and make the op's per-image time grow with the batch. mimalloc keeps
freed memory for reuse. Measured on 2 cores: ddetr_r50's eager inference of one 800x1333 image,
median 2.96 s over 7 processes on glibc against 2.40 s over 4 on mimalloc, taking turns (1.23x;
single pairs 1.04x-1.37x); the op's float32 forward+backward at batch 4, per image, 1.54x batch
1's on glibc, 1.01x on mimalloc (docs/deploy.md, docs/op.md).

How: LD_PRELOAD only acts when a process starts, so each script calls `reexec_with_mimalloc()`
before its imports; it executes the same command line again, once, with the library of the
cmeel-mimalloc wheel (requirements.txt) first in LD_PRELOAD. Processes started from there (the
workers of `--num-gpus`, compilers) inherit it. Two more variables (`mimalloc_env`), each kept
where the user set it:
- MIMALLOC_PURGE_DELAY=10000: mimalloc gives memory unused for 1 s back to the system, and an
  inference on the CPU takes longer than that, so each one faulted its large blocks in again
  (4,100-9,100 faults per inference, 470-1,000 with this). Kept 10 s, reused: AOTInductor
  packages 2-4% faster, eager 6-12% (ddetr_r50, 800x1333, 2 cores, processes taking turns);
  memory still goes back after 10 s idle.
- TBB_ENABLE_SANITIZERS=1: oneTBB (under OpenVINO) loads its hwloc binding with RTLD_DEEPBIND,
  and hwloc then frees mimalloc's memory with glibc's free (an abort, oneTBB issue 1636); the
  variable makes oneTBB load it plainly.

DDETR_MALLOC chooses: "auto" (the default) preloads mimalloc on machines without a GPU device
(/dev/nvidia*, /dev/kfd), where the model runs on the CPU, and leaves GPU machines as
they are until mimalloc has been run there with CUDA; "mimalloc" preloads it anyway; "system"
never does. Left as they are too: an LD_PRELOAD that already names an allocator (jemalloc,
tcmalloc, mimalloc: the user's choice), a system other than Linux, a session with no script file
(python -c, stdin), and a script that another program runs inside its own process (runpy: its
command line would start that program again). Without the wheel the script goes on with a warning.

For your own process (a server around DefaultPredictor or run_aoti), `--env` prints the three
variables:
    env $(python -m ddetr_malloc --env) python serve.py

Standard library only: it runs before torch is imported, and outside the deformable_detr package,
whose import takes seconds that the re-execution would pay twice.
"""

import glob
import os
import sys
import warnings
from importlib import metadata
from typing import Dict, Optional

ENV = "DDETR_MALLOC"  # "auto" (the default), "mimalloc" or "system" (module docstring)
CHOICES = ("auto", "mimalloc", "system")
GPU_DEVICES = ("/dev/nvidia[0-9]*", "/dev/kfd")  # NVIDIA's and AMD's device files
ALLOCATORS = ("mimalloc", "jemalloc", "tcmalloc")  # preloaded malloc libraries, told by file name
# set beside LD_PRELOAD unless already set (module docstring): how long mimalloc keeps freed
# memory before giving it back (its default: 1000 ms), and oneTBB's plain loading of hwloc
SETTINGS = {"MIMALLOC_PURGE_DELAY": "10000", "TBB_ENABLE_SANITIZERS": "1"}

__all__ = [
    "ENV",
    "SETTINGS",
    "allocator_in_use",
    "mimalloc_env",
    "mimalloc_library",
    "reexec_with_mimalloc",
    "system_env",
]


def mimalloc_library() -> Optional[str]:
    """Path of libmimalloc.so from the installed cmeel-mimalloc wheel, or None without it."""
    try:
        files = metadata.files("cmeel-mimalloc") or []
    except metadata.PackageNotFoundError:
        return None
    for f in files:
        if f.name == "libmimalloc.so" and os.path.isfile(f.locate()):
            return os.path.realpath(f.locate())
    return None


def mimalloc_env(library: str) -> Dict[str, str]:
    """The variables a process runs on mimalloc with: library first in LD_PRELOAD (after it,
    what this process's LD_PRELOAD holds), and SETTINGS where this process's environment has
    none of its own."""
    preload = os.environ.get("LD_PRELOAD", "")
    env = {k: os.environ.get(k, v) for k, v in SETTINGS.items()}
    return dict(env, LD_PRELOAD=f"{library}:{preload}" if preload else library)


def allocator_in_use() -> str:
    """The malloc this process runs on: one of ALLOCATORS when its library is mapped into the
    process, else "system" (glibc's on Linux)."""
    try:
        with open("/proc/self/maps") as f:
            maps = f.read()
    except OSError:
        return "system"
    names = [name for name in ALLOCATORS if f"lib{name}" in maps]
    return names[0] if names else "system"


def _wants_mimalloc() -> bool:
    choice = os.environ.get(ENV, "auto")
    if choice not in CHOICES:
        raise SystemExit(f"{ENV} must be one of {', '.join(CHOICES)}, got {choice!r}")
    if choice == "auto":
        return not any(glob.glob(pattern) for pattern in GPU_DEVICES)
    return choice == "mimalloc"


def _started_as_this_script() -> bool:
    """Whether running sys.orig_argv again runs this script with these arguments: the process was
    started as `python [options] SCRIPT ARGS` or `python [options] -m MODULE ARGS`. Not so when
    another program runs the script inside its own process (runpy, as the tests run demo.py): its
    command line would start that program again."""
    argv, orig = sys.argv, sys.orig_argv
    start = len(orig) - len(argv)  # where the script's own command line begins in orig
    if start < 1 or orig[start + 1 :] != argv[1:] or not os.path.isfile(argv[0]):
        return False
    if orig[start - 1] == "-m":
        return orig[start].rsplit(".", 1)[-1] == os.path.splitext(os.path.basename(argv[0]))[0]
    return os.path.isfile(orig[start]) and os.path.samefile(orig[start], argv[0])


def reexec_with_mimalloc() -> None:
    """Executes this script's command line again with mimalloc preloaded, unless one of the cases
    of the module's docstring leaves the process as it is. Returns only in those cases; call it
    before starting threads or importing torch."""
    if sys.platform != "linux" or not _wants_mimalloc() or not _started_as_this_script():
        return
    preload = os.environ.get("LD_PRELOAD", "")
    if any(name in preload for name in ALLOCATORS):
        return  # chosen by the user, or this is the re-executed process
    library = mimalloc_library()
    if library is None:
        warnings.warn(
            "cmeel-mimalloc is not installed (pip install -r requirements.txt): running on "
            "glibc's malloc, whose page faults slow the CPU path (ddetr_malloc's docstring)",
            stacklevel=2,
        )
        return
    env = dict(os.environ, **mimalloc_env(library))
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)


def system_env() -> Dict[str, str]:
    """This process's environment for a child that must run on glibc's malloc (the benchmarks'
    memory measurements and their baselines): mimalloc out of LD_PRELOAD, DDETR_MALLOC=system."""
    env = dict(os.environ, **{ENV: "system"})
    kept = [p for p in env.get("LD_PRELOAD", "").replace(" ", ":").split(":") if p]
    kept = [p for p in kept if "libmimalloc" not in os.path.basename(p)]
    if kept:
        env["LD_PRELOAD"] = ":".join(kept)
    else:
        env.pop("LD_PRELOAD", None)
    return env


if __name__ == "__main__":
    if sys.argv[1:] not in ([], ["--env"]):
        raise SystemExit(
            "usage: python -m ddetr_malloc [--env]: the path of libmimalloc.so, or with --env "
            "the variables to run a process on it with (env $(python -m ddetr_malloc --env) ...)"
        )
    path = mimalloc_library()
    if path is None:
        raise SystemExit("cmeel-mimalloc is not installed: pip install -r requirements.txt")
    print(" ".join(f"{k}={v}" for k, v in mimalloc_env(path).items()) if sys.argv[1:] else path)
