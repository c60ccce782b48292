#!/usr/bin/env bash
# GPU validation of the CUDA path, in one call on a GPU machine (no network needed): builds
# fused_linreg with its CUDA kernels against the torch installed there, runs the CUDA tests
# (tests/test_cuda.py and every device-parametrized test on cuda), gradcheck on CUDA, the
# benchmark in bfloat16 (eager PyTorch, torch.compile and cuBLASLt's bias+ReLU epilogue as
# baselines) and the optimizer step against torch.optim.SGD(fused=True); ends with a table.
#
# It always comes back with its summary: every stage runs under a time limit (its own cap, and
# never more than what is left of GPU_CHECK_BUDGET_S, less a reserve for the summary), a stage
# that fails or times out does not stop the next ones (stages that need the build are skipped
# when it failed, GPU stages when no GPU is visible), and the summary is written on every exit,
# an interrupted one included. The exit status is non-zero if any stage did not pass.
#
# Logs and JSON go to $OUT (default build/gpu-check): env.json, build.log, pytest-cuda.log/.xml,
# gradcheck.log, bench.txt/.json, sgd_bench.txt/.json, stages.tsv, summary.json.
#
# Builds in place (pip install -e .): run it in a checkout meant for the GPU, not in a tree whose
# CPU build other people import.
#   PYTHON                interpreter with a CUDA build of torch and pytest (default python3)
#   CUDA_HOME             CUDA toolkit (default /usr/local/cuda)
#   TORCH_CUDA_ARCH_LIST  default: the GPU's own compute capability (9.0 on an H100), else 9.0
#   MAX_JOBS              parallel compile jobs (default: the CPU count)
#   GPU_CHECK_BUDGET_S    seconds the whole check may take (default 570: calls on the GPU
#                         machines are limited to 10 minutes)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=$(realpath -m "${OUT:-build/gpu-check}")
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
export FUSED_LINREG_CUDA=1
export MAX_JOBS=${MAX_JOBS:-$(nproc)}
deadline=$(($(date +%s) + ${GPU_CHECK_BUDGET_S:-570}))
reserve=15  # seconds kept for the summary

# The torch and nvcc the build will use, before anything else. Every command below that could
# hang has a time limit, these included.
echo "== torch: $(timeout 60 "$PY" -c 'import torch; print(torch.__version__, "CUDA", torch.version.cuda)' 2>&1)"
echo "== nvcc: $(timeout 60 "$CUDA_HOME/bin/nvcc" --version 2>&1 | grep -m 1 release || echo "not found at $CUDA_HOME")"

failed=0
# Nothing of an earlier run may pass for this one's.
rm -f "$OUT"/{env.json,pytest-cuda.xml,bench.json,sgd_bench.json,summary.json}
: >"$OUT/stages.tsv"
record() {  # record NAME STATUS
  printf '%s\t%s\n' "$1" "$2" >>"$OUT/stages.tsv"
  echo "   $2"
}

summary() { timeout 60 "$PY" scripts/gpu_check_report.py "$OUT" || echo "gpu_check: no summary table" >&2; }
trap summary EXIT
# Interrupted: the running stage is stopped and recorded, then the summary is written (EXIT).
stage_name="" stage_pid=""
interrupted() {
  echo "gpu_check: interrupted" >&2
  if [ -n "$stage_pid" ]; then
    kill -TERM "$stage_pid" 2>/dev/null
    wait "$stage_pid" 2>/dev/null
    record "$stage_name" "INTERRUPTED"
  fi
  exit 130
}
trap interrupted INT TERM

# seconds_for CAP: CAP, or what the budget leaves when that is less.
seconds_for() {
  local left=$((deadline - $(date +%s) - reserve))
  echo $((left < $1 ? left : $1))
}

# stage NAME CAP LOG COMMAND...: runs the command for at most seconds_for CAP, output in
# $OUT/LOG, and records ok / FAILED / TIMEOUT / SKIPPED in stages.tsv.
stage() {
  local name=$1 log=$3 start rc=0 limit
  limit=$(seconds_for "$2")
  shift 3
  echo "== $name (at most $limit s, log: $OUT/$log)"
  if ((limit < 5)); then
    failed=1
    record "$name" "SKIPPED (time budget spent)"
    return 1
  fi
  start=$(date +%s)
  # In the background, so that a signal reaches the trap at once rather than after the stage.
  timeout --kill-after=10 "$limit" "$@" >"$OUT/$log" 2>&1 </dev/null &
  stage_name=$name stage_pid=$!
  wait "$stage_pid" || rc=$?
  stage_pid=""
  if [ "$rc" -eq 0 ]; then
    record "$name" "ok ($(($(date +%s) - start)) s)"
    return 0
  fi
  failed=1
  tail -n 30 "$OUT/$log"
  if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
    record "$name" "TIMEOUT (after $limit s)"
  else
    record "$name" "FAILED (exit $rc, $(($(date +%s) - start)) s)"
  fi
  return 1
}

skip() {  # skip NAME... REASON
  local reason=${*: -1} name
  failed=1
  for name in "${@:1:$#-1}"; do
    echo "== $name"
    record "$name" "SKIPPED ($reason)"
  done
}

# The card, torch, nvcc and commit (env.json is written even when no GPU is visible).
gpu=1
stage environment 60 environment.log "$PY" scripts/gpu_check_report.py --environment "$OUT" &&
  cat "$OUT/environment.log" || gpu=0
if [ -z "${TORCH_CUDA_ARCH_LIST:-}" ]; then
  TORCH_CUDA_ARCH_LIST=$(timeout 60 "$PY" -c 'import json, sys; print(json.load(sys.stdin).get("arch") or "9.0")' \
    <"$OUT/env.json" 2>/dev/null || echo 9.0)
fi
export TORCH_CUDA_ARCH_LIST

built=0
if stage build 300 build.log "$PY" -m pip install -v --no-build-isolation --no-deps -e .; then
  stage build_info 60 build_info.log "$PY" -c \
    'import fused_linreg; i = fused_linreg.build_info(); print(i); assert i["cuda"], "no CUDA kernels"' &&
    built=1
else
  skip build_info "the build failed"
fi
if [ "$built" -eq 0 ]; then
  skip tests gradcheck bench sgd_bench "no CUDA build"
elif [ "$gpu" -eq 0 ]; then
  skip tests gradcheck bench sgd_bench "no GPU visible"
else
  # test_cuda.py, and the cuda cases of the device-parametrized tests (slow ones included);
  # pytest-timeout ends a hanging test, and the session in time to write its report.
  timeouts=()
  if timeout 60 "$PY" -c 'import pytest_timeout' 2>/dev/null; then
    timeouts=(--timeout=120)
    if timeout 60 "$PY" -m pytest --help 2>/dev/null | grep -q -- --session-timeout; then
      session=$(($(seconds_for 240) - 20))
      timeouts+=("--session-timeout=$((session > 5 ? session : 5))")
    fi
  fi
  stage tests 240 pytest-cuda.log "$PY" -m pytest -q -rs -k cuda "${timeouts[@]}" \
    --junitxml="$OUT/pytest-cuda.xml"
  stage gradcheck 60 gradcheck.log "$PY" -m fused_linreg.gradcheck --device cuda
  stage bench 120 bench.txt "$PY" -m fused_linreg.bench --device cuda --dtype bfloat16 \
    --cases all,8192x4096x4096,65536x256x256 --json "$OUT/bench.json"
  stage sgd_bench 60 sgd_bench.txt "$PY" scripts/bench_sgd_step.py --device cuda \
    --dtype bfloat16 --json "$OUT/sgd_bench.json"
fi
exit "$failed"
