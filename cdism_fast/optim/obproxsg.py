"""The OBProx-SG optimizer (Chen et al., ECML-PKDD 2020) for l1-regularised training.

Minimises f(θ) + λ‖θ‖₁ by alternating two phases: Prox-SG steps (a gradient step
followed by soft thresholding) predict which weights are zero, and orthant steps
(a gradient step inside the current orthant face, projected back onto it) keep
the zeros at zero and turn sign flips into new zeros. The paper "Compressing
Deep Image Super-resolution Models" prunes a pretrained network this way.
"""
from __future__ import annotations

from typing import Optional

import torch

from ..ops import check_nonnegative, obproxsg_step

PROX_SG = "prox_sg"
ORTHANT = "orthant"


def _check_count(name: str, value, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


class OBProxSG(torch.optim.Optimizer):
    """OBProx-SG: Prox-SG phases and orthant phases over phase epochs of optimizer steps.

    Args:
        params: parameters or parameter groups. A group may set ``lr``, ``lam``,
            ``eps`` and ``l1``; ``l1=False`` excludes the group from the penalty
            and gives its parameters a plain SGD step (p <- p - lr*g) in both
            phases, e.g. for biases or normalisation layers.
        lr: step size (>= 0).
        lam: weight λ of the l1 penalty (>= 0).
        n_p: length of a Prox-SG phase, in phase epochs (>= 0).
        n_o: length of an orthant phase, in phase epochs (>= 0); ``None`` (the
            default) means that after the first ``n_p`` phase epochs every step
            is an orthant step (OBProx-SG+).
        steps_per_epoch: optimizer steps per phase epoch (>= 1), normally the
            number of batches of one pass over the training data.
        eps: the orthant projection keeps x_hat only where x_hat*sign(p) > eps (>= 0).
        backend: backend of :func:`cdism_fast.ops.obproxsg_step` ("auto" picks
            the fastest for the parameters' device and dtype).

    Phase epoch ``e = steps // steps_per_epoch`` takes Prox-SG steps while
    ``e % (n_p + n_o) < n_p`` and orthant steps otherwise. The defaults,
    ``n_p=10_000`` with ``steps_per_epoch=1`` and ``n_o=None``, follow the SR
    compression paper's pruning schedule: Prox-SG during the first tenth of its
    100k iterations, then orthant steps to the end. Phases are counted in
    optimizer steps, never in samples: the SR paper's released pruning code
    passes the number of samples per epoch (iterations x batch size) where the
    optimizer counts iterations, so its phase epochs are batch-size times too
    long and its orthant phase never starts within its schedules.

    :attr:`phase` is the phase of the next step; :attr:`steps` the number of
    steps taken. Both, with the schedule, are saved by :meth:`state_dict`, so a
    run resumed from it continues exactly; :meth:`load_state_dict` restores the
    saved schedule, as hyperparameters of the saved param groups are restored.
    A step updates only parameters whose ``grad`` is not ``None``; gradients
    must be dense. Each param group is updated by one fused call, so its
    parameters must share one device: give the parameters of another device a
    group of their own.

    Example (a Prox-SG phase of one step, then orthant steps)::

    >>> import torch
    >>> from cdism_fast.optim import OBProxSG
    >>> weight = torch.nn.Parameter(torch.tensor([[0.5, 0.01], [0.02, -0.5]]))
    >>> optimizer = OBProxSG([weight], lr=0.1, lam=0.2, n_p=1)
    >>> optimizer.phase
    'prox_sg'
    >>> weight.grad = torch.zeros_like(weight)  # the data term's gradient: the optimizer adds the penalty
    >>> optimizer.step()
    >>> weight.data  # soft-thresholded by lr * lam = 0.02
    tensor([[ 0.4800,  0.0000],
            [ 0.0000, -0.4800]])
    >>> optimizer.phase
    'orthant'
    """

    def __init__(self, params, lr: float, lam: float = 1e-4, n_p: int = 10_000, n_o: Optional[int] = None,
                 steps_per_epoch: int = 1, eps: float = 0.0, backend: str = "auto"):
        for name, value in (("lr", lr), ("lam", lam), ("eps", eps)):
            check_nonnegative(name, value)
        self._set_schedule(n_p, n_o, steps_per_epoch)
        self.steps = 0
        self.backend = backend
        super().__init__(params, dict(lr=lr, lam=lam, eps=eps, l1=True))

    def _set_schedule(self, n_p, n_o, steps_per_epoch) -> None:
        _check_count("n_p", n_p, 0)
        if n_o is not None:
            _check_count("n_o", n_o, 0)
            if n_p + n_o == 0:
                raise ValueError("n_p + n_o must be at least 1 (a cycle of phases cannot be empty), got 0")
        _check_count("steps_per_epoch", steps_per_epoch, 1)
        self.n_p, self.n_o, self.steps_per_epoch = n_p, n_o, steps_per_epoch

    @property
    def epoch(self) -> int:
        """Phase epoch of the next step."""
        return self.steps // self.steps_per_epoch

    @property
    def phase(self) -> str:
        """``"prox_sg"`` or ``"orthant"``: the phase of the next step."""
        if self.n_o is None:
            return PROX_SG if self.epoch < self.n_p else ORTHANT
        return PROX_SG if self.epoch % (self.n_p + self.n_o) < self.n_p else ORTHANT

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        orthant = self.phase == ORTHANT
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            grads = [p.grad for p in params]
            if group["l1"]:
                obproxsg_step(params, grads, group["lr"], group["lam"], orthant, group["eps"], self.backend)
            else:
                # A Prox-SG step with lam = 0 is exactly the SGD step.
                obproxsg_step(params, grads, group["lr"], 0.0, False, 0.0, self.backend)
        self.steps += 1
        return loss

    def state_dict(self) -> dict:
        state = super().state_dict()
        state["obproxsg"] = dict(steps=self.steps, phase=self.phase, n_p=self.n_p, n_o=self.n_o,
                                 steps_per_epoch=self.steps_per_epoch)
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        if "obproxsg" not in state_dict:
            raise ValueError("state_dict has no 'obproxsg' entry (step counter and schedule); "
                             "it was not saved by OBProxSG.state_dict()")
        super().load_state_dict({k: v for k, v in state_dict.items() if k != "obproxsg"})
        saved = state_dict["obproxsg"]
        self._set_schedule(saved["n_p"], saved["n_o"], saved["steps_per_epoch"])
        self.steps = saved["steps"]
