"""FusedSGD(in_backward=True): the SGD update applied inside the backward, against ordinary
training with torch.optim.SGD, and its limits raised as errors."""
import itertools

import pytest
import torch
from torch import nn

import fused_linreg
from fused_linreg import FusedLinear, FusedLinearReLU, FusedSGD


def mlp(seed, fused, dtype=torch.float64, bias=True):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(13, 37, bias=bias), nn.ReLU(), nn.Linear(37, 29), nn.ReLU(),
                          nn.Linear(29, 3)).to(dtype)
    return fused_linreg.fuse(model) if fused else model


OPTION_SETS = [
    dict(momentum=m, dampening=d, nesterov=n, weight_decay=wd, maximize=mx)
    for m, d, n, wd, mx in itertools.product([0.0, 0.9], [0.0, 0.3], [False, True], [0.0, 0.01], [False, True])
    if not (n and (m == 0 or d != 0))
]


@pytest.mark.parametrize("options", OPTION_SETS, ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()))
def test_trajectory_matches_torch_sgd(options):
    x = torch.randn(64, 13, dtype=torch.float64)
    y = torch.randn(64, 3, dtype=torch.float64)
    ref, fused = mlp(1, False), mlp(1, True)
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.05, **options)
    opt = FusedSGD(fused.parameters(), lr=0.05, in_backward=True, **options)
    # LR schedulers act on the param group, which the backward reads at the time it runs.
    scheds = [torch.optim.lr_scheduler.StepLR(o, 4, 0.5) for o in (ref_opt, opt)]
    for _ in range(12):
        for model, o, s in ((ref, ref_opt, scheds[0]), (fused, opt, scheds[1])):
            o.zero_grad()
            nn.functional.mse_loss(model(x), y).backward()
            o.step()
            s.step()
        assert all(p.grad is None for p in fused.parameters())
    for a, b in zip(fused.parameters(), ref.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    for a, b in zip(fused.parameters(), ref.parameters()):
        if options["momentum"]:
            torch.testing.assert_close(opt.state[a]["momentum_buffer"], ref_opt.state[b]["momentum_buffer"],
                                       rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("bias", [True, False])
def test_narrow_layers_match_torch_sgd(bias):
    # Widths of 1 and 3 and a batch of 300: the weight-gradient GEMMs of these layers take the
    # narrow-output and short-output paths (dot products, rows in lanes, few rows), each with the
    # SGD update as its epilogue.
    def build():
        torch.manual_seed(5)
        return nn.Sequential(nn.Linear(1, 20, bias=bias), nn.ReLU(), nn.Linear(20, 3, bias=bias), nn.ReLU(),
                             nn.Linear(3, 1, bias=bias)).double()
    ref, fused = build(), fused_linreg.fuse(build())
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.05, momentum=0.9, weight_decay=0.01)
    opt = FusedSGD(fused.parameters(), lr=0.05, momentum=0.9, weight_decay=0.01, in_backward=True)
    x = torch.randn(300, 1, dtype=torch.float64)
    y = 2 * x + 1
    for _ in range(8):
        for model, o in ((ref, ref_opt), (fused, opt)):
            o.zero_grad()
            nn.functional.mse_loss(model(x), y).backward()
            o.step()
    for a, b in zip(fused.parameters(), ref.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_float32_and_no_bias_and_mixed_model():
    """Plain parameters (not in a fused layer) are left to step(); float32; bias=False."""
    torch.manual_seed(0)
    def build():
        torch.manual_seed(3)
        return nn.Sequential(nn.Linear(8, 16, bias=False), nn.ReLU(), nn.LayerNorm(16), nn.Linear(16, 4))
    ref = build()
    fused = build()
    fused[0] = FusedLinearReLU.from_linear(fused[0])
    fused[1] = nn.Identity()
    fused[3] = FusedLinear.from_linear(fused[3])
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.1, momentum=0.9)
    opt = FusedSGD(fused.parameters(), lr=0.1, momentum=0.9, in_backward=True)
    x, y = torch.randn(32, 8), torch.randn(32, 4)
    for _ in range(10):
        for model, o in ((ref, ref_opt), (fused, opt)):
            o.zero_grad()
            nn.functional.mse_loss(model(x), y).backward()
            o.step()
    assert fused[2].weight.grad is not None  # the LayerNorm went through step()
    for a, b in zip(fused.parameters(), ref.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_frozen_input_layer_and_step_is_safe_to_call_twice():
    model = mlp(2, True)
    opt = FusedSGD(model.parameters(), lr=0.1, in_backward=True)
    x = torch.randn(16, 13)  # input does not require grad: no grad_input GEMM
    before = [p.detach().clone() for p in model.parameters()]
    nn.functional.mse_loss(model(x.double()), torch.zeros(16, 3, dtype=torch.float64)).backward()
    after_backward = [p.detach().clone() for p in model.parameters()]
    assert all(not torch.equal(a, b) for a, b in zip(before, after_backward))
    opt.step()
    opt.step()
    for a, b in zip(model.parameters(), after_backward):
        assert torch.equal(a, b)


def test_gradient_accumulation_is_an_error():
    model = mlp(3, True)
    opt = FusedSGD(model.parameters(), lr=0.1, in_backward=True)
    x = torch.randn(8, 13, dtype=torch.float64)
    model(x).sum().backward()
    with pytest.raises(RuntimeError, match="gradient accumulation"):
        model(x).sum().backward()
    opt.step()
    model(x).sum().backward()  # fine again after step()


def test_two_forwards_before_backward_is_an_error():
    model = mlp(4, True)
    opt = FusedSGD(model.parameters(), lr=0.1, in_backward=True)  # noqa: F841 (kept alive)
    x = torch.randn(8, 13, dtype=torch.float64)
    out = model(x)
    with pytest.raises(RuntimeError, match="second forward"):
        model(x)
    del out
    with torch.no_grad():
        model(x)  # evaluation without grad never takes the in-backward path


def test_shared_weight_is_an_error():
    layer = FusedLinearReLU(6, 6).double()
    opt = FusedSGD(layer.parameters(), lr=0.1, in_backward=True)  # noqa: F841 (kept alive)
    x = torch.randn(4, 6, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="second forward"):
        layer(layer(x))


def test_retain_graph_second_backward_is_an_error():
    model = mlp(5, True)
    opt = FusedSGD(model.parameters(), lr=0.1, in_backward=True)
    loss = model(torch.randn(8, 13, dtype=torch.float64)).sum()
    loss.backward(retain_graph=True)
    opt.step()
    with pytest.raises(RuntimeError):
        loss.backward()


def test_weight_gradient_never_materialised():
    """No tensor of the weight's shape is created during the backward (only grad_input and the
    ReLU-masked activations)."""
    torch.manual_seed(0)
    layer = FusedLinearReLU(64, 96)
    opt = FusedSGD(layer.parameters(), lr=0.1, momentum=0.9, in_backward=True)
    x = torch.randn(32, 64, requires_grad=True)
    layer(x).sum().backward()  # the first step creates the momentum buffers
    opt.step()
    out = layer(x)
    created = []

    class Spy(torch.utils._python_dispatch.TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            result = func(*args, **(kwargs or {}))
            for r in result if isinstance(result, (tuple, list)) else [result]:
                if isinstance(r, torch.Tensor):
                    created.append(tuple(r.shape))
            return result

    grad = torch.randn_like(out)
    with Spy():
        out.backward(grad)
    assert (96, 64) not in created
    assert layer.weight.grad is None
    assert opt.state[layer.weight]["momentum_buffer"].shape == (96, 64)


def test_optimizer_gone_means_ordinary_gradients():
    layer = FusedLinear(5, 3)
    FusedSGD(layer.parameters(), lr=0.1, in_backward=True)  # not kept
    layer(torch.randn(2, 5)).sum().backward()
    assert layer.weight.grad is not None
