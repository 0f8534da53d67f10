"""Builds fastcka._C: the CPU kernels always, the CUDA kernels when torch has CUDA and nvcc is found.

Knobs (environment):
  FASTCKA_FORCE_CUDA=1   build the CUDA kernels even if the check below says no (fails loudly if it cannot)
  FASTCKA_NO_CUDA=1      never build them
  FASTCKA_CUDA_ARCHS     semicolon list of compute capabilities, default "80;90" (PTX is embedded for the newest)
  MAX_JOBS               parallel compile jobs (torch's BuildExtension honours it)

The CUDA decision never asks `torch.cuda.is_available()`: a GPU-less builder must still ship the CUDA kernels.
Everything is written against the LibTorch stable ABI (torch >= 2.10), so one abi3 wheel serves torch >= 2.10 and
every Python the package supports (>= 3.11, see pyproject.toml; the code sticks to the 3.10 limited API).

The wheel also carries the study's default grid, docs/study/grid.toml, as fastcka/grok/study/grid.toml (one copy in
the repository, copied at build time; the sdist carries it through MANIFEST.in), so that `fastcka study` works after
`pip install fastcka`.
"""

import glob
import os
import shutil

import torch
from setuptools import find_packages, setup
from setuptools.command.build_py import build_py
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

ROOT = os.path.dirname(os.path.abspath(__file__))
CSRC = os.path.join("csrc")
TORCH_TARGET = "-DTORCH_TARGET_VERSION=0x020a000000000000"  # stable ABI of torch 2.10
PY_LIMITED = "-DPy_LIMITED_API=0x030a0000"


GRID_SRC = os.path.join("docs", "study", "grid.toml")
GRID_DST = os.path.join("fastcka", "grok", "study", "grid.toml")


class BuildPyWithGrid(build_py):
    """build_py that also copies the study's default grid into the package (not for editable installs, which read
    docs/study/grid.toml from the checkout)."""

    def run(self) -> None:
        super().run()
        if not getattr(self, "editable_mode", False) and os.path.exists(os.path.join(ROOT, GRID_SRC)):
            self.copy_file(os.path.join(ROOT, GRID_SRC), os.path.join(self.build_lib, GRID_DST))


def want_cuda() -> bool:
    if os.environ.get("FASTCKA_NO_CUDA") == "1":
        return False
    if os.environ.get("FASTCKA_FORCE_CUDA") == "1":
        return True
    nvcc = shutil.which("nvcc") or (CUDA_HOME and os.path.exists(os.path.join(CUDA_HOME, "bin", "nvcc")))
    return bool(torch.version.cuda) and bool(nvcc)


def nvidia_pip_dirs():
    """Include and library dirs of the pip `nvidia/*` packages that the CUDA torch wheel installs (the toolkit
    here has nvcc and the runtime headers only)."""
    incs, libs = [], []
    try:
        import nvidia  # namespace package shipped by the CUDA torch wheel's dependencies
    except ImportError:
        return incs, libs
    for base in list(nvidia.__path__):
        incs += sorted(glob.glob(os.path.join(base, "*", "include")))
        libs += sorted(glob.glob(os.path.join(base, "*", "lib")))
    return incs, libs


def cublas_link_arg(libs) -> str:
    """The linker argument for cuBLAS (csrc/ops/cuda/blas.cuh). The pip `nvidia` wheels ship only the versioned
    library (libcublas.so.13), which -lcublas does not find, so it is then named by file; at run time torch has
    already loaded that same library (libtorch_cuda needs it), so the loader finds it without an rpath."""
    for d in libs:
        if os.path.exists(os.path.join(d, "libcublas.so")):
            return "-lcublas"
    for d in libs:
        found = sorted(glob.glob(os.path.join(d, "libcublas.so.*")))
        if found:
            return "-l:" + os.path.basename(found[0])
    return "-lcublas"


def torch_arch_list(archs: str) -> str:
    """'80;90' -> '8.0;9.0+PTX' (torch's BuildExtension turns it into -gencode flags; PTX for the newest)."""
    caps = [a.strip().replace(".", "") for a in archs.split(";") if a.strip()]
    names = [f"{c[:-1]}.{c[-1]}" for c in caps]
    names[-1] += "+PTX"
    return ";".join(names)


def extensions():
    cuda = want_cuda()
    sources = sorted(glob.glob(os.path.join(CSRC, "ops", "*.cpp")) + glob.glob(os.path.join(CSRC, "ops", "cpu", "*.cpp")))
    include_dirs = [os.path.join(ROOT, CSRC, "include"), os.path.join(ROOT, CSRC, "ops")]
    cxx = ["-O3", "-std=c++17", TORCH_TARGET, PY_LIMITED, "-fvisibility=hidden"]
    if os.environ.get("FASTCKA_NATIVE") == "1":
        cxx.append("-march=native")
    kwargs = dict(include_dirs=include_dirs, py_limited_api=True)
    if not cuda:
        return [CppExtension("fastcka._C", sources, extra_compile_args={"cxx": cxx}, **kwargs)]
    sources += sorted(glob.glob(os.path.join(CSRC, "ops", "cuda", "*.cu")))
    incs, libs = nvidia_pip_dirs()
    # libcudart.so (unversioned, for -lcudart) lives in the toolkit, not in the pip packages.
    roots = [CUDA_HOME or "", os.environ.get("CUDA_PATH", ""), "/usr/local/cuda"]
    libs = [d for r in roots if r for d in (os.path.join(r, "lib64"), os.path.join(r, "targets", "x86_64-linux", "lib"))
            if os.path.exists(os.path.join(d, "libcudart.so"))][:1] + libs
    archs = os.environ.get("FASTCKA_CUDA_ARCHS", "80;90")
    nvcc = ["-O3", "-std=c++17", TORCH_TARGET, "-DUSE_CUDA", "-DFASTCKA_WITH_CUDA", "--expt-relaxed-constexpr"]
    os.environ["TORCH_CUDA_ARCH_LIST"] = torch_arch_list(archs)
    kwargs["include_dirs"] = include_dirs + incs
    return [
        CUDAExtension(
            "fastcka._C",
            sources,
            extra_compile_args={"cxx": cxx + ["-DUSE_CUDA", "-DFASTCKA_WITH_CUDA"], "nvcc": nvcc},
            library_dirs=libs,
            extra_link_args=[cublas_link_arg(libs)],
            **kwargs,
        )
    ]


setup(
    packages=find_packages(include=["fastcka", "fastcka.*"]),
    ext_modules=extensions(),
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=shutil.which("ninja") is not None),
              "build_py": BuildPyWithGrid},
    options={"bdist_wheel": {"py_limited_api": "cp311"}},
)
