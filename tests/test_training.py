"""A small MLP trained with the fused modules and FusedSGD follows plain PyTorch's training."""
import pytest
import torch
from torch import nn

import fused_linreg


def mlps(dtype, seed=0, device="cpu"):
    torch.manual_seed(seed)
    ref = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 33), nn.ReLU(), nn.Linear(33, 5))
    ref.to(dtype)
    fused = nn.Sequential(fused_linreg.FusedLinearReLU(20, 64), fused_linreg.FusedLinearReLU(64, 33),
                          fused_linreg.FusedLinear(33, 5)).to(dtype)
    fused[0].load_state_dict(ref[0].state_dict())
    fused[1].load_state_dict(ref[2].state_dict())
    fused[2].load_state_dict(ref[4].state_dict())
    return fused.to(device), ref.to(device)


def data(dtype, steps, batch=48, device="cpu"):
    g = torch.Generator().manual_seed(1)
    # A learnable task: labels from a random linear teacher; 4 batches, cycled.
    teacher = torch.randn(20, 5, generator=g, dtype=torch.float64)
    xs = torch.randn(4, batch, 20, generator=g, dtype=torch.float64)
    ys = (xs @ teacher).argmax(-1)
    idx = torch.arange(steps) % 4
    return xs[idx].to(dtype=dtype, device=device), ys[idx].to(device)


def train(model, opt, xs, ys):
    losses = []
    for x, y in zip(xs, ys):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


OPTIONS = [dict(lr=0.1), dict(lr=0.05, momentum=0.9, weight_decay=1e-3),
           dict(lr=0.05, momentum=0.9, nesterov=True)]


@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: ",".join(o))
def test_float64_losses_follow_pytorch(options, device):
    steps = 60
    fused, ref = mlps(torch.float64, device=device)
    xs, ys = data(torch.float64, steps, device=device)
    la = train(fused, fused_linreg.FusedSGD(fused.parameters(), **options), xs, ys)
    lb = train(ref, torch.optim.SGD(ref.parameters(), foreach=False, **options), xs, ys)
    assert lb[-1] < lb[0] * 0.95, "the reference should learn something"
    for step, (a, b) in enumerate(zip(la, lb)):
        assert abs(a - b) <= 1e-10 * abs(b), f"step {step}: loss {a} vs {b}"


def test_float32_losses_follow_pytorch(device):
    steps = 60
    fused, ref = mlps(torch.float32, device=device)
    xs, ys = data(torch.float32, steps, device=device)
    options = dict(lr=0.05, momentum=0.9)
    la = train(fused, fused_linreg.FusedSGD(fused.parameters(), **options), xs, ys)
    lb = train(ref, torch.optim.SGD(ref.parameters(), foreach=False, **options), xs, ys)
    for step, (a, b) in enumerate(zip(la, lb)):
        assert abs(a - b) <= 1e-4 * abs(b), f"step {step}: loss {a} vs {b}"


def test_bfloat16_training_stays_close(device):
    steps = 30
    fused, ref = mlps(torch.bfloat16, device=device)
    xs, ys = data(torch.bfloat16, steps, device=device)
    la = train(fused, fused_linreg.FusedSGD(fused.parameters(), lr=0.05), xs, ys)
    lb = train(ref, torch.optim.SGD(ref.parameters(), lr=0.05, foreach=False), xs, ys)
    for step, (a, b) in enumerate(zip(la, lb)):
        assert abs(a - b) <= 0.05 * abs(b), f"step {step}: loss {a} vs {b}"
