"""benchmarks/gpu_check.sh end to end on the CPU (``DEVICE=cpu``: quick benchmark shapes).

A GPU run is short: the script must not first fail on its own
plumbing (build step, test run, each benchmark group, the JSON and markdown it
assembles) when it finally meets a GPU. This runs all of it here; only the
device, the CUDA build flag and the benchmark sizes differ.
"""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.cases import GROUP_NAMES

REPO_ROOT = Path(__file__).resolve().parents[1]
# Pinned here, not read from GROUP_NAMES alone: a group dropped from the suite must fail this test.
GROUPS = {"losses", "attention", "optimizer", "distill", "layout", "precision", "models"}


def test_the_suite_declares_the_groups_the_check_must_run():
    assert set(GROUP_NAMES) == GROUPS


def test_dry_run_writes_every_group(tmp_path):
    if shutil.which("bash") is None:
        pytest.skip("bash is not installed")
    env = dict(os.environ, DEVICE="cpu", RESULTS=str(tmp_path), PYTHON=sys.executable, BUDGET_S="900",
               MAX_JOBS="2")
    env.pop("OUT", None)
    result = subprocess.run(["bash", "benchmarks/gpu_check.sh"], cwd=REPO_ROOT, env=env, capture_output=True,
                            text=True, timeout=1200)
    output = (result.stdout + result.stderr)[-12000:]
    assert result.returncode == 0, output
    (summary_path,) = tmp_path.glob("*_cpu-dry-run_gpu-check.json")
    summary = json.loads(summary_path.read_text())
    assert summary["build_ok"] and summary["tests_ok"], output
    assert set(summary["benchmarks"]) == GROUPS, output
    for group, payload in summary["benchmarks"].items():
        assert payload["measurements"], group
        assert all(m["seconds"] > 0 for m in payload["measurements"]), group
    table = summary_path.with_suffix(".md").read_text()
    for group in GROUPS:
        assert f"## {group} (" in table
    assert "| window_attention |" in table and "| obproxsg_step |" in table
    assert "| stage-3 step |" in table and "| cached |" in table and "| live |" in table
    assert "| layout: stage-3 step |" in table and "| channels_last |" in table and "| contiguous |" in table
