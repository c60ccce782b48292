"""The record of a scripts/gpu_check.sh run, in its output folder.

    python scripts/gpu_check_report.py --environment OUT_DIR   # first: card, torch, nvcc, commit
    python scripts/gpu_check_report.py OUT_DIR                 # last: the closing table

The first writes OUT_DIR/env.json (and fails, after writing it, when no GPU is visible). The
second reads what the check wrote (stages, test results, benchmark JSON), prints what ran, what
passed and the issue's H100 targets, and writes OUT_DIR/summary.json. Missing files show as
"not run".
"""
import argparse
import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET

# (label, case, pass, our impl, baseline impl, minimum baseline/ours): bfloat16, one run.
BENCH_TARGETS = [
    ("forward vs cuBLASLt bias+ReLU", "8192x4096x4096", "fwd", "fused", "addmm_act", 0.9),
    ("fwd+bwd vs eager PyTorch", "65536x256x256", "fwd+bwd", "fused", "eager", 1.2),
]
SGD_TARGET = ("SGD step vs SGD(fused=True)", "FusedSGD", "SGD(fused=True)", 1.0)


def git(*args):
    try:
        return subprocess.run(["git", *args], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def nvcc_version():
    nvcc = os.path.join(os.environ.get("CUDA_HOME", "/usr/local/cuda"), "bin", "nvcc")
    try:
        out = subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout
    except OSError:
        return "not found"
    release = [line for line in out.splitlines() if "release" in line]
    return release[0].split("release")[-1].strip(" ,") if release else "unknown"


def write_environment(out):
    """Writes env.json; without a visible GPU it holds no card and the exit status is 1."""
    import torch

    modified = " (modified)" if git("status", "--porcelain", "--untracked-files=no") else ""
    env = dict(device="none visible", capability="", arch="", torch=torch.__version__,
               torch_cuda=torch.version.cuda, nvcc=nvcc_version(),
               commit=git("rev-parse", "--short", "HEAD") + modified)
    gpu = torch.cuda.is_available()
    if gpu:
        major, minor = torch.cuda.get_device_capability()
        env.update(device=torch.cuda.get_device_name(), capability=f"sm_{major}{minor}",
                   arch=f"{major}.{minor}")
    with open(os.path.join(out, "env.json"), "w") as f:
        json.dump(env, f, indent=1)
    print(json.dumps(env))
    if not gpu:
        sys.exit(f"gpu_check: no CUDA device visible to torch {torch.__version__}")


def load_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def test_counts(path):
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return "not run"
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    count = {k: sum(int(s.get(k, 0)) for s in suites)
             for k in ("tests", "failures", "errors", "skipped")}
    passed = count["tests"] - count["failures"] - count["errors"] - count["skipped"]
    return (f"{passed} passed, {count['failures']} failed, {count['errors']} errors, "
            f"{count['skipped']} skipped")


def median(rows, **match):
    for r in rows:
        if all(r.get(k) == v for k, v in match.items()) and r.get("median_ms"):
            return r["median_ms"]
    return None


def target_row(label, ours, baseline, minimum):
    if ours is None or baseline is None:
        return label, "not measured", f">= {minimum}"
    ratio = baseline / ours
    verdict = "met" if ratio >= minimum else "NOT met"
    return label, f"{ratio:.2f}x ({ours:.3f} ms vs {baseline:.3f} ms)", f">= {minimum}: {verdict}"


def write_summary(out):
    env = load_json(os.path.join(out, "env.json")) or {}
    stages = {}
    if os.path.exists(os.path.join(out, "stages.tsv")):
        with open(os.path.join(out, "stages.tsv")) as f:
            stages = dict(line.rstrip("\n").split("\t", 1) for line in f if "\t" in line)
    rows = [
        ("card", env.get("device", "?"), env.get("capability", "")),
        ("commit", env.get("commit", "?"), env.get("torch", "")),
        ("nvcc", env.get("nvcc", "?"), f"torch CUDA {env.get('torch_cuda', '?')}"),
    ]
    rows += [(f"stage {name}", status, "") for name, status in stages.items()]
    rows.append(("CUDA tests", test_counts(os.path.join(out, "pytest-cuda.xml")), ""))

    speed = (load_json(os.path.join(out, "bench.json")) or {}).get("speed", [])
    for label, case, pass_, impl, base, minimum in BENCH_TARGETS:
        rows.append(target_row(label, median(speed, case=case, **{"pass": pass_}, impl=impl),
                               median(speed, case=case, **{"pass": pass_}, impl=base), minimum))
    sgd = (load_json(os.path.join(out, "sgd_bench.json")) or {}).get("rows", [])
    label, impl, base, minimum = SGD_TARGET
    rows.append(target_row(label, median(sgd, impl=impl), median(sgd, impl=base), minimum))

    width = [max(len(str(r[i])) for r in rows) for i in range(3)]
    print("\n== GPU check summary")
    for r in rows:
        print("  ".join(str(v).ljust(w) for v, w in zip(r, width)).rstrip())
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump([dict(item=r[0], result=r[1], note=r[2]) for r in rows], f, indent=1)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", help="the check's output folder")
    parser.add_argument("--environment", action="store_true",
                        help="record the card, torch and commit instead of the summary")
    args = parser.parse_args()
    (write_environment if args.environment else write_summary)(args.out)


if __name__ == "__main__":
    main()
