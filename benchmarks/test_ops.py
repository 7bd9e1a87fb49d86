"""pytest-benchmark view of the same cases: ``pytest benchmarks/`` times every backend of
every case, grouped by case so backends sit side by side (``--benchmark-group-by=group``).

Set ``CDISM_BENCH_DEVICE=cuda`` to benchmark on the GPU, ``CDISM_BENCH_QUICK=1``
for the small shapes and ``CDISM_BENCH_HOT=1`` to keep one input set (see cases.py).
A case group that cannot be built here (a piece missing) shows up as one skipped
test naming the reason.
"""
import os

import pytest
import torch

from .cases import all_cases
from .harness import synchronize

DEVICE = torch.device(os.environ.get("CDISM_BENCH_DEVICE", "cpu"))


def _collect():
    params = []
    for group, build in all_cases(DEVICE, quick=os.environ.get("CDISM_BENCH_QUICK") == "1",
                                  hot=os.environ.get("CDISM_BENCH_HOT") == "1"):
        try:
            cases = build()
        except Exception as exc:
            reason = f"{group} cases could not be built: {type(exc).__name__}: {exc}"
            params.append(pytest.param(None, None, id=group, marks=pytest.mark.skip(reason=reason)))
            continue
        for case in cases:
            for backend in case.runners:
                params.append(pytest.param(case, backend, id=f"{case.op}-{case.shape}-{case.mode}-{backend}"))
    return params


@pytest.mark.parametrize("case,backend", _collect())
def test_backend(case, backend, benchmark):
    benchmark.group = f"{case.op} | {case.shape} | {case.mode}"
    benchmark.extra_info["backend"] = backend
    fn = case.runners[backend]
    try:
        fn()
    except NotImplementedError as refused:  # e.g. FlexAttention's backward on the CPU
        pytest.skip(f"{backend} refuses this case here: {refused}")

    def timed():
        fn()
        synchronize(DEVICE)

    benchmark.pedantic(timed, rounds=5, warmup_rounds=2)
