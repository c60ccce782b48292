"""Threads and determinism: concurrent calls from Python threads give the right answers, and
results are bitwise identical across runs and for 1 vs 2 intra-op threads (forward, every
gradient including grad_bias, SGD), whatever path the shape takes (threaded, split K, several
column blocks)."""
import threading

import pytest
import torch

import fused_linreg
from conftest import assert_same, exact_randn, make_generator, run_both

# (M, N, K): threaded row blocks, split K (few output tiles, K >= 2048), several packed-B column
# blocks, a tiny single-threaded one.
SHAPES = [(500, 70, 90), (3, 5, 4100), (12, 40, 2500), (5, 1100, 2100), (2, 3, 4)]


def continuous(shape, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    M, N, K = shape
    return (torch.randn(M, K, generator=g, dtype=dtype), torch.randn(N, K, generator=g, dtype=dtype),
            torch.randn(N, generator=g, dtype=dtype), torch.randn(M, N, generator=g, dtype=dtype))


def fused_results(op, x, w, b, go):
    fused, _ = run_both(op, x, w, b, go)
    return fused


@pytest.mark.parametrize("op", ["linear", "linear_relu"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_bitwise_identical_across_runs_and_thread_counts(shape, dtype, op):
    data = continuous(shape, dtype, seed=sum(shape))
    torch.set_num_threads(2)
    first = fused_results(op, *data)
    again = fused_results(op, *data)
    torch.set_num_threads(1)
    single = fused_results(op, *data)
    for name, a, b_, c in zip(("output", "grad_input", "grad_weight", "grad_bias"), first, again, single):
        assert_same(b_, a, f"{name}: second run", zero_sign=True)
        assert_same(c, a, f"{name}: 1 thread vs 2", zero_sign=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_sgd_bitwise_identical_across_thread_counts(dtype):
    results = []
    for threads in (2, 1, 2):
        torch.set_num_threads(threads)
        g = torch.Generator().manual_seed(0)
        params = [torch.nn.Parameter(torch.randn(n, generator=g).to(dtype)) for n in (3, 100_000, 70_001)]
        opt = fused_linreg.FusedSGD(params, lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.1)
        for _ in range(3):
            for p in params:
                p.grad = torch.randn(p.shape, generator=g).to(dtype)
            opt.step()
        results.append([p.detach().clone() for p in params] +
                       [opt.state[p]["momentum_buffer"].clone() for p in params])
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert_same(b, a, "SGD across thread counts", zero_sign=True)


def test_concurrent_calls_from_python_threads():
    """Several Python threads call forward, backward and SGD at once (sharing the intra-op pool
    and the kernels' per-thread buffers): every result equals the one computed alone."""
    jobs = []
    for i, (shape, dtype, op) in enumerate([((300, 50, 60), torch.float32, "linear_relu"),
                                            ((7, 9, 2100), torch.float64, "linear"),
                                            ((40, 300, 33), torch.bfloat16, "linear_relu"),
                                            ((5, 6, 7), torch.float32, "linear"),
                                            ((64, 64, 64), torch.float64, "linear_relu"),
                                            ((1, 1100, 2050), torch.float32, "linear")]):
        g = make_generator(i)
        M, N, K = shape
        data = (exact_randn(M, K, dtype=dtype, generator=g), exact_randn(N, K, dtype=dtype, generator=g),
                exact_randn(N, dtype=dtype, generator=g), exact_randn(M, N, dtype=dtype, generator=g))
        jobs.append((op, data, fused_results(op, *data)))

    def sgd_run():
        g = torch.Generator().manual_seed(5)
        params = [torch.nn.Parameter(torch.randn(50_000, generator=g))]
        opt = fused_linreg.FusedSGD(params, lr=0.1, momentum=0.9)
        for _ in range(3):
            params[0].grad = torch.ones(50_000)
            opt.step()
        return params[0].detach().clone()

    sgd_expected = sgd_run()
    errors = []
    barrier = threading.Barrier(len(jobs) + 1)

    def worker(job):
        op, data, expected = job
        barrier.wait()
        try:
            for _ in range(8):
                got = fused_results(op, *data)
                for name, a, e in zip(("output", "grad_input", "grad_weight", "grad_bias"), got, expected):
                    assert_same(a, e, f"{op} {tuple(data[0].shape)}: {name}", zero_sign=True)
        except BaseException as e:  # noqa: B902
            errors.append(e)

    def sgd_worker():
        barrier.wait()
        try:
            for _ in range(4):
                assert_same(sgd_run(), sgd_expected, "SGD in a thread", zero_sign=True)
        except BaseException as e:  # noqa: B902
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(job,)) for job in jobs]
    threads.append(threading.Thread(target=sgd_worker))
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not any(t.is_alive() for t in threads), "a thread hung"
    assert not errors, errors[0]


def test_set_cpu_isa_while_other_threads_compute():
    """Switching the ISA path while other threads run kernels never mixes paths within a call:
    every result is still correct."""
    g = make_generator(2)
    x, w, b, go = (exact_randn(200, 30, generator=g), exact_randn(50, 30, generator=g),
                   exact_randn(50, generator=g), exact_randn(200, 50, generator=g))
    expected = fused_results("linear_relu", x, w, b, go)
    stop = threading.Event()
    errors = []

    def compute():
        try:
            while not stop.is_set():
                for a, e in zip(fused_results("linear_relu", x, w, b, go), expected):
                    assert_same(a, e, "result while switching ISA")
        except BaseException as e:  # noqa: B902
            errors.append(e)
            stop.set()

    threads = [threading.Thread(target=compute) for _ in range(2)]
    for t in threads:
        t.start()
    for _ in range(30):
        for name in fused_linreg.build_info()["cpu_isas_supported"]:
            fused_linreg.set_cpu_isa(name)
    stop.set()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors[0]
