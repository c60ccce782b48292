"""scripts/gpu_check.sh always comes back with its summary: a GPU is lent rarely and for one
call of a few minutes, so a failing or hanging stage must neither stop the stages after it nor
cost the record of what passed. Runs the script with an interpreter whose `-m pip` fails or
hangs (no build happens) and everything else is this Python."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "scripts", "gpu_check.sh")
LATER_STAGES = ("build_info", "tests", "gradcheck", "bench", "sgd_bench")


def fake_python(tmp_path, pip):
    """An interpreter that runs `pip` (a shell command) for `-m pip ...`, else this Python."""
    path = tmp_path / "python"
    path.write_text(f'#!/usr/bin/env bash\nif [ "$1 $2" = "-m pip" ]; then {pip}; fi\n'
                    f'exec {sys.executable} "$@"\n')
    path.chmod(0o755)
    return str(path)


def start(tmp_path, pip, budget):
    out = tmp_path / "out"
    env = dict(os.environ, PYTHON=fake_python(tmp_path, pip), OUT=str(out),
               GPU_CHECK_BUDGET_S=str(budget), PYTHONPATH=ROOT)
    env.pop("TORCH_CUDA_ARCH_LIST", None)
    proc = subprocess.Popen(["bash", SCRIPT], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    return proc, out


def finish(proc, out, timeout):
    stdout, _ = proc.communicate(timeout=timeout)
    with open(out / "stages.tsv") as f:
        stages = dict(line.rstrip("\n").split("\t", 1) for line in f)
    with open(out / "summary.json") as f:
        summary = {row["item"]: row["result"] for row in json.load(f)}
    return stdout, stages, summary


def check_reported(stdout, stages, summary):
    lines = stdout.splitlines()
    assert lines[0].startswith("== torch: ") and lines[1].startswith("== nvcc: "), lines[:2]
    assert "== GPU check summary" in stdout
    for name in LATER_STAGES:
        assert stages[name].startswith("SKIPPED"), stages
        assert summary[f"stage {name}"] == stages[name]
    assert summary["CUDA tests"] == "not run"


def test_a_failed_build_skips_the_rest_and_is_reported(tmp_path):
    proc, out = start(tmp_path, "exit 3", budget=120)
    stdout, stages, summary = finish(proc, out, timeout=120)
    assert proc.returncode != 0
    assert stages["build"].startswith("FAILED (exit 3"), stages
    check_reported(stdout, stages, summary)


@pytest.mark.slow  # waits for the budget to run out
def test_a_hanging_build_times_out_within_the_budget(tmp_path):
    budget = 45  # 15 s of it are kept for the summary
    started = time.monotonic()
    proc, out = start(tmp_path, "exec sleep 600", budget=budget)
    stdout, stages, summary = finish(proc, out, timeout=budget + 30)
    assert time.monotonic() - started < budget + 15
    assert proc.returncode != 0
    assert stages["build"].startswith("TIMEOUT"), stages
    check_reported(stdout, stages, summary)


def test_an_interrupted_check_records_the_running_stage(tmp_path):
    started = tmp_path / "pip-started"
    proc, out = start(tmp_path, f"touch {started}; exec sleep 600", budget=300)
    deadline = time.monotonic() + 60
    while not started.exists():  # the build stage is running
        assert time.monotonic() < deadline and proc.poll() is None, "the build never started"
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGTERM)
    stdout, stages, summary = finish(proc, out, timeout=60)
    assert proc.returncode == 130
    assert stages["build"] == "INTERRUPTED", stages
    assert summary["stage build"] == "INTERRUPTED"
    assert "== GPU check summary" in stdout
