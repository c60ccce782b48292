"""The CPU kernels run on torch's intra-op threads (torch.set_num_threads), as ATen's do.

Checked by where the CPU time goes, not by wall time (the machine may be shared): while a
large GEMM runs with 2 threads, threads other than the caller must do a good share of the work.
"""
import os
import threading

import pytest
import torch

from fused_linreg import functional

pytestmark = pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="needs 2 or more CPUs")


def _cpu_seconds_by_thread():
    ticks = os.sysconf("SC_CLK_TCK")
    out = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:  # the thread ended
            continue
        out[int(tid)] = (int(fields[11]) + int(fields[12])) / ticks  # utime + stime
    return out


def _share_of_other_threads(fn, calls):
    """CPU seconds spent by threads other than the caller / by the caller, over ``calls`` calls."""
    fn()  # starts the thread pool
    me = threading.get_native_id()
    before = _cpu_seconds_by_thread()
    for _ in range(calls):
        fn()
    after = _cpu_seconds_by_thread()
    spent = {t: after[t] - before.get(t, 0.0) for t in after}
    mine = spent.pop(me)
    return sum(spent.values()) / max(mine, 1e-9)


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="needs Linux /proc")
@pytest.mark.parametrize("name,fn", [
    ("torch.mm (the method's own check)", lambda a, b: torch.mm(a, b.t())),
    ("fused_linreg.functional.linear", functional.linear),
    ("fused_linreg.functional.linear_relu", functional.linear_relu),
])
def test_large_gemm_uses_torch_threads(name, fn):
    torch.set_num_threads(2)
    a, b = torch.randn(1536, 1536), torch.randn(1536, 1536)
    share = _share_of_other_threads(lambda: fn(a, b), calls=8)
    # An even split gives 1.0; a serial kernel gives ~0.
    assert share > 0.3, f"{name}: the other threads did {share:.2f}x the caller's CPU time"
