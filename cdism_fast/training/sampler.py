"""A deterministic, resumable, sharded stream of sample indices.

Epoch ``e`` is a permutation of the data set drawn from ``(seed, e)`` alone;
like torch's ``DistributedSampler`` it is padded (by wrapping around) to a
multiple of the number of ranks and rank ``r`` takes every ``world_size``-th
entry from ``r``. The stream of one rank is its epochs back to back, without
end, so a batch may span two epochs and no sample is dropped. The position is
one integer (samples this rank has consumed), which makes a resumed stream
continue exactly where the interrupted one stopped, whatever the DataLoader
had prefetched.
"""
from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch.utils.data import Sampler

__all__ = ["ShardedStreamSampler"]

# Mixes the epoch into the seed; a large odd constant keeps (seed, epoch) pairs apart.
_EPOCH_STRIDE = 0x9E3779B97F4A7C15


def _check_count(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


class ShardedStreamSampler(Sampler[int]):
    """Infinite index stream for rank ``rank`` of ``world_size``, starting after ``start`` samples.

    Each rank's epoch holds ``ceil(length / world_size)`` samples. Use it as
    the ``sampler`` of a DataLoader with a ``batch_size``; the DataLoader then
    never ends, and the caller decides how many batches to take.
    """

    def __init__(self, length: int, seed: int = 0, rank: int = 0, world_size: int = 1, start: int = 0,
                 shuffle: bool = True):
        self.length = _check_count("length (the data set size)", length, 1)
        self.world_size = _check_count("world_size", world_size, 1)
        if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < world_size:
            raise ValueError(f"rank must be an integer in [0, {world_size}), got {rank!r}")
        self.rank, self.seed, self.shuffle = rank, int(seed), shuffle
        self.start = _check_count("start", start, 0)
        self.per_rank = math.ceil(length / world_size)

    def epoch_indices(self, epoch: int) -> torch.Tensor:
        """The indices this rank takes in ``epoch`` (``per_rank`` of them)."""
        if self.shuffle:
            generator = torch.Generator().manual_seed((self.seed + epoch * _EPOCH_STRIDE) % 2**63)
            order = torch.randperm(self.length, generator=generator)
        else:
            order = torch.arange(self.length)
        padded = self.per_rank * self.world_size
        if padded > self.length:
            order = torch.cat([order, order.repeat(math.ceil(padded / self.length))[: padded - self.length]])
        return order[self.rank: padded: self.world_size]

    def __iter__(self) -> Iterator[int]:
        epoch, offset = divmod(self.start, self.per_rank)
        while True:
            yield from self.epoch_indices(epoch)[offset:].tolist()
            epoch, offset = epoch + 1, 0

    def state_dict(self) -> dict:
        return {"seed": self.seed, "rank": self.rank, "world_size": self.world_size, "length": self.length,
                "start": self.start}
