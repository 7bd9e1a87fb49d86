"""How sparse a model is: the fraction of its weights that are not zero."""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Union

import torch
from torch import nn


def density(tensors_or_module: Union[nn.Module, torch.Tensor, Mapping[str, torch.Tensor], Iterable[torch.Tensor]],
            weights_only: bool = True) -> float:
    """Fraction of non-zero entries (NaN counts as non-zero) in a module or tensors.

    ``tensors_or_module`` is a module (its parameters), a state dict (its
    tensors), one tensor or an iterable of tensors. With ``weights_only`` (the
    default) only tensors of two or more dimensions are counted: the weights of
    convolutions, linear layers and attention projections, which the pruning
    stage sparsifies, and not biases, normalisation scales or other vectors.
    Parameters shared by several submodules of a module are counted once.

    >>> import torch
    >>> from cdism_fast.optim import density
    >>> density(torch.tensor([[0.0, 1.0], [2.0, 0.0]]))
    0.5
    >>> layer = torch.nn.Linear(4, 2)
    >>> with torch.no_grad():
    ...     layer.weight[0] = 0.0
    >>> density(layer), density(layer, weights_only=False)  # weights only: the bias is not counted
    (0.5, 0.6)
    """
    if isinstance(tensors_or_module, nn.Module):
        tensors = list(tensors_or_module.parameters())
    elif isinstance(tensors_or_module, torch.Tensor):
        tensors = [tensors_or_module]
    elif isinstance(tensors_or_module, Mapping):
        tensors = list(tensors_or_module.values())
    elif isinstance(tensors_or_module, Iterable):
        tensors = list(tensors_or_module)
    else:
        raise ValueError(f"tensors_or_module must be an nn.Module, a tensor, a state dict or an iterable of "
                         f"tensors, got {type(tensors_or_module).__name__}")
    for i, t in enumerate(tensors):
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"tensors_or_module[{i}] must be a torch.Tensor, got {type(t).__name__}")
    counted = [t for t in tensors if t.dim() >= 2] if weights_only else tensors
    total = sum(t.numel() for t in counted)
    if total == 0:
        kind = "weight tensors (2 or more dimensions)" if weights_only else "tensor entries"
        raise ValueError(f"tensors_or_module holds no {kind} to measure ({len(tensors)} tensors given)")
    nonzero = sum(int(torch.count_nonzero(t.detach())) for t in counted)
    return nonzero / total
