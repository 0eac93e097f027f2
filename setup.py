"""Builds the compiled op `deformable_detr._C` from csrc/ and installs the `deformable_detr`
package.

The C++ (CPU) kernels are always built. The CUDA kernels are built too when a CUDA toolkit is found
and either a GPU is visible or FORCE_CUDA=1 (to compile them on a machine without a GPU).
Build with `pip install --no-build-isolation -e .` so that the build uses the installed torch.
"""

import glob
import os

from setuptools import find_packages, setup

CSRC = "csrc"  # the op's sources, relative to this file (pip and make run it from here)


def _has_cudart(prefix):
    return bool(prefix) and bool(glob.glob(os.path.join(prefix, "lib*", "libcudart.so*")))


def _locate_cuda_home():
    """Sets CUDA_HOME before torch.utils.cpp_extension reads it.

    torch guesses the toolkit as the folder above the first `nvcc` on PATH; when that `nvcc` is a
    wrapper script in a general bin folder (as on our machines), the guess has no libcudart and
    the link fails. Prefer an explicit CUDA_HOME, else the conventional /usr/local/cuda.
    """
    if os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH"):
        return
    import shutil

    nvcc = shutil.which("nvcc")
    guess = os.path.dirname(os.path.dirname(os.path.realpath(nvcc))) if nvcc else None
    for prefix in (guess, "/usr/local/cuda"):
        if _has_cudart(prefix) and os.path.exists(os.path.join(prefix, "bin", "nvcc")):
            os.environ["CUDA_HOME"] = prefix
            return


_locate_cuda_home()

import torch  # noqa: E402  (CUDA_HOME must be set first)
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension  # noqa: E402


def _want_cuda():
    if CUDA_HOME is None:
        return False, "no CUDA toolkit found"
    if torch.cuda.is_available():
        return True, f"GPU visible, toolkit {CUDA_HOME}"
    if os.environ.get("FORCE_CUDA", "0") == "1":
        return True, f"FORCE_CUDA=1, toolkit {CUDA_HOME}"
    return False, "no GPU visible and FORCE_CUDA is not 1"


def make_extension():
    sources = [os.path.join(CSRC, "vision.cpp")]
    sources += sorted(glob.glob(os.path.join(CSRC, "ms_deform_attn", "*.cpp")))
    # -fopenmp: at::parallel_for is inline in ATen's headers and runs serially without it.
    cxx_flags = ["-O3", "-fopenmp"]
    link_flags = ["-fopenmp"]
    with_cuda, why = _want_cuda()
    if not with_cuda:
        print(f"deformable_detr: building the CPU kernels only ({why}).")
        return CppExtension(
            "deformable_detr._C",
            sources,
            extra_compile_args={"cxx": cxx_flags},
            extra_link_args=link_flags,
        )
    print(f"deformable_detr: building the CPU and CUDA kernels ({why}).")
    sources += sorted(glob.glob(os.path.join(CSRC, "ms_deform_attn", "*.cu")))
    return CUDAExtension(
        "deformable_detr._C",
        sources,
        define_macros=[("WITH_CUDA", None)],
        extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3", "--expt-relaxed-constexpr"]},
        extra_link_args=link_flags,
    )


setup(
    name="deformable_detr",
    version="0.1.0",
    description="Deformable DETR as a Detectron2 project",
    package_dir={"": "projects/DeformableDETR"},
    packages=find_packages("projects/DeformableDETR"),
    py_modules=["ddetr_malloc"],  # the scripts' mimalloc preload, importable before torch
    python_requires=">=3.10",
    ext_modules=[make_extension()],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
