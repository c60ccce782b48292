"""Shared helpers and fixtures for the fused_linreg tests.

The reference is always plain PyTorch: ``F.relu(F.linear(...))`` and ``torch.optim.SGD``.

Most tests use *exact* data: values that are small multiples of a power of two, so every product
and every partial sum is exactly representable in the accumulator. Then any summation order gives
the same bits and the fused kernels must agree with PyTorch exactly (bitwise for float32 and
float64), which catches indexing, packing and masking bugs that a tolerance would hide.
Rounding behaviour is tested separately on continuous random data with dtype tolerances.
"""
import os
import subprocess
import sys
import textwrap

# OpenMP threads that spin while waiting make every small multi-threaded op of the PyTorch
# reference take milliseconds when the 2 cores are shared with other jobs; passive waiting changes
# no result, only the wall time. Must be set before torch (libgomp) is loaded.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import fused_linreg  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OPS = torch.ops.fused_linreg


# ---- devices ---------------------------------------------------------------------------------


def devices():
    """The devices the tests run on: "cpu", and "cuda" when a GPU is present and the extension
    was built with CUDA kernels."""
    yield "cpu"
    if torch.cuda.is_available() and fused_linreg.build_info()["cuda"]:
        yield "cuda"


DEVICES = list(devices())


def to_device(device, *tensors):
    """The tensors moved to `device` (None stays None)."""
    return tuple(None if t is None else t.to(device) for t in tensors)


@pytest.fixture(params=DEVICES)
def device(request):
    return request.param


# ---- data --------------------------------------------------------------------------------------

DTYPES = [torch.float32, torch.float64, torch.bfloat16]


def exact_randn(*shape, dtype=torch.float32, device="cpu", generator=None, scale=8, span=4):
    """Random values in [-span, span] that are multiples of 1/scale: exactly representable in
    every tested dtype (bfloat16 included), with exact products and sums in float32 for K up to
    ~2^24 / (span * scale)^2."""
    n = torch.randint(-span * scale, span * scale + 1, shape, generator=generator)
    return (n.to(torch.float64) / scale).to(dtype=dtype, device=device)


def make_generator(seed):
    g = torch.Generator()
    g.manual_seed(seed)
    return g


# ---- references ----------------------------------------------------------------------------------


def reference(op, x, w, b):
    """Plain PyTorch's result for op ("linear" or "linear_relu")."""
    y = F.linear(x, w, b)
    return F.relu(y) if op == "linear_relu" else y


def fused(op, x, w, b):
    if op == "linear_relu":
        return fused_linreg.functional.linear_relu(x, w, b)
    return fused_linreg.functional.linear(x, w, b)


def leaves(*tensors, requires_grad=True):
    """Fresh leaf copies (same strides: views are rebuilt on a cloned base) that require grad."""
    out = []
    for t in tensors:
        if t is None:
            out.append(None)
            continue
        c = same_strides_copy(t)
        out.append(c.requires_grad_(requires_grad))
    return out


def same_strides_copy(t):
    """A copy of ``t`` with the same sizes, strides and storage offset, on a cloned storage (so
    transposed, stepped and expanded layouts reach the op unchanged)."""
    storage = t.detach().untyped_storage().clone()
    return torch.empty(0, dtype=t.dtype, device=t.device).set_(
        storage, t.storage_offset(), t.shape, t.stride())


def run_both(op, x, w, b, grad_output=None, needs=(True, True, True)):
    """Forward and backward through the fused op and the PyTorch reference on fresh leaves.
    Returns ((y, gx, gw, gb) fused, (y, gx, gw, gb) reference)."""
    results = []
    for fn in (fused, reference):
        xs, ws, bs = leaves(x, w, b)
        for t, need in zip((xs, ws, bs), needs):
            if t is not None:
                t.requires_grad_(need)
        y = fn(op, xs, ws, bs)
        grads = [None, None, None]
        if y.requires_grad:
            go = torch.ones_like(y) if grad_output is None else grad_output
            inputs = [t for t in (xs, ws, bs) if t is not None and t.requires_grad]
            got = torch.autograd.grad(y, inputs, go, allow_unused=False)
            it = iter(got)
            grads = [next(it) if (t is not None and t.requires_grad) else None
                     for t in (xs, ws, bs)]
        results.append((y.detach(), *grads))
    return results[0], results[1]


# ---- comparisons ---------------------------------------------------------------------------------

# Tolerances for continuous (not exact) data, relative to the scale of the summed terms.
EPS = {torch.float32: 2.0 ** -23, torch.float64: 2.0 ** -52, torch.bfloat16: 2.0 ** -8,
       torch.float16: 2.0 ** -10}


def assert_same(actual, expected, msg="", zero_sign=False):
    """Equality of every value, NaN positions included; with zero_sign also the sign of zeros
    (bitwise equality). Summation-order-independent data makes this exact across kernels, except
    for the sign of a zero sum, which IEEE leaves to the order of the terms."""
    assert actual is not None and expected is not None, msg
    assert actual.shape == expected.shape, f"{msg}: shape {actual.shape} != {expected.shape}"
    assert actual.dtype == expected.dtype, f"{msg}: dtype {actual.dtype} != {expected.dtype}"
    a, e = actual.detach().cpu(), expected.detach().cpu()
    if a.dtype.is_floating_point:
        same = (a == e) | (a.isnan() & e.isnan())
        if zero_sign:
            same &= (a.signbit() == e.signbit()) | a.isnan()
    else:
        same = a == e
    if not bool(same.all()):
        bad = (~same).nonzero()[:5].tolist()
        raise AssertionError(
            f"{msg}: {int((~same).sum())} of {a.numel()} elements differ; first at {bad}: "
            f"{[a[tuple(i)].item() for i in bad]} != {[e[tuple(i)].item() for i in bad]}")


def assert_close(actual, expected, dtype=None, scale=None, terms=1, msg=""):
    """Equal within the dtype's rounding: |a - e| <= tol * (scale + |e|), where scale bounds the
    summed magnitudes (e.g. |x| @ |w|.T) and terms is the number of summed terms. NaN positions
    and infinities must match exactly."""
    assert actual is not None and expected is not None, msg
    assert actual.shape == expected.shape, f"{msg}: shape {actual.shape} != {expected.shape}"
    dtype = dtype or expected.dtype
    a, e = actual.detach().cpu().double(), expected.detach().cpu().double()
    nan_a, nan_e = a.isnan(), e.isnan()
    assert torch.equal(nan_a, nan_e), f"{msg}: NaN positions differ ({int((nan_a ^ nan_e).sum())})"
    inf = e.isinf() | a.isinf()
    assert torch.equal(a[inf], e[inf]), f"{msg}: infinities differ"
    ok = ~(nan_e | inf)
    s = e.abs() if scale is None else scale.detach().cpu().double() + e.abs()
    tol = EPS[dtype] * (4 + 2 * terms ** 0.5) * s + 1e-30
    if dtype == torch.bfloat16:
        tol = tol + 2 * EPS[dtype] * e.abs()
    err = (a - e).abs()
    bad = ok & (err > tol)
    if bool(bad.any()):
        i = bad.nonzero()[0].tolist()
        raise AssertionError(f"{msg}: {int(bad.sum())} of {a.numel()} elements beyond tolerance; "
                             f"at {i}: {a[tuple(i)].item()} vs {e[tuple(i)].item()} "
                             f"(tol {tol[tuple(i)].item():.3g})")


def term_scales(x, w, b, go):
    """The magnitudes of the summed terms of (output, grad_input, grad_weight, grad_bias):
    |x| @ |w|.T + |b|, |go| @ |w|, |go|.T @ |x|, sum |go| (float64, NaN/inf as 0), and the number
    of terms of each sum. Rounding in intermediate steps (e.g. PyTorch's bfloat16 GEMM rounds
    x @ w.T before adding the bias) is bounded relative to these, not to the result."""
    def mag(t):
        return t.detach().double().nan_to_num(0.0, 0.0, 0.0).abs()
    K, N = w.shape[1], w.shape[0]
    rows = x.numel() // K if K else int(torch.tensor(x.shape[:-1]).prod())
    xs, ws, gos = mag(x).reshape(rows, K), mag(w), mag(go).reshape(rows, N)
    out = xs @ ws.T + (0 if b is None else mag(b))
    return [(out.reshape(*x.shape[:-1], N), K + 1), ((gos @ ws).reshape(x.shape), N),
            (gos.T @ xs, xs.shape[0]), (gos.sum(0), xs.shape[0])]


def assert_linear_results_close(fused, ref, x, w, b, go, dtype, what=""):
    """(output, grad_input, grad_weight, grad_bias) within the dtype's rounding of the reference,
    relative to the magnitudes of the summed terms; NaN and infinities exactly where PyTorch's."""
    names = ("output", "grad_input", "grad_weight", "grad_bias")
    for name, a, e, (scale, terms) in zip(names, fused, ref, term_scales(x, w, b, go)):
        if e is None:
            assert a is None, f"{what}: {name} should not be computed"
            continue
        assert_close(a, e, dtype, scale=scale, terms=terms, msg=f"{what}: {name}")


# ---- subprocesses --------------------------------------------------------------------------------


def run_python(code, cwd=None, env=None, timeout=300):
    """Runs ``code`` in a fresh interpreter (so a crash fails the calling test instead of killing
    pytest). Returns the CompletedProcess; stdout and stderr are text."""
    full_env = dict(os.environ)
    full_env.setdefault("PYTHONPATH", "")
    if cwd is None:
        full_env["PYTHONPATH"] = ROOT + os.pathsep + full_env["PYTHONPATH"]
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=cwd or ROOT,
                          env=full_env, capture_output=True, text=True, timeout=timeout)


# ---- state hygiene -------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _restore_global_state():
    """Every test starts on the default CPU ISA and thread count, and leaves them so."""
    isa = fused_linreg.build_info()["cpu_isa_active"]
    threads = torch.get_num_threads()
    yield
    fused_linreg.set_cpu_isa(isa)
    torch.set_num_threads(threads)
