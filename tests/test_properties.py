"""Property tests (hypothesis): random shapes (0 and 1 included), ranks, strides and transposed or
expanded views, dtypes, bias on/off, and values with NaN, +-inf and denormals; forward and
backward equal the PyTorch reference (NaN positions included), and FusedSGD equals
torch.optim.SGD on random option sets.

Data are exact (dyadic) so results do not depend on summation order; "denormal" cases put the
input and the bias on a scale of 2^-130 (float32) or 2^-1065 (float64), where every value,
product and sum is still exact, and denormal."""
import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fused_linreg
from conftest import DEVICES, assert_linear_results_close, assert_same, exact_randn, run_both

SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=False)
DTYPES = [torch.float32, torch.float64, torch.bfloat16]
DENORMAL_SCALE = {torch.float32: 2.0 ** -130, torch.float64: 2.0 ** -1065}
SPECIALS = [math.nan, math.inf, -math.inf]

dims = st.one_of(st.integers(0, 5), st.sampled_from([1, 7, 8, 9, 12, 13, 16, 17, 31, 33]))
k_dims = st.one_of(st.integers(0, 6), st.sampled_from([1, 9, 17, 255, 257]))
LAYOUTS = ["contiguous", "transposed", "stepped", "expanded", "offset"]


def build(shape, layout, dtype, g, specials=0, scale=1.0, device="cpu"):
    """A tensor of `shape` with the given memory layout; `specials` NaN/inf values are written
    into its memory first (so an expanded view repeats them)."""
    shape = tuple(shape)
    if layout == "transposed" and len(shape) >= 2:
        base_shape = shape[:-2] + (shape[-1], shape[-2])
    elif layout == "stepped" and len(shape) >= 1:
        base_shape = shape[:-1] + (2 * shape[-1],)
    elif layout == "expanded" and len(shape) >= 1:
        base_shape = (1,) + shape[1:]
    elif layout == "offset":
        base_shape = (math.prod(shape) + 3,)
    else:
        base_shape = shape
    base = exact_randn(*base_shape, dtype=torch.float64, generator=g) * scale
    flat = base.view(-1)
    for _ in range(specials):
        if flat.numel():
            flat[int(torch.randint(flat.numel(), (1,), generator=g))] = SPECIALS[
                int(torch.randint(3, (1,), generator=g))]
    base = base.to(dtype=dtype, device=device)
    if layout == "transposed" and len(shape) >= 2:
        return base.transpose(-1, -2)
    if layout == "stepped" and len(shape) >= 1:
        return base[..., ::2]
    if layout == "expanded" and len(shape) >= 1:
        return base.expand(shape)
    if layout == "offset":
        return base[3:].view(shape)
    return base


@st.composite
def linear_cases(draw, specials=False, ops=("linear", "linear_relu")):
    dtype = draw(st.sampled_from(DTYPES))
    K, N = draw(k_dims), draw(dims)
    batch = draw(st.sampled_from([(), (None,), (None,), (None,), (2, None), (None, 1, 2)]))
    batch = tuple(draw(dims) if d is None else d for d in batch)
    case = dict(
        op=draw(st.sampled_from(ops)), dtype=dtype, input_shape=batch + (K,), N=N,
        bias=draw(st.booleans()),
        layouts=[draw(st.sampled_from(LAYOUTS)) for _ in range(4)],  # x, w, b, grad_output
        # Not bfloat16: PyTorch's bfloat16 GEMM (oneDNN) flushes denormal results to zero on CPUs
        # with AVX512-BF16/AMX, where the fused kernels round them correctly.
        denormal=not specials and dtype != torch.bfloat16 and draw(st.booleans()),
        specials=[draw(st.integers(0, 3)) if specials else 0 for _ in range(4)],
        seed=draw(st.integers(0, 2 ** 31 - 1)),
        device=draw(st.sampled_from(DEVICES)),
    )
    return case


def make(case):
    g = torch.Generator().manual_seed(case["seed"])
    dtype, K, N = case["dtype"], case["input_shape"][-1], case["N"]
    scale = DENORMAL_SCALE[dtype] if case["denormal"] else 1.0
    lx, lw, lb, lg = case["layouts"]
    sx, sw, sb, sg = case["specials"]
    dev = case["device"]
    x = build(case["input_shape"], lx, dtype, g, sx, scale, dev)
    w = build((N, K), lw, dtype, g, sw, device=dev)
    b = build((N,), lb, dtype, g, sb, scale, dev) if case["bias"] else None
    go = build(case["input_shape"][:-1] + (N,), lg, dtype, g, sg, device=dev)
    return x, w, b, go


def compare(case, data, fused, ref, exact):
    if exact:
        for name, a, e in zip(("output", "grad_input", "grad_weight", "grad_bias"), fused, ref):
            assert (a is None) == (e is None), name
            if e is not None:
                assert_same(a, e, f"{name} for {case}")
    else:
        assert_linear_results_close(fused, ref, *data, case["dtype"], what=str(case))


@settings(max_examples=150, **SETTINGS)
@given(linear_cases())
def test_finite_values_match_pytorch(case):
    """Any shape, rank, layout and dtype; normal or denormal values: bitwise equal to PyTorch in
    float32/float64 (one rounding in bfloat16)."""
    x, w, b, go = make(case)
    fused, ref = run_both(case["op"], x, w, b, go)
    compare(case, (x, w, b, go), fused, ref, exact=case["dtype"] != torch.bfloat16)
    if case["denormal"] and ref[0].numel():
        # The scale really is denormal: some outputs are below the smallest normal number.
        tiny = torch.finfo(case["dtype"]).tiny
        nonzero = ref[0][ref[0] != 0].abs()
        assert nonzero.numel() == 0 or bool((nonzero < tiny * 2 ** 12).all())


def special_values_reference(case, x, w, b, go):
    """PyTorch's result; for bfloat16 computed by PyTorch in float32 from the same bfloat16
    values: PyTorch's bfloat16 CPU GEMM can spread a NaN to outputs that do not depend on it, on
    some CPUs (see test_bfloat16_nan_stays_in_its_row), while the fused kernels keep the
    float32/float64 semantics."""
    if case["dtype"] != torch.bfloat16:
        return run_both(case["op"], x, w, b, go)[1]
    up = [None if t is None else t.float() for t in (x, w, b, go)]
    return run_both(case["op"], *up)[1]


@settings(max_examples=100, **SETTINGS)
@given(linear_cases(specials=True, ops=("linear",)))
def test_nan_and_inf_propagate_like_pytorch_linear(case):
    x, w, b, go = make(case)
    fused, _ = run_both(case["op"], x, w, b, go)
    ref = special_values_reference(case, x, w, b, go)
    compare(case, (x, w, b, go), fused, ref, exact=case["dtype"] != torch.bfloat16)


@settings(max_examples=100, **SETTINGS)
@given(linear_cases(specials=True, ops=("linear_relu",)))
def test_nan_and_inf_propagate_like_pytorch_linear_relu(case):
    x, w, b, go = make(case)
    fused, _ = run_both(case["op"], x, w, b, go)
    ref = special_values_reference(case, x, w, b, go)
    compare(case, (x, w, b, go), fused, ref, exact=case["dtype"] != torch.bfloat16)


def test_bfloat16_nan_stays_in_its_row():
    """A NaN in row 1 of the input makes only row 1 of the output NaN. PyTorch's own bfloat16 CPU
    matmul (oneDNN) spreads it into row 0 as well on some CPUs (seen on an Intel AVX-512 machine,
    not on an AMD Zen 4): the reason special_values_reference computes bfloat16 in float32."""
    a = torch.ones(66, 33, dtype=torch.bfloat16)
    a[1, 0] = float("nan")
    fused_rows = fused_linreg.functional.linear(a, torch.ones(2, 33, dtype=torch.bfloat16)).isnan().any(1)
    assert fused_rows.nonzero().flatten().tolist() == [1]


# ---- FusedSGD ------------------------------------------------------------------------------------


@st.composite
def sgd_cases(draw):
    momentum = draw(st.sampled_from([0.0, 0.5, 0.9, 0.99]))
    nesterov = momentum > 0 and draw(st.booleans())
    return dict(
        dtype=draw(st.sampled_from([torch.float32, torch.float64])),
        sizes=draw(st.lists(st.one_of(st.integers(0, 40), st.sampled_from([1, 15, 33, 40_000])),
                            min_size=1, max_size=4)),
        lr=draw(st.sampled_from([1e-3, 0.1, 1.0, 3.0])),
        momentum=momentum,
        dampening=0.0 if nesterov else draw(st.sampled_from([0.0, 0.1, 0.5, 1.0])),
        nesterov=nesterov,
        weight_decay=draw(st.sampled_from([0.0, 1e-4, 0.1, 2.0])),
        maximize=draw(st.booleans()),
        steps=draw(st.integers(1, 5)),
        none_grads=draw(st.integers(0, 3)),  # params with grad None on some steps
        specials=draw(st.booleans()),
        seed=draw(st.integers(0, 2 ** 31 - 1)),
        device=draw(st.sampled_from(DEVICES)),
    )


@settings(max_examples=80, **SETTINGS)
@given(sgd_cases())
def test_fused_sgd_matches_torch_sgd(case):
    options = {k: case[k] for k in ("lr", "momentum", "dampening", "nesterov", "weight_decay", "maximize")}
    results = []
    for make_opt in (lambda p: fused_linreg.FusedSGD(p, **options),
                     lambda p: torch.optim.SGD(p, foreach=False, **options)):
        g = torch.Generator().manual_seed(case["seed"])
        params = [torch.nn.Parameter(torch.randn(n, generator=g, dtype=case["dtype"]).to(case["device"]))
                  for n in case["sizes"]]
        opt = make_opt(params)
        for step in range(case["steps"]):
            for i, p in enumerate(params):
                grad = torch.randn(p.shape, generator=g, dtype=case["dtype"]).to(case["device"])
                if case["specials"] and grad.numel():
                    grad[int(torch.randint(grad.numel(), (1,), generator=g))] = SPECIALS[step % 3]
                skip = i < case["none_grads"] and (step + i) % 2 == 1
                p.grad = None if skip else grad
            opt.step()
        results.append((params, opt))
    (pa, oa), (pb, ob) = results
    for i, (p, q) in enumerate(zip(pa, pb)):
        assert_same(p.detach(), q.detach(), f"param {i} of {case}")
        ba, bb = oa.state.get(p, {}).get("momentum_buffer"), ob.state.get(q, {}).get("momentum_buffer")
        assert (ba is None) == (bb is None)
        if ba is not None:
            assert_same(ba, bb, f"momentum buffer {i} of {case}")
