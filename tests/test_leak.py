"""No leak: 10,000 forward + backward + step iterations of a small fused MLP keep the process's
resident memory within a small bound (and so do 2,000 rejected calls)."""
import gc

import psutil
import pytest
import torch
from torch import nn

import fused_linreg

pytestmark = pytest.mark.slow

ITERATIONS = 10_000
BOUND_MB = 4  # measured growth is ~0.1 MB; a leaked 1 KiB per iteration would be ~12 MB


def rss_mb():
    gc.collect()
    return psutil.Process().memory_info().rss / 2 ** 20


def train(model, opt, x, y, steps):
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
    return loss.item()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_training_loop_does_not_grow(dtype):
    torch.manual_seed(0)
    model = nn.Sequential(fused_linreg.FusedLinearReLU(32, 64), fused_linreg.FusedLinearReLU(64, 48),
                          fused_linreg.FusedLinear(48, 10)).to(dtype)
    opt = fused_linreg.FusedSGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    x = torch.randn(37, 32, dtype=dtype)
    y = torch.randint(0, 10, (37,))
    train(model, opt, x, y, 500)  # warm up: allocator caches, per-thread kernel buffers
    before = rss_mb()
    train(model, opt, x, y, ITERATIONS)
    grown = rss_mb() - before
    assert grown < BOUND_MB, f"resident memory grew by {grown:.1f} MB over {ITERATIONS} iterations"


def test_rejected_calls_do_not_leak():
    x, w = torch.randn(3, 4), torch.randn(5, 6)

    def fail(n):
        for _ in range(n):
            for bad in (lambda: fused_linreg.functional.linear_relu(x, w),
                        lambda: torch.ops.fused_linreg.sgd_step_([x], [w], [], [], 0.1, 0.0, 0.0, 0.0,
                                                                 False, False)):
                try:
                    bad()
                except (RuntimeError, TypeError):
                    pass
                else:
                    raise AssertionError("the bad call did not raise")

    fail(200)
    before = rss_mb()
    fail(2000)
    assert rss_mb() - before < BOUND_MB
