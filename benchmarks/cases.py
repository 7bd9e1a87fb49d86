"""The benchmark cases: each op at realistic shapes, every backend side by side.

A case builds its inputs once and returns one zero-argument callable per
backend: the op's own backends that can run here, ``compile`` (the reference
under ``torch.compile``), and named baselines (``foreach`` for the optimizer
update, ``sdpa`` for attention with a materialised bias + mask).

Memory-bound cases (losses, optimizer) rotate among copies of their inputs that
add up to :data:`ROTATION_BYTES`: run after run on one set would time a cache
(this project's CPU machine has a 260 MiB L3; an H200 a 60 MB L2), not memory,
and GB/s are compared with a copy through memory. ``hot=True`` keeps one set,
as in training when an op reads what the layer before it just wrote.
"""
from __future__ import annotations

import contextlib
import itertools
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Optional

import torch

import cdism_fast.ops as ops


@dataclass
class Case:
    op: str
    shape: str
    mode: str
    runners: dict[str, Callable[[], object]]
    bytes_moved: Optional[int] = None
    items: Optional[int] = None


#: Bytes of input copies a memory-bound case rotates among (over 4x the largest cache above).
ROTATION_BYTES = 1 << 30


def rotation(make_set: Callable[[], tuple], set_bytes: int, hot: bool) -> Callable[[], tuple]:
    """A callable returning, call after call, the next of the input sets that ``make_set``
    builds, ceil(ROTATION_BYTES / set_bytes) of them (one when ``hot``), in turn."""
    count = 1 if hot else max(1, -(-ROTATION_BYTES // set_bytes))
    return itertools.cycle([make_set() for _ in range(count)]).__next__


def _backends(op_name: str, device: torch.device) -> list[str]:
    return ops.available_backends(op_name, device)


def _with_compile(op_name: str, device: torch.device, make: Callable[[str], Callable[[], object]],
                  compiled: Callable[[], object]) -> dict[str, Callable[[], object]]:
    runners = {name: make(name) for name in _backends(op_name, device)}
    runners["compile"] = compiled
    return runners


def _train_step(fn: Callable[..., torch.Tensor], inputs: Callable[[], tuple]) -> Callable[[], None]:
    """Forward + backward of a scalar loss with respect to the first of the ``inputs()``."""
    def step():
        leaf, *rest = inputs()
        leaf.grad = None
        fn(leaf, *rest).backward()
    return step


def _map_step(fn: Callable[..., torch.Tensor], inputs: Callable[[], tuple]) -> Callable[[], None]:
    """Forward + backward of an image-to-image op; ``inputs()`` gives (input, output's gradient)."""
    def step():
        leaf, grad_out = inputs()
        leaf.grad = None
        fn(leaf).backward(grad_out)
    return step


def loss_cases(device: torch.device, shapes, hot: bool = False) -> list[Case]:
    cases = []
    for shape in shapes:
        label = "x".join(map(str, shape))
        n, elem = torch.Size(shape).numel(), 4
        # x (the leaf), y, gt, and the gradient of a map's output
        tensors = rotation(lambda shape=shape: (torch.randn(shape, device=device, requires_grad=True),
                                                *(torch.randn(shape, device=device) for _ in range(3))),
                           4 * n * elem, hot)

        def highpass(b):
            return lambda t: ops.gaussian_highpass(t, backend=b)

        def laplacian(b):
            return lambda s, t: ops.laplacian_loss(s, t, backend=b)

        def distill(b):
            return lambda s, t, g: ops.distillation_loss(s, t, g, backend=b)

        def charbonnier(b):
            return lambda s, t: ops.charbonnier(s, t, backend=b)

        for op_name, factory, make_run, picked, moved in (
            ("gaussian_highpass", highpass, _map_step, (0, 3), 4 * n * elem),
            ("laplacian_loss", laplacian, _train_step, (0, 1), 3 * n * elem),
            ("distillation_loss", distill, _train_step, (0, 1, 2), 4 * n * elem),
            ("charbonnier", charbonnier, _train_step, (0, 1), 3 * n * elem),
        ):
            # Defaults bind this shape's input sets: the runners are called after the loop.
            def inputs(picked=picked, tensors=tensors):
                chosen = tensors()
                return tuple(chosen[i] for i in picked)

            runners = _with_compile(op_name, device,
                                    lambda b, make_run=make_run, factory=factory: make_run(factory(b), inputs),
                                    make_run(torch.compile(factory("reference")), inputs))
            cases.append(Case(op_name, label, "fwd+bwd", runners, moved, shape[0]))
    return cases


def _sdpa_attention(q, k, v, table, window_size, shift_size, hw):
    """Baseline: PyTorch's fused attention given the materialised bias + mask."""
    from cdism_fast.ops.window_attention import relative_position_index, shift_window_mask

    heads, tokens = q.shape[1], q.shape[2]
    bias = table[relative_position_index(window_size).to(q.device).reshape(-1)]
    bias = bias.reshape(tokens, tokens, heads).permute(2, 0, 1)
    if shift_size:
        mask = shift_window_mask(hw, window_size, shift_size).to(q.device)  # (nW, N, N)
        windows = mask.shape[0]
        bias = (bias[None, None] + mask[None, :, None]).expand(q.shape[0] // windows, -1, -1, -1, -1)
        bias = bias.reshape(q.shape[0], heads, tokens, tokens)
    return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=bias)


def attention_cases(device: torch.device, images: int, grid: int) -> list[Case]:
    """SwinIR_LW (head dim 10) and SwinIRmini (head dim 4): 6 heads, 8x8 windows, shifted."""
    window, heads = 8, 6
    windows = images * (grid // window) ** 2
    return [_attention_case(device, label, windows, heads, window, dim, grid, images)
            for label, dim in (("SwinIR_LW", 10), ("SwinIRmini", 4))]


def _attention_case(device, label, windows, heads, window, dim, grid, images) -> Case:
    shift = window // 2
    q, k, v = (torch.randn(windows, heads, window * window, dim, device=device, requires_grad=True)
               for _ in range(3))
    table = torch.randn((2 * window - 1) ** 2, heads, device=device, requires_grad=True)
    grad_out = torch.randn(windows, heads, window * window, dim, device=device)

    def step(fn):
        def run():
            for t in (q, k, v, table):
                t.grad = None
            fn(q, k, v, table, window, shift, (grid, grid)).backward(grad_out)
        return run

    def op(b):
        return lambda *a: ops.window_attention(*a[:5], hw=a[6], shift_size=a[5], backend=b)

    runners = _with_compile("window_attention", device, lambda b: step(op(b)), step(torch.compile(op("reference"))))
    runners["sdpa"] = step(_sdpa_attention)
    moved = 8 * q.numel() * q.element_size()
    return Case("window_attention", f"{label} {windows}x{heads}x64x{dim}", "fwd+bwd", runners, moved, images)


def _foreach_obproxsg(params, grads, lr, lam, orthant):
    """Baseline: the update written with torch._foreach_* (a few fused passes per step)."""
    if not orthant:
        z = torch._foreach_add(params, grads, alpha=-lr)
        signs = torch._foreach_sign(z)
        shrunk = torch._foreach_sub(torch._foreach_abs(z), lr * lam)
        torch._foreach_clamp_min_(shrunk, 0.0)
        torch._foreach_mul_(shrunk, signs)
        torch._foreach_copy_(params, shrunk)
        return
    signs = torch._foreach_sign(params)
    step = torch._foreach_add(grads, signs, alpha=lam)
    torch._foreach_mul_(step, torch._foreach_abs(signs))
    new = torch._foreach_add(params, step, alpha=-lr)
    keep = torch._foreach_mul(new, signs)
    torch._foreach_clamp_min_(keep, 0.0)
    torch._foreach_sign_(keep)
    torch._foreach_mul_(new, keep)
    torch._foreach_copy_(params, new)


def parameter_shapes(name: str) -> list[tuple[int, ...]]:
    """Parameter shapes of a model preset (on the meta device), or of a synthetic 10M model."""
    if name == "10M":
        return [(256, 256, 3, 3), (256,)] * 17
    from cdism_fast.models import build

    with torch.device("meta"):
        model = build(name, scale=2)
    return [tuple(p.shape) for p in model.parameters()]


def optimizer_cases(device: torch.device, models=("edsr_baseline", "swinir_lightweight", "10M"),
                    hot: bool = False) -> list[Case]:
    cases = []
    for model in models:
        shapes = parameter_shapes(model)
        count = sum(torch.Size(s).numel() for s in shapes)
        # (params, grads) sets, shared by both phases; the update writes the params in place
        sets = rotation(lambda shapes=shapes: tuple([torch.randn(s, device=device) for s in shapes] for _ in range(2)),
                        8 * count, hot)
        cases += [_optimizer_case(device, f"{model} ({count / 1e6:.2f}M)", sets, count, orthant)
                  for orthant in (False, True)]
    return cases


def _optimizer_case(device, label, sets, count, orthant) -> Case:
    def make(backend):
        return lambda: ops.obproxsg_step(*sets(), 1e-4, 1e-4, orthant, backend=backend)

    runners = {name: make(name) for name in _backends("obproxsg_step", device)}
    runners["foreach"] = lambda: _foreach_obproxsg(*sets(), 1e-4, 1e-4, orthant)
    phase = "orthant" if orthant else "prox-sg"
    return Case("obproxsg_step", label, phase, runners, 12 * count, None)


def model_cases(device: torch.device, lr_hw: int, batch: dict) -> list[Case]:
    """End to end: SwinIR_LW forward, and one stage-3 training step per preset pair."""
    from cdism_fast.models import build
    from cdism_fast.ops import distillation_loss

    cases = []
    swinir = build("swinir_lightweight", scale=2).to(device).eval()
    image = torch.rand(1, 3, 128, 128, device=device)

    def forward(backend):
        def run():
            with torch.no_grad(), _forced_backend(backend):
                swinir(image)
        return run

    cases.append(Case("swinir_lightweight forward", "1x3x128x128", "fwd",
                      {"reference": forward("reference"), "auto": forward("auto")}, None, 1))
    for teacher_name, student_name in (("edsr_baseline", "edsr_mini"), ("swinir_lightweight", "swinir_mini")):
        teacher = build(teacher_name, scale=2).to(device).eval()
        student = build(student_name, scale=2).to(device)
        optimizer = torch.optim.Adamax(student.parameters(), lr=1e-4, betas=(0.9, 0.99))
        n = batch[teacher_name.split("_")[0]]
        lr_patch = torch.rand(n, 3, lr_hw, lr_hw, device=device)
        gt = torch.rand(n, 3, 2 * lr_hw, 2 * lr_hw, device=device)

        def step(backend, teacher=teacher, student=student, optimizer=optimizer, lr_patch=lr_patch, gt=gt):
            def run():
                with _forced_backend(backend):
                    with torch.no_grad():
                        target = teacher(lr_patch)
                    optimizer.zero_grad(set_to_none=True)
                    distillation_loss(student(lr_patch), target, gt).backward()
                    optimizer.step()
            return run

        cases.append(Case("stage-3 step", f"{student_name}<-{teacher_name} {n}x3x{lr_hw}x{lr_hw}", "train",
                          {"reference": step("reference"), "auto": step("auto")}, None, n))
    return cases


@contextlib.contextmanager
def _forced_backend(backend: str):
    """CDISM_BACKEND set to ``backend`` for the block ("auto" leaves it unset)."""
    saved = os.environ.pop("CDISM_BACKEND", None)
    if backend != "auto":
        os.environ["CDISM_BACKEND"] = backend
    try:
        yield
    finally:
        os.environ.pop("CDISM_BACKEND", None)
        if saved is not None:
            os.environ["CDISM_BACKEND"] = saved


def all_cases(device: torch.device, quick: bool = False, hot: bool = False
              ) -> list[tuple[str, Callable[[], list[Case]]]]:
    """Named case groups for ``device``; each is built lazily so one missing piece skips only its group.
    ``hot``: memory-bound cases reuse one input set (see the module's docstring)."""
    cpu = device.type == "cpu"
    loss_shapes = [(16, 3, 96, 96)] if quick else ([(16, 3, 96, 96), (16, 3, 128, 128)] if cpu else
                                                   [(16, 3, 256, 256)])
    return [
        ("losses", lambda: loss_cases(device, loss_shapes, hot)),
        ("attention", lambda: attention_cases(device, images=4 if quick else 16, grid=64)),
        ("optimizer", lambda: optimizer_cases(device, ("edsr_baseline",) if quick else
                                              ("edsr_baseline", "swinir_lightweight", "10M"), hot)),
        ("models", lambda: model_cases(device, lr_hw=48 if cpu else 64,
                                       batch={"edsr": 16, "swinir": 2 if cpu else 16})),
    ]
