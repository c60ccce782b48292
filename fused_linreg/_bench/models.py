"""The MLPs and optimizers under test, built alike for every variant.

Variants: "eager" (nn.Linear + nn.ReLU, torch.optim.SGD), "fused" (FusedLinearReLU layers ending
in a FusedLinear, FusedSGD), "fused-inbwd" (the same with FusedSGD(in_backward=True), which
updates the fused layers inside loss.backward()) and "fused-mlp" (one FusedMLP, FusedSGD). Every model is built after the same seed, so
all variants start from identical weights (the fused layers are nn.Linear subclasses and
initialize alike).
"""
import torch
import torch.nn.functional as F
from torch import nn

import fused_linreg

__all__ = ["make_mlp", "make_optimizer", "make_data", "training_step"]

LR = 1e-3


def make_mlp(variant, width, depth, device, dtype, seed=0):
    """depth layers width -> width, a ReLU after each but the last."""
    torch.manual_seed(seed)
    kw = dict(device=device, dtype=dtype)
    if variant == "fused-mlp":
        return fused_linreg.FusedMLP([width] * (depth + 1), **kw)
    layers = []
    for i in range(depth):
        last = i == depth - 1
        if variant == "eager":
            layers.append(nn.Linear(width, width, **kw))
            if not last:
                layers.append(nn.ReLU())
        else:
            cls = fused_linreg.FusedLinear if last else fused_linreg.FusedLinearReLU
            layers.append(cls(width, width, **kw))
    return nn.Sequential(*layers)


def make_optimizer(variant, params, momentum):
    if variant == "eager":
        return torch.optim.SGD(params, lr=LR, momentum=momentum)
    if variant == "fused-inbwd":
        return fused_linreg.FusedSGD(params, lr=LR, momentum=momentum, in_backward=True)
    return fused_linreg.FusedSGD(params, lr=LR, momentum=momentum)


def make_data(batch, width, device, dtype, seed=1):
    """An input batch and a regression target."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, width, generator=gen).to(device=device, dtype=dtype)
    target = torch.randn(batch, width, generator=gen).to(device=device, dtype=dtype)
    return x, target


def training_step(model, optimizer, x, target, loss_fn=None):
    """A zero-argument training step: zero_grad, forward, MSE loss, backward, optimizer step.
    ``loss_fn(x, target)`` replaces the model's forward + loss (e.g. a torch.compile of it)."""
    if loss_fn is None:
        def loss_fn(x, target):
            return F.mse_loss(model(x), target)

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(x, target)
        loss.backward()
        optimizer.step()
        return loss

    return step
