#!/usr/bin/env bash
# CI stage: the CUDA variant of fused_linreg compiles (nvcc, no GPU needed), imports, reports
# CUDA kernels in build_info(), and passes the CPU test suite. A CUDA compile error fails it.
#
# The build happens in a copy of the tree, never in place: an editable build writes
# fused_linreg/_C*.so and fused_linreg/_build_meta.json into the tree it builds, which would
# replace the CPU build that .venv (torch 2.13 CPU) imports from this checkout. The copy holds
# the tracked and untracked-but-not-ignored files and is made afresh on every run; the tests run
# there, against the CUDA build.
#
#   VENV                  the CUDA virtual environment (default .venv-cuda)
#   TORCH_SPEC            torch requirement (default torch==2.14.1, the CUDA 13 wheel)
#   CUDA_HOME             CUDA toolkit with nvcc 13 (default /usr/local/cuda)
#   TORCH_CUDA_ARCH_LIST  GPU architectures (default "8.0;9.0")
#   CUDA_BUILD_DIR        the copy that is built and tested (default build/cuda-ci)
#   MAX_JOBS              parallel compile jobs (default 2)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=$(realpath -m "${VENV:-.venv-cuda}")
TORCH_SPEC=${TORCH_SPEC:-torch==2.14.1}
CUDA_BUILD_DIR=$(realpath -m "${CUDA_BUILD_DIR:-build/cuda-ci}")
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-8.0;9.0}
export MAX_JOBS=${MAX_JOBS:-2}
export FUSED_LINREG_CUDA=1

echo "== CUDA venv $VENV ($TORCH_SPEC)"
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip setuptools wheel
"$VENV/bin/python" -m pip install -q "$TORCH_SPEC" -r requirements-dev.txt

echo "== copy of the tree in $CUDA_BUILD_DIR"
rm -rf "$CUDA_BUILD_DIR"
mkdir -p "$CUDA_BUILD_DIR"
git ls-files -z --cached --others --exclude-standard |
  tar --null --ignore-failed-read -T - -cf - | tar -xf - -C "$CUDA_BUILD_DIR"

echo "== CUDA build (CUDA_HOME=$CUDA_HOME, archs $TORCH_CUDA_ARCH_LIST, $MAX_JOBS jobs)"
cd "$CUDA_BUILD_DIR"
log=$CUDA_BUILD_DIR/cuda-build.log
start=$(date +%s)
if ! "$VENV/bin/python" -m pip install -v --no-build-isolation --no-deps -e . >"$log" 2>&1; then
  grep -E -i -B2 -A8 "error" "$log" | tail -n 200 || tail -n 200 "$log"
  echo "CI: the CUDA build failed (full log: $log)" >&2
  exit 1
fi
echo "CUDA build took $(($(date +%s) - start)) s"
# Compiler warnings stay visible (the build's own log is otherwise hidden by pip).
grep -E -i "warning" "$log" | grep -v -E "BuildBackendWarning|editable" ||
  echo "no compiler warnings"

"$VENV/bin/python" - <<'PY'
import fused_linreg
info = fused_linreg.build_info()
print("fused_linreg built:", info)
assert info["cuda"] is True, "the CUDA build reports no CUDA kernels"
PY

echo "== CPU test suite against the CUDA build"
rc=0
"$VENV/bin/python" -m pytest -q -m "not slow" || rc=$?
if [ "$rc" -eq 5 ]; then echo "CI: pytest collected no tests" >&2; exit 1; fi
exit "$rc"
