"""Build of cdism_fast and its compiled extensions.

``pip install --no-build-isolation .`` builds ``cdism_fast._C`` (C++17/OpenMP,
from csrc/registration.cpp and csrc/cpu/) against the installed torch and, when
that torch is a CUDA build and a CUDA toolkit is found, ``cdism_fast._C_cuda``
(csrc/cuda/). Under pip's default build isolation torch is not importable here:
then only the sources are installed and the C++ extension is compiled on first
use against the runtime torch (see cdism_fast/_extension.py). Switches: see the
README's build table (CDISM_CUDA, TORCH_CUDA_ARCH_LIST, MAX_JOBS).
"""
import os
import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
CSRC = ROOT / "csrc"
# No -std: BuildExtension adds the standard the installed torch needs (C++20 from torch 2.14 on).
CXX_FLAGS = ["-O3", "-fopenmp"]


class BuildPyWithSources(build_py):
    """Ship csrc/ inside the package so that first-use compilation finds it."""

    def run(self):
        super().run()
        target = Path(self.build_lib) / "cdism_fast" / "_csrc"
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(CSRC, target, ignore=shutil.ignore_patterns("*.o", "__pycache__"))


def _relative(paths):
    return sorted(str(p.relative_to(ROOT)) for p in paths)


def _want_cuda(torch, cuda_home):
    mode = os.environ.get("CDISM_CUDA", "auto")
    if mode not in ("auto", "0", "1"):
        raise SystemExit(f"CDISM_CUDA must be auto, 0 or 1, got {mode!r}")
    possible = torch.version.cuda is not None and cuda_home is not None
    if mode == "1" and not possible:
        why = "torch is a CPU build" if torch.version.cuda is None else "no CUDA toolkit found (set CUDA_HOME)"
        raise SystemExit(f"CDISM_CUDA=1 but the CUDA extension cannot be built: {why}")
    return possible and mode != "0" and any((CSRC / "cuda").glob("*.cu"))


def extensions():
    try:
        import torch
        from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
    except ImportError:
        print("cdism_fast: torch is not importable at build time (build isolation); installing the sources "
              "only, the C++ extension will be compiled on first use against the runtime torch")
        return [], {}
    modules = [CppExtension(
        "cdism_fast._C",
        _relative([CSRC / "registration.cpp", *(CSRC / "cpu").glob("*.cpp")]),
        include_dirs=[str(CSRC)],
        extra_compile_args={"cxx": CXX_FLAGS},
        extra_link_args=["-fopenmp"],
    )]
    if _want_cuda(torch, CUDA_HOME):
        if not torch.cuda.is_available():
            os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.6;9.0")
        modules.append(CUDAExtension(
            "cdism_fast._C_cuda",
            _relative([*(CSRC / "cuda").glob("*.cu"), *(CSRC / "cuda").glob("*.cpp")]),
            include_dirs=[str(CSRC)],
            # No --use_fast_math: it flushes denormals to zero, which the reference (and the CPU) keep.
            extra_compile_args={"cxx": CXX_FLAGS, "nvcc": ["-O3"]},
        ))
    return modules, {"build_ext": BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = extensions()
setup(ext_modules=ext_modules, cmdclass={"build_py": BuildPyWithSources, **cmdclass})
