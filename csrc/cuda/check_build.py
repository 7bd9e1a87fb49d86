"""Loads cdism_fast._C and _C_cuda built out of the tree for a CUDA build of torch, without a GPU.

    python csrc/cuda/check_build.py BUILD_LIB [ARCH ...]

``make cuda-build-check`` builds both with ``setup.py build_ext --build-lib
BUILD_LIB`` and runs this with the same (CUDA) torch: loading the libraries
resolves every symbol against that torch, and each op with a CUDA kernel must
have it registered for the CUDA dispatch key. The CUDA library must hold
machine code for each ARCH (default 86 90), read with cuobjdump.
"""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import torch

#: Ops of csrc/registration.cpp with a kernel in csrc/cuda/.
CUDA_OPS = ("obproxsg_step_", "gaussian_filter", "gaussian_filter_backward")


def _cuobjdump() -> str:
    """cuobjdump from PATH, the toolkit, or the copy Triton ships (some toolkits lack it)."""
    candidates = [shutil.which("cuobjdump"), Path(os.environ.get("CUDA_HOME", "/usr/local/cuda")) / "bin" / "cuobjdump"]
    try:
        import triton

        candidates.append(Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump")
    except ImportError:
        pass
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            return str(candidate)
    raise SystemExit("cuobjdump not found (PATH, $CUDA_HOME/bin, triton)")


def main(build_lib: str, archs: list[str]) -> int:
    if torch.version.cuda is None:
        raise SystemExit(f"torch {torch.__version__} is a CPU build: run this with a CUDA build of torch")
    package = Path(build_lib) / "cdism_fast"
    libraries = {name: next(package.glob(f"{name}.*.so"), None) for name in ("_C", "_C_cuda")}
    missing = [name for name, path in libraries.items() if path is None]
    if missing:
        raise SystemExit(f"not built in {package}: {', '.join(missing)}")
    for path in libraries.values():
        torch.ops.load_library(str(path))
    unregistered = [op for op in CUDA_OPS
                    if not torch._C._dispatch_has_kernel_for_dispatch_key(f"cdism_fast::{op}", "CUDA")]
    if unregistered:
        raise SystemExit(f"no CUDA kernel registered for: {', '.join(unregistered)}")
    listing = subprocess.run([_cuobjdump(), "--list-elf", str(libraries["_C_cuda"])], capture_output=True,
                             text=True, check=True).stdout
    absent = [arch for arch in archs if f"sm_{arch}" not in listing]
    if absent:
        raise SystemExit(f"{libraries['_C_cuda'].name} has no machine code for sm_{', sm_'.join(absent)}:\n{listing}")
    print(f"cuda build check: torch {torch.__version__} (CUDA {torch.version.cuda}); loaded "
          f"{', '.join(p.name for p in libraries.values())}; CUDA kernels of {', '.join(CUDA_OPS)}; "
          f"machine code for sm_{', sm_'.join(archs)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2:] or ["86", "90"]))
