"""Optional dependencies: which extra of ``cdism_fast`` installs each, checked before any work starts."""
from __future__ import annotations

import importlib.util

__all__ = ["EXTRAS", "MissingDependency", "available", "require"]

#: Importable name → (pip package, extra of cdism_fast that installs it).
EXTRAS = {
    "matplotlib": ("matplotlib", "demo"),
    "skimage": ("scikit-image", "demo"),
    "safetensors": ("safetensors", "export"),
    "onnx": ("onnx", "export"),
    "onnxscript": ("onnxscript", "export"),
    "triton": ("triton", "triton"),
    "spandrel": ("spandrel", "spandrel"),
}


class MissingDependency(ImportError):
    """An optional package that the requested work needs is not installed; the message says what to install."""

    exit_code = 2  # the command line prints the message alone (cdism_fast.cli.main)


def available(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def install_hint(module: str) -> str:
    package, extra = EXTRAS[module]
    return f"pip install 'cdism_fast[{extra}]' (or: pip install {package})"


def require(purpose: str, *modules: str) -> None:
    """Raise :class:`MissingDependency` naming the first of ``modules`` that is not installed."""
    for module in modules:
        if not available(module):
            raise MissingDependency(f"{purpose} needs {EXTRAS[module][0]}, which is not installed; run: "
                                    f"{install_hint(module)}")
