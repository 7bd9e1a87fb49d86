#!/usr/bin/env bash
# The GPU checks in one go (within 8 minutes on an H100):
#   1. build cdism_fast._C and _C_cuda in place for the visible GPU,
#   2. run the GPU tests (the `gpu` cases of the op test modules: every CUDA and Triton
#      kernel against the float64 reference at training shapes, fp32/fp16/bf16),
#   3. run the benchmark suite on cuda, one case group at a time while time is left, in the
#      order of benchmarks.cases.GROUP_NAMES (losses, attention, optimizer; distill: the
#      stage-3 step with the live teacher, also under bf16 autocast, against the step reading
#      cached teacher outputs; layout: each family in both memory layouts; precision: each family's
#      training step and inference in fp32 and under bf16 autocast; models).
# Writes benchmarks/results/<date>_<gpu>_gpu-check.{json,md} (tests summary and
# every benchmark table) and, when $OUT is set (a folder to collect them in), copies them and
# the full log there.
#
#   bash benchmarks/gpu_check.sh            # PYTHON=python3 and BUDGET_S=480 by default
#   DEVICE=cpu RESULTS=/tmp/x bash benchmarks/gpu_check.sh
#                                           # dry run of the whole script on the CPU (quick
#                                           # benchmark shapes; tests/test_gpu_check_script.py)
set -uo pipefail
cd "$(dirname "$0")/.."
START=$(date +%s)
BUDGET_S=${BUDGET_S:-480}
PY=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}
RESULTS=${RESULTS:-benchmarks/results}
case "$DEVICE" in
  cuda) BUILD_CUDA=1; QUICK=() ;;
  cpu) BUILD_CUDA=0; QUICK=(--quick) ;;
  *) echo "DEVICE must be cuda or cpu (dry run), got '$DEVICE'"; exit 2 ;;
esac
WORK=$(mktemp -d)
LOG=$WORK/gpu_check.log
mkdir -p "$RESULTS"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec > >(tee "$LOG") 2>&1

left() { echo $((BUDGET_S - ($(date +%s) - START))); }
step() { echo; echo "=== $* ($(($(date +%s) - START)) s elapsed)"; }

step "environment"
if [ "$DEVICE" = cuda ]; then
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv,noheader || true
fi
$PY -c "import importlib.util as u, torch; triton = u.find_spec('triton') and __import__('triton'); \
print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton and triton.__version__)"
GPU=$($PY -c "import re, sys, torch; name = torch.cuda.get_device_name() if sys.argv[1] == 'cuda' else 'cpu-dry-run'
print(re.sub(r'[^A-Za-z0-9]+', '-', name).strip('-').lower())" "$DEVICE") || { echo "no $DEVICE device"; exit 1; }
STEM="$RESULTS/$(date +%F)_${GPU}_gpu-check"

step "build (in place, for the visible GPU; the dry run into a temporary folder)"
if [ -z "${CUDA_HOME:-}" ]; then
  # An nvcc wrapper script outside its toolkit would make torch guess the toolkit wrong.
  if [ -x /usr/local/cuda/bin/nvcc ]; then export CUDA_HOME=/usr/local/cuda
  elif command -v nvcc >/dev/null; then export CUDA_HOME=$(dirname "$(dirname "$(command -v nvcc)")"); fi
fi
echo "CUDA_HOME=${CUDA_HOME:-unset}"
BUILD_OK=1
if [ "$DEVICE" = cpu ]; then
  # The dry run checks that the build works, into its own folder: the extension in the tree may be
  # loaded meanwhile by other processes (a parallel test run), and is not replaced under them.
  BUILD_INTO=(--build-lib "$WORK/build-lib" --build-temp "$WORK/build-temp")
else
  BUILD_INTO=(--inplace)
fi
CDISM_CUDA=$BUILD_CUDA MAX_JOBS=${MAX_JOBS:-16} $PY setup.py -q build_ext "${BUILD_INTO[@]}" || BUILD_OK=0
$PY -c "from cdism_fast import _extension as e; s = e.statuses(); print({k: (v.loaded, v.how, v.error) for k, v in s.items()})"

step "GPU tests"
TESTS_OK=1
GPU_TESTS="tests/test_gaussian.py tests/test_obproxsg.py tests/test_laplacian.py tests/test_distillation.py
  tests/test_window_attention.py tests/test_dispatch.py"
timeout $(( $(left) - 200 > 60 ? $(left) - 200 : 60 )) $PY -m pytest $GPU_TESTS -m gpu -q -rfE \
  -p no:cacheprovider --durations=5 --junitxml="$WORK/tests.xml"
rc=$?
# On the CPU every case skips itself (or none is selected: pytest's 5); on a GPU nothing run is a failure.
if [ $rc -ne 0 ] && ! { [ "$DEVICE" = cpu ] && [ $rc -eq 5 ]; }; then TESTS_OK=0; fi

step "benchmarks"
# Each group saves into its own folder (the runner names files by date, device and torch only).
BENCH_GROUPS=$($PY -c "from benchmarks.cases import GROUP_NAMES; print(*GROUP_NAMES)") \
  || { echo "[benchmarks] cannot list the groups (benchmarks.cases failed to import): none run"; BENCH_GROUPS=""; }
for group in $BENCH_GROUPS; do
  remaining=$(left)
  if [ "$remaining" -lt 45 ]; then echo "[$group] skipped: ${remaining} s left of the ${BUDGET_S} s budget"; continue; fi
  timeout $((remaining - 15)) $PY -c "import sys; from pathlib import Path; import benchmarks.harness as h
h.RESULTS_DIR = Path(sys.argv[1])
from benchmarks.__main__ import main
sys.exit(main(['--device', sys.argv[3], '--only', sys.argv[2], *sys.argv[4:]]))" "$WORK/$group" "$group" \
    "$DEVICE" "${QUICK[@]}" || echo "[$group] stopped or failed"
  saved=$(ls "$WORK/$group"/*.json 2>/dev/null | head -1)
  if [ -n "$saved" ]; then cp "$saved" "$WORK/bench_$group.json"; fi
done

step "results"
$PY - "$STEM" "$WORK" "$BUILD_OK" "$TESTS_OK" <<'EOF'
import glob, json, os, sys, xml.etree.ElementTree as ET
from benchmarks.harness import Measurement, format_table

stem, work, build_ok, tests_ok = sys.argv[1], sys.argv[2], sys.argv[3] == "1", sys.argv[4] == "1"
summary = {"build_ok": build_ok, "tests_ok": tests_ok, "tests": {}, "benchmarks": {}}
lines = [f"# GPU check: {os.path.basename(stem)}", "", f"build: {'ok' if build_ok else 'FAILED'}; "
         f"GPU tests: {'passed' if tests_ok else 'FAILED or incomplete'}", ""]
if os.path.exists(f"{work}/tests.xml"):
    suite = ET.parse(f"{work}/tests.xml").getroot().iter("testsuite").__next__()
    summary["tests"] = {k: suite.get(k) for k in ("tests", "failures", "errors", "skipped", "time")}
    lines.append("tests: " + ", ".join(f"{k} {v}" for k, v in summary["tests"].items()))
    for case in suite.iter("testcase"):
        problem = case.find("failure") if case.find("failure") is not None else case.find("error")
        if problem is not None:
            lines.append(f"- FAILED {case.get('name')}: {(problem.get('message') or '')[:300]}")
for path in sorted(glob.glob(f"{work}/bench_*.json")):
    group = os.path.basename(path)[6:-5]
    payload = json.load(open(path))
    summary["benchmarks"][group] = payload
    rows = [Measurement(**{k: v for k, v in m.items() if k != "gbps"}) for m in payload["measurements"]]
    bandwidth = payload["copy_bandwidth_gbps"] * 1e9
    lines += ["", f"## {group} ({payload['device']}, torch {payload['torch']}, copy {payload['copy_bandwidth_gbps']:.0f} GB/s; "
              f"{payload['inputs']})",
              "", format_table(rows, bandwidth)]
json.dump(summary, open(f"{stem}.json", "w"), indent=2)
open(f"{stem}.md", "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
print(f"\nwrote {stem}.json and {stem}.md")
EOF
sleep 1  # let tee write the log's last lines
if [ -n "${OUT:-}" ]; then cp "$STEM.json" "$STEM.md" "$LOG" "$OUT"/ 2>/dev/null; cp "$WORK/tests.xml" "$OUT"/ 2>/dev/null; fi
echo "done in $(($(date +%s) - START)) s"
[ "$BUILD_OK" = 1 ] && [ "$TESTS_OK" = 1 ]
