"""The C++ kernels on two threads, against the reference.

``make test`` runs each test process on one thread (tests/conftest.py), so the
``at::parallel_for`` / ``at::parallel_reduce`` splits of csrc/cpu, inside and across
tensors, would otherwise never run there; these cases raise the thread count for
themselves, at shapes large enough that every split happens.
"""
import pytest
import torch

from cdism_fast import ops

from tolerances import assert_close

CPU = torch.device("cpu")
pytestmark = pytest.mark.skipif("cpp" not in ops.available_backends("charbonnier", CPU),
                                reason="the C++ extension is not built: no cpp backend to run on threads")


@pytest.fixture(autouse=True)
def two_threads():
    saved = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(saved)


def _value_and_grads(loss_of, leaves, backend):
    leaves = [leaf.detach().clone().requires_grad_(True) for leaf in leaves]
    loss = loss_of(*leaves, backend=backend)
    return [loss.detach(), *torch.autograd.grad(loss, leaves)]


# Odd sizes, so that no split falls on a row or a pyramid level exactly.
SHAPE = (3, 3, 97, 131)
DISTILLATION_TARGETS = (torch.rand(SHAPE, generator=torch.Generator().manual_seed(1)),
                        torch.rand(SHAPE, generator=torch.Generator().manual_seed(2)))
LOSSES = {
    "charbonnier": (lambda x, y, backend: ops.charbonnier(x, y, backend=backend), 2),
    "laplacian_loss": (lambda x, y, backend: ops.laplacian_loss(x, y, backend=backend), 2),
    # The teacher and the ground truth are constants of distillation: the gradient is the student's.
    "distillation_loss": (lambda s, backend: ops.distillation_loss(s, *DISTILLATION_TARGETS, backend=backend), 1),
    "gaussian_highpass": (lambda x, backend: ops.gaussian_highpass(x, backend=backend).square().sum(), 1),
}


@pytest.mark.parametrize("name", LOSSES)
def test_loss_and_gradients_on_two_threads_equal_the_reference(name):
    loss_of, inputs = LOSSES[name]
    leaves = [torch.rand(SHAPE) for _ in range(inputs)]
    for got, want in zip(_value_and_grads(loss_of, leaves, "cpp"), _value_and_grads(loss_of, leaves, "reference")):
        assert_close(got, want, torch.float32)


def test_window_attention_on_two_threads_equals_the_reference():
    ws, heads, dim, hw = 8, 6, 10, (32, 40)
    windows = 2 * (hw[0] // ws) * (hw[1] // ws)
    q, k, v = (torch.randn(windows, heads, ws * ws, dim) for _ in range(3))
    table = torch.randn((2 * ws - 1) ** 2, heads)

    def attention(q, k, v, table, backend):
        out = ops.window_attention(q, k, v, table, ws, ws // 2, hw, backend=backend)
        return (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum()

    for got, want in zip(_value_and_grads(attention, [q, k, v, table], "cpp"),
                         _value_and_grads(attention, [q, k, v, table], "reference")):
        assert_close(got, want, torch.float32)


@pytest.mark.parametrize("orthant", [False, True])
def test_obproxsg_step_on_two_threads_equals_the_reference(orthant):
    sizes = [(1_000_003,), (64, 64, 3, 3), (4097,), (5,)]
    params = [torch.randn(size) for size in sizes]
    grads = [torch.randn(size) for size in sizes]
    got, want = [p.clone() for p in params], [p.clone() for p in params]
    ops.obproxsg_step(got, grads, lr=0.1, lam=0.5, orthant=orthant, backend="cpp")
    ops.obproxsg_step(want, grads, lr=0.1, lam=0.5, orthant=orthant, backend="reference")
    for g, w in zip(got, want):
        assert_close(g, w, torch.float32)
