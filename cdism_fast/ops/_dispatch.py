"""Backend selection for the public ops.

Every op owns an :class:`Op` registry of :class:`Backend` entries. A backend
declares what it can run: the device types, the dtypes, a machine-level
requirement (is the extension built, is Triton importable) and optionally a
per-call check (shapes, options). ``backend="auto"`` takes the first backend in
:data:`AUTO_ORDER` that accepts the call; naming a backend that cannot run
raises :class:`BackendUnavailable` with the reason. The environment variable
``CDISM_BACKEND`` replaces ``"auto"`` for every op that has a backend of that
name (ops without one keep choosing automatically).
"""
from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Optional

import torch

#: Preference of ``backend="auto"``, fastest first.
AUTO_ORDER = ("cuda", "triton", "cpp", "reference")
BACKEND_NAMES = AUTO_ORDER
FLOATING = frozenset({torch.float16, torch.bfloat16, torch.float32, torch.float64})

_OPS: dict[str, Op] = {}


class BackendUnavailable(RuntimeError):
    """The requested backend cannot run this call; the message says why.

    >>> import torch
    >>> from cdism_fast.ops import BackendUnavailable, gaussian_blur
    >>> try:
    ...     gaussian_blur(torch.rand(1, 1, 8, 8), backend="cuda")  # CPU tensors
    ... except BackendUnavailable as error:
    ...     print(error)
    gaussian_blur: backend 'cuda' cannot run this call: runs on cuda tensors, not cpu
    """


def _no_requirement() -> Optional[str]:
    return None


@dataclass(frozen=True)
class Backend:
    """One implementation of an op and what it can run.

    ``requirement`` returns ``None`` when the backend can run on this machine,
    else the reason it cannot (kept from the original import or build error).
    ``check`` receives the op's arguments and returns ``None`` or the reason
    this particular call is out of the backend's reach.
    """

    name: str
    fn: Callable
    devices: frozenset
    dtypes: frozenset = FLOATING
    requirement: Callable[[], Optional[str]] = _no_requirement
    check: Optional[Callable[..., Optional[str]]] = None


@dataclass
class Op:
    name: str
    backends: dict = field(default_factory=dict)

    def implementation(self, name: str, *, devices: Iterable[str], dtypes=FLOATING,
                       requirement=_no_requirement, check=None):
        """Register the decorated function as backend ``name`` of this op.

        Every backend (reference, cpp, cuda, triton) is registered this way, each
        with its own ``requirement`` and ``check``; decorators stack when one
        function serves two backends (a compiled op with CPU and CUDA kernels).
        """
        if name not in BACKEND_NAMES:
            raise ValueError(f"unknown backend name {name!r}; expected one of {BACKEND_NAMES}")
        if name in self.backends:
            raise ValueError(f"op {self.name!r} already has a {name!r} backend "
                             f"({self.backends[name].fn.__qualname__})")

        def wrap(fn):
            self.backends[name] = Backend(name, fn, frozenset(devices), frozenset(dtypes), requirement, check)
            return fn
        return wrap

    def why_not(self, name: str, device: torch.device, dtype: torch.dtype, *args, **kwargs) -> Optional[str]:
        """Why backend ``name`` cannot run this call, or ``None`` if it can."""
        backend = self.backends.get(name)
        if backend is None:
            return f"op {self.name!r} has no {name!r} backend (it has {', '.join(self.backends)})"
        reason = _machine_reason(backend, device, dtype)
        if reason is None and backend.check is not None:
            reason = backend.check(*args, **kwargs)
        return reason

    def select(self, requested: str, like: torch.Tensor, *args, **kwargs) -> Backend:
        """The backend that runs this call (see the module docstring)."""
        if requested == "auto":
            forced = os.environ.get("CDISM_BACKEND", "auto")
            if forced != "auto" and forced not in BACKEND_NAMES:
                raise ValueError(f"CDISM_BACKEND={forced!r} is not a backend; use one of "
                                 f"{('auto',) + BACKEND_NAMES}")
            if forced in self.backends:
                requested = forced
        if requested == "auto":
            if _exporting():
                return self.backends["reference"]
            for name in AUTO_ORDER:
                if name in self.backends and self.why_not(name, like.device, like.dtype, *args, **kwargs) is None:
                    return self.backends[name]
            raise BackendUnavailable(f"{self.name}: no backend can run this call "
                                     f"({self.explain(like.device, like.dtype, *args, **kwargs)})")
        if requested not in BACKEND_NAMES:
            raise ValueError(f"{self.name}: backend={requested!r} is unknown; use 'auto' or one of {BACKEND_NAMES}")
        if like.device.type == "meta":
            # Meta tensors only propagate shapes (FLOP counting, meta-device models).
            return self.backends["reference"]
        reason = self.why_not(requested, like.device, like.dtype, *args, **kwargs)
        if reason is not None:
            raise BackendUnavailable(f"{self.name}: backend {requested!r} cannot run this call: {reason}")
        return self.backends[requested]

    def explain(self, device: torch.device, dtype: torch.dtype, *args, **kwargs) -> str:
        return "; ".join(f"{name}: {self.why_not(name, device, dtype, *args, **kwargs) or 'ok'}"
                         for name in self.backends)

    def __call__(self, backend: str, like: torch.Tensor, *args, **kwargs):
        return self.select(backend, like, *args, **kwargs).fn(*args, **kwargs)


def _exporting() -> bool:
    # Exported graphs (ONNX, torch.export) must run without our extensions:
    # export traces the reference formulation.
    return torch.onnx.is_in_onnx_export() or torch.compiler.is_exporting()


def new_op(name: str) -> Op:
    if name in _OPS:
        raise ValueError(f"op {name!r} is registered twice")
    op = _OPS[name] = Op(name)
    return op


def registered_ops() -> dict[str, Op]:
    """Every op by name, with its registry of backends.

    >>> from cdism_fast.ops import registered_ops
    >>> sorted(registered_ops())  # doctest: +NORMALIZE_WHITESPACE
    ['charbonnier', 'distillation_loss', 'gaussian_blur', 'gaussian_highpass', 'laplacian_loss',
     'laplacian_pyramid', 'obproxsg_step', 'window_attention']
    >>> sorted(registered_ops()["gaussian_blur"].backends)
    ['cpp', 'cuda', 'reference']
    """
    return dict(_OPS)


def available_backends(name: str, device="cpu", dtype: torch.dtype = torch.float32) -> list[str]:
    """Backends of op ``name`` that can run on ``device``/``dtype`` on this machine.

    Per-call limits (shapes, options) are not considered here: they are reported
    by the error a call raises when the backend is requested explicitly.

    >>> import torch
    >>> from cdism_fast.ops import available_backends
    >>> "reference" in available_backends("charbonnier", "cpu", torch.float16)
    True
    >>> available_backends("charbonnier", "cpu")[-1]  # in backend="auto"'s order: the reference last
    'reference'
    """
    if name not in _OPS:
        raise ValueError(f"unknown op {name!r}; known ops: {', '.join(sorted(_OPS))}")
    op = _OPS[name]
    device = torch.device(device)
    return [b for b in AUTO_ORDER if b in op.backends and _machine_reason(op.backends[b], device, dtype) is None]


def unavailable_backends(name: str, device="cpu", dtype: torch.dtype = torch.float32) -> dict[str, str]:
    """For each backend of op ``name`` that cannot run here, the reason.

    >>> from cdism_fast.ops import unavailable_backends
    >>> unavailable_backends("gaussian_blur", "cpu")["cuda"]
    'runs on cuda tensors, not cpu'
    """
    op = _OPS[name]
    device = torch.device(device)
    reasons = {b: _machine_reason(op.backends[b], device, dtype) for b in AUTO_ORDER if b in op.backends}
    return {b: r for b, r in reasons.items() if r is not None}


def _machine_reason(backend: Backend, device: torch.device, dtype: torch.dtype) -> Optional[str]:
    if device.type == "meta":
        return None if backend.name == "reference" else "meta tensors only propagate shapes: the reference runs"
    if device.type not in backend.devices:
        return f"runs on {'/'.join(sorted(backend.devices))} tensors, not {device.type}"
    if dtype not in backend.dtypes:
        return f"dtype {str(dtype).replace('torch.', '')} unsupported"
    if device.type == "cuda" and not torch.cuda.is_available():
        return "no CUDA device visible"
    return backend.requirement()
