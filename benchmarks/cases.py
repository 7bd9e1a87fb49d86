"""The benchmark cases: each op at realistic shapes, every backend side by side.

A case builds its inputs once and returns one zero-argument callable per
backend: the op's own backends that can run here, ``compile`` (the reference
under ``torch.compile``), and named baselines (``foreach`` and torch's fused
SGD for the optimizer update, ``sdpa`` for attention with a materialised bias +
mask, ``flex`` for FlexAttention with the bias and mask in its ``score_mod``).
The ``distill`` group times a stage-3 training step with the live teacher
against the same step reading the teacher's cached output; the ``layout`` group
times each family's training step and inference in both memory layouts; the
``precision`` group each family's training step and inference in fp32 and under
bf16 autocast (``python -m benchmarks.precision`` interleaves the two and adds the
cache build and the pruning step).

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


def rotation_sets(make_set: Callable[[], tuple], set_bytes: int, hot: bool) -> list[tuple]:
    """ceil(ROTATION_BYTES / set_bytes) input sets that ``make_set`` builds (one when ``hot``)."""
    count = 1 if hot else max(1, -(-ROTATION_BYTES // set_bytes))
    return [make_set() for _ in range(count)]


def rotation(make_set: Callable[[], tuple], set_bytes: int, hot: bool) -> Callable[[], tuple]:
    """A callable returning, call after call, the next of the :func:`rotation_sets`, in turn."""
    return itertools.cycle(rotation_sets(make_set, set_bytes, hot)).__next__


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


def _flex_attention(compiled: bool = False) -> Callable:
    """Anchor: torch's FlexAttention, the gathered relative-position bias and the shifted-window mask
    added in its ``score_mod`` (nothing materialised per window)."""
    from torch.nn.attention.flex_attention import flex_attention

    from cdism_fast.ops.window_attention import relative_position_index, shift_window_mask

    attend = torch.compile(flex_attention, fullgraph=True) if compiled else flex_attention

    def run(q, k, v, table, window_size, shift_size, hw):
        index = relative_position_index(window_size, q.device)
        mask = shift_window_mask(hw, window_size, shift_size, q.device) if shift_size else None

        def score_mod(score, b, h, q_idx, kv_idx):
            score = score + table[index[q_idx, kv_idx], h]
            if mask is not None:
                score = score + mask[b % mask.shape[0], q_idx, kv_idx]
            return score

        return attend(q, k, v, score_mod=score_mod)
    return run


def attention_cases(device: torch.device, images: int, grid: int) -> list[Case]:
    """SwinIR_LW (head dim 10) and SwinIRmini (head dim 4): 6 heads, 8x8 windows, shifted; fwd+bwd
    (FlexAttention eager and compiled: on the CPU torch refuses its backward, and the runner says so)
    and forward alone (FlexAttention compiled, the CPU's inference-only path)."""
    window, heads = 8, 6
    windows = images * (grid // window) ** 2
    cases = []
    for label, dim in (("SwinIR_LW", 10), ("SwinIRmini", 4)):
        cases.append(_attention_case(device, label, windows, heads, window, dim, grid, images))
        cases.append(_attention_forward_case(device, label, windows, heads, window, dim, grid, images))
    return cases


def _attention_forward_case(device, label, windows, heads, window, dim, grid, images) -> Case:
    shift = window // 2
    q, k, v = (torch.randn(windows, heads, window * window, dim, device=device) for _ in range(3))
    table = torch.randn((2 * window - 1) ** 2, heads, device=device)

    def forward(fn):
        def run():
            with torch.no_grad():
                fn(q, k, v, table, window, shift, (grid, grid))
        return run

    def op(b):
        return lambda *a: ops.window_attention(*a[:5], hw=a[6], shift_size=a[5], backend=b)

    runners = _with_compile("window_attention", device, lambda b: forward(op(b)),
                            forward(torch.compile(op("reference"))))
    runners["sdpa"] = forward(_sdpa_attention)
    runners["flex-compile"] = forward(_flex_attention(compiled=True))
    moved = 4 * q.numel() * q.element_size()
    return Case("window_attention", f"{label} {windows}x{heads}x64x{dim}", "fwd", runners, moved, images)


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
    runners["flex"] = step(_flex_attention())
    # On the CPU torch refuses to compile FlexAttention's backward: the runner reports what it says.
    runners["flex-compile"] = step(_flex_attention(compiled=True))
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
        set_list = rotation_sets(lambda shapes=shapes: tuple([torch.randn(s, device=device) for s in shapes]
                                                          for _ in range(2)), 8 * count, hot)
        sgd = itertools.cycle([_fused_sgd(*pair) for pair in set_list]).__next__
        sets = itertools.cycle(set_list).__next__
        cases += [_optimizer_case(device, f"{model} ({count / 1e6:.2f}M)", sets, count, orthant, sgd)
                  for orthant in (False, True)]
    return cases


def _fused_sgd(params, grads) -> torch.optim.SGD:
    """Anchor: torch's fused SGD (no momentum) on the same tensors; it too reads p and g and writes p."""
    for param, grad in zip(params, grads):
        param.grad = grad
    return torch.optim.SGD(params, lr=1e-4, fused=True)


def _optimizer_case(device, label, sets, count, orthant, sgd) -> Case:
    def make(backend):
        return lambda: ops.obproxsg_step(*sets(), 1e-4, 1e-4, orthant, backend=backend)

    runners = {name: make(name) for name in _backends("obproxsg_step", device)}
    runners["foreach"] = lambda: _foreach_obproxsg(*sets(), 1e-4, 1e-4, orthant)
    runners["fused-sgd"] = lambda: sgd().step()
    phase = "orthant" if orthant else "prox-sg"
    return Case("obproxsg_step", label, phase, runners, 12 * count, None)


def model_cases(device: torch.device, lr_hw: int, batch: dict, compiled: bool = True) -> list[Case]:
    """End to end: SwinIR_LW forward (eager, and compiled with the C++/CUDA attention inside unless
    ``compiled`` is False), and one stage-3 training step per preset pair."""
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

    runners = {"reference": forward("reference"), "auto": forward("auto")}
    if compiled:
        kernel = "cuda" if device.type == "cuda" else "cpp"
        fused = torch.compile(build("swinir_lightweight", scale=2, attention_backend=kernel).to(device).eval(),
                              fullgraph=True)

        def compiled_forward():
            with torch.no_grad():
                fused(image)
        runners[f"compile-{kernel}"] = compiled_forward
    cases.append(Case("swinir_lightweight forward", "1x3x128x128", "fwd", runners, None, 1))
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


def _stage3_step(student, optimizer, lr: torch.Tensor, gt: torch.Tensor, target_of) -> Callable[[], None]:
    """One stage-3 step: the student's forward on ``lr``, the distillation loss against
    ``target_of(lr)`` and ``gt``, backward, the optimizer's step."""
    def run():
        target = target_of(lr)
        optimizer.zero_grad(set_to_none=True)
        ops.distillation_loss(student(lr).float(), target, gt).backward()
        optimizer.step()
    return run


#: Stage-3 pairs of the distill group: (student, teacher, patches per batch, LR patch side).
DISTILL_PAIRS = (("edsr_mini", "edsr_baseline", 16, 48), ("swinir_mini", "swinir_lightweight", 4, 64),
                 # Needs the IMDN family (cdism_fast.models preset "imdn"); skipped, with a line, until it is there.
                 ("edsr_mini", "imdn", 16, 48))


def distill_cases(device: torch.device, quick: bool = False) -> list[Case]:
    """A stage-3 step (student forward, distillation loss, backward, AdaMax) with the teacher run on the
    patch ("live") against the same step reading the teacher's float16 output from the cache
    ("cached"), each model in its default layout; and the cache's build time for one image."""
    from cdism_fast.models import ARCHITECTURES, build
    from cdism_fast.training.engine import uses_channels_last

    def layout(model):
        return torch.channels_last if uses_channels_last(None, device, model) else torch.contiguous_format

    cases = []
    for student_name, teacher_name, n, lr_hw in DISTILL_PAIRS:
        if teacher_name not in ARCHITECTURES:
            print(f"[distill] {student_name}<-{teacher_name} skipped: no {teacher_name!r} model preset here")
            continue
        n = max(1, n // 4) if quick else n
        student = build(student_name, scale=2).to(device)
        student = student.to(memory_format=layout(student))
        teacher = build(teacher_name, scale=2).to(device).eval().requires_grad_(False)
        teacher = teacher.to(memory_format=layout(teacher))
        optimizer = torch.optim.Adamax(student.parameters(), lr=1e-4, betas=(0.9, 0.99))
        lr = torch.rand(n, 3, lr_hw, lr_hw, device=device).contiguous(memory_format=layout(student))
        gt = torch.rand(n, 3, 2 * lr_hw, 2 * lr_hw, device=device)
        with torch.no_grad():
            cached = teacher(lr).half()

        def live(x, teacher=teacher, amp=None):
            with torch.no_grad(), torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                return teacher(x).float()

        targets = {"live": live, "cached": lambda x, cached=cached: cached.float()}
        if device.type == "cuda":
            targets["live-bf16"] = lambda x, teacher=teacher: live(x, teacher, torch.bfloat16)
        runners = {name: _stage3_step(student, optimizer, lr, gt, target_of) for name, target_of in targets.items()}
        cases.append(Case("stage-3 step", f"{student_name}<-{teacher_name} {n}x3x{lr_hw}x{lr_hw}", "train",
                          runners, None, n))
    cases.append(_cache_build_case(device, 128 if quick else 256))
    return cases


def _cache_build_case(device: torch.device, side: int) -> Case:
    """The teacher cache's work for one LR image of side x side: EDSR_baseline over it in tiles, the
    float16 entry and its record written (to a temporary folder)."""
    import tempfile
    import types

    import numpy as np

    from cdism_fast.models import build
    from cdism_fast.training.teacher_cache import TeacherCache

    teacher = build("edsr_baseline", scale=2).to(device).eval().requires_grad_(False)
    image = np.random.default_rng(0).integers(0, 256, (3, side, side), dtype=np.uint8)
    patches = types.SimpleNamespace(scale=2, names=["benchmark"], lr_image=lambda index: image)
    folder = tempfile.mkdtemp(prefix="teacher-cache-benchmark-")
    cache = TeacherCache(folder, teacher, patches, progress=False)
    cache.paths[0].parent.mkdir(parents=True, exist_ok=True)
    megapixels = side * side / 1e6
    return Case("teacher cache build", f"edsr_baseline x2, LR {side}x{side} ({megapixels:.3f} MP)", "build",
                {"tiled": lambda: cache.build_entry(0)}, None, 1)


#: Layout group: per family, (teacher preset, student as ``distill --student`` takes it, patches per
#: batch, LR patch side); the students are those of the distill group and the cpu-291 run.
LAYOUT_FAMILIES = (("edsr_baseline", "edsr_mini", 16, 48), ("swinir_lightweight", "swinir_mini", 4, 64),
                   ("imdn", "imdn:4,2,28", 16, 48), ("pan", "pan:9,1,8", 16, 48))
MEMORY_FORMATS = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}


def layout_cases(device: torch.device, quick: bool = False) -> list[Case]:
    """Each family in both memory layouts: the student's stage-3 step (forward, distillation loss
    against a fixed target, backward, AdaMax) and the teacher's forward pass (inference), the numbers
    behind the engine's default layout per device (``uses_channels_last``)."""
    from cdism_fast.training.stages import student_from

    def made(spec, memory_format):
        torch.manual_seed(0)
        return student_from(spec, scale=2).to(device).to(memory_format=memory_format)

    cases = []
    for teacher_name, student_spec, n, lr_hw in LAYOUT_FAMILIES:
        n = max(1, n // 4) if quick else n
        lr = torch.rand(n, 3, lr_hw, lr_hw, device=device)
        target = torch.rand(n, 3, 2 * lr_hw, 2 * lr_hw, device=device)
        steps, forwards = {}, {}
        for name, memory_format in MEMORY_FORMATS.items():
            student = made(student_spec, memory_format)
            optimizer = torch.optim.Adamax(student.parameters(), lr=1e-4, betas=(0.9, 0.99))
            teacher = made(teacher_name, memory_format).eval().requires_grad_(False)
            x = lr.contiguous(memory_format=memory_format)

            def forward(teacher=teacher, x=x):
                with torch.no_grad():
                    return teacher(x)

            steps[name] = _stage3_step(student, optimizer, x, target, lambda _, target=target: target)
            forwards[name] = forward
        shape = f"{n}x3x{lr_hw}x{lr_hw}"
        cases.append(Case("layout: stage-3 step", f"{student_spec} {shape}", "train", steps, None, n))
        cases.append(Case("layout: teacher forward", f"{teacher_name} {shape}", "infer", forwards, None, n))
    return cases


def precision_cases(device: torch.device, quick: bool = False) -> list[Case]:
    """Each model of ``benchmarks.precision`` in fp32 and under bf16 autocast: the stage-3 step on 16x3x48²
    (forward, distillation loss, backward, AdaMax) and inference on 1x3x360x640, in the default layout. On
    CUDA the same cases run under CUDA autocast."""
    from .precision import FORWARD_SHAPE, PRECISION_MODELS, STEP_SHAPE, model_runners, models_to_time

    cases = []
    models = models_to_time(PRECISION_MODELS[:1] if quick else PRECISION_MODELS)
    for spec in models:
        for part, shape, mode in (("step", STEP_SHAPE, "train"), ("forward", FORWARD_SHAPE, "infer")):
            if quick:
                shape = (max(1, shape[0] // 4), shape[1], shape[2] // 2, shape[3] // 2)
            runners = model_runners(spec, part, device=device, shape=shape)
            cases.append(Case(f"precision: {part}", f"{spec} {'x'.join(map(str, shape))}", mode, runners, None,
                              shape[0]))
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
        ("distill", lambda: distill_cases(device, quick)),
        ("layout", lambda: layout_cases(device, quick)),
        ("precision", lambda: precision_cases(device, quick)),
        # Last: its compiled forward is the slowest group to build.
        ("models", lambda: model_cases(device, lr_hw=48 if cpu else 64,
                                       batch={"edsr": 16, "swinir": 2 if cpu else 16}, compiled=not quick)),
    ]


#: The groups' names, in run order (``python -m benchmarks --only``, benchmarks/gpu_check.sh).
GROUP_NAMES = tuple(name for name, _ in all_cases(torch.device("cpu"), quick=True))
