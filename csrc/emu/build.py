"""Builds the test-only CUDA-emulation extension: the CUDA sources (csrc/ops/cuda/*.cu, kernels and launchers)
compiled by the host compiler against csrc/emu/cuda_emu.h, registered as torch.ops.fastcka_emu.* for CPU tensors.

    python csrc/emu/build.py          (or `make emu`)

The library lands in build-emu/ (git-ignored; ninja rebuilds only what changed) and is never part of the wheel.
tests/test_cuda_emu.py loads it from there. MAX_JOBS (default 2) bounds the parallel compile jobs.
"""

from __future__ import annotations

import glob
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUILD_DIR = os.path.join(ROOT, "build-emu")
NAME = "fastcka_emu"


def library_path() -> str:
    """Where the built library is (tests load it from here)."""
    return os.path.join(BUILD_DIR, NAME + ".so")


def build(verbose: bool = False) -> str:
    """Compiles (incrementally) and returns the library's path."""
    os.environ.setdefault("MAX_JOBS", "2")
    from torch.utils.cpp_extension import load

    emu = os.path.join(ROOT, "csrc", "emu")
    os.makedirs(BUILD_DIR, exist_ok=True)
    load(
        name=NAME,
        sources=sorted(glob.glob(os.path.join(emu, "*.cpp"))),
        extra_cflags=[
            "-O2",
            "-std=c++17",
            "-DTORCH_TARGET_VERSION=0x020a000000000000",
            "-DFASTCKA_CUDA_EMU=1",
            "-include",
            os.path.join(emu, "cuda_emu.h"),
            "-fvisibility=hidden",
            "-Wno-unknown-pragmas",
        ],
        extra_include_paths=[os.path.join(ROOT, "csrc", "include"), os.path.join(ROOT, "csrc", "ops")],
        build_directory=BUILD_DIR,
        is_python_module=False,
        verbose=verbose,
    )
    return library_path()


if __name__ == "__main__":
    print(build(verbose="-v" in sys.argv))
