"""Every Triton kernel compiles for CUDA sm_86 and sm_90 without a GPU (``triton.compile``).

The specialisations are recorded from real launches of the host code (see
cdism_fast/ops/triton/compile_report.py, also runnable as
``python -m cdism_fast.ops.triton.compile_report``); each must fit the
architecture's shared memory per block. The table of registers, local memory
(spills) and shared memory is printed (pytest -s shows it).
"""
import os

import pytest

pytest.importorskip("triton")
if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
    pytest.skip("kernels are defined for the interpreter in this process", allow_module_level=True)

from cdism_fast.ops.triton import compile_report  # noqa: E402

#: Largest shared memory a block may take (opt-in), per architecture.
SHARED_LIMIT = {86: 99 * 1024, 90: 227 * 1024}


def test_every_kernel_compiles_for_sm86_and_sm90():
    launches = compile_report.launches()
    kernels = {launch.name for launch in launches}
    assert kernels == {"_window_attention_fwd_kernel", "_window_attention_bwd_kernel", "_pyramid_forward_kernel",
                       "_pyramid_backward_kernel"}
    rows, too_large = [], []
    for launch in launches:
        for arch in compile_report.ARCHS:
            result = compile_report.compile_launch(launch, arch)
            rows.append(result.row())
            if result.shared_bytes > SHARED_LIMIT[arch]:
                too_large.append(result.row())
    print("\n" + compile_report.HEADER + "\n" + "\n".join(rows))
    assert not too_large, "shared memory over the per-block limit:\n" + "\n".join(too_large)
