#!/usr/bin/env bash
# Sanitizer CI: builds the CPU extension with AddressSanitizer + UndefinedBehaviorSanitizer
# (FUSED_LINREG_SANITIZE=1, see setup.py) in a separate copy of the tree (no build outputs), using the existing venv's
# torch, and runs the test suite (not slow) against it with libasan preloaded. Fails on any test
# failure and on any sanitizer report (reports are also collected from subprocesses via log_path).
#
#   scripts/ci_sanitize.sh                 # whole suite
#   scripts/ci_sanitize.sh tests/test_sgd.py tests/test_linear.py   # some test files
#
# Environment: PYTHON (default .venv/bin/python), SANITIZE_DIR (work dir, default a new temp dir;
# kept afterwards, for the logs and reports; reusing one rebuilds only what changed since),
# MAX_JOBS (build parallelism, default 2), SANITIZE_FROM (worktree: the files as they are, the
# default; or a git revision such as HEAD: that commit, ignoring uncommitted changes).
#
# Each test file runs in its own pytest process: ASan aborts the process at the first report
# (the build uses -fno-sanitize-recover), and one report must not hide the other files' results.
set -uo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-$ROOT/.venv/bin/python}
WORK=${SANITIZE_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/fused_linreg_sanitize.XXXXXX")}
SRC=$WORK/src
REPORTS=$WORK/reports
START=$(date +%s)

die() { echo "ci_sanitize: $*" >&2; exit 1; }
[ -x "$PYTHON" ] || die "no python at $PYTHON (run scripts/setup_env.sh, or set PYTHON)"

SANITIZE_FROM=${SANITIZE_FROM:-worktree}
echo "== copying the tree ($SANITIZE_FROM) to $SRC"
rm -rf "$REPORTS"
mkdir -p "$SRC" "$REPORTS" || die "cannot create $WORK"
if [ "$SANITIZE_FROM" = worktree ]; then
  # tar rather than rsync: it is everywhere. No build outputs, venv or git metadata.
  tar -C "$ROOT" -cf - \
    --exclude='./.git' --exclude='./.venv*' --exclude='./build' --exclude='./dist' \
    --exclude='*.egg-info' --exclude='*.so' --exclude='_build_meta.json' --exclude='__pycache__' \
    --exclude='.pytest_cache' --exclude='.hypothesis' --exclude='./out' . \
    | tar -C "$SRC" -xf - || die "copying the tree failed"
else
  git -C "$ROOT" archive --format=tar "$SANITIZE_FROM" | tar -C "$SRC" -xf - \
    || die "git archive $SANITIZE_FROM failed"
fi

echo "== building the CPU extension with -fsanitize=address,undefined"
( cd "$SRC" && FUSED_LINREG_SANITIZE=1 FUSED_LINREG_CUDA=0 MAX_JOBS=${MAX_JOBS:-2} \
    nice -n 10 "$PYTHON" setup.py build_ext --inplace -q ) > "$WORK/build.log" 2>&1 \
  || { tail -50 "$WORK/build.log"; die "the sanitizer build failed (log: $WORK/build.log)"; }
SO=$(ls "$SRC"/fused_linreg/_C*.so 2>/dev/null | head -1)
[ -n "$SO" ] || die "the build produced no extension"
# (not `ldd | grep -q`: grep -q exits at the first match, and ldd's SIGPIPE fails the pipe)
[[ "$(ldd "$SO")" == *libasan* ]] || die "$SO is not linked against libasan (FUSED_LINREG_SANITIZE ignored?)"
echo "   built in $(( $(date +%s) - START ))s"

LIBASAN=$(gcc -print-file-name=libasan.so)
[ -f "$LIBASAN" ] || die "libasan not found (gcc -print-file-name=libasan.so gave '$LIBASAN')"
# libstdc++ must be loaded when ASan starts, or its __cxa_throw interceptor finds no real
# __cxa_throw (python itself does not link libstdc++) and the first C++ exception aborts.
LIBSTDCXX=$(g++ -print-file-name=libstdc++.so)
[ -f "$LIBSTDCXX" ] || die "libstdc++ not found (g++ -print-file-name=libstdc++.so gave '$LIBSTDCXX')"

# Python and torch are not instrumented; leak detection is off (CPython keeps memory until exit
# by design), and an impossible allocation returns NULL as without ASan (the tests make some on
# purpose, to check they become Python errors). Every report goes to $REPORTS (one file per process), including those of the
# subprocesses the tests start.
export LD_PRELOAD="$LIBASAN $LIBSTDCXX"
export ASAN_OPTIONS="detect_leaks=0:allocator_may_return_null=1:halt_on_error=1:abort_on_error=1:log_path=$REPORTS/asan:log_exe_name=1"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1:log_path=$REPORTS/ubsan:log_exe_name=1"
export PYTHONPATH=$SRC
export OMP_WAIT_POLICY=PASSIVE

if [ $# -gt 0 ]; then
  FILES=("$@")
else
  mapfile -t FILES < <(cd "$SRC" && ls tests/test_*.py)
fi

echo "== running ${#FILES[@]} test files (not slow) against the sanitized build"
failed=()
for f in "${FILES[@]}"; do
  t0=$(date +%s)
  ( cd "$SRC" && nice -n 10 "$PYTHON" -m pytest -q -m "not slow" -p no:cacheprovider "$f" ) \
    > "$WORK/$(basename "$f" .py).log" 2>&1
  rc=$?
  # 5: nothing collected (a file of slow tests only)
  log="$WORK/$(basename "$f" .py).log"
  if [ $rc -ne 0 ] && [ $rc -ne 5 ]; then failed+=("$f (exit $rc)"); status=FAIL; else status=ok; fi
  echo "   $status $f ($(( $(date +%s) - t0 ))s): $(tail -1 "$log")"
  # The log stays on the machine that ran it (a CI machine, maybe): show what failed and why.
  if [ $status = FAIL ]; then
    grep -E "^(E |FAILED|ERROR)" "$log" | tail -40 | sed 's/^/      /'
  fi
done

# A report is an error (ASan's "ERROR:", UBSan's "runtime error:"); the log files also receive
# warnings, e.g. for the impossible allocations above, which are not reports.
reports=$(grep -l -E "ERROR: AddressSanitizer|runtime error:|SUMMARY: (AddressSanitizer|UndefinedBehaviorSanitizer)" \
  "$REPORTS"/* 2>/dev/null)
if [ -n "$reports" ]; then
  echo "== sanitizer reports:"
  for r in $reports; do echo "--- $r"; grep -v "failed to allocate" "$r" | head -60; done
fi
echo "== $(( $(date +%s) - START ))s in all; logs in $WORK"
if [ ${#failed[@]} -gt 0 ] || [ -n "$reports" ]; then
  [ ${#failed[@]} -gt 0 ] && printf 'ci_sanitize: failed: %s\n' "${failed[@]}" >&2
  [ -n "$reports" ] && echo "ci_sanitize: $(echo "$reports" | wc -l) sanitizer report(s)" >&2
  exit 1
fi
echo "ci_sanitize: passed, no sanitizer reports"
