"""64-bit index arithmetic: real tensors with more than 2^31 elements (or bytes), kept as cheap as
possible (bfloat16, one column, the other operands expanded with stride 0), and a marker value
placed past 2^31 so that any 32-bit truncation of an index reads the wrong element.

The values are +-1 alternating (partial sums stay exact in any order) plus the marker, so the
expected results are known exactly without a PyTorch computation of the same size.

Each case runs in its own interpreter: a failure there (an allocation the kernels cannot make)
must not take the later cases, or pytest, down with it."""
import os

import pytest
import torch

import fused_linreg
from conftest import run_python

pytestmark = pytest.mark.slow

ops = torch.ops.fused_linreg
BIG = 2 ** 31 + 33  # elements, odd
MARKER_AT = 2 ** 31 + 20  # even: +1 in the alternating pattern
MARKER = 64.0
CHUNK = 2 ** 27


def alternating(n, marker_at, dtype=torch.bfloat16):
    """[n, 1]: +1, -1, +1, ... with MARKER at marker_at. Sum: 1 (n odd) - 1 + MARKER."""
    t = torch.ones(n, 1, dtype=dtype)
    t[1::2] = -1
    t[marker_at] = MARKER
    return t


def pattern_sum(n, marker_at):
    return (n % 2) - (1 if marker_at % 2 == 0 else -1) + MARKER


def run_case(name, *args):
    """Runs case_<name>(*args) of this module in a fresh interpreter."""
    here = os.path.dirname(os.path.abspath(__file__))
    proc = run_python(f"import sys; sys.path.insert(0, {here!r}); import test_indexing64 as t; "
                      f"t.case_{name}(*{args!r}); print('CASE OK')", timeout=1200)
    assert proc.returncode == 0 and "CASE OK" in proc.stdout, \
        f"exit code {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"


def test_forward_rows_past_2_31():
    run_case("forward_rows")


@pytest.mark.parametrize("output_mask", [(False, False, True), (False, True, True)],
                         ids=["bias_only", "weight_and_bias"])
def test_weight_and_bias_grad_reduce_past_2_31_rows(output_mask):
    run_case("grad_reduction", output_mask)


@pytest.mark.parametrize("big_operand", ["input", "weight"])
def test_dot_product_longer_than_2_31(big_operand):
    run_case("long_dot_product", big_operand)


def test_relu_mask_bytes_past_2_31():
    run_case("relu_mask_bytes")


def case_forward_rows():
    """y = 2x + 1 over 2^31 + 33 rows: every row (checked in chunks) and the marker row."""
    big = alternating(BIG, MARKER_AT)
    w = torch.tensor([[2.0]], dtype=torch.bfloat16)
    b = torch.tensor([1.0], dtype=torch.bfloat16)
    y = fused_linreg.functional.linear(big, w, b)
    assert y.shape == (BIG, 1)
    assert y[MARKER_AT, 0].item() == 2 * MARKER + 1
    assert y[-1, 0].item() == 3.0 and y[-2, 0].item() == -1.0
    for start in range(0, BIG, CHUNK):
        part = big[start:start + CHUNK]
        assert torch.equal(y[start:start + CHUNK], part * 2 + 1), f"rows {start}..."
    del y


def case_grad_reduction(output_mask):
    """grad_weight and grad_bias sum over 2^31 + 33 rows of grad_output (the marker included)."""
    big = alternating(BIG, MARKER_AT)
    x = torch.ones(1, 1, dtype=torch.bfloat16).expand(BIG, 1)  # no memory
    w = torch.ones(1, 1, dtype=torch.bfloat16)
    gi, gw, gb = ops.linear_backward(big, x, w, None, list(output_mask))
    expected = pattern_sum(BIG, MARKER_AT)
    assert gi is None
    assert gb.tolist() == [expected]
    if output_mask[1]:
        assert gw.tolist() == [[expected]]


def case_long_dot_product(big_operand):
    """One output summed over K = 2^31 + 33 (split-K slices); the other operand is expanded."""
    row = alternating(BIG, MARKER_AT).view(1, BIG)
    ones = torch.ones(1, 1, dtype=torch.bfloat16).expand(1, BIG)
    x, w = (row, ones) if big_operand == "input" else (ones, row)
    assert fused_linreg.functional.linear(x, w).item() == pattern_sum(BIG, MARKER_AT)


def case_relu_mask_bytes():
    """The bitmask of 2^29 + 33 rows spans more than 2^31 bytes (4 per row): its bits past 2^31
    bytes are right, and the backward reads them at the right place."""
    rows = 2 ** 29 + 33
    marker_row = 2 ** 29 + 20  # byte offset > 2^31
    x = alternating(rows, marker_row)
    w = torch.ones(1, 1, dtype=torch.bfloat16)
    y, mask = ops.linear_relu_forward(x, w, None)
    assert mask.shape == (rows, 4) and mask.numel() > 2 ** 31
    assert mask[marker_row].tolist() == [1, 0, 0, 0]
    assert mask[marker_row + 1].tolist() == [0, 0, 0, 0]
    assert y[marker_row, 0].item() == MARKER and y[marker_row + 1, 0].item() == 0
    for start in range(0, rows, CHUNK):
        part = x[start:start + CHUNK, 0]
        assert torch.equal(mask[start:start + CHUNK, 0], (part > 0).to(torch.uint8)), f"rows {start}..."
    del y
    # grad_output: 1000 on the odd (masked-out) rows, which must not count; +1, -1, ... on the
    # kept even rows (a small exact sum), and the marker.
    go = torch.full((rows, 1), 1000.0, dtype=torch.bfloat16)
    go[0::4] = 1
    go[2::4] = -1
    go[marker_row] = MARKER
    gi, _, gb = ops.linear_backward(go, x, w, mask, [True, False, True])
    kept = (rows + 1) // 2  # odd count: +1 -1 ... +1 sums to 1; the marker replaced a +1
    assert kept % 2 == 1 and (marker_row // 2) % 2 == 0
    assert gb.item() == 1 - 1 + MARKER
    assert gi[marker_row, 0].item() == MARKER and gi[marker_row + 1, 0].item() == 0
    for start in range(0, rows, CHUNK):
        part, g = x[start:start + CHUNK], go[start:start + CHUNK]
        assert torch.equal(gi[start:start + CHUNK], torch.where(part > 0, g, 0)), f"rows {start}..."
