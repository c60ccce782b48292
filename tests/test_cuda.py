"""The CUDA kernels against a float64 reference: every op, every dtype, shapes that are not
multiples of any tile, transposed and expanded operands, rows of every alignment, split-K,
NaN-poisoned outputs, the ReLU bitmask, deterministic gradients, TF32 as torch's settings say, SGD
against torch.optim.SGD, and a training step captured in a CUDA graph (which also proves that no
kernel synchronizes the host or leaves the current stream).

The GPU tests skip without a GPU and a CUDA build; the tests under "every build" run on every
build, the device-parametrized ones on the CPU and, with a GPU, on CUDA too.
"""
import contextlib
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fused_linreg
from conftest import (OPS, assert_close, assert_linear_results_close, exact_randn, leaves,
                      make_generator, run_both)
from fused_linreg import FusedLinear, FusedLinearReLU, FusedSGD

CUDA_BUILD = fused_linreg.build_info()["cuda"]
GPU = pytest.mark.skipif(not (torch.cuda.is_available() and CUDA_BUILD),
                         reason="needs a CUDA device and a CUDA build of fused_linreg")
OP_NAMES = sorted(name.split("::")[1] for name in torch._C._dispatch_get_all_op_names()
                  if name.startswith("fused_linreg::"))


# ---- every build -----------------------------------------------------------------------------


def test_every_op_has_a_cuda_kernel():
    """CUDA builds register a kernel for every op; CPU-only builds a fallback that says how to
    rebuild (tests/test_import_errors.py checks its message). Either way the dispatcher never
    answers with its own 'no kernel' message."""
    assert len(OP_NAMES) >= 5, OP_NAMES
    for name in OP_NAMES:
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"fused_linreg::{name}", "CUDA"), name


# A tensor whose sizes are all 1 counts as contiguous in PyTorch whatever its strides, and a size-1
# dimension of any tensor may have any stride. Autograd hands such tensors over (the gradient of
# a sum is a [1, 1] of strides (0, 0)), and so do slices of stepped views. The CPU kernels pack any
# strides; the CUDA GEMM needs a unit-stride dimension, so both normalize those strides first.
# (name, (M, N, K), strides of x [M, K], w [N, K], grad_output [M, N]; None: contiguous).
SIZE_ONE_LAYOUTS = [
    ("go_1x1_expanded", (1, 1, 5), None, None, (0, 0)),
    ("go_1x1_stepped", (1, 1, 5), None, None, (12, 2)),
    ("x_1x1_stepped", (1, 3, 1), (12, 2), None, None),
    ("x_stepped_row", (1, 4, 9), (0, 2), None, None),
    ("x_stepped_column", (7, 4, 1), (3, 5), None, None),
    ("w_stepped_row", (6, 1, 9), None, (0, 3), None),
    ("w_stepped_column", (6, 5, 1), None, (2, 7), None),
    ("go_stepped_row", (1, 6, 4), None, None, (0, 3)),
    ("go_stepped_column", (6, 1, 4), None, None, (2, 9)),
    ("all_1x1", (1, 1, 1), (5, 3), (0, 0), (7, 7)),
]


def exact_strided(shape, strides, dtype, device, generator):
    """Exact random values of `shape` laid out with `strides` (contiguous when None)."""
    if strides is None:
        return exact_randn(*shape, dtype=dtype, device=device, generator=generator)
    span = 1 + sum((n - 1) * s for n, s in zip(shape, strides))
    storage = exact_randn(span, dtype=dtype, device=device, generator=generator)
    return storage.as_strided(shape, strides)


@pytest.mark.parametrize("op", ["linear", "linear_relu"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("layout", SIZE_ONE_LAYOUTS, ids=lambda c: c[0])
def test_size_one_dimensions_with_any_strides(layout, dtype, op, device):
    _, (M, N, K), x_strides, w_strides, go_strides = layout
    g = make_generator(M * 100 + N * 10 + K)
    x = exact_strided((M, K), x_strides, dtype, device, g)
    w = exact_strided((N, K), w_strides, dtype, device, g)
    b = exact_randn(N, dtype=dtype, device=device, generator=g)
    go = exact_strided((M, N), go_strides, dtype, device, g)
    assert x.stride() == (x_strides or x.stride()) and go.stride() == (go_strides or go.stride())
    fused, ref = run_both(op, x, w, b, go)
    assert_linear_results_close(fused, ref, x, w, b, go, dtype, what=layout[0])


@pytest.mark.parametrize("relu", [False, True], ids=["linear", "relu"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("case", ["1d_input", "one_row", "1x1_of_a_stepped_view"])
def test_size_one_dimensions_from_autograd(case, dtype, relu, device):
    """One output feature and .sum().backward(): the gradient reaching the backward is a
    [1, 1] expanded from a scalar (strides (0, 0)); and a 1 x 1 slice of a stepped view
    (strides (12, 2)) as the input."""
    g = make_generator(11)
    x, features = {
        "1d_input": lambda: (exact_randn(5, generator=g), (5, 1)),
        "one_row": lambda: (exact_randn(1, 5, generator=g), (5, 1)),
        "1x1_of_a_stepped_view": lambda: (exact_randn(6, 6, generator=g)[::2, ::2][:1, :1], (1, 3)),
    }[case]()
    module = (FusedLinearReLU if relu else FusedLinear)(*features)
    with torch.no_grad():
        module.weight.copy_(exact_randn(*module.weight.shape, generator=g))
        module.bias.copy_(exact_randn(*module.bias.shape, generator=g))
    module = module.to(device, dtype)
    plain = nn.Linear(*features).to(device, dtype)
    plain.load_state_dict(module.state_dict())
    results = []
    for forward, layer in ((module, module), (lambda t: F.relu(plain(t)) if relu else plain(t),
                                               plain)):
        (xl,) = leaves(x.to(device, dtype))
        assert xl.stride() == x.stride()
        y = forward(xl)
        y.sum().backward()
        results.append((y.detach(), xl.grad, layer.weight.grad, layer.bias.grad))
    assert_linear_results_close(*results, x.to(device, dtype), module.weight.detach(),
                                module.bias.detach(), torch.ones_like(results[1][0]), dtype,
                                what=case)


# ---- helpers ---------------------------------------------------------------------------------

# (M, N, K): input [M, K], weight [N, K]. Tiles are 128 x 128 x 32 (64 x 64 x 32 for float64);
# rows of 16-byte multiples take the cp.async fast path, the others the element path; small
# outputs with deep K are split along K.
SHAPES = [
    (1, 1, 1), (3, 5, 7), (2, 33, 64), (37, 31, 100), (129, 130, 33), (257, 97, 129),
    (1000, 257, 72), (130, 3, 515), (64, 64, 8192), (5, 300, 4100), (4099, 40, 48),
]
DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]
# float32 runs on exact FFMA by default and on TF32 tensor cores when torch allows TF32 matmuls.
MATH = [pytest.param(torch.float32, False, id="float32"),
        pytest.param(torch.float32, True, id="float32-tf32"),
        *[pytest.param(dtype, False, id=str(dtype)) for dtype in DTYPES[1:]]]


def shape_id(s):
    return "x".join(map(str, s))


def poison_next_allocations(*tensors_like):
    """Makes the caching allocator hand out NaN-filled memory (all bytes 0xFF: NaN in every float
    dtype, all bits set in a mask) for the next CUDA allocations of these tensors' sizes (any
    device), so that an element a kernel fails to write shows up as a NaN or a stray mask bit."""
    blocks = [torch.full((t.numel() * t.element_size(),), 255, dtype=torch.uint8, device="cuda")
              for t in tensors_like]
    del blocks


def packbits_rows(passes):
    """The reference ReLU bitmask of a boolean [M, N]: bit j % 8 of byte j / 8, rows padded to
    whole 32-bit words with zero bits."""
    M, N = passes.shape
    padded = torch.zeros(M, (N + 31) // 32 * 32, dtype=torch.uint8, device=passes.device)
    padded[:, :N] = passes
    weights = (2 ** torch.arange(8, device=passes.device)).to(torch.uint8)
    return (padded.view(M, padded.shape[1] // 8, 8) * weights).sum(-1, dtype=torch.uint8)


def relu_passes(y):
    """Where PyTorch's ReLU backward passes the gradient (threshold_backward: y <= 0 ? 0 : grad):
    positive and NaN outputs."""
    return ~(y <= 0)


def tolerance_dtype(dtype):
    """The dtype whose rounding bounds the kernel's error: TF32 tensor cores round float32
    inputs to 10 mantissa bits, like float16."""
    if dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32:
        return torch.float16
    return dtype


def random_operands(M, N, K, dtype, seed, bias=True):
    g = torch.Generator(device="cuda").manual_seed(seed)
    def randn(*shape):
        return torch.randn(*shape, generator=g, device="cuda", dtype=torch.float64).to(dtype)
    return randn(M, K), randn(N, K), randn(N) if bias else None, randn(M, N)


@contextlib.contextmanager
def tf32_matmuls(allowed):
    saved = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = allowed
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved


def check_forward_backward(x, w, b, go, relu=True):
    """Runs the forward and backward ops on poisoned memory and checks every output against
    float64 math on the same (rounded) inputs, within the dtype's rounding."""
    dtype = tolerance_dtype(x.dtype)
    M, N, K = x.shape[0], w.shape[0], x.shape[1]
    x64, w64, go64 = x.double(), w.double(), go.double()
    b64 = b.double() if b is not None else torch.zeros(N, dtype=torch.float64, device="cuda")

    poison_next_allocations(go, torch.empty(M, (N + 31) // 32 * 4, dtype=torch.uint8))
    if relu:
        y, mask = OPS.linear_relu_forward(x, w, b)
        assert torch.equal(mask, packbits_rows(relu_passes(y))), "mask != !(y <= 0)"
    else:
        y, mask = OPS.linear_forward(x, w, b), None
    pre = x64 @ w64.T + b64
    y_ref = pre.clamp_min(0) if relu else pre
    assert_close(y, y_ref, dtype, scale=x64.abs() @ w64.abs().T + b64.abs(), terms=K, msg="output")

    # The backward sees the mask of the stored output (a value rounded to 0 has no gradient).
    g64 = go64 * relu_passes(y) if relu else go64
    poison_next_allocations(x, w, torch.empty(N, dtype=w.dtype))
    gx, gw, gb = OPS.linear_backward(go, x, w, mask, [True, True, b is not None])
    ga = g64.abs()
    assert_close(gx, g64 @ w64, dtype, scale=ga @ w64.abs(), terms=N, msg="grad_input")
    assert_close(gw, g64.T @ x64, dtype, scale=ga.T @ x64.abs(), terms=M, msg="grad_weight")
    if b is not None:
        assert_close(gb, g64.sum(0), dtype, scale=ga.sum(0), terms=M, msg="grad_bias")
    else:
        assert gb is None


# ---- linear / linear+ReLU --------------------------------------------------------------------


@GPU
@pytest.mark.cuda
@pytest.mark.parametrize("relu", [True, False], ids=["relu", "linear"])
@pytest.mark.parametrize("dtype,tf32", MATH)
@pytest.mark.parametrize("shape", SHAPES, ids=shape_id)
def test_matches_float64_reference(shape, dtype, tf32, relu):
    x, w, b, go = random_operands(*shape, dtype, seed=sum(shape))
    with tf32_matmuls(tf32):
        check_forward_backward(x, w, b, go, relu)


@GPU
@pytest.mark.cuda
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_random_shapes(dtype):
    """Random shapes and biases, none of them a multiple of a tile."""
    gen = torch.Generator().manual_seed(4)
    for i in range(12):
        M, N, K = (int(v) for v in torch.randint(1, 700, (3,), generator=gen))
        x, w, b, go = random_operands(M, N, K, dtype, seed=i, bias=i % 3 != 0)
        check_forward_backward(x, w, b, go, relu=i % 2 == 0)


@GPU
@pytest.mark.cuda
@pytest.mark.parametrize("dtype,tf32", MATH)
def test_operand_layouts(dtype, tf32):
    """Transposed views are read in place (both unit-stride layouts of each operand: every
    fragment layout of the tensor-core loads and both orientations of the ReLU mask against the
    staged tile), other layouts are copied; a stepped view gives rows that are not 16-byte
    aligned."""
    x, w, b, go = random_operands(70, 90, 110, dtype, seed=7)
    x_t = x.T.contiguous().T  # column-major input
    w_t = w.T.contiguous().T  # column-major weight, as a tied transposed weight is
    x_step = torch.empty(70, 220, dtype=dtype, device="cuda")[:, ::2]  # no unit stride: copied
    x_step.copy_(x)
    x_offset = torch.cat([x.new_zeros(70, 1), x], 1)[:, 1:]  # rows start 1 element in
    with tf32_matmuls(tf32):
        for xv, wv in [(x_t, w), (x, w_t), (x_t, w_t), (x_step, w), (x_offset, w)]:
            assert torch.equal(xv, x) and torch.equal(wv, w)
            check_forward_backward(xv, wv, b, go)
        go_t = go.T.contiguous().T  # column-major grad_output
        check_forward_backward(x, w, b, go_t)
        check_forward_backward(x_t, w_t, b, go_t)
        check_forward_backward(x, w, b, torch.ones(1, 1, dtype=dtype, device="cuda").expand(70, 90))


def with_row_alignment(t, alignment, transposed, offset):
    """A view equal to the 2-D `t` whose rows (columns when `transposed`: the view is the
    transpose of a row-major buffer) are `alignment` bytes apart modulo 16, starting `offset`
    elements into a fresh buffer."""
    rows, cols = t.T.shape if transposed else t.shape
    element = t.element_size()
    pitch = (cols * element + 15) // 16 * 16 // element + alignment % 16 // element
    buffer = torch.full((offset + rows * pitch,), float("nan"), dtype=t.dtype, device=t.device)
    view = buffer[offset:].view(rows, pitch)[:, :cols]
    view.copy_(t.T if transposed else t)
    return view.T if transposed else view


@GPU
@pytest.mark.cuda
@pytest.mark.parametrize("alignment", [16, 8, 4, 2], ids=lambda a: f"{a}-byte")
@pytest.mark.parametrize("dtype,tf32", MATH)
def test_row_alignments(dtype, tf32, alignment):
    """Every operand with rows 16-, 8-, 4- or 2-byte aligned (the widest cp.async copy each
    allows, or element copies), by their pitch or by the offset of their first element, in both
    layouts; odd sizes, so that the last copy of a row is partly past its end."""
    element = torch.empty(0, dtype=dtype).element_size()
    if alignment < element:
        pytest.skip(f"{dtype} rows are always {element}-byte aligned")
    x, w, b, go = random_operands(71, 45, 37, dtype, seed=alignment)
    with tf32_matmuls(tf32):
        for transposed in (False, True):
            for offset in sorted({0, alignment % 16 // element}):
                pitch_alignment = 16 if offset else alignment
                xv, wv, gov = (with_row_alignment(t, pitch_alignment, transposed, offset)
                               for t in (x, w, go))
                assert torch.equal(xv, x) and torch.equal(wv, w) and torch.equal(gov, go)
                check_forward_backward(xv, wv, b, gov)


@contextlib.contextmanager
def restored_matmul_precision():
    """Restores torch's float32 matmul settings through the legacy API, which sets the legacy
    and the new state alike (torch refuses to read a mix of the two)."""
    saved = torch.backends.cuda.matmul.allow_tf32
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved


@GPU
@pytest.mark.cuda
@pytest.mark.parametrize("setting", ["allow_tf32", "fp32_precision", "float32_matmul_precision"])
def test_tf32_follows_torch_settings(setting):
    """float32 runs on TF32 tensor cores exactly when torch's own matmuls would, whichever API
    said so: TF32 results are off by more than float32 rounding (and within float16's), exact
    FFMA results are not."""
    x, w, b, _ = random_operands(64, 48, 256, torch.float32, seed=13)
    x64, w64, b64 = x.double(), w.double(), b.double()
    ref, scale = x64 @ w64.T + b64, x64.abs() @ w64.abs().T + b64.abs()
    switch = {
        "allow_tf32": lambda on: setattr(torch.backends.cuda.matmul, "allow_tf32", on),
        "fp32_precision": lambda on: setattr(torch.backends.cuda.matmul, "fp32_precision",
                                             "tf32" if on else "ieee"),
        "float32_matmul_precision": lambda on: torch.set_float32_matmul_precision(
            "high" if on else "highest"),
    }[setting]
    with restored_matmul_precision():
        switch(True)
        y = OPS.linear_forward(x, w, b)
        assert_close(y, ref, torch.float16, scale=scale, terms=256, msg="TF32")
        with pytest.raises(AssertionError):
            assert_close(y, ref, torch.float32, scale=scale, terms=256)
        switch(False)
        y = OPS.linear_forward(x, w, b)
        assert_close(y, ref, torch.float32, scale=scale, terms=256, msg="FFMA")


@GPU
@pytest.mark.cuda
def test_batched_input_and_empty_dimensions():
    x = torch.randn(4, 5, 6, device="cuda")
    w, b = torch.randn(7, 6, device="cuda"), torch.randn(7, device="cuda")
    y, mask = OPS.linear_relu_forward(x, w, b)
    assert y.shape == (4, 5, 7) and mask.shape == (4, 5, 4)
    torch.testing.assert_close(y, F.relu(F.linear(x, w, b)), rtol=1e-5, atol=1e-5)
    for M, N, K in [(0, 5, 7), (3, 0, 4), (3, 4, 0)]:
        x, w, b, go = random_operands(M, N, K, torch.float32, seed=1)
        check_forward_backward(x, w, b, go)


@GPU
@pytest.mark.cuda
def test_nan_and_relu_edges():
    """torch.relu's semantics: a NaN output stays NaN and, as in PyTorch's backward, passes its
    gradient (mask bit set); where the bit is clear the gradient is 0 even if grad_output is NaN
    or inf (a select, not a multiply)."""
    x = torch.tensor([[1.0, 2.0], [-1.0, 3.0]], device="cuda")
    w, b = torch.eye(2, device="cuda"), torch.tensor([0.0, float("nan")], device="cuda")
    y, mask = OPS.linear_relu_forward(x, w, b)
    assert y[:, 1].isnan().all() and y[:, 0].tolist() == [1.0, 0.0]
    assert mask.tolist() == [[0b11, 0, 0, 0], [0b10, 0, 0, 0]]
    go = torch.tensor([[2.0, 3.0], [float("nan"), 5.0]], device="cuda")
    gx, gw, gb = OPS.linear_backward(go, x, w, mask, [True, True, True])
    assert gx.tolist() == [[2.0, 3.0], [0.0, 5.0]]
    assert gw.tolist() == [[2.0, 4.0], [-2.0, 21.0]]
    assert gb.tolist() == [2.0, 8.0]


@GPU
@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_gradients_are_deterministic(dtype):
    """The same bits every run: split-K partials (a 64 x 256 weight gradient over 65536 rows
    has too few tiles to fill a GPU) and the bias gradient are summed in a fixed order."""
    x, w, b, go = random_operands(65536, 64, 256, dtype, seed=3)
    _, mask = OPS.linear_relu_forward(x, w, b)
    first = OPS.linear_backward(go, x, w, mask, [True, True, True])
    for _ in range(3):
        again = OPS.linear_backward(go, x, w, mask, [True, True, True])
        for a, e in zip(again, first):
            assert torch.equal(a, e)


@GPU
@pytest.mark.cuda
def test_grid_beyond_65535_tile_rows():
    """8.4 million rows are 65625 tile rows: more than a grid's y dimension could hold."""
    x = torch.randn(8_400_000, 2, device="cuda")
    w, b = torch.randn(3, 2, device="cuda"), torch.randn(3, device="cuda")
    y, mask = OPS.linear_relu_forward(x, w, b)
    torch.testing.assert_close(y, F.relu(torch.addmm(b, x, w.T)), rtol=1e-5, atol=1e-5)
    assert torch.equal(mask, packbits_rows(relu_passes(y)))


@GPU
@pytest.mark.cuda
@pytest.mark.slow
def test_more_than_2_to_31_output_elements():
    """64-bit indexing: a bfloat16 output of 2^21 + 3 rows x 1040 columns (> 2^31 elements);
    rows at both ends and across the 2^31 boundary checked against float64."""
    M, N, K = 2**21 + 3, 1040, 8
    x, w, b, _ = random_operands(M, N, K, torch.bfloat16, seed=5)
    y = OPS.linear_forward(x, w, b)
    rows = torch.tensor([0, 1, 2**31 // N - 1, 2**31 // N, 2**31 // N + 1, M - 1], device="cuda")
    ref = x[rows].double() @ w.double().T + b.double()
    scale = x[rows].double().abs() @ w.double().abs().T + b.double().abs()
    assert_close(y[rows], ref, torch.bfloat16, scale=scale, terms=K)


@GPU
@pytest.mark.cuda
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_runs_on_the_tensors_device():
    x, w, b, _ = (t.to("cuda:1") for t in random_operands(33, 44, 55, torch.float32, seed=2))
    with torch.cuda.device(0):
        y = OPS.linear_forward(x, w, b)
    assert y.device == x.device
    torch.testing.assert_close(y, F.linear(x, w, b))


# ---- SGD -------------------------------------------------------------------------------------

SGD_OPTIONS = [
    dict(lr=0.1),
    dict(lr=0.05, momentum=0.9),
    dict(lr=0.05, momentum=0.9, dampening=0.3, weight_decay=0.01),
    dict(lr=0.05, momentum=0.8, nesterov=True, weight_decay=0.1, maximize=True),
]


def sgd_tol(dtype):
    """Against sgd_reference: the kernel's float32 arithmetic may round one step's result the other
    way, by a unit in the last place of the parameters' scale (about 4 here)."""
    return {torch.float64: dict(rtol=1e-12, atol=1e-12), torch.float32: dict(rtol=1e-5, atol=1e-5),
            torch.bfloat16: dict(rtol=2**-7, atol=2**-5),
            torch.float16: dict(rtol=2**-10, atol=2**-8)}[dtype]


def gradient_at(g, step):
    return g * (step + 1)  # in the gradient's dtype, as autograd would store it


def fused_sgd_steps(params, grads, options, steps=4):
    params = [p.clone().requires_grad_() for p in params]
    opt = FusedSGD(params, **options)
    for step in range(steps):
        for p, g in zip(params, grads):
            p.grad = gradient_at(g, step)
        opt.step()
    return [p.detach() for p in params]


def sgd_reference(params, grads, options, steps=4):
    """torch.optim.SGD's for-loop update in float64, rounding params and momentum buffers to their
    dtype after every step: what a kernel that computes in float and stores in the dtype gives,
    up to its float arithmetic. (torch.optim.SGD itself rounds 16-bit intermediates too.)"""
    wide = [p.detach().to(torch.float64, copy=True).requires_grad_() for p in params]
    opt = torch.optim.SGD(wide, foreach=False, **options)
    for step in range(steps):
        for w, g in zip(wide, grads):
            w.grad = gradient_at(g, step).double()
        opt.step()
        with torch.no_grad():
            for w, p in zip(wide, params):
                for t in (w, opt.state[w].get("momentum_buffer")):
                    if t is not None:
                        t.copy_(t.to(p.dtype))
    return [w.detach().to(p.dtype) for w, p in zip(wide, params)]


@GPU
@pytest.mark.cuda
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("options", SGD_OPTIONS, ids=str)
def test_sgd_matches_torch_sgd(options, dtype):
    """torch.optim.SGD's update for every option set, over sizes around the 16-byte packs and
    65536-element chunks, and a transposed param and grad."""
    torch.manual_seed(0)
    sizes = [(1,), (7,), (8,), (129, 3), (65536,), (65537,), (300, 301)]
    params = [torch.randn(s, device="cuda", dtype=dtype) for s in sizes]
    params.append(torch.randn(40, 30, device="cuda", dtype=dtype).T)
    grads = [torch.randn_like(p) for p in params]
    got = fused_sgd_steps(params, grads, options)
    for a, e in zip(got, sgd_reference(params, grads, options)):
        torch.testing.assert_close(a, e, **sgd_tol(dtype))


@GPU
@pytest.mark.cuda
def test_sgd_many_tensors_and_mixed_dtypes():
    """More tensors than one launch's parameters hold (512), of four dtypes, in one group."""
    torch.manual_seed(1)
    params = [torch.randn(i % 37 + 1, device="cuda", dtype=DTYPES[i % 4]) for i in range(1100)]
    grads = [torch.randn_like(p) for p in params]
    options = dict(lr=0.1, momentum=0.9, weight_decay=0.01)
    got = fused_sgd_steps(params, grads, options)
    for a, e in zip(got, sgd_reference(params, grads, options)):
        torch.testing.assert_close(a, e, **sgd_tol(a.dtype))


@GPU
@pytest.mark.cuda
def test_sgd_grad_scale_and_found_inf_are_read_on_the_device():
    p = torch.randn(1000, device="cuda")
    g = torch.randn(1000, device="cuda")
    for found_inf, expected in [(0.0, p - 0.1 * (g / 4)), (1.0, p)]:
        q = p.clone()
        OPS.sgd_step_([q], [g], [], [], 0.1, 0.0, 0.0, 0.0, False, False,
                      torch.tensor([4.0], device="cuda"), torch.tensor([found_inf], device="cuda"))
        torch.testing.assert_close(q, expected)


@GPU
@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
@pytest.mark.parametrize("options", SGD_OPTIONS, ids=str)
def test_sgd_in_backward_matches_grad_then_torch_sgd(options, dtype):
    """linear_backward_sgd_: the weight-gradient GEMM's epilogue and the bias step apply
    torch.optim.SGD's update (split-K included: 64 x 48 weight, 5000 rows)."""
    x, w, b, go = random_operands(5000, 64, 48, dtype, seed=11)
    _, mask = OPS.linear_relu_forward(x, w, b)
    _, gw, gb = OPS.linear_backward(go, x, w, mask, [False, True, True])
    expected = sgd_reference([w, b], [gw, gb], options, steps=1)
    momentum = options.get("momentum", 0.0)
    w_got, b_got = w.clone(), b.clone()
    bufs = (torch.empty_like(w), torch.empty_like(b)) if momentum else (None, None)
    OPS.linear_backward_sgd_(go, x, w_got, mask, b_got, *bufs, True, True, options["lr"], momentum,
                             options.get("dampening", 0.0), options.get("weight_decay", 0.0),
                             options.get("nesterov", False), options.get("maximize", False))
    torch.testing.assert_close(w_got, expected[0], **sgd_tol(dtype))
    torch.testing.assert_close(b_got, expected[1], **sgd_tol(dtype))


@GPU
@pytest.mark.cuda
def test_opcheck_linear_backward_sgd():
    x, w, b, go = random_operands(33, 20, 17, torch.float32, seed=9)
    _, mask = OPS.linear_relu_forward(x, w, b)
    bufs = (torch.zeros_like(w), torch.zeros_like(b))
    torch.library.opcheck(OPS.linear_backward_sgd_.default,
                          (go, x, w.clone(), mask, b.clone(), *bufs, True, True, 0.1, 0.9, 0.0,
                           0.0, False, False))


# ---- a training step in a CUDA graph -----------------------------------------------------------


@GPU
@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_training_step_in_a_cuda_graph(dtype):
    """Forward, backward and FusedSGD.step captured once and replayed give the same parameters
    as the same steps run eagerly: every kernel launches on the current (capturing) stream and
    none synchronizes the host, or the capture would fail."""
    torch.manual_seed(0)
    model = nn.Sequential(FusedLinearReLU(48, 300), FusedLinear(300, 10)).to("cuda", dtype)
    twin = copy.deepcopy(model)
    batches = [(torch.randn(4000, 48, device="cuda", dtype=dtype),
                torch.randn(4000, 10, device="cuda", dtype=dtype)) for _ in range(6)]

    def step(m, opt, x, target):
        loss = F.mse_loss(m(x), target)
        loss.backward()
        opt.step()

    opt = FusedSGD(model.parameters(), lr=0.01, momentum=0.9)
    static_x, static_target = (t.clone() for t in batches[0])
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up creates the momentum buffers
        for x, target in batches[:3]:
            opt.zero_grad(set_to_none=True)
            step(model, opt, x, target)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    opt.zero_grad(set_to_none=True)
    with torch.cuda.graph(graph):
        step(model, opt, static_x, static_target)
    for x, target in batches[3:]:
        static_x.copy_(x)
        static_target.copy_(target)
        graph.replay()

    twin_opt = FusedSGD(twin.parameters(), lr=0.01, momentum=0.9)
    for x, target in batches:
        twin_opt.zero_grad(set_to_none=True)
        step(twin, twin_opt, x, target)
    torch.cuda.synchronize()
    for (name, p), q in zip(model.named_parameters(), twin.parameters()):
        assert torch.equal(p, q), name
