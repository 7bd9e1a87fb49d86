"""One OBProx-SG step (Chen et al., ECML-PKDD 2020), in place over a parameter list.

Prox-SG step:  z = p - lr*g;  p <- sign(z) * max(|z| - lr*lam, 0).
Orthant step:  zeta = sign(p) (0 where p = 0);  g_hat = g + lam*zeta where zeta != 0, else 0;
               x_hat = p - lr*g_hat;  p <- x_hat where x_hat*zeta > eps, else 0
               (so zeros stay zero and sign flips become zero).

fp16/bf16 parameters are updated in fp32 and rounded once (fp64 ones in fp64).
NaN in, NaN out: a NaN in p or g makes that entry NaN in both phases; in the
orthant phase that includes an entry held at zero whose gradient is NaN or
infinite (a broken gradient is reported, not masked by the projection).
Backends: ``reference`` (per-tensor PyTorch), ``cpp`` (one fused pass over
the whole list, CPU) and ``cuda`` (the same op's CUDA kernel, csrc/cuda/obproxsg.cu).

The public function checks its scalar arguments and the lists; the checks of
each (param, grad) pair are the backend's job, because a Python loop over the
hundreds of tensors of a transformer costs as much as the fused update itself:
the reference runs :func:`check_pairs`, the C++ kernel the same checks in C++
(and :func:`check_pairs` names whatever it cannot receive at all). Both raise
``ValueError`` naming ``params[i]``/``grads[i]``.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from .. import _extension
from ._checks import accumulation_dtype, check_float, check_nonnegative, check_pair
from ._dispatch import new_op

OP = new_op("obproxsg_step")


def check_pairs(params, grads) -> None:
    """Each ``grads[i]`` matches ``params[i]`` (dense, shape, dtype, device); one device for all."""
    for i, (p, g) in enumerate(zip(params, grads)):
        check_pair(f"params[{i}]", p, f"grads[{i}]", g, images=False)
        if p.layout != torch.strided or g.layout != torch.strided:
            raise ValueError(f"params[{i}] and grads[{i}] must be dense (strided) tensors, "
                             f"got layouts {p.layout} and {g.layout}")
        if p.device != params[0].device:
            raise ValueError(f"params must all be on one device, got {params[0].device} (params[0]) "
                             f"and {p.device} (params[{i}])")


@OP.implementation("reference", devices=("cpu", "cuda"))
def obproxsg_step_reference(params, grads, lr, lam, orthant, eps):
    check_pairs(params, grads)
    for p, g in zip(params, grads):
        acc = accumulation_dtype(p.dtype)
        x, grad = p.to(acc), g.to(acc)
        if orthant:
            zeta = torch.sign(x)
            # grad * 0 rather than 0, so that a NaN/inf gradient is not hidden at held zeros.
            g_hat = torch.where(zeta != 0, grad + lam * zeta, grad * 0)
            x_hat = x - lr * g_hat
            keep = (x_hat * zeta > eps) | torch.isnan(x_hat)
            p.copy_(torch.where(keep, x_hat, torch.zeros_like(x_hat)))
        else:
            z = x - lr * grad
            p.copy_(torch.sign(z) * torch.clamp(z.abs() - lr * lam, min=0))


# One compiled op, two kernels: CPU (cdism_fast._C) and CUDA (cdism_fast._C_cuda).
@OP.implementation("cuda", devices=("cuda",), requirement=lambda: _extension.missing_reason("cuda"))
@OP.implementation("cpp", devices=("cpu",), requirement=lambda: _extension.missing_reason("cpp"))
def obproxsg_step_compiled(params, grads, lr, lam, orthant, eps):
    try:
        torch.ops.cdism_fast.obproxsg_step_(params, grads, float(lr), float(lam), bool(orthant), float(eps))
    except (RuntimeError, NotImplementedError):
        # What the kernel cannot even receive (a non-tensor, a sparse gradient) is named here.
        check_pairs(params, grads)
        raise


@_extension.on_load("cpp")
def _register_cpp_op():
    @torch.library.register_fake("cdism_fast::obproxsg_step_")
    def _(params, grads, lr, lam, orthant, eps):
        check_pairs(params, grads)  # runs once per trace, not per step


def check_distinct(params) -> None:
    """No two of ``params`` share memory (the same tensor twice, or overlapping views).

    A fused kernel updates every element once from the values it read, so the
    second of two aliased updates would be lost; ``torch.optim`` refuses
    duplicate parameters for the same reason. The check compares the byte
    ranges the tensors span, so views that interleave (``x[::2]`` and
    ``x[1::2]``) are refused too.
    """
    if torch.compiler.is_compiling():  # traced tensors have no memory to compare; eager calls are checked
        return
    spans = []
    for i, p in enumerate(params):
        try:
            start, size = p.data_ptr(), p.nbytes
        except (RuntimeError, AttributeError):  # a fake tensor while tracing (no memory), or not a tensor
            return
        if size == 0 or p.is_meta:
            continue
        if not p.is_contiguous():
            size = p.element_size() * (1 + sum((n - 1) * stride for n, stride in zip(p.shape, p.stride())))
        spans.append((start, start + size, i))
    spans.sort()
    furthest_end, owner = -1, None
    for start, end, i in spans:
        if start < furthest_end:
            first, second = sorted((owner, i))
            raise ValueError(f"params[{first}] and params[{second}] share memory (the same tensor twice or "
                             "overlapping views), so one update would be lost; pass each parameter once, as "
                             "torch.optim requires")
        if end > furthest_end:
            furthest_end, owner = end, i


def _check_lists(params, grads) -> None:
    for name, value in (("params", params), ("grads", grads)):
        if isinstance(value, torch.Tensor) or not isinstance(value, Sequence):
            raise ValueError(f"{name} must be a list of tensors, got {type(value).__name__}")
    if len(params) != len(grads):
        raise ValueError(f"params and grads must have the same length, got {len(params)} and {len(grads)}")
    if params:
        check_float("params[0]", params[0])  # the backend is chosen by its device and dtype


def obproxsg_step(params: Sequence[torch.Tensor], grads: Sequence[torch.Tensor], lr: float, lam: float,
                  orthant: bool, eps: float = 0.0, backend: str = "auto") -> None:
    """One OBProx-SG step, in place on every tensor of ``params`` (see the module docstring).

    ``params`` and ``grads`` are equal-length lists of floating tensors, pairwise
    of one shape and dtype, all on one device; no two params may share memory
    (:func:`check_distinct`, in every backend). ``orthant=False`` takes the
    Prox-SG step, ``orthant=True`` the orthant step; ``eps`` >= 0 is the orthant
    projection's threshold. With ``lam=0`` the Prox-SG step is the plain SGD step
    p <- p - lr*g. Runs without recording autograd history.

    >>> import torch
    >>> from cdism_fast.ops import obproxsg_step
    >>> p = torch.tensor([1.0, 0.05, 0.0, 0.3])
    >>> obproxsg_step([p], [torch.tensor([1.0, 0.0, 0.0, -1.0])], lr=0.1, lam=1.0, orthant=False)
    >>> p  # z = p - 0.1*g, then soft threshold by 0.1
    tensor([0.8000, 0.0000, 0.0000, 0.3000])
    >>> obproxsg_step([p], [torch.tensor([0.0, 0.0, 1.0, 10.0])], lr=0.1, lam=0.0, orthant=True)
    >>> p  # zeros stay zero; a sign flip becomes zero
    tensor([0.8000, 0.0000, 0.0000, 0.0000])
    """
    _check_lists(params, grads)
    check_nonnegative("lr", lr)
    check_nonnegative("lam", lam)
    check_nonnegative("eps", eps)
    if not isinstance(orthant, bool):
        raise ValueError(f"orthant must be a bool, got {type(orthant).__name__}")
    if len(params) == 0:
        return
    params, grads = list(params), list(grads)
    check_distinct(params)
    with torch.no_grad():
        OP(backend, params[0], params, grads, lr, lam, orthant, eps)
