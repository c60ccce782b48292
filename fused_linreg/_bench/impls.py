"""The zero-argument callables timed for each case and pass, one per implementation.

- fused:       fused_linreg (functional.linear_relu; the MLP of Fused* layers with FusedSGD)
- eager:       plain PyTorch (F.relu(F.linear(...)); nn.Linear + nn.ReLU with torch.optim.SGD)
- compile:     torch.compile of the eager function (of the plain model's forward + loss for a
               training step: backward and optimizer step stay eager); compiled before timing
- addmm_act:   (CUDA, forward) cuBLASLt's bias + ReLU epilogue, torch._addmm_activation
- fused-inbwd: (training step) FusedSGD(in_backward=True)
- fused-layers: (fusedmlp cases) the per-layer fused model, against which "fused" is FusedMLP
- openblas, onednn: (layer forward, GEMM; CPU) the peers of fused_linreg/_bench/peers.py

An implementation that cannot run is given as a str instead: why (``skipped: ...`` when not
asked for, else the error).
"""
import time
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Tuple

import torch
import torch.nn.functional as F

from fused_linreg import functional
from fused_linreg._bench import models, peers
from fused_linreg._bench.cases import FusedMlpCase, GemmCase, LayerCase, MlpCase
from fused_linreg._bench.timing import describe_error

__all__ = ["Setup", "build", "STEP_MOMENTUM"]

STEP_MOMENTUM = 0.9


@dataclass
class Setup:
    device: torch.device
    dtype: torch.dtype
    sync: Callable[[], None]
    compile_skipped: Optional[str] = None  # why torch.compile is not run, or None to run it
    peers: Tuple[str, ...] = ()  # the peers to time beside fused_linreg (peers.NAMES)


def eager_linear_relu(x, weight, bias):
    return F.relu(F.linear(x, weight, bias))


def _randn(setup, *shape, scale=1.0, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=gen) * scale).to(device=setup.device, dtype=setup.dtype)


def _compiled(setup, make):
    """``make(torch.compile)``: a callable built on torch.compile'd pieces, called once here so
    that compiling is not timed. Returns (callable, compile seconds) or (why not, None)."""
    if setup.compile_skipped:
        return "skipped: " + setup.compile_skipped, None
    try:
        torch._dynamo.reset()  # each case compiles afresh: no recompile limits, no stale guards
        fn = make(lambda f: torch.compile(f, dynamic=False))
        start = time.perf_counter()
        fn()
        setup.sync()
        return fn, time.perf_counter() - start
    except Exception as e:  # e.g. no C++ compiler or Triton here: reported, never fatal
        return describe_error(e), None


def _forward_backward(f, x, weight, bias, grad):
    def run():
        x.grad = weight.grad = bias.grad = None
        f(x, weight, bias).backward(grad)
    return run


def _layer(case: LayerCase, pass_, setup):
    x = _randn(setup, case.m, case.k, seed=1)
    weight = _randn(setup, case.n, case.k, scale=case.k ** -0.5, seed=2)
    bias = _randn(setup, case.n, scale=0.1, seed=3)
    if pass_ == "fwd":
        impls = {
            "fused": lambda: functional.linear_relu(x, weight, bias),
            "eager": lambda: eager_linear_relu(x, weight, bias),
        }

        def make(compile):
            f = compile(eager_linear_relu)
            return lambda: f(x, weight, bias)

        if setup.device.type == "cuda":
            impls["addmm_act"] = lambda: torch._addmm_activation(bias, x, weight.t(), use_gelu=False)
        impls.update(peers.build(setup.peers, setup.device, x, weight, bias,
                                 lambda: eager_linear_relu(x, weight, bias)))
    else:
        for t in (x, weight, bias):
            t.requires_grad_(True)
        grad = _randn(setup, case.m, case.n, seed=4)
        impls = {
            "fused": _forward_backward(functional.linear_relu, x, weight, bias, grad),
            "eager": _forward_backward(eager_linear_relu, x, weight, bias, grad),
        }
        make = lambda compile: _forward_backward(compile(eager_linear_relu), x, weight, bias, grad)
    return impls, make


def _mlp(case: MlpCase, setup):
    x, target = models.make_data(case.batch, case.width, setup.device, setup.dtype)

    def step(variant, compile=None):
        model = models.make_mlp("eager" if compile else variant, case.width, case.depth,
                                setup.device, setup.dtype)
        opt = models.make_optimizer("eager" if compile else variant, model.parameters(), STEP_MOMENTUM)
        loss_fn = compile(lambda x, target: F.mse_loss(model(x), target)) if compile else None
        return models.training_step(model, opt, x, target, loss_fn)

    impls = {}
    for variant in ("fused", "eager", "fused-inbwd"):
        try:
            impls[variant] = step(variant)
        except Exception as e:  # e.g. FusedSGD without in_backward yet
            impls[variant] = describe_error(e)
    return impls, lambda compile: step("eager", compile)


def _fused_mlp(case: FusedMlpCase, pass_, setup):
    """FusedMLP ("fused") against eager, the per-layer fused model and torch.compile of eager."""
    x, target = models.make_data(case.batch, case.width, setup.device, setup.dtype)
    variants = {"fused": "fused-mlp", "eager": "eager", "fused-layers": "fused"}

    def build_one(variant, compile=None):
        model = models.make_mlp(variant, case.width, case.depth, setup.device, setup.dtype)
        if pass_ == "fwd":
            forward = compile(model) if compile else model

            def run():
                with torch.no_grad():
                    return forward(x)
            return run
        opt = models.make_optimizer(variant, model.parameters(), STEP_MOMENTUM)
        loss_fn = compile(lambda x, target: F.mse_loss(model(x), target)) if compile else None
        return models.training_step(model, opt, x, target, loss_fn)

    impls = {name: build_one(variant) for name, variant in variants.items()}
    return impls, lambda compile: build_one("eager", compile)


def _gemm(case: GemmCase, setup):
    a = _randn(setup, case.size, case.size, seed=1)
    b = _randn(setup, case.size, case.size, scale=case.size ** -0.5, seed=2)
    # All compute a @ b.T, the layout of a linear layer's forward.
    impls = {"fused": lambda: functional.linear(a, b), "eager": lambda: torch.mm(a, b.t())}
    impls.update(peers.build(setup.peers, setup.device, a, b, None, lambda: torch.mm(a, b.t())))
    return impls, None


def build(case, pass_, setup: Setup) -> Tuple[Dict[str, object], Dict[str, float]]:
    """The implementations of one comparison (name -> callable or why not), and the seconds
    torch.compile took for those compiled."""
    if isinstance(case, LayerCase):
        impls, make = _layer(case, pass_, setup)
    elif isinstance(case, MlpCase):
        impls, make = _mlp(case, setup)
    elif isinstance(case, FusedMlpCase):
        impls, make = _fused_mlp(case, pass_, setup)
    else:
        impls, make = _gemm(case, setup)
    compile_s = {}
    if make is not None:
        fn, seconds = _compiled(setup, make)
        # After fused and eager, before the variants that are extras.
        names = list(impls)
        names.insert(2, "compile")
        impls["compile"] = fn
        impls = {name: impls[name] for name in names}
        if seconds is not None:
            compile_s["compile"] = seconds
    return impls, compile_s
