"""The printed report (header, speed table, memory table) and the --json / --csv files.

A speed row is a dict: case, group, pass, impl, status ("ok", "skipped" or "unavailable"),
reason, median_ms, q1_ms, q3_ms, min_ms, max_ms, reps, calls_per_rep, gflops, pct_peak,
speedup_vs_eager (eager ms / this ms: for the fused row, the ratio eager/fused) and compile_s;
a fused_linreg row also has best_peer (the fastest other implementation of its comparison: eager,
compile, openblas, onednn...) and best_peer_vs_fused (its ms / this ms; < 1: a peer is faster).
"""
import csv
import json
import math

__all__ = ["SLOWER_MARK", "PEER_MARK", "speed_row", "add_speedups", "peer_summary", "format_header",
           "format_speed", "format_memory", "write_json", "write_csv"]

SLOWER_MARK = "!"  # on fused_linreg's rows where eager PyTorch is faster
PEER_MARK = "*"  # on fused_linreg's rows where any other implementation is faster
# The comparisons of the project's forward target: Linear+bias+ReLU of one layer.
_FORWARD_GROUPS = ("layer", "odd")


def _fused_slower(row):
    """(a fused_linreg row compared with eager, slower than eager): "fused" and "fused-inbwd"."""
    speedup = row.get("speedup_vs_eager") if row["status"] == "ok" else None
    compared = row["impl"].startswith("fused") and speedup is not None
    return compared, compared and speedup < 1


def speed_row(case, pass_, impl, result, *, peak_gflops=None, compile_s=None):
    """A row from a timing result (Stats, or a str saying why there is none)."""
    row = {"case": case.name, "group": case.group, "pass": pass_, "impl": impl}
    if isinstance(result, str):
        status = "skipped" if result.startswith("skipped") else "unavailable"
        reason = result[len("skipped: "):] if status == "skipped" else result
        return {**row, "status": status, "reason": reason}
    gflops = case.flops(pass_) / (result.median_ms * 1e-3) / 1e9
    row.update(status="ok", reason=None, median_ms=result.median_ms, q1_ms=result.q1_ms,
               q3_ms=result.q3_ms, min_ms=result.min_ms, max_ms=result.max_ms, reps=result.reps,
               calls_per_rep=result.calls_per_rep, gflops=gflops,
               pct_peak=100 * gflops / peak_gflops if peak_gflops else None)
    if compile_s is not None:
        row["compile_s"] = compile_s
    return row


def _is_ours(row):
    return row["impl"].startswith("fused")


def add_speedups(rows):
    """speedup_vs_eager on every ok row of a comparison that has an ok eager row; best_peer and
    best_peer_vs_fused on every ok fused_linreg row of one that has an ok peer row."""
    eager = next((r for r in rows if r["impl"] == "eager" and r["status"] == "ok"), None)
    peers = [r for r in rows if not _is_ours(r) and r["status"] == "ok"]
    best = min(peers, key=lambda r: r["median_ms"]) if peers else None
    for r in rows:
        if eager is not None and r["status"] == "ok":
            r["speedup_vs_eager"] = eager["median_ms"] / r["median_ms"]
        if best is not None and r["status"] == "ok" and _is_ours(r):
            r["best_peer"] = best["impl"]
            r["best_peer_vs_fused"] = best["median_ms"] / r["median_ms"]


def peer_summary(rows):
    """Best peer / fused over the forward Linear+bias+ReLU comparisons: {"cases", "geomean", "min",
    "min_case", "peer_faster"}, or None without any."""
    ratios = [(r["best_peer_vs_fused"], r["case"]) for r in rows
              if r["impl"] == "fused" and r["pass"] == "fwd" and r["group"] in _FORWARD_GROUPS
              and r.get("best_peer_vs_fused") is not None]
    if not ratios:
        return None
    low = min(ratios)
    return {"cases": len(ratios), "geomean": math.exp(sum(math.log(v) for v, _ in ratios) / len(ratios)),
            "min": low[0], "min_case": low[1], "peer_faster": sum(v < 1 for v, _ in ratios)}


def _table(header, rows, right):
    """Aligned text; ``right`` tells which columns are right-aligned. A row may be
    (first cells..., text) with fewer cells: its last cell then spans the rest of the line."""
    widths = [len(h) for h in header]
    for row in rows:
        cells = row if len(row) == len(header) else row[:-1]  # a spanning cell sets no width
        widths = [max(w, len(c)) for w, c in zip(widths, cells)] + widths[len(cells):]

    def line(cells):
        out = []
        for i, c in enumerate(cells):
            last_spanning = i == len(cells) - 1 and len(cells) < len(header)
            out.append(c if last_spanning else (c.rjust(widths[i]) if right[i] else c.ljust(widths[i])))
        return "  ".join(out).rstrip()

    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])


def _fmt(value, spec, missing="-"):
    return missing if value is None else format(value, spec)


def _sig(value, digits):
    """``digits`` significant digits in fixed notation (no exponent): 0.003616, 12.34, 1234."""
    if value == 0 or not math.isfinite(value):
        return f"{value:g}"
    decimals = max(0, digits - 1 - math.floor(math.log10(abs(value))))
    return f"{value:.{decimals}f}"


def format_header(info, peak, notes):
    b = info["build_info"]
    lines = [
        f"fused_linreg {info['fused_linreg']} benchmark, {info['date']}",
        f"build_info: {json.dumps(b)}",
        f"torch {info['torch']}, python {info['python']}",
        f"CPU: {info['cpu']} ({info['cpu_count']} logical CPUs), torch threads: {info['threads']}",
        f"device: {info['device']}" + (f" ({info['gpu']}, CUDA {info['cuda']})" if "gpu" in info else "")
        + f", dtype: {info['dtype']}",
    ]
    if peak is not None:
        if "error" in peak:
            lines.append(f"FMA peak: unavailable: {peak['error']}")
        else:
            threads = f"{peak['threads']} thread" + ("s" if peak["threads"] != 1 else "")
            lines.append(f"FMA peak ({peak['dtype']}, {peak['isa']}, {threads}, measured): "
                         f"{peak['gflops']:.1f} GFLOP/s")
    peers = info.get("peers")
    if peers is not None:
        lines += [f"peer {name}: " + ("" if p["status"] == "ok" else p["status"] + ": ") + p["text"]
                  for name, p in peers.items()]
        if not peers:
            lines.append("peers: none (--peers selects openblas, onednn)")
    lines += [f"note: {n}" for n in notes]
    return "\n".join(lines)


def format_speed(rows):
    header = ["case", "pass", "impl", "median ms", "IQR ms", "min ms", "max ms", "GFLOP/s",
              "% peak", "eager/this", "best peer/fused"]
    right = [False, False, False] + [True] * 7 + [False]
    out, previous = [], None
    for r in rows:
        key = (r["case"], r["pass"])
        lead = [r["case"], r["pass"]] if key != previous else ["", ""]
        previous = key
        if r["status"] != "ok":
            out.append(lead + [r["impl"], f"{r['status']}: {r['reason']}"])
            continue
        speedup = r.get("speedup_vs_eager")
        mark = SLOWER_MARK if _fused_slower(r)[1] else ""
        peer = r.get("best_peer_vs_fused")
        out.append(lead + [
            r["impl"], _sig(r["median_ms"], 4), _sig(r["q3_ms"] - r["q1_ms"], 2), _sig(r["min_ms"], 4),
            _sig(r["max_ms"], 4), _sig(r["gflops"], 3), _fmt(r["pct_peak"], ".1f"),
            (_fmt(speedup, ".2f") + "x" if speedup is not None else "-") + mark.rjust(2),
            "" if peer is None else f"{peer:.2f}x {r['best_peer']}" + (f" {PEER_MARK}" if peer < 1 else ""),
        ])
    table = _table(header, out, right)
    marks = [_fused_slower(r) for r in rows]
    compared, slower = sum(c for c, _ in marks), sum(s for _, s in marks)
    peer_rows = [r["best_peer_vs_fused"] for r in rows if r.get("best_peer_vs_fused") is not None]
    lines = [table]
    if summary := peer_summary(rows):
        lines.append(f"best peer / fused over the {summary['cases']} forward Linear+bias+ReLU cases: "
                     f"geomean {summary['geomean']:.2f}, lowest {summary['min']:.2f} ({summary['min_case']}); "
                     f"a peer faster in {summary['peer_faster']}")
    lines.append(
        f"eager/this: eager PyTorch's median time / this row's (> 1: faster than eager). "
        f"'{SLOWER_MARK}': fused_linreg slower than eager ({slower} of {compared} fused rows). "
        f"best peer/fused: the fastest other implementation's median time (eager, compile, openblas, "
        f"onednn...) / fused_linreg's; '{PEER_MARK}': a peer is faster "
        f"({sum(v < 1 for v in peer_rows)} of {len(peer_rows)} fused rows). "
        f"% peak: GFLOP/s of the matrix products / the measured FMA peak.")
    return "\n".join(lines)


def format_memory(rows, device):
    if not rows:
        return ""
    r0 = rows[0]
    what = ("torch.cuda.max_memory_allocated" if device.type == "cuda"
            else "peak resident set (VmHWM) of a fresh process per row")
    title = (f"memory: training steps of an MLP of {r0['depth']} layers of width {r0['width']}, batch "
             f"{r0['batch']}, 1 warm-up + {r0['steps']} steps: {what}.\nbaseline: after imports and "
             "model/data/optimizer creation; peak: over the steps; step: peak - baseline.")
    if any(r.get("peak_since_baseline") is False for r in rows):
        title += " (peak: over the whole process; its high-water mark could not be reset here)"
    header = ["momentum", "impl", "peak MiB", "baseline MiB", "step MiB", "peak/eager", "step/eager"]
    right = [True, False, True, True, True, True, True]
    out = []
    for r in rows:
        lead = [f"{r['momentum']:g}", r["variant"]]
        if r["status"] != "ok":
            out.append(lead + [f"{r['status']}: {r['reason']}"])
            continue
        out.append(lead + [f"{r['peak_mib']:.1f}", f"{r['baseline_mib']:.1f}", f"{r['step_mib']:.1f}",
                           _fmt(r.get("peak_vs_eager"), ".3f"), _fmt(r.get("step_vs_eager"), ".3f")])
    return title + "\n" + _table(header, out, right)


def write_json(path, info, peak, notes, speed, memory):
    with open(path, "w") as f:
        json.dump({"meta": info, "fma_peak": peak, "notes": notes, "speed": speed,
                   "peer_summary": peer_summary(speed), "memory": memory}, f, indent=1)


def write_csv(path, speed, memory):
    """One CSV: the speed rows then the memory rows, told apart by the column 'table'."""
    rows = [{"table": "speed", **r} for r in speed] + [{"table": "memory", **r} for r in memory]
    fields = []
    for r in rows:
        fields += [k for k in r if k not in fields]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields or ["table"])
        writer.writeheader()
        writer.writerows(rows)
