"""This CPU's FMA peak, measured by fused_linreg's own kernel of independent FMA chains
(csrc/bench/fma_peak.cpp) on all torch threads: the denominator of the "% of peak" column.
Each thread's rate is taken in its own CPU time, so other processes on a shared machine do not
lower it (the timed work itself, measured in wall time, still suffers from them)."""
import os

import torch

from fused_linreg._ops import _C
from fused_linreg._bench.timing import describe_error

__all__ = ["measure_peak"]

_ISAS = ("avx512", "avx2", "generic")  # best first


def measure_peak(dtype: torch.dtype, seconds: float) -> dict:
    """{"gflops", "dtype", "isa", "threads"}, or {"error"}. float64 work is compared with the
    float64 peak; float32 and bfloat16 with the float32 one."""
    peak_dtype = "float64" if dtype == torch.float64 else "float32"
    # The kernel runs at most one thread per usable CPU (more would overstate the peak).
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    info = {"dtype": peak_dtype, "threads": min(torch.get_num_threads(), cpus)}
    for isa in _ISAS:
        try:
            gflops = _C.measure_fma_peak_gflops(peak_dtype, isa, seconds)
        except ValueError:  # this CPU lacks the ISA
            continue
        except Exception as e:
            return {**info, "error": describe_error(e)}
        return {**info, "gflops": gflops, "isa": isa}
    return {**info, "error": "no ISA path of the FMA peak kernel runs on this CPU"}
