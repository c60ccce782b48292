#!/usr/bin/env bash
# GPU validation of the CUDA path, in one call on a GPU machine (no network needed): builds
# fused_linreg with its CUDA kernels against the torch installed there, runs the CUDA tests
# (tests/test_cuda.py and every device-parametrized test on cuda), gradcheck on CUDA, the
# benchmark in bfloat16 (eager PyTorch, torch.compile and cuBLASLt's bias+ReLU epilogue as
# baselines) and the optimizer step against torch.optim.SGD(fused=True); ends with a table.
# Every stage runs even if an earlier one failed; the exit status is non-zero if any failed.
#
# Logs and JSON go to $OUT (default build/gpu-check): env.json, build.log, pytest-cuda.log/.xml,
# gradcheck.log, bench.txt/.json, sgd_bench.txt/.json, stages.tsv, summary.json.
#
# Builds in place (pip install -e .): run it in a checkout meant for the GPU, not in a tree whose
# CPU build other people import.
#   PYTHON                interpreter with a CUDA build of torch and pytest (default python3)
#   CUDA_HOME             CUDA toolkit (default /usr/local/cuda)
#   TORCH_CUDA_ARCH_LIST  default: the GPU's own compute capability (9.0 on an H100)
#   MAX_JOBS              parallel compile jobs (default: the CPU count)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=$(realpath -m "${OUT:-build/gpu-check}")
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
export FUSED_LINREG_CUDA=1
export MAX_JOBS=${MAX_JOBS:-$(nproc)}
# The card, torch and commit, first: also fails early when no GPU is visible.
"$PY" scripts/gpu_check_report.py --environment "$OUT" || exit 1
if [ -z "${TORCH_CUDA_ARCH_LIST:-}" ]; then
  TORCH_CUDA_ARCH_LIST=$("$PY" -c 'import json, sys; print(json.load(sys.stdin)["arch"])' \
    <"$OUT/env.json")
fi
export TORCH_CUDA_ARCH_LIST

failed=0
: >"$OUT/stages.tsv"
# stage NAME LOG COMMAND...: runs the command with its output in $OUT/LOG; records the outcome
# in $OUT/stages.tsv.
stage() {
  local name=$1 log=$2 start rc=0 status
  shift 2
  echo "== $name (log: $OUT/$log)"
  start=$(date +%s)
  "$@" >"$OUT/$log" 2>&1 || rc=$?
  if [ "$rc" -eq 0 ]; then
    status="ok ($(($(date +%s) - start)) s)"
  else
    status="FAILED (exit $rc, $(($(date +%s) - start)) s)"
    failed=1
    tail -n 30 "$OUT/$log"
  fi
  printf '%s\t%s\n' "$name" "$status" >>"$OUT/stages.tsv"
  echo "   $status"
}

stage build build.log "$PY" -m pip install -v --no-build-isolation --no-deps -e .
stage build_info build_info.log "$PY" -c \
  'import fused_linreg; i = fused_linreg.build_info(); print(i); assert i["cuda"], "no CUDA kernels"'
# test_cuda.py, and the cuda cases of the device-parametrized tests (slow ones included).
stage tests pytest-cuda.log "$PY" -m pytest -q -rs -k cuda --junitxml="$OUT/pytest-cuda.xml"
stage gradcheck gradcheck.log "$PY" -m fused_linreg.gradcheck --device cuda
stage bench bench.txt "$PY" -m fused_linreg.bench --device cuda --dtype bfloat16 \
  --cases all,8192x4096x4096,65536x256x256 --json "$OUT/bench.json"
stage sgd_bench sgd_bench.txt "$PY" scripts/bench_sgd_step.py --device cuda --dtype bfloat16 \
  --json "$OUT/sgd_bench.json"

"$PY" scripts/gpu_check_report.py "$OUT"
exit "$failed"
