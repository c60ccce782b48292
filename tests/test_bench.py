"""The benchmark script (python -m fused_linreg.bench): its --quick smoke run end to end in a
subprocess, as CI runs it, and its pieces (timing, case selection, report, FMA peak) in process."""
import json
import os
import subprocess
import sys

import pytest
import torch

from fused_linreg import bench
from fused_linreg._bench import cases, impls, peers, report
from fused_linreg._bench.timing import Stats, time_interleaved
from fused_linreg._ops import _C

from conftest import ROOT


def run_bench(*args, timeout=600):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, env.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, "-m", "fused_linreg.bench", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def check_ok(row):
    assert row["status"] == "ok", row
    assert 0 < row["min_ms"] <= row["q1_ms"] <= row["median_ms"] <= row["q3_ms"] <= row["max_ms"], row
    assert row["gflops"] > 0 and row["reps"] >= 1 and row["calls_per_rep"] >= 1, row


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    paths = {k: str(out / f"quick.{k}") for k in ("json", "csv", "png")}
    proc = run_bench("--quick", "--json", paths["json"], "--csv", paths["csv"], "--plot", paths["png"])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    with open(paths["json"]) as f:
        return proc, json.load(f), paths


def test_quick_json_has_every_case_with_positive_times(quick_run):
    _, data, _ = quick_run
    rows = {(r["case"], r["pass"], r["impl"]): r for r in data["speed"]}
    expected = cases.default_cases(quick=True)
    assert {c.group for c in expected} == {"layer", "odd", "mlp", "fusedmlp", "gemm"}
    for case in expected:
        for pass_ in case.passes:
            for impl in ("fused", "eager"):
                check_ok(rows[(case.name, pass_, impl)])
            assert rows[(case.name, pass_, "eager")]["speedup_vs_eager"] == pytest.approx(1.0)
            fused = rows[(case.name, pass_, "fused")]
            assert fused["speedup_vs_eager"] == pytest.approx(
                rows[(case.name, pass_, "eager")]["median_ms"] / fused["median_ms"])
            if case.group != "gemm":  # --quick skips torch.compile, and says so
                assert rows[(case.name, pass_, "compile")]["status"] == "skipped"
    for case in expected:
        if case.group == "mlp":  # reported either way: measured, or why not
            inbwd = rows[(case.name, "step", "fused-inbwd")]
            assert inbwd["status"] == "ok" or inbwd["reason"], inbwd
    assert any("torch.compile skipped" in n for n in data["notes"])


def test_quick_reports_the_fma_peak_and_percent_of_it(quick_run):
    _, data, _ = quick_run
    peak = data["fma_peak"]
    assert peak["gflops"] > 0 and peak["isa"] in ("avx512", "avx2", "generic"), peak
    gemm = [r for r in data["speed"] if r["group"] == "gemm"]
    assert {r["impl"] for r in gemm} == {"fused", "eager", "openblas", "onednn"}
    for r in gemm:
        assert r["pct_peak"] == pytest.approx(100 * r["gflops"] / peak["gflops"])


def test_quick_prints_header_and_table_and_writes_csv_and_png(quick_run):
    proc, data, paths = quick_run
    out = proc.stdout
    for text in ("build_info:", torch.__version__, "torch threads:", "FMA peak", "median ms", "eager/this"):
        assert text in out, text
    assert out.rstrip().splitlines()[-1].startswith("eager/this:")  # the table comes last
    assert data["meta"]["threads"] >= 1 and data["meta"]["build_info"]["torch_version"]
    with open(paths["csv"]) as f:
        lines = f.read().splitlines()
    assert lines[0].startswith("table,case,") and len(lines) == 1 + len(data["speed"])
    assert {"best_peer", "best_peer_vs_fused"} <= set(lines[0].split(","))
    with open(paths["png"], "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_quick_times_the_peers_on_the_forward_and_the_gemm(quick_run):
    """Both peers run (this torch has oneDNN, numpy has OpenBLAS), after a result check against
    plain PyTorch; they say what they ran; the best of them is compared with fused_linreg."""
    proc, data, _ = quick_run
    rows = {(r["case"], r["pass"], r["impl"]): r for r in data["speed"]}
    for case in cases.default_cases(quick=True):
        for pass_ in case.passes:
            timed = pass_ == "fwd" and case.group in ("layer", "odd", "gemm")
            for peer in peers.NAMES:
                if timed:
                    check_ok(rows[(case.name, pass_, peer)])
                else:
                    assert (case.name, pass_, peer) not in rows
            fused = rows[(case.name, pass_, "fused")]
            others = [r for r in data["speed"] if (r["case"], r["pass"]) == (case.name, pass_)
                      and not r["impl"].startswith("fused") and r["status"] == "ok"]
            best = min(others, key=lambda r: r["median_ms"])
            assert fused["best_peer"] == best["impl"]
            assert fused["best_peer_vs_fused"] == pytest.approx(best["median_ms"] / fused["median_ms"])
    meta = data["meta"]["peers"]
    assert set(meta) == set(peers.NAMES) and all(p["status"] == "ok" for p in meta.values()), meta
    assert "OpenBLAS" in meta["openblas"]["text"] and "core type" in meta["openblas"]["text"]
    assert meta["openblas"]["threadpoolctl"]["num_threads"] == data["meta"]["threads"]
    assert meta["onednn"]["isa"], meta["onednn"]
    for name in peers.NAMES:
        assert f"peer {name}: " + meta[name]["text"] in proc.stdout
    summary = data["peer_summary"]
    forward = [c for c in cases.default_cases(quick=True) if c.group in ("layer", "odd")]
    assert summary["cases"] == len(forward) and summary["geomean"] > 0
    assert "best peer / fused over the" in proc.stdout


def test_peers_none_times_no_peer(tmp_path):
    path = str(tmp_path / "none.json")
    proc = run_bench("--quick", "--peers", "none", "--cases", "16x16x16,gemm", "--json", path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    with open(path) as f:
        data = json.load(f)
    assert {r["impl"] for r in data["speed"]} == {"fused", "eager", "compile"}
    assert data["meta"]["peers"] == {} and "peers: none" in proc.stdout
    # eager is still a peer of fused_linreg's
    assert all("best_peer" in r for r in data["speed"] if r["impl"] == "fused")


def test_peers_missing_are_skipped_not_fatal(monkeypatch, tmp_path, capsys):
    """No numpy (its import fails) and a torch without oneDNN: the run goes on, the peers'
    rows and header lines say skipped and why."""
    monkeypatch.setitem(sys.modules, "numpy", None)
    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: False)
    path = str(tmp_path / "skipped.json")
    assert bench.main(["--quick", "--cases", "16x16x16,gemm", "--json", path]) == 0
    with open(path) as f:
        data = json.load(f)
    peer_rows = [r for r in data["speed"] if r["impl"] in peers.NAMES]
    assert len(peer_rows) == 4
    for r in peer_rows:
        assert r["status"] == "skipped", r
        assert ("numpy" if r["impl"] == "openblas" else "oneDNN") in r["reason"], r
    meta = data["meta"]["peers"]
    assert {p["status"] for p in meta.values()} == {"skipped"}
    out = capsys.readouterr().out
    assert "peer openblas: skipped: numpy is not installed" in out
    assert "peer onednn: skipped: this torch is built without oneDNN" in out


def test_a_wrong_peer_is_not_timed(monkeypatch):
    """Each peer's result is checked against plain PyTorch before timing: one that leaves out the
    ReLU is reported, not timed."""
    import numpy

    monkeypatch.setattr(numpy, "maximum", lambda a, b, out: out)
    monkeypatch.setattr(torch, "relu_", lambda t: t)
    setup = impls.Setup(torch.device("cpu"), torch.float32, lambda: None, compile_skipped="test",
                        peers=peers.NAMES)
    built, _ = impls.build(cases.LayerCase(33, 55, 77), "fwd", setup)
    for name in peers.NAMES:
        assert isinstance(built[name], str) and built[name].startswith("wrong result"), built[name]


def test_peer_dtypes_they_lack_are_skipped():
    setup = impls.Setup(torch.device("cpu"), torch.float64, lambda: None, compile_skipped="test",
                        peers=peers.NAMES)
    built, _ = impls.build(cases.LayerCase(8, 8, 8), "fwd", setup)
    assert built["onednn"] == "skipped: oneDNN has no float64"
    assert callable(built["openblas"])
    setup.dtype = torch.bfloat16
    built, _ = impls.build(cases.LayerCase(8, 8, 8), "fwd", setup)
    assert built["openblas"] == "skipped: numpy's BLAS has no bfloat16 matmul"


def test_peers_parse_and_env_notes():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert peers.parse("auto", cpu) == peers.NAMES and peers.parse("auto", cuda) == ()
    assert peers.parse("none", cpu) == () and peers.parse("onednn, openblas", cpu) == ("onednn", "openblas")
    with pytest.raises(ValueError, match="unknown peer 'mkl'"):
        peers.parse("mkl", cpu)
    fair = {"OPENBLAS_THREAD_TIMEOUT": "4"}
    assert peers.env_notes(peers.NAMES, fair) == [] and peers.env_notes(("onednn",), {}) == []
    notes = peers.env_notes(peers.NAMES, {**fair, "OPENBLAS_CORETYPE": "Haswell"})
    assert "OPENBLAS_CORETYPE=Haswell" in notes[0] and notes[-1].endswith(peers.RUN_COMMAND)
    notes = peers.env_notes(peers.NAMES, {})
    assert "OPENBLAS_THREAD_TIMEOUT is not set" in notes[0] and notes[-1].endswith(peers.RUN_COMMAND)


def test_quick_memory(tmp_path):
    path = str(tmp_path / "mem.json")
    proc = run_bench("--quick", "--cases", "memory", "--json", path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    with open(path) as f:
        data = json.load(f)
    assert data["speed"] == []
    rows = {(r["momentum"], r["variant"]): r for r in data["memory"]}
    assert set(rows) == {(m, v) for m in (0.0, 0.9) for v in ("eager", "fused", "fused-inbwd")}
    for (momentum, variant), r in rows.items():
        if variant == "fused-inbwd" and r["status"] != "ok":
            assert r["reason"], r  # not implemented yet: said so, not faked
            continue
        assert r["status"] == "ok", r
        assert r["peak_mib"] >= r["baseline_mib"] > 0 and r["peak_since_baseline"], r
        assert r["peak_vs_eager"] > 0, r
    assert "memory: training steps" in proc.stdout


@pytest.mark.slow
def test_quick_with_compile_times_it_or_says_why_not(tmp_path):
    path = str(tmp_path / "compile.json")
    proc = run_bench("--quick", "--compile", "on", "--cases", "16x16x16,mlp-64x16x2", "--json", path,
                     timeout=1200)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    with open(path) as f:
        rows = [r for r in json.load(f)["speed"] if r["impl"] == "compile"]
    assert len(rows) == 3
    for r in rows:
        if r["status"] == "ok":
            check_ok(r)
            assert r["compile_s"] > 0
        else:
            assert r["status"] == "unavailable" and r["reason"], r


def test_bad_arguments_fail_clearly():
    proc = run_bench("--cases", "bogus", "--quick")
    assert proc.returncode == 2 and "unknown case 'bogus'" in proc.stderr
    proc = run_bench("--quick", "--list-cases")
    assert proc.returncode == 0 and "mlp-32x32x3" in proc.stdout.split()
    proc = run_bench("--quick", "--peers", "mkl")
    assert proc.returncode == 2 and "unknown peer 'mkl'" in proc.stderr


# ---- pieces, in process ------------------------------------------------------------------------


def test_select_cases():
    chosen, memory = cases.select_cases("gemm,512x256x256,mlp-8x4x2,gemm,memory", quick=False)
    assert [c.name for c in chosen] == ["gemm-2048", "512x256x256", "mlp-8x4x2"]
    assert memory
    chosen, memory = cases.select_cases("all", quick=True)
    assert chosen == cases.default_cases(quick=True) and not memory
    chosen, _ = cases.select_cases("odd", quick=False)
    assert [c.name for c in chosen] == ["3000x700x1100", "333x555x777", "4x4096x1024", "100000x20x50"]
    assert {c.group for c in chosen} == {"odd"}
    for bad in ("4096x1024", "0x1x1", "mlp-1x2", "layers"):
        with pytest.raises(ValueError):
            cases.select_cases(bad, quick=False)


def test_flop_counts():
    assert cases.LayerCase(2, 3, 5).flops("fwd") == 60
    assert cases.LayerCase(2, 3, 5).flops("fwd+bwd") == 180
    assert cases.MlpCase(2, 3, 2).flops("step") == 2 * 2 * 3 * 3 * 5  # 5 GEMMs: no grad_input for layer 1
    assert cases.GemmCase(4).flops("fwd") == 128


def test_time_interleaved_round_robin_and_failures():
    calls = []

    def record(name):
        return lambda: calls.append(name)

    def broken():
        raise RuntimeError("no kernel\nmore detail")

    results = time_interleaved({"a": record("a"), "b": record("b"), "x": broken, "s": "skipped: why"},
                               sync=lambda: None, reps=4, warmup_s=0, sample_s=0, min_warmup_calls=1)
    assert list(results) == ["a", "b", "x", "s"]
    assert results["x"] == "RuntimeError: no kernel" and results["s"] == "skipped: why"
    assert isinstance(results["a"], Stats) and results["a"].reps == 4
    # After one warm-up call each, samples alternate, each repetition starting with the next one,
    # each sample (here one call) after an untimed call of the same implementation.
    assert calls[2:] == ["a", "a", "b", "b", "b", "b", "a", "a", "a", "a", "b", "b", "b", "b", "a", "a"]


def test_report_marks_fused_slower_than_eager():
    case = cases.LayerCase(8, 8, 8)
    rows = [report.speed_row(case, "fwd", "fused", Stats(2.0, 1.9, 2.1, 1.8, 2.5, 5, 1), peak_gflops=100),
            report.speed_row(case, "fwd", "eager", Stats(1.0, 0.9, 1.1, 0.8, 1.5, 5, 1), peak_gflops=100),
            report.speed_row(case, "fwd", "compile", "skipped: --quick")]
    report.add_speedups(rows)
    assert rows[0]["speedup_vs_eager"] == 0.5 and rows[2]["status"] == "skipped"
    assert rows[0]["best_peer"] == "eager" and rows[0]["best_peer_vs_fused"] == 0.5
    lines = report.format_speed(rows).splitlines()
    assert lines[2].split()[-5:] == ["0.50x", report.SLOWER_MARK, "0.50x", "eager", report.PEER_MARK]
    assert lines[3].split()[-1] == "1.00x" and "skipped: --quick" in lines[4]
    assert "(1 of 1 fused rows)" in lines[-1]


def test_report_best_peer_and_its_geomean():
    """A peer faster than fused_linreg is marked even where eager is slower; the summary's
    geomean covers the forward layer cases only."""
    stats = lambda ms: Stats(ms, ms, ms, ms, ms, 5, 1)  # noqa: E731
    rows = []
    for case, pass_, times in [
        (cases.LayerCase(8, 8, 8), "fwd", {"fused": 1.0, "eager": 2.0, "openblas": 0.5, "onednn": "skipped: x"}),
        (cases.LayerCase(3, 5, 7, "odd"), "fwd", {"fused": 1.0, "eager": 3.0, "openblas": 2.0, "onednn": 4.0}),
        (cases.LayerCase(3, 5, 7, "odd"), "fwd+bwd", {"fused": 1.0, "eager": 0.1}),
        (cases.GemmCase(8), "fwd", {"fused": 1.0, "eager": 0.1}),
    ]:
        group = [report.speed_row(case, pass_, name, t if isinstance(t, str) else stats(t))
                 for name, t in times.items()]
        report.add_speedups(group)
        rows += group
    assert (rows[0]["best_peer"], rows[0]["best_peer_vs_fused"]) == ("openblas", 0.5)
    assert (rows[4]["best_peer"], rows[4]["best_peer_vs_fused"]) == ("openblas", 2.0)
    summary = report.peer_summary(rows)
    assert summary == {"cases": 2, "geomean": pytest.approx(1.0), "min": 0.5, "min_case": "8x8x8",
                       "peer_faster": 1}
    lines = report.format_speed(rows).splitlines()
    assert lines[2].endswith("0.50x openblas " + report.PEER_MARK)
    assert not lines[6].endswith(report.PEER_MARK) and lines[6].endswith("2.00x openblas")
    assert "geomean 1.00, lowest 0.50 (8x8x8); a peer faster in 1" in lines[-2]
    assert "(3 of 4 fused rows)" in lines[-1]


def test_report_counts_every_marked_row():
    """The legend's count of slower fused rows is the number of marks, the in-backward SGD rows
    ("fused-inbwd") included."""
    case = cases.MlpCase(8, 8, 2)
    stats = lambda ms: Stats(ms, ms, ms, ms, ms, 5, 1)  # noqa: E731
    rows = [report.speed_row(case, "step", "fused", stats(2.0)),
            report.speed_row(case, "step", "eager", stats(1.0)),
            report.speed_row(case, "step", "fused-inbwd", stats(3.0)),
            report.speed_row(case, "step", "compile", stats(0.5))]
    report.add_speedups(rows)
    text = report.format_speed(rows)
    marked = [line for line in text.splitlines()[2:-1] if f"x {report.SLOWER_MARK} " in line]
    assert len(marked) == 2 and all(line.endswith(f"compile {report.PEER_MARK}") for line in marked)
    assert "(2 of 2 fused rows)" in text.splitlines()[-1]


def test_fma_peak_binding():
    assert _C.measure_fma_peak_gflops("float32", "", 0.02) > 0
    assert _C.measure_fma_peak_gflops("float64", "generic", 0.02) > 0
    with pytest.raises(ValueError, match="dtype"):
        _C.measure_fma_peak_gflops("float16")
    with pytest.raises(ValueError, match="ISA"):
        _C.measure_fma_peak_gflops("float32", "neon")


def test_peers_thread_limit_sets_numpys_blas_threads():
    """openblas runs on the bench's --threads, as torch does, and gets its own count back after."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    import numpy  # noqa: F401

    def blas_threads():
        return {lib["num_threads"] for lib in threadpoolctl.threadpool_info() if lib["user_api"] == "blas"}

    before = blas_threads()
    assert before, "numpy's BLAS is not visible to threadpoolctl"
    with peers.thread_limit(("openblas",), 1):
        assert blas_threads() == {1}
    assert blas_threads() == before
