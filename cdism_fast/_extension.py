"""Loading of the compiled extensions, keeping the reason when one is missing.

``pip install --no-build-isolation .`` builds ``cdism_fast._C`` (C++/OpenMP
kernels) and, with a CUDA build of torch and a CUDA toolkit,
``cdism_fast._C_cuda``. A plain ``pip install .`` cannot see torch while it
builds, so it installs the sources only; the C++ extension is then compiled on
first use against the torch that is running (``torch.utils.cpp_extension.load``)
and cached under ``$CDISM_CACHE`` (default ``~/.cache/cdism-fast``). Any failure
is kept, never swallowed: the ops fall back to their reference backend and
``cdism-fast info`` prints the error.
"""
from __future__ import annotations

import hashlib
import importlib
import os
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

PACKAGE_DIR = Path(__file__).resolve().parent


@dataclass
class ExtensionStatus:
    name: str
    loaded: bool = False
    how: str = ""            # "prebuilt" or "built on first use"
    error: Optional[str] = None


_lock = threading.RLock()
_status: dict[str, ExtensionStatus] = {}
_on_load: dict[str, list[Callable[[], None]]] = {"cpp": [], "cuda": []}


def on_load(kind: str):
    """Register ``fn`` to run once extension ``kind`` ("cpp" or "cuda") is loaded.

    The C++ library defines the ops' schemas (``TORCH_LIBRARY``); their fake
    (meta) and autograd registrations live in Python next to the op and can
    only be attached after the library is loaded.

    >>> from cdism_fast.ops import available_backends, on_extension_load
    >>> calls = []
    >>> @on_extension_load("cpp")
    ... def register():
    ...     calls.append("registered")
    >>> calls == (["registered"] if "cpp" in available_backends("charbonnier") else [])  # at once when loaded
    True
    """
    def wrap(fn):
        _on_load[kind].append(fn)
        if _status.get(kind) is not None and _status[kind].loaded:
            fn()
        return fn
    return wrap


def source_dir() -> Optional[Path]:
    """Where the C++/CUDA sources are: in the checkout, or packaged in the wheel."""
    for candidate in (PACKAGE_DIR.parent / "csrc", PACKAGE_DIR / "_csrc"):
        if (candidate / "registration.cpp").is_file():
            return candidate
    return None


def cpp_sources(root: Path) -> list[Path]:
    return sorted([root / "registration.cpp", *root.glob("cpu/*.cpp")])


def cuda_sources(root: Path) -> list[Path]:
    return sorted([*root.glob("cuda/*.cu"), *root.glob("cuda/*.cpp")])


def cache_dir() -> Path:
    return Path(os.environ.get("CDISM_CACHE", Path.home() / ".cache" / "cdism-fast"))


def _format(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip()
    return text if len(text) < 2000 else text[:2000] + " [...]"


def _jit_build(root: Path, sources: list[Path], name: str, cuda: bool) -> None:
    from torch.utils import cpp_extension

    # One build folder per (source folder, torch): never reuse objects built for
    # another torch; within it ninja recompiles only the sources that changed.
    key = hashlib.sha256(f"{root.resolve()}|{torch.__version__}".encode()).hexdigest()[:16]
    build_dir = cache_dir() / "torch_extensions" / f"{name}-{key}"
    build_dir.mkdir(parents=True, exist_ok=True)
    library = build_dir / f"{name}.so"
    if not library.exists() or library.stat().st_mtime < max(p.stat().st_mtime for p in sources):
        print(f"cdism_fast: compiling the {name} extension for torch {torch.__version__} on first use "
              f"(cached in {build_dir})", file=sys.stderr, flush=True)
    cflags = ["-O3", "-fopenmp"]  # no -std: torch adds the standard its headers need
    cpp_extension.load(
        name=name,
        sources=[str(p) for p in sources],
        extra_cflags=cflags,
        extra_ldflags=["-fopenmp"],
        # No --use_fast_math: it flushes denormals to zero, which the reference (and the CPU) keep.
        extra_cuda_cflags=["-O3"] if cuda else None,
        extra_include_paths=[str(root)],
        build_directory=str(build_dir),
        is_python_module=False,
        verbose=False,
    )


def _refuse_stale_build(module_name: str) -> None:
    """In a checkout, an in-place build older than its sources is not loaded.

    Kernel work edits csrc/ and expects the next run to use the edit: then the
    extension is recompiled on first use instead (into the cache).
    """
    checkout_sources = PACKAGE_DIR.parent / "csrc"
    built = sorted(PACKAGE_DIR.glob(module_name.rsplit(".", 1)[1] + ".*.so"))
    if not built or not checkout_sources.is_dir():
        return
    newest_source = max(p.stat().st_mtime for p in checkout_sources.rglob("*") if p.is_file())
    if built[0].stat().st_mtime < newest_source:
        raise ImportError(f"{built[0].name} is older than the sources in {checkout_sources} "
                          "(rebuild with `make install`)")


def _load(kind: str) -> ExtensionStatus:
    module_name = {"cpp": "cdism_fast._C", "cuda": "cdism_fast._C_cuda"}[kind]
    status = ExtensionStatus(module_name)
    try:
        if kind == "cuda":
            if torch.version.cuda is None:
                raise ImportError(f"torch {torch.__version__} is a CPU build")
            load("cpp")  # the C++ library defines the schemas the CUDA kernels implement
            if not _status["cpp"].loaded:
                raise ImportError(f"cdism_fast._C is missing, so its CUDA kernels cannot register: "
                                  f"{_status['cpp'].error}")
        _refuse_stale_build(module_name)
        importlib.import_module(module_name)
        status.loaded, status.how = True, "prebuilt"
    except ImportError as prebuilt_error:
        status.error = f"prebuilt {module_name}: {_format(prebuilt_error)}"
        obstacle = _jit_obstacle(kind)
        if obstacle is None:
            try:
                root = source_dir()
                if root is None:
                    raise FileNotFoundError("the C++ sources (csrc/registration.cpp) are not installed")
                if kind == "cpp":
                    _jit_build(root, cpp_sources(root), "cdism_fast_C", cuda=False)
                else:
                    _jit_build(root, cuda_sources(root), "cdism_fast_C_cuda", cuda=True)
                status.loaded, status.how = True, "built on first use"
                status.error = None
            except Exception as build_error:  # keep the reason; the ops fall back to the reference
                status.error += f"; build on first use: {_format(build_error)}"
        else:
            status.error += f"; build on first use: {obstacle}"
    return status


def _jit_obstacle(kind: str) -> Optional[str]:
    """Why extension ``kind`` cannot be compiled on first use here, or ``None``."""
    if os.environ.get("CDISM_JIT", "1") == "0":
        return "disabled by CDISM_JIT=0"
    if kind == "cuda":
        if torch.version.cuda is None:
            return "needs a CUDA build of torch"
        if not _status["cpp"].loaded:
            return "cdism_fast._C is not loaded"
        if not torch.cuda.is_available():  # the build targets the visible GPU
            return "no CUDA device visible"
        from torch.utils.cpp_extension import CUDA_HOME

        if CUDA_HOME is None:
            return "no CUDA toolkit found (set CUDA_HOME)"
    return None


def load(kind: str) -> ExtensionStatus:
    """Load extension ``kind`` once ("cpp" or "cuda"); returns its status."""
    with _lock:
        if kind not in _status:
            _status[kind] = ExtensionStatus("pending")  # re-entrancy guard
            _status[kind] = status = _load(kind)
            if status.loaded:
                for fn in _on_load[kind]:
                    fn()
        return _status[kind]


def _constant_when_compiled(fn):
    """Mark ``fn`` the way ``torch.compiler.assume_constant_result`` does, without its
    import of torch._dynamo (over a second of every ``import cdism_fast``); a
    compiled caller has imported dynamo anyway. tests/test_dispatch.py checks that
    the public decorator still sets exactly this."""
    fn._dynamo_marked_constant = True
    return fn


# torch.compile runs this once while tracing (the lock and the build cannot be traced).
@_constant_when_compiled
def missing_reason(kind: str) -> Optional[str]:
    """``None`` if extension ``kind`` is loaded, else why it is not."""
    status = load(kind)
    return None if status.loaded else f"extension not available ({status.error})"


def statuses() -> dict[str, ExtensionStatus]:
    return {kind: load(kind) for kind in ("cpp", "cuda")}
