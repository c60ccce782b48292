#!/usr/bin/env bash
# Sets up ./.venv with torch and the dev dependencies, and builds fused_linreg in it against that
# torch (--no-build-isolation). Idempotent: a second run only rebuilds what changed.
#   TORCH_SPEC   torch requirement (default torch==2.13.0, the CPU wheel)
#   VENV         virtual environment directory (default .venv)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip setuptools wheel
"$VENV/bin/python" -m pip install -q "$TORCH_SPEC" -r requirements-dev.txt
MAX_JOBS=${MAX_JOBS:-2} "$VENV/bin/python" -m pip install -q --no-build-isolation --no-deps -e .
"$VENV/bin/python" -c "import fused_linreg, json; print('fused_linreg built:', json.dumps(fused_linreg.build_info()))"
