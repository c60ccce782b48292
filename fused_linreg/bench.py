"""Speed (and memory) of fused_linreg against plain PyTorch and torch.compile, in one run.

    python -m fused_linreg.bench                        # default cases, CPU, float32
    python -m fused_linreg.bench --quick                # seconds-long smoke run of every path (CI)
    python -m fused_linreg.bench --cases layer,gemm --threads 1 --json out.json --plot out.png
    python -m fused_linreg.bench --memory               # also peak memory of training steps
    python -m fused_linreg.bench --cases memory         # only that
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE OPENBLAS_THREAD_TIMEOUT=4 \
        python -m fused_linreg.bench --peers openblas,onednn   # how to run the peers fairly

Compared per case and pass (forward, forward+backward of one layer; a training step of an MLP;
our GEMM and torch.mm at 2048^3 against this CPU's measured FMA peak): fused_linreg, eager
PyTorch, torch.compile of the eager code, on CUDA cuBLASLt's bias+ReLU epilogue, and on CPU the
peers for the layer forward and the GEMM: openblas (numpy's matmul, then bias and ReLU in place)
and onednn (torch's mkldnn_linear, bias fused). The implementations are timed round robin within
each repetition after a warm-up, each sample after one untimed call; the table gives the median,
the spread (IQR, min, max), GFLOP/s, % of the FMA peak, eager/this with '!' where fused_linreg is
slower than eager, and best peer/fused with '*' where any other implementation is faster. OpenBLAS
is measured fairly with OPENBLAS_THREAD_TIMEOUT=4 and without OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE
(which force one kernel); the header warns otherwise. Progress goes to stderr, the report to stdout.
"""
import argparse
import sys

import torch

from fused_linreg._bench import cases as cases_mod
from fused_linreg._bench import impls, peers, plot, report, sysinfo
from fused_linreg._bench.memory import run_memory
from fused_linreg._bench.peak import measure_peak
from fused_linreg._bench.timing import describe_error, time_interleaved

__all__ = ["main"]

_DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16}
# (repetitions, warm-up seconds, seconds a sample lasts at least, FMA peak seconds)
_FULL = (10, 0.25, 0.02, 1.0)
_QUICK = (3, 0.005, 0.001, 0.05)


def _parser():
    p = argparse.ArgumentParser(
        prog="python -m fused_linreg.bench", description=__doc__.split("\n\n")[2],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N]")
    p.add_argument("--dtype", default="float32", choices=list(_DTYPES))
    p.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--cases", default="all",
                   help="comma-separated groups (layer, odd, mlp, fusedmlp, gemm, memory, all) and "
                        "case names (4096x1024x1024 = batch x in_features x out_features, "
                        "mlp-2048x1024x3 = batch x width x depth, fusedmlp-65536x64x4 (FusedMLP), "
                        "gemm-2048, any sizes); odd: layers of sizes that are multiples of nothing; "
                        "memory with fusedmlp also measures FusedMLP's training memory; default all")
    p.add_argument("--memory", action="store_true",
                   help="also run the memory cases: peak memory of MLP training steps, with and "
                        "without SGD inside the backward")
    p.add_argument("--compile", default="auto", choices=["auto", "on", "off"],
                   help="time torch.compile too; auto: yes, except with --quick")
    p.add_argument("--peers", default="auto",
                   help="other libraries timed on the layer forward and the GEMM: a comma-separated "
                        "list of openblas (numpy's BLAS), onednn (torch's mkldnn_linear), or none; "
                        "default auto: both on CPU, none on CUDA. One not installed is reported as "
                        "skipped")
    p.add_argument("--quick", action="store_true",
                   help="tiny shapes, few repetitions: a smoke run of every code path")
    p.add_argument("--reps", type=int, help="timed repetitions per implementation (default 10, quick 3)")
    p.add_argument("--json", metavar="PATH", help="write everything as JSON")
    p.add_argument("--csv", metavar="PATH", help="write the rows as CSV")
    p.add_argument("--plot", metavar="PATH", help="write a PNG bar chart of eager/fused")
    p.add_argument("--list-cases", action="store_true", help="print the default cases and exit")
    return p


def _progress(message):
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def _compile_skipped(args):
    """(short reason for the table, note) when torch.compile is not to be timed, else None."""
    if args.compile == "off":
        return "--compile off", "torch.compile skipped: --compile off"
    if args.compile == "auto" and args.quick:
        return "--quick", ("torch.compile skipped in --quick: a cold compile takes tens of seconds "
                           "a graph on a small machine; --quick --compile on runs it")
    return None


def _run_speed(selected, setup, peak_gflops, reps, warmup_s, sample_s):
    rows = []
    for i, case in enumerate(selected):
        for pass_ in case.passes:
            _progress(f"{i + 1}/{len(selected)} {case.name} {pass_}")
            try:
                built, compile_s = impls.build(case, pass_, setup)
            except Exception as e:  # e.g. out of memory for a custom size
                built, compile_s = {"fused": describe_error(e), "eager": describe_error(e)}, {}
            results = time_interleaved(built, sync=setup.sync, reps=reps, warmup_s=warmup_s,
                                       sample_s=sample_s)
            group = [report.speed_row(case, pass_, name, result, peak_gflops=peak_gflops,
                                      compile_s=compile_s.get(name))
                     for name, result in results.items()]
            report.add_speedups(group)
            rows += group
            del built, results
            if compile_s:
                torch._dynamo.reset()  # frees the compiled graphs of this case
    return rows


def main(argv=None):
    parser = _parser()
    args = parser.parse_args(argv)
    if args.list_cases:
        for case in cases_mod.default_cases(args.quick):
            print(case.name)
        return 0
    try:
        selected, memory = cases_mod.select_cases(args.cases, args.quick)
        if args.plot:
            plot.check_available()
    except (ValueError, ImportError) as e:
        parser.error(str(e))
    memory = memory or args.memory
    try:
        device = torch.device(args.device)
    except RuntimeError as e:
        parser.error(f"--device {args.device}: {e}")
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: CUDA is not available in this torch ({torch.__version__})")
    if device.type not in ("cpu", "cuda"):
        parser.error(f"--device {args.device}: cpu or cuda")
    if args.reps is not None and args.reps < 1:
        parser.error("--reps must be >= 1")
    try:
        chosen_peers = peers.parse(args.peers, device)
    except ValueError as e:
        parser.error(str(e))
    if args.threads is not None:
        if args.threads < 1:
            parser.error("--threads must be >= 1")
        torch.set_num_threads(args.threads)
    with peers.thread_limit(chosen_peers, torch.get_num_threads()):
        return _run(args, device, selected, memory, chosen_peers)


def _run(args, device, selected, memory, chosen_peers):
    dtype = _DTYPES[args.dtype]
    reps, warmup_s, sample_s, peak_s = _QUICK if args.quick else _FULL
    reps = args.reps or reps

    notes = []
    skipped = _compile_skipped(args)
    if skipped:
        notes.append(skipped[1])
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    setup = impls.Setup(device, dtype, sync, compile_skipped=skipped[0] if skipped else None,
                        peers=chosen_peers)
    peak = None
    if device.type == "cpu":
        _progress("measuring the FMA peak")
        peak = measure_peak(dtype, peak_s)
        if dtype == torch.bfloat16:
            notes.append("bfloat16 throughput is given as % of the float32 FMA peak")
    else:
        notes.append("% peak: the FMA peak is measured on CPUs only")
    if args.quick:
        notes.append("--quick: tiny shapes and few repetitions; the numbers mean nothing")
    info = sysinfo.collect(device, dtype)
    if warning := sysinfo.load_warning(info):
        notes.append(warning)
    if selected:  # not for the memory cases alone: no peer runs there
        if chosen_peers:
            _progress("asking the peers what they run")
        info["peers"] = peers.describe(chosen_peers, device, torch.get_num_threads())
        notes += peers.env_notes(chosen_peers)
    print(report.format_header(info, peak, notes), flush=True)

    speed = _run_speed(selected, setup, peak.get("gflops") if peak else None, reps, warmup_s, sample_s)
    memory_tables = []  # one per memory config
    if memory:
        memory_tables = [run_memory(config, device, dtype, torch.get_num_threads(), _progress)
                         for config in cases_mod.memory_configs(args.quick, selected)]
    memory_rows = [r for table in memory_tables for r in table]

    if speed:
        print("\n" + report.format_speed(speed))
    for table in memory_tables:
        print("\n" + report.format_memory(table, device))
    if args.json:
        report.write_json(args.json, info, peak, notes, speed, memory_rows)
    if args.csv:
        report.write_csv(args.csv, speed, memory_rows)
    if args.plot:
        machine = info["gpu"] if device.type == "cuda" else f"{info['cpu']}, {info['threads']} threads"
        plot.plot_ratios(args.plot, speed, f"fused_linreg vs eager PyTorch: {machine}, {info['dtype']}")
    broken = [r for r in speed if r["impl"] in ("fused", "eager") and r["status"] != "ok"]
    broken += [r for r in memory_rows if r["variant"] in ("fused", "eager") and r["status"] != "ok"]
    if broken:
        print(f"\nerror: {len(broken)} fused/eager measurements failed (see the tables)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
