"""The Triton kernels in Triton's interpreter, on CPU tensors: the ``interpreter`` cases of the op modules.

``@triton.jit`` reads ``TRITON_INTERPRET`` when the kernels are defined, that is
when cdism_fast is imported, so the Triton cases of tests/test_<op>.py (see
tests/op_targets.py) cannot run in this process: this test runs them in a fresh
one with ``TRITON_INTERPRET=1`` and reports its failures. Shapes are small: the
interpreter runs programs one after another at about a millisecond per operation.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")

#: The modules of the ops with a Triton backend.
OP_MODULES = ("test_window_attention.py", "test_laplacian.py", "test_distillation.py")


def test_interpreter_cases_of_the_op_modules():
    here = Path(__file__).resolve().parent
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=os.pathsep.join(sys.path))
    result = subprocess.run([sys.executable, "-m", "pytest", *(str(here / name) for name in OP_MODULES),
                             "-m", "interpreter", "-q", "-p", "no:cacheprovider", "-p", "no:randomly", "-x"],
                            env=env, capture_output=True, text=True, timeout=900)
    tail = (result.stdout + result.stderr)[-12000:]
    assert result.returncode == 0, f"interpreter run failed:\n{tail}"
    print(result.stdout.strip().splitlines()[-1])
