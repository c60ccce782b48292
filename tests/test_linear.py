"""Forward and every gradient of linear / linear+ReLU against F.linear (+ F.relu), over shapes that
cross every blocking boundary of the CPU kernels, dtypes, layouts and requires_grad combinations."""
import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

import fused_linreg
from conftest import (DTYPES, OPS, assert_close, assert_linear_results_close, assert_same,
                      exact_randn, fused, make_generator, reference, run_both)

# The CPU kernels tile with MR in {12, 6, 2} rows and NR in {32, 16, 8} columns (per ISA and
# dtype), block K by KC = 256, give a task at most 1024 columns, pack B in column blocks of about
# 8 MiB / K elements, and split K into slices when the output has < 32 micro-tiles and K >= 2048.
# Products of at most 2048 multiply-adds take a direct loop; with N <= 256 the input is read in
# place (not packed) unless its rows are a multiple of 2 KiB apart.
# (M, N, K): input [M, K], weight [N, K].
SHAPES = [
    (1, 1, 1),
    (0, 5, 7),  # batch 0
    (3, 4, 0),  # in_features 0: the output is the bias
    (3, 0, 4),  # out_features 0
    (2, 3, 5), (7, 11, 13), (13, 17, 19), (29, 31, 37),  # primes
    (2, 8, 3), (3, 9, 4), (5, 7, 6),  # around the narrowest micro-tile
    (6, 16, 8), (7, 15, 9), (11, 17, 10), (12, 32, 16), (13, 33, 17), (24, 31, 12),
    (25, 65, 3), (1, 63, 2), (12, 64, 1),
    (5, 9, 255), (6, 8, 256), (7, 33, 257), (13, 17, 513),  # K blocks
    (3, 1023, 5), (2, 1024, 7), (4, 1025, 9), (13, 2049, 3),  # task column range
    (1, 1, 2047), (1, 1, 2048), (3, 5, 2049), (13, 33, 4099), (2, 7, 8191),  # split K
    (5, 1000, 4099),  # several packed-B column blocks (float32: ~480-511 columns each)
    (16, 8, 16), (3, 1, 683),  # the largest direct-loop product, and one past it
    (100, 100, 600), (30, 20, 512),  # input read in place over K blocks; rows 2 KiB apart: packed
    (3000, 40, 50),  # large batch: many row blocks, threaded
    # narrow outputs (kernel_narrow.h): dot products (N <= 4, K >= 2) and rows in lanes (N <= 16),
    # partial row groups and panels, several K blocks; and their transposes in the backward
    (1000, 1, 1), (333, 3, 300), (129, 5, 2), (40, 4, 17), (70, 16, 513), (65, 17, 9), (33, 8, 3),
    (2, 1, 5000), (1, 3, 700), (300, 2, 1), (4100, 9, 2), (3000, 1, 1),
    (97, 300, 700),  # threaded, every edge at once
]

OPS_UNDER_TEST = ["linear", "linear_relu"]


def shape_id(s):
    return "x".join(map(str, s))


def check_exact(fused, ref, dtype, what, data):
    """Exact data: float32/float64 must match PyTorch bitwise; bfloat16 within its rounding
    (relative to the summed terms: PyTorch's bfloat16 GEMM may round before adding the bias)."""
    if dtype == torch.bfloat16:
        assert_linear_results_close(fused, ref, *data, dtype, what=what)
        return
    for name, a, e in zip(("output", "grad_input", "grad_weight", "grad_bias"), fused, ref):
        if e is None:
            assert a is None, f"{what}: {name} should not be computed"
            continue
        assert_same(a, e, f"{what}: {name}")


@pytest.mark.parametrize("op", OPS_UNDER_TEST)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=shape_id)
def test_matches_pytorch_exact_data(shape, dtype, bias, op, device):
    M, N, K = shape
    g = make_generator(hash((M, N, K)) % 2**31)
    x = exact_randn(M, K, dtype=dtype, generator=g, device=device)
    w = exact_randn(N, K, dtype=dtype, generator=g, device=device)
    b = exact_randn(N, dtype=dtype, generator=g, device=device) if bias else None
    go = exact_randn(M, N, dtype=dtype, generator=g, device=device)
    fused, ref = run_both(op, x, w, b, go)
    check_exact(fused, ref, dtype, f"{op} {shape} {dtype}", (x, w, b, go))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=shape_id)
def test_inference_forward_matches_pytorch(shape, dtype, device):
    # No graph recorded: linear_forward(relu=True) computes the ReLU without making a bitmask.
    M, N, K = shape
    g = make_generator(hash((K, N, M)) % 2**31)
    x = exact_randn(M, K, dtype=dtype, generator=g, device=device)
    w = exact_randn(N, K, dtype=dtype, generator=g, device=device)
    b = exact_randn(N, dtype=dtype, generator=g, device=device)
    with torch.no_grad():
        fused = (fused_linreg.functional.linear_relu(x, w, b), None, None, None)
        ref = (torch.relu(F.linear(x, w, b)), None, None, None)
    go = torch.zeros(M, N, dtype=dtype, device=device)  # only sizes the bfloat16 tolerances
    check_exact(fused, ref, dtype, f"no-grad linear_relu {shape} {dtype}", (x, w, b, go))


@pytest.mark.parametrize("op", OPS_UNDER_TEST)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("width", [64, 96, 50])
def test_output_larger_than_the_cache(width, dtype, op, device):
    # Outputs of 16 MiB and more with rows on cache lines (widths 64, 96) are written with
    # streaming stores, the others (50: rows that straddle lines) as usual: exact data, exact results.
    M, N, K = (16 << 20) // (width * 4) + 1, width, 24
    g = make_generator(width)
    x = exact_randn(M, K, dtype=dtype, generator=g, device=device)
    w = exact_randn(N, K, dtype=dtype, generator=g, device=device)
    b = exact_randn(N, dtype=dtype, generator=g, device=device)
    go = exact_randn(M, N, dtype=dtype, generator=g, device=device)
    fused, ref = run_both(op, x, w, b, go)
    check_exact(fused, ref, dtype, f"{op} {M}x{K}x{N} {dtype}", (x, w, b, go))


@pytest.mark.parametrize("op", OPS_UNDER_TEST)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(7, 33, 257), (13, 33, 4099), (5, 1000, 4099), (300, 70, 90)],
                         ids=shape_id)
def test_rounding_continuous_data(shape, dtype, op, device):
    """Continuous random data: the result is within the dtype's rounding error of PyTorch's
    float64 result (the error scale is |x| @ |w|.T + |b|, K terms)."""
    M, N, K = shape
    torch.manual_seed(M * 7 + N)
    x64, w64, b64 = torch.randn(M, K, dtype=torch.float64), torch.randn(N, K, dtype=torch.float64), \
        torch.randn(N, dtype=torch.float64)
    go64 = torch.randn(M, N, dtype=torch.float64)
    x, w, b, go = (t.to(dtype=dtype, device=device) for t in (x64, w64, b64, go64))
    fused, _ = run_both(op, x, w, b, go)
    # Reference: PyTorch in float64 on the same (rounded) inputs.
    _, ref = run_both(op, x.double(), w.double(), b.double(), go.double())
    y, gx, gw, gb = fused
    ry, rgx, rgw, rgb = ref
    scale_y = x.double().abs() @ w.double().abs().T + b.double().abs()
    assert_close(y, ry, dtype, scale=scale_y, terms=K, msg="output")
    if op == "linear_relu":
        # The seeds are such that no pre-activation is within rounding of 0, so both forwards
        # agree on every ReLU decision; a sign flip means the forward is off by far more than
        # rounding (and would make the gradients differ legitimately).
        flips = (y.double() > 0) != (ry > 0)
        assert not bool(flips.any()), f"{int(flips.sum())} ReLU decisions differ from PyTorch"
    gscale = go.double().abs()
    assert_close(gx, rgx, dtype, scale=gscale @ w.double().abs(), terms=N, msg="grad_input")
    assert_close(gw, rgw, dtype, scale=gscale.T @ x.double().abs(), terms=M, msg="grad_weight")
    assert_close(gb, rgb, dtype, scale=gscale.sum(0), terms=M, msg="grad_bias")


@pytest.mark.parametrize("output_mask", [(False, False, True),
                                         pytest.param((False, True, True), marks=pytest.mark.slow)],
                         ids=["bias_only", "weight_and_bias"])
def test_bias_grad_over_more_than_2_24_rows(output_mask):
    """grad_bias sums 2^24 + 2^20 rows of ones: a float32 running sum that adds one row at a
    time stops growing at 2^24; PyTorch's sum does not."""
    rows = 2 ** 24 + 2 ** 20
    go = torch.ones(rows, 1)
    x = torch.ones(1, 1).expand(rows, 1)
    w = torch.ones(1, 1)
    _, gw, gb = OPS.linear_backward(go, x, w, None, list(output_mask))
    expected = go.sum(0)
    assert expected.item() == rows
    assert_close(gb, expected, torch.float32, terms=rows, msg="grad_bias")
    if gw is not None:
        assert_close(gw, expected.view(1, 1), torch.float32, terms=rows, msg="grad_weight")


# ---- layouts -------------------------------------------------------------------------------------

M, N, K = 13, 37, 21


def _x(g, dtype):
    return exact_randn(M, K, dtype=dtype, generator=g)


LAYOUTS = {
    # name: (input, weight, bias, grad_output) builders; each returns a tensor of the usual shape
    "x_transposed": lambda g, d, dev: (exact_randn(K, M, dtype=d, generator=g, device=dev).t(), None, None, None),
    "x_stepped": lambda g, d, dev: (exact_randn(2 * M, 3 * K, dtype=d, generator=g, device=dev)[::2, ::3], None, None,
                               None),
    "x_offset_slice": lambda g, d, dev: (exact_randn(M + 3, K + 5, dtype=d, generator=g, device=dev)[3:, 5:], None,
                                    None, None),
    "x_expanded_rows": lambda g, d, dev: (exact_randn(1, K, dtype=d, generator=g, device=dev).expand(M, K), None,
                                     None, None),
    "x_expanded_cols": lambda g, d, dev: (exact_randn(M, 1, dtype=d, generator=g, device=dev).expand(M, K), None,
                                     None, None),
    "w_transposed": lambda g, d, dev: (None, exact_randn(K, N, dtype=d, generator=g, device=dev).t(), None, None),
    "w_stepped": lambda g, d, dev: (None, exact_randn(N, 2 * K, dtype=d, generator=g, device=dev)[:, ::2], None, None),
    "w_storage_offset": lambda g, d, dev: (None, exact_randn(N + 2, K, dtype=d, generator=g, device=dev)[2:], None,
                                       None),
    "b_stepped": lambda g, d, dev: (None, None, exact_randn(3 * N, dtype=d, generator=g, device=dev)[::3], None),
    "b_expanded": lambda g, d, dev: (None, None, exact_randn(1, dtype=d, generator=g, device=dev).expand(N), None),
    "go_expanded": lambda g, d, dev: (None, None, None, exact_randn(1, 1, dtype=d, generator=g, device=dev).expand(M, N)),
    "go_expanded_rows": lambda g, d, dev: (None, None, None, exact_randn(1, N, dtype=d, generator=g, device=dev)
                                      .expand(M, N)),
    "go_transposed": lambda g, d, dev: (None, None, None, exact_randn(N, M, dtype=d, generator=g, device=dev).t()),
    "go_stepped": lambda g, d, dev: (None, None, None, exact_randn(M, 2 * N, dtype=d, generator=g, device=dev)[:, 1::2]),
    "all_transposed": lambda g, d, dev: (exact_randn(K, M, dtype=d, generator=g, device=dev).t(),
                                    exact_randn(K, N, dtype=d, generator=g, device=dev).t(),
                                    exact_randn(2 * N, dtype=d, generator=g, device=dev)[1::2],
                                    exact_randn(N, M, dtype=d, generator=g, device=dev).t()),
}


@pytest.mark.parametrize("op", OPS_UNDER_TEST)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_non_contiguous(layout, dtype, op, device):
    g = make_generator(5)
    x, w, b, go = (exact_randn(M, K, dtype=dtype, generator=g, device=device), exact_randn(N, K, dtype=dtype, generator=g, device=device),
                   exact_randn(N, dtype=dtype, generator=g, device=device), exact_randn(M, N, dtype=dtype, generator=g, device=device))
    override = LAYOUTS[layout](g, dtype, device)
    x, w, b, go = (o if o is not None else t for o, t in zip(override, (x, w, b, go)))
    assert not all(t.is_contiguous() and t.storage_offset() == 0 for t in (x, w, b, go))
    fused, ref = run_both(op, x, w, b, go)
    check_exact(fused, ref, dtype, f"{op} {layout}", (x, w, b, go))


@pytest.mark.parametrize("op", OPS_UNDER_TEST)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("input_shape", [(7,), (0,), (2, 3, 7), (2, 0, 7), (3, 1, 2, 7), (1, 1, 7)],
                         ids=lambda s: "x".join(map(str, s)) or "scalar")
def test_input_ranks(input_shape, dtype, op, device):
    """1-D input gives a 1-D output; any leading batch dims are kept."""
    g = make_generator(len(input_shape))
    kdim = input_shape[-1]
    x = exact_randn(*input_shape, dtype=dtype, generator=g, device=device)
    w = exact_randn(9, kdim, dtype=dtype, generator=g, device=device)
    b = exact_randn(9, dtype=dtype, generator=g, device=device)
    go = exact_randn(*input_shape[:-1], 9, dtype=dtype, generator=g, device=device)
    fused, ref = run_both(op, x, w, b, go)
    assert fused[0].shape == (*input_shape[:-1], 9)
    check_exact(fused, ref, dtype, f"{op} input {input_shape}", (x, w, b, go))


@pytest.mark.parametrize("op", OPS_UNDER_TEST)
def test_3d_permuted_input(op, device):
    """A 3-D input that is not viewable as rows (the op must copy or stride it correctly)."""
    g = make_generator(11)
    x = exact_randn(4, 9, 5, generator=g, device=device).permute(0, 2, 1)  # [4, 5, 9], K = 9
    w = exact_randn(6, 9, generator=g, device=device)
    b = exact_randn(6, generator=g, device=device)
    go = exact_randn(6, 5, 4, generator=g, device=device).permute(2, 1, 0)
    fused, ref = run_both(op, x, w, b, go)
    check_exact(fused, ref, torch.float32, op, (x, w, b, go))


# ---- which gradients are computed ----------------------------------------------------------------


class _RecordOps(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.calls.append((func, args))
        return func(*args, **(kwargs or {}))


NEEDS = [(True, True, True), (False, True, True), (True, False, False), (False, False, True),
         (False, True, False), (True, True, False), (True, False, True)]


@pytest.mark.parametrize("op", OPS_UNDER_TEST)
@pytest.mark.parametrize("needs", NEEDS, ids=lambda n: "".join("xwb"[i] for i in range(3) if n[i]))
def test_only_needed_gradients(needs, op, device):
    """Autograd asks the backward op for exactly the gradients that are needed (output_mask), and
    the results of those match PyTorch."""
    g = make_generator(3)
    x, w, b = exact_randn(6, 10, generator=g, device=device), exact_randn(7, 10, generator=g, device=device), exact_randn(7, generator=g, device=device)
    go = exact_randn(6, 7, generator=g, device=device)
    with _RecordOps() as rec:
        fused, _ = run_both(op, x, w, b, go, needs=needs)
    _, ref = run_both(op, x, w, b, go, needs=needs)
    backward_calls = [args for f, args in rec.calls if f is OPS.linear_backward.default]
    assert len(backward_calls) == 1, [str(f) for f, _ in rec.calls]
    assert list(backward_calls[0][4]) == list(needs)
    check_exact(fused, ref, torch.float32, f"needs {needs}", (x, w, b, go))


@pytest.mark.parametrize("relu", [True, False])
@pytest.mark.parametrize("mask", [(True, False, False), (False, True, False), (False, False, True),
                                  (False, False, False), (True, True, True)])
def test_backward_op_output_mask(mask, relu, device):
    """torch.ops.fused_linreg.linear_backward returns None exactly where output_mask is False."""
    g = make_generator(4)
    x, w, b = exact_randn(5, 9, generator=g, device=device), exact_randn(11, 9, generator=g, device=device), exact_randn(11, generator=g, device=device)
    go = exact_randn(5, 11, generator=g, device=device)
    if relu:
        y, bits = OPS.linear_relu_forward(x, w, b)
    else:
        bits = None
    out = OPS.linear_backward(go, x, w, bits, list(mask))
    xs, ws, bs = (t.clone().requires_grad_() for t in (x, w, b))
    y = torch.nn.functional.linear(xs, ws, bs)
    if relu:
        y = torch.relu(y)
    ref = torch.autograd.grad(y, (xs, ws, bs), go)
    for name, want, got, expected in zip(("grad_input", "grad_weight", "grad_bias"), mask, out, ref):
        if want:
            assert_same(got, expected, name)
        else:
            assert got is None, f"{name} computed although output_mask is False"


@pytest.mark.parametrize("layout", ["column_slice", "row_step", "3d_permuted"])
def test_backward_op_with_non_contiguous_relu_mask(layout, device):
    """linear_backward reads the mask it is given, whatever its strides (the op is public): the
    same gradients as with the contiguous mask from the forward."""
    g = make_generator(6)
    x, w, b = exact_randn(6, 9, generator=g, device=device), exact_randn(40, 9, generator=g, device=device), exact_randn(40, generator=g, device=device)
    go = exact_randn(6, 40, generator=g, device=device)
    _, mask = OPS.linear_relu_forward(x, w, b)  # [6, 8]
    if layout == "column_slice":
        wide = torch.full((6, 16), 0xFF, dtype=torch.uint8, device=device)
        wide[:, :8] = mask
        strided = wide[:, :8]
    elif layout == "row_step":
        tall = torch.full((12, 8), 0xFF, dtype=torch.uint8, device=device)
        tall[::2] = mask
        strided = tall[::2]
    else:
        x, go = x.view(2, 3, 9), go.view(2, 3, 40)
        strided = mask.view(2, 3, 8).transpose(0, 1).contiguous().transpose(0, 1)
        mask = mask.view(2, 3, 8)
    assert not strided.is_contiguous() and torch.equal(strided, mask)
    expected = OPS.linear_backward(go, x, w, mask, [True, True, True])
    got = OPS.linear_backward(go, x, w, strided, [True, True, True])
    for name, a, e in zip(("grad_input", "grad_weight", "grad_bias"), got, expected):
        assert_same(a, e, name)


def test_no_grad_forward_keeps_no_graph():
    x, w = torch.randn(3, 4, requires_grad=True), torch.randn(5, 4, requires_grad=True)
    with torch.no_grad():
        y = fused_linreg.functional.linear_relu(x, w)
    assert not y.requires_grad and y.grad_fn is None


def test_weight_gradient_over_a_large_batch_keeps_float32_precision():
    # The 1 x 1 weight and bias gradients over a batch of a million rows are dot products along
    # the batch: summed per K block (2e-5 off here), not in one running sum per lane (6e-4 off).
    x = torch.full((1_000_000, 1), 1.1)
    w = torch.ones(1, 1, requires_grad=True)
    b = torch.zeros(1, requires_grad=True)
    grad = torch.full((1_000_000, 1), 1.1)
    fused_linreg.functional.linear(x, w, b).backward(grad)
    exact = (x.double() * grad.double()).sum()
    torch.testing.assert_close(w.grad.double().squeeze(), exact, rtol=2e-4, atol=0)
    torch.testing.assert_close(b.grad.double().squeeze(), grad.double().sum(), rtol=2e-4, atol=0)


@pytest.mark.parametrize("out_features", [1, 3, 40])
@pytest.mark.parametrize("op", OPS_UNDER_TEST)
def test_bias_only_gradient(op, out_features):
    # With only the bias trainable, the backward sums the (masked) grad_output and nothing else;
    # one output feature makes grad_output^T K-contiguous (packed as rows).
    g = make_generator(out_features)
    x = exact_randn(700, 9, generator=g)
    w = exact_randn(out_features, 9, generator=g)
    b = exact_randn(out_features, generator=g).requires_grad_()
    go = exact_randn(700, out_features, generator=g)
    fused = getattr(fused_linreg.functional, op)(x, w, b)
    ref = F.linear(x, w, b)
    if op == "linear_relu":
        ref = torch.relu(ref)
    (got,) = torch.autograd.grad(fused, b, go)
    (expected,) = torch.autograd.grad(ref, b, go)
    assert_same(got, expected, f"{op} bias-only gradient, out_features {out_features}")
