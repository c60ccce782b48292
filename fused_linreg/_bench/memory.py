"""Peak memory of MLP training steps (the benchmark's memory cases), each variant in a fresh process.

The parent starts ``python -m fused_linreg._bench.memory`` once per (momentum, variant); the
child runs a tiny model's steps (one-time initialization), builds the model, optimizer and data,
notes its baseline, then runs one warm-up step (which allocates the gradients and momentum
buffers) and ``steps`` more, and prints one JSON line with the baseline and the peak over those
steps:
- CPU: resident set sizes from /proc/self/status: the baseline is VmRSS, the peak VmHWM, its
  high-water mark reset at the baseline (/proc/self/clear_refs). Not getrusage's ru_maxrss: in
  a process started by fork + exec, Linux keeps there the parent's peak from before the exec.
- CUDA: torch.cuda.memory_allocated at the baseline, max_memory_allocated after (reset at the
  baseline).
What the training steps add is the peak minus the baseline.
"""
import argparse
import json
import os
import subprocess
import sys

__all__ = ["run_memory"]

_MIB = 1024 * 1024


def _status_bytes(field):
    """VmRSS or VmHWM of this process."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024  # kB
    raise RuntimeError(f"no {field} in /proc/self/status")


def _reset_peak_rss():
    """Resets VmHWM to the current VmRSS; False where the kernel does not let us."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _child(argv):
    p = argparse.ArgumentParser(prog="python -m fused_linreg._bench.memory")
    for name in ("batch", "width", "depth", "steps", "threads"):
        p.add_argument(f"--{name}", type=int, required=True)
    p.add_argument("--momentum", type=float, required=True)
    p.add_argument("--variant", required=True)
    p.add_argument("--device", required=True)
    p.add_argument("--dtype", required=True)
    a = p.parse_args(argv)

    import torch

    from fused_linreg._bench import models
    from fused_linreg._bench.timing import describe_error

    torch.set_num_threads(a.threads)
    device, dtype = torch.device(a.device), getattr(torch, a.dtype)
    cuda = device.type == "cuda"

    def make_step(batch, width):
        model = models.make_mlp(a.variant, width, a.depth, device, dtype)
        opt = models.make_optimizer(a.variant, model.parameters(), a.momentum)
        return models.training_step(model, opt, *models.make_data(batch, width, device, dtype))

    try:
        # A few steps of a tiny model first: what the first step of any model loads or allocates
        # once (libraries, thread pools, the autograd engine) belongs to the baseline.
        for _ in range(2):
            make_step(2, 8)()
        step = make_step(a.batch, a.width)
        peak_since_baseline = True
        if cuda:
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            baseline = torch.cuda.memory_allocated(device)
        else:
            peak_since_baseline = _reset_peak_rss()
            baseline = _status_bytes("VmRSS")
        for _ in range(1 + a.steps):
            loss = step()
        if cuda:
            torch.cuda.synchronize(device)
            peak = torch.cuda.max_memory_allocated(device)
        else:
            peak = _status_bytes("VmHWM")
        result = {"baseline_mib": baseline / _MIB, "peak_mib": peak / _MIB,
                  "peak_since_baseline": peak_since_baseline, "final_loss": float(loss.detach())}
    except Exception as e:
        result = {"error": describe_error(e)}
    print(json.dumps(result), flush=True)


def _run_child(variant, momentum, config, device, dtype, threads, timeout_s):
    cmd = [sys.executable, "-m", "fused_linreg._bench.memory", "--variant", variant,
           "--momentum", str(momentum), "--batch", str(config.batch), "--width", str(config.width),
           "--depth", str(config.depth), "--steps", str(config.steps), "--threads", str(threads),
           "--device", str(device), "--dtype", str(dtype).replace("torch.", "")]
    # The child imports this very fused_linreg, wherever the parent found it.
    package_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout_s} s"}
    lines = proc.stdout.strip().splitlines()
    if proc.returncode == 0 and lines:
        try:
            return json.loads(lines[-1])
        except ValueError:
            pass
    tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    return {"error": f"child exited with {proc.returncode}: {tail}"}


def run_memory(config, device, dtype, threads, progress, timeout_s=1800):
    """One row per (momentum, variant), with the ratios to eager at the same momentum."""
    rows = []
    for momentum in config.momenta:
        eager = None
        for variant in config.variants:
            progress(f"memory: {variant}, momentum {momentum}")
            r = _run_child(variant, momentum, config, device, dtype, threads, timeout_s)
            row = {"variant": variant, "momentum": momentum, "batch": config.batch,
                   "width": config.width, "depth": config.depth, "steps": config.steps,
                   "status": "unavailable" if "error" in r else "ok", "reason": r.get("error")}
            if "error" not in r:
                row.update(baseline_mib=r["baseline_mib"], peak_mib=r["peak_mib"],
                           step_mib=r["peak_mib"] - r["baseline_mib"], final_loss=r["final_loss"],
                           peak_since_baseline=r["peak_since_baseline"])
                if variant == "eager":
                    eager = row
                if eager is not None:
                    row["peak_vs_eager"] = row["peak_mib"] / eager["peak_mib"]
                    row["step_vs_eager"] = (row["step_mib"] / eager["step_mib"]
                                            if eager["step_mib"] > 0 else None)
            rows.append(row)
    return rows


if __name__ == "__main__":
    _child(sys.argv[1:])
