"""Interleaved timing of the implementations of one comparison.

Each implementation is warmed up and calibrated on its own (so that one sample lasts at least
``sample_s``: fast calls are repeated within a sample), then the samples are taken round robin,
one sample of each implementation per repetition, starting each repetition with the next one, so
that drift in the machine's load (other processes, clocks) hits all of them alike. Each sample
follows one untimed call of the same implementation, so that no sample pays for the thread pool
(wake-up, or the previous library's spinning threads) of another.
"""
import math
import statistics
import time
from dataclasses import dataclass
from typing import Callable, Dict, Union

__all__ = ["Stats", "describe_error", "time_interleaved"]

# Guards against a mis-calibration (a first call much slower than the rest) running forever.
_MAX_CALLS_PER_SAMPLE = 100_000


@dataclass
class Stats:
    """Milliseconds per call over the samples of one implementation."""

    median_ms: float
    q1_ms: float
    q3_ms: float
    min_ms: float
    max_ms: float
    reps: int
    calls_per_rep: int

    @classmethod
    def from_samples(cls, seconds_per_call, calls_per_rep):
        ms = sorted(s * 1e3 for s in seconds_per_call)
        if len(ms) >= 2:
            q1, median, q3 = statistics.quantiles(ms, n=4, method="inclusive")
        else:
            q1 = median = q3 = ms[0]
        return cls(median, q1, q3, ms[0], ms[-1], len(ms), calls_per_rep)

    @property
    def iqr_ms(self):
        return self.q3_ms - self.q1_ms


def describe_error(error: BaseException, limit: int = 240) -> str:
    """One line: the exception's type and the first line of its message."""
    lines = str(error).strip().splitlines()
    text = f"{type(error).__name__}: {lines[0] if lines else ''}".rstrip(": ")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _time_calls(fn, calls, sync):
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    sync()
    return time.perf_counter() - start


def _warm_up(fn, sync, warmup_s, min_calls):
    """Calls fn until at least ``min_calls`` calls and ``warmup_s`` seconds; returns an estimate of
    the seconds per call (the fastest call after the first, which may include lazy setup)."""
    times = []
    start = time.perf_counter()
    while len(times) < min_calls or time.perf_counter() - start < warmup_s:
        times.append(_time_calls(fn, 1, sync))
    return min(times[1:] or times)


def time_interleaved(
    fns: Dict[str, Union[Callable[[], object], str]],
    *,
    sync: Callable[[], None],
    reps: int,
    warmup_s: float,
    sample_s: float,
    min_warmup_calls: int = 2,
) -> Dict[str, Union[Stats, str]]:
    """Times each zero-argument callable in ``fns``; returns, in the same order, its Stats or why
    it could not be timed: the str given instead of a callable, or the error it raised."""
    results: Dict[str, Union[Stats, str]] = {}
    calls = {}
    for name, fn in fns.items():
        if isinstance(fn, str):
            results[name] = fn
            continue
        try:
            per_call = _warm_up(fn, sync, warmup_s, min_warmup_calls)
        except Exception as e:  # reported in the table, never fatal
            results[name] = describe_error(e)
            continue
        calls[name] = max(1, min(_MAX_CALLS_PER_SAMPLE, math.ceil(sample_s / max(per_call, 1e-9))))
    names = list(calls)
    samples = {name: [] for name in names}
    for rep in range(reps if names else 0):
        for name in names[rep % len(names):] + names[: rep % len(names)]:
            if name in results:  # failed in an earlier repetition
                continue
            try:
                # Untimed: wakes this implementation's worker threads, and sends the previous one's
                # (OpenBLAS's busy-wait after each call) to sleep before this sample's clock starts.
                _time_calls(fns[name], 1, sync)
                samples[name].append(_time_calls(fns[name], calls[name], sync) / calls[name])
            except Exception as e:
                results[name] = describe_error(e)
    for name in names:
        if name not in results:
            results[name] = Stats.from_samples(samples[name], calls[name])
    return {name: results[name] for name in fns}
