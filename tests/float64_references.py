"""Independent float64 formulations of the ops (NumPy; the OBProx-SG step in plain Python), the oracles of the
tests.

Written from the definitions (README / issue), with NumPy's own reflect padding
(no edge repeat, like torch's "reflect") and explicit shifted-slice sums instead
of convolutions, so that they share no code path with the package.
"""
import numpy as np
import torch

from cdism_fast.ops import CHARBONNIER_EPS  # the paper's value, a constant of the definition

BINOMIAL = np.array([1.0, 4.0, 6.0, 4.0, 1.0])


def as_float64(t: torch.Tensor) -> np.ndarray:
    return t.detach().double().numpy()


def _pad_hw(a: np.ndarray, top: int, bottom: int, left: int, right: int) -> np.ndarray:
    return np.pad(a, [(0, 0)] * (a.ndim - 2) + [(top, bottom), (left, right)], mode="reflect")


def blur(a: np.ndarray, scale: float = 1.0) -> np.ndarray:
    """scale * the 5x5 binomial filter outer(b, b)/256, reflect padding of 2."""
    h, w = a.shape[-2:]
    padded = _pad_hw(a, 2, 2, 2, 2)
    out = np.zeros_like(a)
    for i in range(5):
        for j in range(5):
            out += scale * BINOMIAL[i] * BINOMIAL[j] / 256 * padded[..., i:i + h, j:j + w]
    return out


def highpass(a: np.ndarray) -> np.ndarray:
    return a - blur(a)


def pad_to_pyramid(a: np.ndarray, levels: int) -> np.ndarray:
    multiple = 2 ** (levels - 1)
    h, w = a.shape[-2:]
    return _pad_hw(a, 0, -h % multiple, 0, -w % multiple)


def pool(a: np.ndarray) -> np.ndarray:
    h, w = a.shape[-2:]
    return a.reshape(*a.shape[:-2], h // 2, 2, w // 2, 2).mean(axis=(-3, -1))


def expand(r: np.ndarray) -> np.ndarray:
    h, w = r.shape[-2:]
    up = np.zeros((*r.shape[:-2], 2 * h, 2 * w))
    up[..., ::2, ::2] = r
    return blur(up, scale=4.0)


def pyramid(a: np.ndarray, levels: int) -> list:
    g = pad_to_pyramid(a, levels)
    out = []
    for _ in range(levels - 1):
        r = pool(blur(g))
        out.append(g - expand(r))
        g = r
    return out + [g]


def reduce(a: np.ndarray, reduction: str) -> float:
    return float(a.mean() if reduction == "mean" else a.sum())


def laplacian_loss(x: np.ndarray, y: np.ndarray, levels: int, reduction: str) -> float:
    return sum(2 ** i * reduce(np.abs(lx - ly), reduction)
               for i, (lx, ly) in enumerate(zip(pyramid(x, levels), pyramid(y, levels))))


def charbonnier(x: np.ndarray, y: np.ndarray, eps: float, reduction: str):
    loss = np.sqrt((x - y) ** 2 + eps ** 2)
    return loss if reduction == "none" else reduce(loss, reduction)


def distillation_loss(student, teacher, gt, alpha, student_loss, levels, reduction) -> float:
    if student_loss == "l1":
        stu = reduce(np.abs(student - gt), reduction)
    else:
        stu = charbonnier(student, gt, CHARBONNIER_EPS, reduction)
    return (alpha * stu + laplacian_loss(student, teacher, levels, reduction)
            + laplacian_loss(highpass(student), highpass(teacher), levels, reduction))


def layouts(x: torch.Tensor) -> dict:
    """``x``'s values in several memory layouts: channels_last, a strided view and
    column-major planes, each a leaf tensor (``requires_grad`` can be set on it)."""
    strided = torch.zeros(*x.shape[:-1], 2 * x.shape[-1], dtype=x.dtype)[..., ::2]
    strided.copy_(x)
    return {
        "channels_last": x.detach().contiguous(memory_format=torch.channels_last),
        "strided": strided,
        "column_major": x.detach().transpose(-1, -2).contiguous().transpose(-1, -2),
    }


def _sign(v):
    return (v > 0) - (v < 0)


def obproxsg_step(param, grad, lr, lam, orthant, eps):
    """One OBProx-SG step from its definitions, element by element in float64 Python arithmetic."""
    out = []
    for p, g in zip(param.double().flatten().tolist(), grad.double().flatten().tolist()):
        if orthant:
            zeta = _sign(p)
            g_hat = g + lam * zeta if zeta != 0 else 0.0
            x_hat = p - lr * g_hat
            out.append(x_hat if x_hat * zeta > eps else 0.0)
        else:
            z = p - lr * g
            out.append(_sign(z) * max(abs(z) - lr * lam, 0.0))
    return torch.tensor(out, dtype=torch.float64).reshape(param.shape)
