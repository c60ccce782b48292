#!/usr/bin/env bash
# Sets up ./.venv with torch and the dev dependencies, and builds fused_linreg in it against that
# torch (--no-build-isolation). Idempotent: a second run only rebuilds what changed (the object
# files stay in build/objects-*, see setup.py). Prints a line per step and the build's progress;
# the build's full output goes to build/setup_env.log.
#   TORCH_SPEC   torch requirement (default torch==2.13.0, the CPU wheel)
#   VENV         virtual environment directory (default .venv)
#   MAX_JOBS     parallel compile jobs (default 2)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
export MAX_JOBS=${MAX_JOBS:-2}
LOG=build/setup_env.log
START=$SECONDS
step() { echo "setup_env: $* ($((SECONDS - START)) s)"; }

if [ ! -x "$VENV/bin/python" ]; then
  step "creating the virtual environment $VENV"
  python3 -m venv "$VENV"
else
  step "using the virtual environment $VENV"
fi
step "installing pip, setuptools, wheel"
"$VENV/bin/python" -m pip install -q --upgrade pip setuptools wheel
step "installing $TORCH_SPEC and requirements-dev.txt (the first time: a download of several hundred MB)"
"$VENV/bin/python" -m pip install -q "$TORCH_SPEC" -r requirements-dev.txt

sources=$(ls csrc/*.cpp csrc/cpu/*.cpp csrc/bench/*.cpp | wc -l)
step "building fused_linreg against $("$VENV/bin/python" -c 'import torch; print("torch", torch.__version__)') ($sources C++ files, $MAX_JOBS jobs; the first build takes minutes, later ones recompile only what changed)"
mkdir -p build
# pip -v passes the build's output through; of it, ninja's "[done/total] <compile command>" lines
# become one line per compiled file.
set +e
"$VENV/bin/python" -m pip install -v --no-build-isolation --no-deps -e . 2>&1 | tee "$LOG" | awk '
  /^ *\[[0-9]+\/[0-9]+\] / { n = split($0, words, " "); src = ""
                           for (i = 1; i < n; i++) if (words[i] == "-c" && words[i + 1] != "-c") src = words[i + 1]
                           sub(".*/csrc/", "csrc/", src); print "setup_env:   " words[1] " " src; fflush() }
  /^ *ninja: no work to do/ { print "setup_env:   nothing to recompile"; fflush() }
  / -shared / { print "setup_env:   linking"; fflush() }'
rc=${PIPESTATUS[0]}
set -e
if [ "$rc" -ne 0 ]; then
  grep -E -i -A5 "error" "$LOG" | tail -n 60 || tail -n 60 "$LOG"
  echo "setup_env: the build failed (full output: $LOG)" >&2
  exit "$rc"
fi
step "checking the build"
"$VENV/bin/python" -c "import fused_linreg, json; print('fused_linreg built:', json.dumps(fused_linreg.build_info()))"
step "done"
