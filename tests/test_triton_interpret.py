"""The Triton kernels against independent float64 formulations, in Triton's interpreter on CPU tensors.

``@triton.jit`` reads ``TRITON_INTERPRET`` when the kernels are defined, that is
when cdism_fast is imported. In a normal pytest run (cdism_fast already imported
without it) this file holds one test, which runs the file again in a fresh
process with ``TRITON_INTERPRET=1`` and reports that run's failures. Shapes are
small: the interpreter runs programs one after another at about a millisecond
per operation.
"""
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("triton")

INTERPRETING = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")

if not INTERPRETING:
    def test_interpreter_suite():
        env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=os.pathsep.join(sys.path))
        result = subprocess.run([sys.executable, "-m", "pytest", __file__, "-q", "-p", "no:cacheprovider",
                                 "-p", "no:randomly", "-x"], env=env, capture_output=True, text=True, timeout=900)
        tail = (result.stdout + result.stderr)[-12000:]
        assert result.returncode == 0, f"interpreter run failed:\n{tail}"
        print(result.stdout.strip().splitlines()[-1])

else:
    import float64_references as ref
    from tolerances import assert_close

    import cdism_fast.ops as ops
    from cdism_fast.ops.triton import laplacian as triton_laplacian
    from cdism_fast.ops.triton import window_attention as triton_attention

    # ---------------------------------------------------------------- window attention

    def swin_attention_float64(q, k, v, table, window, shift, grid):
        """Swin/SwinIR window attention from the definition, in float64, with explicit loops
        for the relative-position bias and the shifted-window regions."""
        q, k, v, table = q.double(), k.double(), v.double(), table.double()
        windows, heads, tokens, dim = q.shape
        bias = torch.empty(heads, tokens, tokens, dtype=torch.float64)
        for n in range(tokens):
            for m in range(tokens):
                (i, j), (i2, j2) = divmod(n, window), divmod(m, window)
                bias[:, n, m] = table[(i - i2 + window - 1) * (2 * window - 1) + (j - j2 + window - 1)]
        scores = (q @ k.transpose(-1, -2)) * dim ** -0.5 + bias
        if shift:
            height, width = grid
            per_row = width // window
            per_image = (height // window) * per_row

            def region(coord, extent):
                return (coord >= extent - window) + (coord >= extent - shift)

            mask = torch.zeros(windows, 1, tokens, tokens, dtype=torch.float64)
            for w in range(windows):
                local = w % per_image
                rows = [(local // per_row) * window + n // window for n in range(tokens)]
                cols = [(local % per_row) * window + n % window for n in range(tokens)]
                ids = [3 * region(r, height) + region(c, width) for r, c in zip(rows, cols)]
                for n in range(tokens):
                    for m in range(tokens):
                        if ids[n] != ids[m]:
                            mask[w, 0, n, m] = -100.0
            scores = scores + mask
        return scores.softmax(-1) @ v

    def attention_inputs(windows, heads, window, dim, dtype, layout="contiguous"):
        tokens = window * window
        shape = (windows, heads, tokens, dim)
        if layout == "transposed":  # (B·nW, N, heads, D) storage seen as (B·nW, heads, N, D)
            q, k, v = (torch.randn(windows, tokens, heads, dim).to(dtype).transpose(1, 2) for _ in range(3))
        else:
            q, k, v = (torch.randn(shape).to(dtype) for _ in range(3))
        table = torch.randn((2 * window - 1) ** 2, heads).to(dtype)
        return [t.requires_grad_() for t in (q, k, v, table)]

    ATTENTION_CASES = {
        # name: (windows, heads, window, head dim, shift, grid, dtype, layout)
        "unshifted-odd-dim": (4, 2, 4, 5, 0, None, torch.float32, "contiguous"),
        "shifted-nonsquare-batch2": (12, 3, 4, 10, 2, (8, 12), torch.float32, "contiguous"),
        "shifted-fp16": (4, 2, 8, 4, 4, (16, 16), torch.float16, "contiguous"),
        "transposed-strides": (6, 2, 4, 6, 2, (8, 12), torch.float32, "transposed"),
        "window12-several-blocks": (2, 1, 12, 7, 5, (12, 24), torch.float32, "contiguous"),
        "head-dim-64": (2, 1, 8, 64, 3, (8, 16), torch.float32, "contiguous"),
    }

    @pytest.mark.parametrize("case", ATTENTION_CASES)
    def test_window_attention_forward_backward(case):
        windows, heads, window, dim, shift, grid, dtype, layout = ATTENTION_CASES[case]
        q, k, v, table = attention_inputs(windows, heads, window, dim, dtype, layout)
        grad_out = torch.randn(q.shape).to(dtype)
        out = ops.window_attention(q, k, v, table, window, shift, grid, backend="triton")
        grads = torch.autograd.grad(out, (q, k, v, table), grad_out)
        expected = swin_attention_float64(q, k, v, table, window, shift, grid)
        expected_grads = torch.autograd.grad(expected, (q, k, v, table), grad_out.double())
        assert out.dtype == dtype and out.shape == q.shape
        assert_close(out, expected, dtype)
        for name, actual, wanted in zip(("q", "k", "v", "bias_table"), grads, expected_grads):
            assert actual.dtype == dtype
            # The bias gradient sums over every window: its scale grows with their number.
            scale = 1.0 if name != "bias_table" else math.sqrt(windows * window ** 2)
            assert_close(actual / scale, wanted / scale, dtype, msg=f"gradient of {name}")

    def test_window_attention_nan_in_nan_out():
        q, k, v, table = (t.detach() for t in attention_inputs(2, 1, 4, 4, torch.float32))
        q[1, 0, 3, 2] = float("nan")
        out = ops.window_attention(q, k, v, table, 4, backend="triton")
        assert torch.isnan(out[1, 0, 3]).all()
        assert torch.isfinite(out[0]).all() and torch.isfinite(out[1, 0, :3]).all()

    def test_window_attention_opcheck():
        q, k, v, table = (t.detach() for t in attention_inputs(2, 1, 4, 5, torch.float32))
        args = (q, k, v, table, 4, 2, 4, 8, 0.4)
        torch.library.opcheck(triton_attention.window_attention_forward, args)
        out, lse = triton_attention.window_attention_forward(*args)
        torch.library.opcheck(triton_attention.window_attention_backward,
                              (torch.randn_like(out), q, k, v, out, lse, table, 4, 2, 4, 8, 0.4))

    def test_window_attention_compiles_fullgraph():
        q, k, v, table = attention_inputs(2, 2, 4, 5, torch.float32)

        def step(q, k, v, table):
            return ops.window_attention(q, k, v, table, 4, 2, (4, 8), backend="triton").square().sum()

        eager_grads = torch.autograd.grad(step(q, k, v, table), (q, k, v, table))
        compiled_grads = torch.autograd.grad(torch.compile(step, fullgraph=True)(q, k, v, table), (q, k, v, table))
        for eager, compiled in zip(eager_grads, compiled_grads):
            assert_close(compiled, eager)

    # ---------------------------------------------------------------- Laplacian pyramid loss

    def loss_and_directional_check(x, y, levels, reduction, directions=2):
        """The float64 loss, and for random directions u the float64 central difference of the
        loss along u, which is <grad, u> exactly: the loss is piecewise linear, and a step of
        1e-7 crosses no kink of a generic input."""
        x64, y64 = ref.as_float64(x), ref.as_float64(y)
        loss = ref.laplacian_loss(x64, y64, levels, reduction)
        generator = np.random.default_rng(0)
        checks = []
        for _ in range(directions):
            u = generator.standard_normal(x64.shape)
            step = 1e-7
            slope = (ref.laplacian_loss(x64 + step * u, y64, levels, reduction)
                     - ref.laplacian_loss(x64 - step * u, y64, levels, reduction)) / (2 * step)
            checks.append((torch.from_numpy(u), slope))
        return loss, checks

    LAPLACIAN_CASES = {
        # name: (shape, levels, reduction, dtype, layout)
        "one-level": ((2, 1, 9, 7), 1, "mean", torch.float32, None),
        "two-levels-batch2-rgb": ((2, 3, 16, 16), 2, "mean", torch.float32, None),
        "padded-odd-size-sum": ((2, 1, 35, 37), 3, "sum", torch.float32, None),
        "five-levels-two-tiles": ((1, 1, 80, 48), 5, "mean", torch.float32, None),
        "fp16": ((1, 2, 32, 32), 4, "mean", torch.float16, None),
        "channels-last": ((1, 3, 16, 24), 3, "mean", torch.float32, "channels_last"),
        "strided-view": ((2, 1, 16, 16), 3, "sum", torch.float32, "strided"),
    }

    @pytest.mark.parametrize("case", LAPLACIAN_CASES)
    def test_laplacian_loss_forward_backward(case):
        shape, levels, reduction, dtype, layout = LAPLACIAN_CASES[case]
        x, y = torch.randn(shape).to(dtype), torch.randn(shape).to(dtype)
        if layout is not None:
            x, y = ref.layouts(x)[layout], ref.layouts(y)[layout]
        x.requires_grad_()
        y.requires_grad_()
        loss = ops.laplacian_loss(x, y, levels, reduction, backend="triton")
        grad_x, grad_y = torch.autograd.grad(loss * 1.5, (x, y))
        expected, checks = loss_and_directional_check(x, y, levels, reduction)
        assert loss.dtype == dtype
        assert_close(loss, torch.tensor(expected), dtype)
        assert_close(grad_y, -grad_x, torch.float64)
        for direction, slope in checks:
            derivative = (grad_x.double() * direction).sum() / 1.5
            # A sum of many gradient entries: relative to the size of its terms.
            size = (grad_x.double().abs() * direction.abs()).sum() / 1.5
            assert_close(derivative / size, torch.tensor(slope) / size, dtype)

    def test_laplacian_loss_without_grad_saves_no_signs():
        x, y = torch.randn(1, 1, 16, 16), torch.randn(1, 1, 16, 16)
        loss, _, codes = triton_laplacian.laplacian_loss_forward(x, y, 3, True, False)
        assert codes.numel() == 1
        assert_close(loss, torch.tensor(ref.laplacian_loss(x.double().numpy(), y.double().numpy(), 3, "mean")))

    def test_laplacian_loss_nan_in_nan_out():
        # The loss is NaN; its gradient is the reference's (torch.sign(NaN) = 0 in |.|'s backward).
        x, y = torch.randn(1, 1, 16, 16, requires_grad=True), torch.randn(1, 1, 16, 16)
        with torch.no_grad():
            x[0, 0, 5, 9] = float("nan")
        losses, grads = [], []
        for backend in ("triton", "reference"):
            losses.append(ops.laplacian_loss(x, y, 3, backend=backend))
            grads.append(torch.autograd.grad(losses[-1], x)[0])
        assert torch.isnan(losses[0]) and torch.isnan(losses[1])
        assert_close(grads[0], grads[1])

    def test_laplacian_loss_opcheck():
        x, y = torch.randn(1, 1, 8, 8), torch.randn(1, 1, 8, 8)
        torch.library.opcheck(triton_laplacian.laplacian_loss_forward, (x, y, 2, True, True))
        loss, pyramid, codes = triton_laplacian.laplacian_loss_forward(x, y, 2, True, True)
        torch.library.opcheck(triton_laplacian.laplacian_loss_backward,
                              (torch.tensor(1.3), x, y, pyramid, codes, 2, True))

    def test_laplacian_loss_compiles_fullgraph():
        x, y = torch.randn(1, 2, 16, 16, requires_grad=True), torch.randn(1, 2, 16, 16)

        def loss(x, y):
            return ops.laplacian_loss(x, y, 3, backend="triton")

        (eager,) = torch.autograd.grad(loss(x, y), x)
        (compiled,) = torch.autograd.grad(torch.compile(loss, fullgraph=True)(x, y), x)
        assert_close(compiled, eager)

    def test_distillation_loss(monkeypatch):
        # The high-pass filter inside runs on "auto": the reference here, not a C++ build.
        monkeypatch.setenv("CDISM_BACKEND", "reference")
        student_loss = "charbonnier"
        student = torch.randn(2, 3, 16, 20, requires_grad=True)
        teacher, gt = torch.randn(2, 3, 16, 20), torch.randn(2, 3, 16, 20)
        loss = ops.distillation_loss(student, teacher, gt, 0.1, student_loss, 3, backend="triton")
        (grad,) = torch.autograd.grad(loss, student)
        expected = ref.distillation_loss(ref.as_float64(student), ref.as_float64(teacher), ref.as_float64(gt), 0.1,
                                         student_loss, 3, "mean")
        assert_close(loss, torch.tensor(expected))
        reference = ops.distillation_loss(student, teacher, gt, 0.1, student_loss, 3, backend="reference")
        (expected_grad,) = torch.autograd.grad(reference, student)
        assert_close(grad, expected_grad)
