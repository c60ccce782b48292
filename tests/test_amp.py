"""Mixed precision: the fused layers under torch.autocast behave as nn.Linear does, and FusedSGD
works with torch.amp.GradScaler as torch.optim.SGD(fused=True) does."""
import copy

import pytest
import torch
from torch import nn

import fused_linreg
from fused_linreg import FusedLinear, FusedLinearReLU, FusedSGD, LinearFunction, LinearReLUFunction

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

# (device, autocast dtype) pairs autocast supports for linear layers.
AUTOCAST_CASES = [
    ("cpu", torch.bfloat16),
    ("cpu", torch.float16),
    pytest.param("cuda", torch.float16, marks=[pytest.mark.cuda, CUDA]),
    pytest.param("cuda", torch.bfloat16, marks=[pytest.mark.cuda, CUDA]),
]


def pair(fused_cls, relu, device, in_f=24, out_f=40, bias=True):
    """A fused layer and its plain-PyTorch reference with the same weights."""
    ref = nn.Linear(in_f, out_f, bias=bias, device=device)
    fused = fused_cls.from_linear(copy.deepcopy(ref))
    return fused, (nn.Sequential(ref, nn.ReLU()) if relu else ref)


def lowp_tol(dtype):
    return dict(rtol=2e-2, atol=2e-2) if dtype == torch.bfloat16 else dict(rtol=2e-3, atol=2e-3)


@pytest.mark.parametrize("device,dtype", AUTOCAST_CASES)
@pytest.mark.parametrize("fused_cls,relu", [(FusedLinear, False), (FusedLinearReLU, True)])
@pytest.mark.parametrize("bias", [True, False])
def test_layers_under_autocast_match_nn_linear(device, dtype, fused_cls, relu, bias):
    torch.manual_seed(0)
    fused, ref = pair(fused_cls, relu, device, bias=bias)
    x = torch.randn(3, 5, 24, device=device)
    xf, xr = x.clone().requires_grad_(), x.clone().requires_grad_()
    with torch.autocast(device, dtype=dtype):
        y, y_ref = fused(xf), ref(xr)
        assert y.dtype == y_ref.dtype == dtype
        loss, loss_ref = y.float().square().mean(), y_ref.float().square().mean()
    torch.testing.assert_close(y, y_ref, **lowp_tol(dtype))
    loss.backward()
    loss_ref.backward()
    ref_params = dict(ref.named_parameters())
    for name, p in fused.named_parameters():
        p_ref = ref_params[name if not relu else f"0.{name}"]
        assert p.dtype == p.grad.dtype == torch.float32, name  # grads in the params' dtype
        torch.testing.assert_close(p.grad, p_ref.grad, **lowp_tol(dtype), msg=name)
    assert xf.grad.dtype == torch.float32
    torch.testing.assert_close(xf.grad, xr.grad, **lowp_tol(dtype))


@pytest.mark.parametrize("device,dtype", AUTOCAST_CASES)
def test_ops_and_functions_under_autocast(device, dtype):
    torch.manual_seed(0)
    x = torch.randn(6, 8, device=device, requires_grad=True)
    w = torch.randn(5, 8, device=device, requires_grad=True)
    b = torch.randn(5, device=device, requires_grad=True)
    expected = torch.relu(nn.functional.linear(x.to(dtype), w.to(dtype), b.to(dtype)))
    with torch.autocast(device, dtype=dtype):
        outs = [
            torch.ops.fused_linreg.linear_relu_forward(x, w, b)[0],
            fused_linreg.functional.linear_relu(x, w, b),
            LinearReLUFunction.apply(x, w, b),
            torch.relu(torch.ops.fused_linreg.linear_forward(x, w, b)),
            torch.relu(LinearFunction.apply(x, w, b)),
        ]
    for y in outs:
        assert y.dtype == dtype
        torch.testing.assert_close(y, expected, **lowp_tol(dtype))
    grads = []
    for y in outs:  # every path differentiates to float32 grads with the same values
        g = torch.autograd.grad(y.float().sum(), (x, w, b))
        assert [t.dtype for t in g] == [torch.float32] * 3
        grads.append(g)
    for g in grads[1:]:
        for a, e in zip(g, grads[0]):
            torch.testing.assert_close(a, e, **lowp_tol(dtype))


def test_autocast_leaves_float64_and_disabled_regions_alone():
    torch.manual_seed(0)
    layer = FusedLinearReLU(8, 4)
    x = torch.randn(3, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert layer.double()(x.double()).dtype == torch.float64  # autocast never casts float64
        layer.float()
        with torch.autocast("cpu", enabled=False):
            assert layer(x).dtype == torch.float32
        assert layer(x).dtype == torch.bfloat16
    assert layer(x).dtype == torch.float32


def test_autocast_training_loop_matches_nn_linear():
    """A few SGD steps of a small MLP under CPU bfloat16 autocast: same losses as nn.Linear's."""
    torch.manual_seed(0)
    ref = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 1))
    fused = fused_linreg.fuse(ref)
    x, y = torch.randn(64, 16), torch.randn(64, 1)
    losses = []
    for model, opt_cls in ((ref, torch.optim.SGD), (fused, FusedSGD)):
        opt = opt_cls(model.parameters(), lr=0.05, momentum=0.9)
        run = []
        for _ in range(5):
            opt.zero_grad()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = nn.functional.mse_loss(model(x).float(), y)
            loss.backward()
            opt.step()
            run.append(loss.item())
        losses.append(run)
    assert all(p.dtype == torch.float32 for p in fused.parameters())
    torch.testing.assert_close(torch.tensor(losses[1]), torch.tensor(losses[0]), rtol=2e-2, atol=1e-3)


# ---- GradScaler --------------------------------------------------------------------------------


def scaler_run(opt_factory, steps, device="cpu", dtype=torch.float32, poison=(), unscale=False,
               init_scale=2.0 ** 12):
    """Trains two layers with a GradScaler; ``poison`` lists the steps whose gradients get an
    inf (or NaN, alternately). Returns (params, momentum buffers, scales) after every step."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(7, 9), nn.ReLU(), nn.Linear(9, 3)).to(device, dtype)
    opt = opt_factory(model)
    scaler = torch.amp.GradScaler(device, init_scale=init_scale, growth_interval=2)
    x = torch.randn(16, 7, device=device, dtype=dtype)
    t = torch.randn(16, 3, device=device, dtype=dtype)
    history = []
    for step in range(steps):
        opt.zero_grad()
        scaler.scale(nn.functional.mse_loss(model(x), t)).backward()
        if step in poison:
            model[2].weight.grad[1, 1] = float("inf") if step % 2 else float("nan")
        if unscale:
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5)
        scaler.step(opt)
        scaler.update()
        params = [p.detach().clone() for p in model.parameters()]
        buffers = [None if opt.state[p].get("momentum_buffer") is None
                   else opt.state[p]["momentum_buffer"].clone() for p in model.parameters()]
        history.append((params, buffers, scaler.get_scale()))
    assert not hasattr(opt, "grad_scale") and not hasattr(opt, "found_inf")
    return history


SGD_CONFIGS = [
    dict(lr=0.1),
    dict(lr=0.1, momentum=0.9),
    dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-2),
    dict(lr=0.05, momentum=0.5, dampening=0.3, maximize=True),
]


def assert_histories_close(got, expected, **tol):
    assert len(got) == len(expected)
    for step, ((p, b, s), (pe, be, se)) in enumerate(zip(got, expected)):
        assert s == se, f"step {step}: scale {s} != {se}"
        for i, (a, e) in enumerate(zip(p, pe)):
            torch.testing.assert_close(a, e, **tol, msg=lambda m: f"step {step} param {i}: {m}")
        for i, (a, e) in enumerate(zip(b, be)):
            assert (a is None) == (e is None), f"step {step} buffer {i}: {a is None} vs {e is None}"
            if a is not None:
                torch.testing.assert_close(a, e, **tol, msg=lambda m: f"step {step} buffer {i}: {m}")


@pytest.mark.parametrize("config", SGD_CONFIGS, ids=str)
@pytest.mark.parametrize("unscale", [False, True], ids=["step", "unscale_then_step"])
def test_grad_scaler_matches_torch_fused_sgd(config, unscale):
    poison = (3, 4)  # two overflow steps in a row, after momentum exists
    got = scaler_run(lambda m: FusedSGD(m.parameters(), **config), 8, poison=poison, unscale=unscale)
    expected = scaler_run(lambda m: torch.optim.SGD(m.parameters(), fused=True, **config), 8,
                          poison=poison, unscale=unscale)
    assert_histories_close(got, expected, rtol=1e-6, atol=1e-7)
    assert got[3][2] == got[2][2] / 2 and got[4][2] == got[2][2] / 4  # the scaler backed off


@pytest.mark.parametrize("config", SGD_CONFIGS[1:3], ids=str)
def test_overflow_step_changes_nothing(config):
    history = scaler_run(lambda m: FusedSGD(m.parameters(), **config), 5, poison=(2, 3))
    for step in (2, 3):
        (params, buffers, _), (before_p, before_b, _) = history[step], history[1]
        assert all(torch.equal(a, e) for a, e in zip(params, before_p)), f"params moved at step {step}"
        assert all(torch.equal(a, e) for a, e in zip(buffers, before_b)), f"buffers moved at step {step}"
    assert not torch.equal(history[4][0][0], history[1][0][0])  # and training goes on afterwards


@pytest.mark.parametrize("poison", [(0,), (0, 1)])
def test_overflow_on_first_steps_creates_no_momentum_buffer(poison):
    """Nothing changes on a skipped first step: no momentum buffer appears, and the first real
    step starts the buffers as torch.optim.SGD does. (torch.optim.SGD(fused=True) in torch 2.13
    keeps an uninitialized buffer here, so the reference is the for-loop SGD.)"""
    config = dict(lr=0.1, momentum=0.9)
    got = scaler_run(lambda m: FusedSGD(m.parameters(), **config), 5, poison=poison)
    expected = scaler_run(lambda m: torch.optim.SGD(m.parameters(), foreach=False, **config), 5,
                          poison=poison)
    for step in poison:
        assert all(b is None for b in got[step][1]), f"a momentum buffer appeared at step {step}"
    assert_histories_close(got, expected, rtol=1e-6, atol=1e-7)


@pytest.mark.cuda
@CUDA
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_grad_scaler_cuda(dtype):
    config = dict(lr=0.1, momentum=0.9)
    got = scaler_run(lambda m: FusedSGD(m.parameters(), **config), 6, device="cuda", dtype=dtype,
                     poison=(2,))
    expected = scaler_run(lambda m: torch.optim.SGD(m.parameters(), fused=True, **config), 6,
                          device="cuda", dtype=dtype, poison=(2,))
    tol = dict(rtol=1e-6, atol=1e-7) if dtype == torch.float32 else dict(rtol=1e-3, atol=1e-3)
    assert_histories_close(got, expected, **tol)


def test_in_backward_sgd_under_autocast_trains_like_nn_linear():
    """FusedSGD(in_backward=True) under CPU bfloat16 autocast: the same losses and parameters as
    nn.Linear + torch.optim.SGD under the same autocast (to bfloat16 rounding)."""
    torch.manual_seed(0)
    ref = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1))
    fused = fused_linreg.fuse(ref)
    x, y = torch.randn(32, 8), torch.randn(32, 1)
    runs = []
    for model, opt in ((ref, torch.optim.SGD(ref.parameters(), lr=0.1, momentum=0.9)),
                       (fused, FusedSGD(fused.parameters(), lr=0.1, momentum=0.9, in_backward=True))):
        losses = []
        for _ in range(3):
            opt.zero_grad()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                out = model(x)
                assert out.dtype == torch.bfloat16
                loss = nn.functional.mse_loss(out.float(), y)
            loss.backward()
            opt.step()
            losses.append(loss.item())
        runs.append(losses)
    torch.testing.assert_close(torch.tensor(runs[1]), torch.tensor(runs[0]), rtol=2e-2, atol=1e-3)
    for p, q in zip(fused.parameters(), ref.parameters()):
        assert p.dtype == torch.float32
        torch.testing.assert_close(p, q, rtol=2e-2, atol=2e-2)
