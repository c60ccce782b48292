"""ReLU edge cases against torch.relu: NaN, +-inf, -0.0, exact zeros, denormals, and the bitmask
the forward keeps for the backward."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import fused_linreg
from conftest import DTYPES, OPS, assert_same, exact_randn, make_generator, run_both, to_device

inf, nan = float("inf"), float("nan")


def expected_mask(y):
    """The documented bitmask of y > 0: bit j % 8 of byte j / 8 of each row, rows padded to whole
    32-bit words, padding bits 0."""
    rows = (y > 0).reshape(-1, y.shape[-1]).numpy()
    n = y.shape[-1]
    row_bytes = (n + 31) // 32 * 4
    packed = np.packbits(rows, axis=1, bitorder="little") if n else np.zeros((rows.shape[0], 0), np.uint8)
    out = np.zeros((rows.shape[0], row_bytes), dtype=np.uint8)
    out[:, : packed.shape[1]] = packed
    return torch.from_numpy(out).reshape(*y.shape[:-1], row_bytes)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("n", [1, 5, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65, 100, 1025])
def test_bitmask_is_y_positive_packed(n, dtype, device):
    g = make_generator(n)
    x = exact_randn(2, 3, 6, dtype=dtype, generator=g)
    w = exact_randn(n, 6, dtype=dtype, generator=g)
    b = exact_randn(n, dtype=dtype, generator=g)
    b[::3] = inf  # some +inf outputs (bit set)
    b[1::5] = -inf  # some -inf pre-activations (bit clear)
    x, w, b = to_device(device, x, w, b)
    y, mask = OPS.linear_relu_forward(x, w, b)
    assert mask.dtype == torch.uint8 and mask.shape == (2, 3, (n + 31) // 32 * 4)
    assert bool((y == 0).any()) or n < 8, "the data should produce exact zeros (bit clear)"
    assert_same(mask, expected_mask(y.cpu()), "relu_mask")


def test_bitmask_of_batch_zero_and_no_outputs():
    y, mask = OPS.linear_relu_forward(torch.randn(0, 4), torch.randn(5, 4), None)
    assert mask.shape == (0, 4)
    y, mask = OPS.linear_relu_forward(torch.randn(3, 4), torch.randn(0, 4), None)
    assert y.shape == (3, 0) and mask.shape == (3, 0)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_forward_special_values_propagate_like_pytorch(dtype, device):
    """NaN and +-inf inputs give NaN / +-inf outputs exactly where PyTorch's do."""
    g = make_generator(1)
    x = exact_randn(9, 5, dtype=dtype, generator=g)
    w = exact_randn(40, 5, dtype=dtype, generator=g)
    x[1, 2] = nan
    x[3, 0] = inf
    x[4, 1] = -inf
    x[5, 3] = inf
    x[5, 4] = -inf  # inf - inf: NaN
    w[7, :] = 0  # inf * 0: NaN in that column
    w[9, 2] = nan
    b = exact_randn(40, dtype=dtype, generator=g)
    b[11] = inf
    b[12] = -inf
    x, w, b = to_device(device, x, w, b)
    for op, fn in (("linear", fused_linreg.functional.linear),
                   ("linear_relu", fused_linreg.functional.linear_relu)):
        y = fn(x, w, b)
        ref = F.linear(x, w, b)
        if op == "linear_relu":
            ref = torch.relu(ref)
        assert bool(ref.isnan().any()) and bool(ref.isinf().any())
        assert_same(y, ref, op)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_negative_zero_stays_negative_zero(dtype, device):
    """torch.relu(-0.0) is -0.0, and F.linear gives -0.0 where the pre-activation is the bias -0.0
    (in_features 0) or a single -0.0 product plus a -0.0 bias."""
    cases = [
        (torch.empty(3, 0, dtype=dtype), torch.empty(2, 0, dtype=dtype),
         torch.tensor([-0.0, 0.0], dtype=dtype)),
        (torch.ones(3, 1, dtype=dtype), torch.tensor([[-0.0], [0.0]], dtype=dtype),
         torch.tensor([-0.0, -0.0], dtype=dtype)),
    ]
    compared = 0
    for x, w, b in cases:
        x, w, b = to_device(device, x, w, b)
        ref_linear = F.linear(x, w, b)
        if not bool(ref_linear.signbit().any()):
            continue  # PyTorch's bfloat16 GEMM gives +0.0 for the -0.0 product plus -0.0 bias
        compared += 1
        assert_same(fused_linreg.functional.linear(x, w, b), ref_linear, "linear", zero_sign=True)
        assert_same(fused_linreg.functional.linear_relu(x, w, b), torch.relu(ref_linear),
                    "linear_relu", zero_sign=True)
    assert compared >= (1 if dtype == torch.bfloat16 else 2)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_exact_zero_preactivation_gets_zero_gradient(dtype, device):
    """A pre-activation of exactly 0 (and -0.0) gets gradient 0, as in PyTorch (relu'(0) = 0)."""
    x = torch.tensor([[1.0, -1.0], [2.0, 1.0], [0.0, 0.0]], dtype=dtype)
    w = torch.tensor([[1.0, 1.0], [2.0, -1.0], [-1.0, 1.0]], dtype=dtype)
    b = torch.tensor([0.0, -0.0, 0.0], dtype=dtype)
    go = torch.tensor([[3.0, 5.0, 7.0], [11.0, 13.0, 17.0], [19.0, 23.0, 29.0]], dtype=dtype)
    y = F.linear(x, w, b)
    assert int((y == 0).sum()) >= 4
    x, w, b, go = to_device(device, x, w, b, go)
    fused, ref = run_both("linear_relu", x, w, b, go)
    for name, a, e in zip(("output", "grad_input", "grad_weight", "grad_bias"), fused, ref):
        assert_same(a, e, name)
    assert fused[3].tolist() == [11.0, 18.0, 0.0]  # only y > 0 passes: (0,0) and row 2 are 0


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_infinite_preactivation_gradient(dtype, device):
    """+inf outputs pass the gradient, -inf pre-activations block it, as in PyTorch."""
    x = torch.tensor([[1.0, 2.0]], dtype=dtype)
    w = torch.tensor([[1.0, 0.5], [-1.0, 1.0], [2.0, 2.0]], dtype=dtype)
    b = torch.tensor([inf, -inf, 1.0], dtype=dtype)
    go = torch.tensor([[3.0, 5.0, 7.0]], dtype=dtype)
    x, w, b, go = to_device(device, x, w, b, go)
    fused, ref = run_both("linear_relu", x, w, b, go)
    for name, a, e in zip(("output", "grad_input", "grad_weight", "grad_bias"), fused, ref):
        assert_same(a, e, name)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_nan_preactivation_gradient_matches_pytorch(dtype, device):
    """PyTorch's ReLU backward (threshold_backward: y <= 0 ? 0 : grad) passes the gradient where
    the output is NaN. The fused backward must give the same gradients."""
    x = torch.tensor([[1.0, 2.0], [3.0, -1.0]], dtype=dtype)
    w = torch.tensor([[1.0, 0.5], [-1.0, 1.0], [2.0, 2.0]], dtype=dtype)
    b = torch.tensor([nan, 1.0, -20.0], dtype=dtype)  # output column 0 is NaN
    go = torch.tensor([[3.0, 5.0, 7.0], [11.0, 13.0, 17.0]], dtype=dtype)
    x, w, b, go = to_device(device, x, w, b, go)
    fused, ref = run_both("linear_relu", x, w, b, go)
    assert bool(ref[0][:, 0].isnan().all())
    for name, a, e in zip(("output", "grad_input", "grad_weight", "grad_bias"), fused, ref):
        assert_same(a, e, name)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
def test_denormals_are_not_flushed(dtype, device):
    """Denormal pre-activations stay denormal (no flush-to-zero), their bit is set, and their
    gradient passes, as in PyTorch."""
    tiny = torch.finfo(dtype).tiny
    x = torch.tensor([[tiny / 4, -tiny / 8, 1.0]], dtype=dtype)
    w = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0]], dtype=dtype)
    b = torch.tensor([0.0, 0.0, tiny / 16], dtype=dtype)
    go = torch.tensor([[2.0, 3.0, 5.0]], dtype=dtype)
    y_ref = torch.relu(F.linear(x, w, b))
    assert 0 < y_ref[0, 0] < tiny and 0 < y_ref[0, 2] < tiny
    x, w, b, go = to_device(device, x, w, b, go)
    fused, ref = run_both("linear_relu", x, w, b, go)
    for name, a, e in zip(("output", "grad_input", "grad_weight", "grad_bias"), fused, ref):
        assert_same(a, e, name)
    _, mask = OPS.linear_relu_forward(x, w, b)
    assert mask[0, 0].item() == 0b101


def test_float16_mask_follows_the_rounded_output(device):
    """float16 runs through float32 kernels; a pre-activation that is positive in float32 but
    rounds to 0 in float16 has output 0, so (as in PyTorch) its gradient must be 0."""
    x = torch.tensor([[2.0 ** -14]], dtype=torch.float16)
    w = torch.tensor([[2.0 ** -12], [1.0]], dtype=torch.float16)
    go = torch.tensor([[1.0, 1.0]], dtype=torch.float16)
    x, w, go = to_device(device, x, w, go)
    fused, ref = run_both("linear_relu", x, w, None, go)
    assert ref[0][0, 0].item() == 0.0
    for name, a, e in zip(("output", "grad_input", "grad_weight"), fused, ref):
        assert_same(a, e, name)
    _, mask = OPS.linear_relu_forward(x, w, None)
    assert_same(mask, expected_mask(ref[0].cpu()), "relu_mask")
