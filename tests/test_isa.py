"""Every CPU ISA path this machine supports (fused_linreg.set_cpu_isa), forced one at a time,
against PyTorch: the micro-tile sizes differ per path (MR 12/6/2, NR 32/16/8), so each path gets
shapes around its own boundaries. The conftest fixture restores the default path afterwards."""
import os

import pytest
import torch

import fused_linreg
from conftest import (DTYPES, assert_linear_results_close, assert_same, exact_randn, make_generator,
                      run_both, run_python)

ISAS = fused_linreg.build_info()["cpu_isas_supported"]

# Around MR in {2, 6, 12}, NR in {8, 16, 32}, KC = 256, task columns 1024, split K (K >= 2048).
SHAPES = [(1, 1, 1), (0, 3, 4), (2, 8, 3), (3, 9, 5), (5, 7, 2), (6, 16, 8), (7, 17, 9),
          (11, 31, 10), (12, 32, 11), (13, 33, 12), (25, 65, 7), (4, 5, 255), (7, 9, 257),
          (3, 1025, 4), (2, 3, 2049), (40, 70, 30),
          (70, 1, 20), (37, 3, 5), (33, 9, 300), (19, 4, 1), (200, 5, 12)]  # narrow outputs


@pytest.fixture(params=ISAS)
def isa(request):
    fused_linreg.set_cpu_isa(request.param)
    assert fused_linreg.build_info()["cpu_isa_active"] == request.param
    return request.param


def test_default_is_the_best_supported():
    assert fused_linreg.build_info()["cpu_isa_active"] in ISAS
    assert "generic" in ISAS


@pytest.mark.parametrize("op", ["linear", "linear_relu"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_linear_matches_pytorch(isa, dtype, op):
    for shape in SHAPES:
        M, N, K = shape
        g = make_generator(M * 1000 + N)
        x = exact_randn(M, K, dtype=dtype, generator=g)
        w = exact_randn(N, K, dtype=dtype, generator=g)
        b = exact_randn(N, dtype=dtype, generator=g)
        go = exact_randn(M, N, dtype=dtype, generator=g)
        for xs, ws in ((x, w), (x.t().contiguous().t(), w.t().contiguous().t())):  # and transposed
            fused, ref = run_both(op, xs, ws, b, go)
            if dtype == torch.bfloat16:
                assert_linear_results_close(fused, ref, xs, ws, b, go, dtype, what=f"{isa} {op} {shape}")
                continue
            for name, a, e in zip(("output", "grad_input", "grad_weight", "grad_bias"), fused, ref):
                assert_same(a, e, f"{isa} {op} {shape} {dtype}: {name}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("rows", [(16, 16, 8), (3, 100, 5), (1, 256, 8), (3, 64, 1), (5, 40, 3),
                                  (2, 1000, 1), (7, 5, 9), (1, 300, 16)],
                         ids=lambda s: "x".join(map(str, s)))
def test_row_results_do_not_depend_on_the_batch(isa, dtype, rows):
    # A tiny product takes a direct loop, the same rows in a larger batch the tiled microkernel or
    # a narrow-output path: all must round alike (continuous data, so that rounding shows).
    M, K, N = rows
    g = torch.Generator().manual_seed(M * K + N)
    x = torch.randn(M, K, generator=g, dtype=dtype)
    w, b = torch.randn(N, K, generator=g, dtype=dtype), torch.randn(N, generator=g, dtype=dtype)
    small = fused_linreg.functional.linear(x, w, b)
    big = fused_linreg.functional.linear(torch.cat([x] * (4096 // (M * N * K) + 2)), w, b)[:M]
    assert torch.equal(small, big)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("rows", [(1, 1024, 40), (2, 257, 33), (3, 17, 100), (4, 600, 70), (1, 15, 5),
                                  (2, 16, 64), (4, 31, 9), (8, 300, 50)],
                         ids=lambda s: "x".join(map(str, s)))
def test_short_outputs_round_as_the_tiled_path(isa, dtype, rows):
    # Outputs of up to 8 rows multiply by W's rows transposed in registers (or packed); in a batch
    # the same rows go through full micro-panels or a last, partial one of fewer rows (rows placed
    # at the end of batches of 48, 44, 41 and 38): the same sums in the same order everywhere.
    M, K, N = rows
    g = torch.Generator().manual_seed(M * K + N)
    x = torch.randn(M, K, generator=g, dtype=dtype)
    w, b = torch.randn(N, K, generator=g, dtype=dtype), torch.randn(N, generator=g, dtype=dtype)
    for total in (48, 44, 41, 38):
        batch = torch.cat([torch.randn(total - M, K, generator=g, dtype=dtype), x])
        for bias in (b, None):
            for op in (fused_linreg.functional.linear, fused_linreg.functional.linear_relu):
                assert torch.equal(op(x, w, bias), op(batch, w, bias)[-M:]), (total, bias is None, op)
    ref = torch.nn.functional.linear(x.double(), w.double(), b.double())
    torch.testing.assert_close(fused_linreg.functional.linear(x, w, b).double(), ref,
                               rtol=1e-4 if dtype == torch.float32 else 1e-10, atol=1e-3)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_sgd_matches_pytorch(isa, dtype):
    options = dict(lr=0.1, momentum=0.9, weight_decay=0.01, nesterov=True)
    results = []
    for cls in (fused_linreg.FusedSGD, lambda p, **kw: torch.optim.SGD(p, foreach=False, **kw)):
        g = torch.Generator().manual_seed(0)
        params = [torch.nn.Parameter(torch.randn(n, generator=g, dtype=dtype)) for n in (1, 15, 70_001)]
        opt = cls(params, **options)
        for _ in range(5):
            for p in params:
                p.grad = torch.randn(p.shape, generator=g, dtype=dtype)
            opt.step()
        results.append([p.detach() for p in params])
    for a, e in zip(*results):
        assert_same(a, e, f"{isa} SGD")


def test_relu_mask_is_the_same_on_every_path():
    g = make_generator(9)
    x, w, b = exact_randn(13, 9, generator=g), exact_randn(70, 9, generator=g), exact_randn(70, generator=g)
    masks = {}
    for name in ISAS:
        fused_linreg.set_cpu_isa(name)
        masks[name] = torch.ops.fused_linreg.linear_relu_forward(x, w, b)[1]
    for name, mask in masks.items():
        assert_same(mask, masks["generic"], f"{name} mask")


def test_environment_variable_selects_the_path():
    for name in ISAS[-1:]:  # one path that is not the default (a subprocess each costs seconds)
        proc = run_python("import fused_linreg; print(fused_linreg.build_info()['cpu_isa_active'])",
                          env={"FUSED_LINREG_CPU_ISA": name})
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.strip() == name


def test_bad_environment_variable_is_a_clear_error():
    """An unsupported FUSED_LINREG_CPU_ISA is a Python exception naming the variable (at import
    or at the first call), not a crash or a silent fallback."""
    proc = run_python("""
        try:
            import torch, fused_linreg
            fused_linreg.functional.linear(torch.ones(2, 3), torch.ones(4, 3))
        except Exception as e:
            print("raised", type(e).__name__, e)
        """, env={"FUSED_LINREG_CPU_ISA": "sse9"})
    assert proc.returncode == 0, proc.stderr
    assert "raised" in proc.stdout and "FUSED_LINREG_CPU_ISA=sse9" in proc.stdout, proc.stdout
