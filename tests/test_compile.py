"""torch.compile: every op passes torch.library.opcheck, and models of fused modules compile with
fullgraph=True (forward, backward, optimizer step) to the same results as eager."""
import copy

import pytest
import torch
from torch import nn
from torch.library import opcheck

import fused_linreg
from fused_linreg import FusedLinear, FusedLinearReLU, FusedSGD

OPS = torch.ops.fused_linreg
DEVICES = ["cpu", pytest.param("cuda", marks=[
    pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")])]


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    """Each test compiles from scratch: the same code objects (Sequential.forward, ...) compiled
    across tests would otherwise count towards dynamo's recompile limit."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def linear_samples(device):
    """(input, weight, bias) samples: dtypes, no bias, 1-D and 3-D inputs, a transposed weight
    view, and every requires_grad combination that autograd can meet."""
    def t(*shape, dtype=torch.float32, grad=False):
        return torch.randn(*shape, device=device, dtype=dtype).requires_grad_(grad)

    yield t(5, 7, grad=True), t(4, 7, grad=True), t(4, grad=True)
    yield t(5, 7), t(4, 7, grad=True), None
    yield t(5, 7, grad=True), t(4, 7), t(4)
    yield t(2, 3, 7, dtype=torch.float64, grad=True), t(33, 7, dtype=torch.float64, grad=True), \
        t(33, dtype=torch.float64, grad=True)
    yield t(7, grad=True), t(4, 7, grad=True), t(4, grad=True)
    yield t(6, 9, dtype=torch.bfloat16, grad=True), t(5, 9, dtype=torch.bfloat16, grad=True), \
        t(5, dtype=torch.bfloat16)
    yield t(6, 9), t(9, 40).t().requires_grad_(), t(40)  # non-contiguous weight
    yield t(0, 7, grad=True), t(4, 7, grad=True), t(4, grad=True)  # no rows


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("op", ["linear_forward", "linear_forward_relu", "linear_relu_forward"])
def test_opcheck_forward_ops(device, op):
    # linear_forward(relu=True): differentiable through linear_relu_forward's autograd
    extra = (True,) if op == "linear_forward_relu" else ()
    overload = OPS.linear_forward.default if extra else getattr(OPS, op).default
    for args in linear_samples(device):
        opcheck(overload, (*args, *extra))


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck_linear_backward(device):
    partial_masks = [[True, False, False], [False, True, False], [False, False, True],
                     [False, True, True], [False, False, False]]
    for i, (x, w, b) in enumerate(linear_samples(device)):
        x, w = x.detach(), w.detach()
        rows = x.shape[:-1]
        go = torch.randn(*rows, w.shape[0], device=device, dtype=x.dtype)
        _, mask = OPS.linear_relu_forward(x, w, None if b is None else b.detach())
        for relu_mask in (None, mask):
            # every gradient, and one partial output_mask per sample (all of them over the samples)
            for output_mask in ([True, True, True], partial_masks[i % len(partial_masks)]):
                opcheck(OPS.linear_backward.default, (go, x, w, relu_mask, output_mask))


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck_sgd_step(device):
    def tensors(dtype, n=3):
        shapes = [(3, 4), (5,), (2, 1, 3)][:n]
        return [torch.randn(s, device=device, dtype=dtype) for s in shapes]

    scalar = lambda v: torch.tensor(v, device=device)  # noqa: E731
    for dtype in (torch.float32, torch.float64, torch.bfloat16):
        params, grads, buffers = tensors(dtype), tensors(dtype), tensors(dtype)
        cases = [
            (params, grads, [], [], 0.1, 0.0, 0.0, 0.0, False, False, None, None),
            (params, grads, buffers, [True] * 3, 0.1, 0.9, 0.0, 0.0, False, False, None, None),
            (params, grads, buffers, [False] * 3, 0.05, 0.9, 0.1, 1e-2, False, True, None, None),
            (params, grads, buffers, [False, True, False], 0.1, 0.9, 0.0, 0.0, True, False,
             scalar(1024.0), scalar(0.0)),
            (params, grads, buffers, [False] * 3, 0.1, 0.9, 0.0, 0.0, False, False,
             scalar(1024.0), scalar(1.0)),  # overflow: skipped
        ]
        for args in cases:
            opcheck(OPS.sgd_step_.default, args)


# ---- torch.compile(fullgraph=True) against eager -----------------------------------------------


def mlp(dtype=torch.float32, device="cpu"):
    torch.manual_seed(0)
    return nn.Sequential(
        FusedLinearReLU(12, 32), FusedLinearReLU(32, 32), FusedLinear(32, 3),
    ).to(device, dtype)


def forward_backward(model, x):
    x = x.clone().requires_grad_()
    y = model(x)
    y.square().mean().backward()
    grads = [p.grad.clone() for p in model.parameters()] + [x.grad]
    model.zero_grad()
    return y.detach(), grads


def assert_same_results(got, expected, **tol):
    (y, grads), (y_ref, grads_ref) = got, expected
    torch.testing.assert_close(y, y_ref, **tol)
    for i, (g, g_ref) in enumerate(zip(grads, grads_ref)):
        torch.testing.assert_close(g, g_ref, **tol, msg=lambda m: f"grad {i}: {m}")


@pytest.mark.parametrize("device", DEVICES)
def test_compiled_model_matches_eager_inductor(device):
    model = mlp(device=device)
    compiled = torch.compile(model, fullgraph=True)
    for rows in (16, 16, 5):  # the second call reuses the graph; the third has a new shape
        x = torch.randn(rows, 12, device=device)
        assert_same_results(forward_backward(compiled, x), forward_backward(model, x),
                            rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_compiled_model_dtypes_and_dynamic_shapes(dtype):
    model = mlp(dtype)
    compiled = torch.compile(model, fullgraph=True, dynamic=True, backend="aot_eager")
    for shape in ((7, 12), (2, 9, 12), (1, 12)):
        x = torch.randn(shape, dtype=dtype)
        assert_same_results(forward_backward(compiled, x), forward_backward(model, x), rtol=0, atol=0)


def test_compiled_functional_and_autocast():
    torch.manual_seed(0)
    w = torch.randn(8, 6, requires_grad=True)
    b = torch.randn(8, requires_grad=True)

    def f(x):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            h = fused_linreg.functional.linear_relu(x, w, b)
            return fused_linreg.functional.linear(h, w[:, :8].T.contiguous(), None)

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    x = torch.randn(5, 6)
    y, y_ref = compiled(x), f(x)
    assert y.dtype == y_ref.dtype == torch.bfloat16
    torch.testing.assert_close(y, y_ref, rtol=0, atol=0)
    g = torch.autograd.grad(y.float().sum(), (w, b))
    g_ref = torch.autograd.grad(y_ref.float().sum(), (w, b))
    for a, e in zip(g, g_ref):
        assert a.dtype == torch.float32
        torch.testing.assert_close(a, e, rtol=0, atol=0)


def test_compiled_fused_model_from_fuse():
    torch.manual_seed(0)
    plain = nn.Sequential(nn.Linear(10, 20), nn.ReLU(), nn.Linear(20, 20), nn.ReLU(), nn.Linear(20, 1))
    fused = torch.compile(fused_linreg.fuse(plain), fullgraph=True, backend="aot_eager")
    x = torch.randn(9, 10)
    assert_same_results(forward_backward(fused, x), forward_backward(plain, x), rtol=1e-5, atol=1e-6)


def test_compiled_training_step_with_fused_sgd_matches_eager():
    """Compiled model and a compiled FusedSGD.step (fullgraph): the same parameters, bit for bit."""
    model = mlp()
    eager = copy.deepcopy(model)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    opt = FusedSGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3)
    eager_opt = FusedSGD(eager.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3)
    step = torch.compile(opt.step, fullgraph=True, backend="aot_eager")
    torch.manual_seed(1)
    for _ in range(4):
        x, t = torch.randn(16, 12), torch.randn(16, 3)
        for m, o, s in ((compiled, opt, step), (eager, eager_opt, eager_opt.step)):
            o.zero_grad()
            nn.functional.mse_loss(m(x), t).backward()
            s()
    for (name, p), q in zip(model.named_parameters(), eager.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0, msg=name)
        torch.testing.assert_close(opt.state[p]["momentum_buffer"], eager_opt.state[q]["momentum_buffer"],
                                   rtol=0, atol=0, msg=name)
