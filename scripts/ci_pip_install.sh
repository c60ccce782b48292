#!/usr/bin/env bash
# CI stage: a plain `pip install .` (with build isolation, as a new user types it) into a fresh
# venv that holds torch builds against that torch, without putting another torch into the build
# environment, and the installed package imports and computes what F.linear does. Then the same
# with pip's venv isolation (`--use-feature venv-isolation`), where the backend finds the target
# through pip's process rather than its own interpreter.
#
# The venv holds only pip and torch (no setuptools, ninja or fused_linreg of ours); it is kept
# between runs, with fused_linreg uninstalled first, so that a rerun reuses the object files
# (build/objects-*: a new torch install would touch every header and rebuild everything).
#
#   TORCH_SPEC   torch in the venv (default torch==2.13.0, the local CPU wheel)
#   PIP_CI_DIR   where the venv and logs go (default build/ci-pip-install)
#   MAX_JOBS     parallel compile jobs (default 2)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
WORK=$(realpath -m "${PIP_CI_DIR:-build/ci-pip-install}")
VENV=$WORK/venv
PY=$VENV/bin/python
export MAX_JOBS=${MAX_JOBS:-2}
START=$SECONDS
step() { echo "ci_pip_install: $* ($((SECONDS - START)) s)"; }
die() { echo "ci_pip_install: FAILED: $*" >&2; exit 1; }

mkdir -p "$WORK"
if [ ! -x "$PY" ] || ! "$PY" -c "import torch" 2>/dev/null; then
  step "fresh venv $VENV with $TORCH_SPEC"
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  "$PY" -m pip install -q --upgrade pip
  "$PY" -m pip install -q "$TORCH_SPEC"
fi
"$PY" -m pip uninstall -q -y fused_linreg 2>/dev/null || true
TORCH_VERSION=$(cd / && "$PY" -c "import torch; print(torch.__version__)")
step "venv ready: torch $TORCH_VERSION, $("$PY" -m pip --version | cut -d' ' -f1-2)"

# Outside the source tree, so that `import fused_linreg` means the installed package.
check_installed() {
  (cd "$WORK" && "$PY" - "$TORCH_VERSION" <<'PY'
import sys
from importlib.metadata import requires
import torch
import torch.nn.functional as F
import fused_linreg
assert "site-packages" in fused_linreg.__file__, fused_linreg.__file__
built = fused_linreg.build_info()["torch_version"]
assert built == sys.argv[1] == torch.__version__, (built, sys.argv[1], torch.__version__)
x, w, b = torch.randn(64, 32), torch.randn(16, 32), torch.randn(16)
torch.testing.assert_close(fused_linreg.functional.linear(x, w, b), F.linear(x, w, b))
pins = [r for r in requires("fused_linreg") if r.startswith("torch")]
assert pins == [f"torch=={torch.__version__}"], pins
print(f"ci_pip_install:   imported from {fused_linreg.__file__}, built against torch {built}, requires {pins[0]}")
PY
  )
}

# pip prints the build's output with -v; the backend's line says which torch it used, and the
# build dependencies that pip installed are listed.
check_log() {
  local log=$1
  grep -q "fused_linreg build: building against torch $TORCH_VERSION of $VENV/bin/python" "$log" \
    || die "the build did not use the venv's torch (log: $log): $(grep 'fused_linreg build' "$log")"
  if grep -E "^ *(Collecting|Downloading) torch\b|Successfully installed.*\btorch-" "$log" >/dev/null; then
    die "pip fetched a torch for the build or the install (log: $log)"
  fi
}

# The command a user types, from the source tree; then again with pip's venv isolation (over the
# installed package: no dependencies touched).
for mode in default venv-isolation; do
  log=$WORK/pip-install-$mode.log
  args=()
  [ "$mode" = venv-isolation ] && args=(--use-feature venv-isolation --force-reinstall --no-deps)
  step "pip install ${args[*]} . (build isolation: $mode; the build's output in $log)"
  if ! "$PY" -m pip install -v "${args[@]}" . >"$log" 2>&1; then
    tail -n 40 "$log"
    die "pip install . ($mode) failed (log: $log)"
  fi
  step "  built: $(grep -c -E '^ *\[[0-9]+/[0-9]+\] ' "$log" || true) files compiled"
  check_log "$log"
  check_installed || die "the installed package does not work ($mode)"
done
"$PY" -m pip uninstall -q -y fused_linreg
step "passed"
