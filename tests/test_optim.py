"""OBProxSG: phase schedule, steps against a per-element loop, l1=False groups,
state_dict round trips, a sparse recovery; density()."""
import copy
import io

import pytest
import torch
from torch import nn

from cdism_fast.ops import available_backends
from cdism_fast.optim import OBProxSG, density

import float64_references as ref
from tolerances import assert_close

BACKENDS = available_backends("obproxsg_step")
PROX, ORTHANT = "prox_sg", "orthant"


def _params(dtype=torch.float32):
    return [nn.Parameter(torch.randn(s, dtype=dtype)) for s in [(4, 3, 3, 3), (4,), (7, 5)]]


def _set_grads(params, seed):
    gen = torch.Generator().manual_seed(seed)
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen, dtype=p.dtype)


@pytest.mark.parametrize("n_o, expected", [
    # steps_per_epoch = 3, n_p = 2: phase epochs of three steps.
    (1, [PROX] * 6 + [ORTHANT] * 3 + [PROX] * 6 + [ORTHANT] * 3 + [PROX]),
    (None, [PROX] * 6 + [ORTHANT] * 13),
    (0, [PROX] * 19),
])
def test_phases_switch_at_the_exact_step(n_o, expected):
    params = _params()
    opt = OBProxSG(params, lr=0.01, n_p=2, n_o=n_o, steps_per_epoch=3)
    seen = []
    for step in range(len(expected)):
        seen.append(opt.phase)
        assert opt.steps == step and opt.epoch == step // 3
        _set_grads(params, step)
        opt.step()
    assert seen == expected


def test_orthant_from_the_start_when_n_p_is_zero():
    opt = OBProxSG(_params(), lr=0.01, n_p=0, n_o=None, steps_per_epoch=5)
    assert opt.phase == ORTHANT


@pytest.mark.parametrize("backend", BACKENDS)
def test_steps_follow_the_definitions_and_l1_false_is_sgd(backend):
    penalised, plain = _params(), [nn.Parameter(torch.randn(6)), nn.Parameter(torch.randn(2, 3))]
    lr, lam, eps = 0.05, 0.4, 0.01
    opt = OBProxSG([{"params": penalised}, {"params": plain, "l1": False}], lr=lr, lam=lam, n_p=1, n_o=1,
                   steps_per_epoch=2, eps=eps, backend=backend)
    for step in range(6):
        orthant = opt.phase == ORTHANT
        _set_grads(penalised + plain, step)
        expected = [ref.obproxsg_step(p.detach(), p.grad, lr, lam, orthant, eps) for p in penalised]
        expected += [p.detach().double() - lr * p.grad.double() for p in plain]
        opt.step()
        for p, e in zip(penalised + plain, expected):
            assert_close(p.detach(), e, msg=f"step {step}")
    assert opt.steps == 6


def test_params_without_grad_are_left_alone():
    params = _params()
    opt = OBProxSG(params, lr=0.1, n_p=1)
    before = [p.detach().clone() for p in params]
    _set_grads(params, 0)
    params[1].grad = None
    opt.step()
    assert torch.equal(params[1].detach(), before[1])
    assert not torch.equal(params[0].detach(), before[0])


def test_group_lr_follows_a_scheduler():
    params = _params()
    opt = OBProxSG(params, lr=0.1, lam=0.0, n_p=100)
    scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    for lr in (0.1, 0.05, 0.025):
        _set_grads(params, 1)
        expected = params[2].detach() - lr * params[2].grad
        opt.step()
        scheduler.step()
        assert_close(params[2].detach(), expected)


def test_closure_loss_is_returned():
    w = nn.Parameter(torch.tensor([1.0, -2.0]))
    opt = OBProxSG([w], lr=0.1, n_p=1)

    def closure():
        opt.zero_grad()
        loss = (w ** 2).sum()
        loss.backward()
        return loss

    assert opt.step(closure).item() == pytest.approx(5.0)
    assert_close(w.detach(), ref.obproxsg_step(torch.tensor([1.0, -2.0]), torch.tensor([2.0, -4.0]),
                                           0.1, 1e-4, False, 0.0))


@pytest.mark.parametrize("backend", BACKENDS)
def test_state_dict_round_trip_mid_run_continues_identically(backend):
    def make(params, **schedule):
        return OBProxSG([{"params": params[:2]}, {"params": params[2:], "l1": False, "lr": 0.02}], lr=0.05,
                        lam=0.3, backend=backend, **schedule)

    params = _params()
    run = make(params, n_p=2, n_o=1, steps_per_epoch=2)
    for step in range(5):
        _set_grads(params, step)
        run.step()
    saved_params = copy.deepcopy([p.detach() for p in params])
    buffer = io.BytesIO()
    torch.save(run.state_dict(), buffer)
    assert run.state_dict()["obproxsg"] == dict(steps=5, phase=ORTHANT, n_p=2, n_o=1, steps_per_epoch=2)

    resumed_params = [nn.Parameter(t.clone()) for t in saved_params]
    resumed = make(resumed_params, n_p=7, n_o=None, steps_per_epoch=9)  # the checkpoint's schedule wins
    buffer.seek(0)
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    assert (resumed.steps, resumed.phase, resumed.n_p, resumed.n_o, resumed.steps_per_epoch) == (5, ORTHANT, 2, 1, 2)
    assert resumed.param_groups[1]["lr"] == 0.02 and resumed.param_groups[1]["l1"] is False
    for step in range(5, 12):
        assert resumed.phase == run.phase
        for ps in (params, resumed_params):
            _set_grads(ps, step)
        run.step()
        resumed.step()
        for a, b in zip(params, resumed_params):
            assert torch.equal(a.detach(), b.detach()), f"step {step}"


def test_backends_agree_on_a_run():
    if "cpp" not in BACKENDS:
        pytest.skip("the C++ backend is unavailable")
    runs = {}
    for backend in ("reference", "cpp"):
        torch.manual_seed(1)
        params = _params(torch.bfloat16) + _params()
        opt = OBProxSG(params, lr=0.05, lam=0.5, n_p=1, n_o=None, steps_per_epoch=3, backend=backend)
        for step in range(6):
            _set_grads(params, step)
            opt.step()
        runs[backend] = params
    for r, c in zip(runs["reference"], runs["cpp"]):
        assert_close(c.detach(), r.detach())


def test_recovers_a_sparse_linear_model():
    """l1-regularised least squares: OBProx-SG finds the support of a sparse truth."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(256, 20, generator=gen)
    truth = torch.zeros(20)
    truth[[1, 4, 9, 15]] = torch.tensor([2.0, -1.5, 1.0, -3.0])
    y = x @ truth + 0.01 * torch.randn(256, generator=gen)
    w = nn.Parameter(0.5 * torch.randn(20, 1, generator=gen))
    opt = OBProxSG([w], lr=0.05, lam=0.05, n_p=20, n_o=None, steps_per_epoch=8)
    for step in range(400):
        batch = slice((step % 8) * 32, (step % 8 + 1) * 32)
        opt.zero_grad()
        ((x[batch] @ w).squeeze(1) - y[batch]).pow(2).mean().div(2).backward()
        opt.step()
    assert opt.phase == ORTHANT
    assert torch.equal(w.detach().squeeze(1) != 0, truth != 0)
    assert density(w) == 4 / 20
    assert_close(w.detach().squeeze(1)[truth != 0], truth[truth != 0], torch.bfloat16)


@pytest.mark.parametrize("kwargs, match", [
    (dict(lr=-0.1), "lr must be >= 0"),
    (dict(lr=0.1, lam=-1.0), "lam must be >= 0"),
    (dict(lr=0.1, eps=-1e-3), "eps must be >= 0"),
    (dict(lr=0.1, n_p=-1), "n_p must be an integer >= 0"),
    (dict(lr=0.1, n_p=2.5), "n_p must be an integer"),
    (dict(lr=0.1, n_o=-2), "n_o must be an integer >= 0"),
    (dict(lr=0.1, n_p=0, n_o=0), "n_p \\+ n_o must be at least 1"),
    (dict(lr=0.1, steps_per_epoch=0), "steps_per_epoch must be an integer >= 1"),
    (dict(lr=0.1, steps_per_epoch=True), "steps_per_epoch must be an integer"),
])
def test_bad_arguments_are_value_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        OBProxSG(_params(), **kwargs)


def test_bad_group_values_and_foreign_state_dicts_are_value_errors():
    params = _params()
    opt = OBProxSG([{"params": params, "lam": -0.5}], lr=0.1)
    _set_grads(params, 0)
    with pytest.raises(ValueError, match="lam must be >= 0"):
        opt.step()
    sgd_state = torch.optim.SGD(params, lr=0.1).state_dict()
    with pytest.raises(ValueError, match="no 'obproxsg' entry"):
        OBProxSG(params, lr=0.1).load_state_dict(sgd_state)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_group_spanning_two_devices_is_a_value_error(backend):
    params = [nn.Parameter(torch.randn(3)), nn.Parameter(torch.randn(3, device="meta"))]
    for p in params:
        p.grad = torch.ones_like(p)
    with pytest.raises(ValueError, match="one device"):
        OBProxSG(params, lr=0.1, backend=backend).step()


def test_density_of_modules_and_tensors():
    conv, linear = nn.Conv2d(2, 3, 3), nn.Linear(4, 5)
    model = nn.Sequential(conv, nn.ReLU(), linear)
    with torch.no_grad():
        conv.weight.copy_(torch.arange(54).reshape(3, 2, 3, 3) % 3)  # 18 of 54 are zero
        conv.bias.zero_()
        linear.weight.fill_(1.0)
        linear.weight[0] = 0  # 4 of 20 are zero
        linear.bias.fill_(float("nan"))  # NaN counts as non-zero
    assert density(model) == pytest.approx((36 + 16) / 74)
    assert density(model, weights_only=False) == pytest.approx((36 + 16 + 5) / (74 + 3 + 5))
    assert density([conv.weight, linear.weight]) == pytest.approx(52 / 74)
    assert density(model.state_dict()) == pytest.approx(52 / 74)
    assert density(conv.bias, weights_only=False) == 0.0
    assert density(torch.zeros(3, 3).fill_(2)) == 1.0


def test_density_bad_input():
    with pytest.raises(ValueError, match="holds no weight tensors"):
        density(nn.Linear(3, 2).bias)
    with pytest.raises(ValueError, match="holds no tensor entries"):
        density([], weights_only=False)
    with pytest.raises(ValueError, match=r"tensors_or_module\[1\] must be a torch.Tensor"):
        density([torch.ones(2, 2), 3.0])
    with pytest.raises(ValueError, match="must be an nn.Module"):
        density(3.0)
