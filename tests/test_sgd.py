"""FusedSGD against torch.optim.SGD(foreach=False): every option combination, param groups, missing
grads, large and odd-sized tensors, layouts, dtypes, state_dict round trips, kernel call count."""
import copy
import itertools

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import fused_linreg
from conftest import OPS, assert_close, assert_same

STEPS = 31
# Sizes far past any vector width and past the kernel's 32768-element chunks, plus odd ones.
SIZES = [(1,), (3,), (17,), (100_003,), (129, 67)]

OPTION_SETS = [
    dict(momentum=m, dampening=d, nesterov=n, weight_decay=wd, maximize=mx)
    for m, d, n, wd, mx in itertools.product([0.0, 0.9], [0.0, 0.5], [False, True], [0.0, 0.1],
                                             [False, True])
    if not (n and (m == 0 or d != 0))  # nesterov needs momentum > 0 and no dampening
]


def options_id(o):
    return ",".join(f"{k}={v}" for k, v in o.items() if v not in (0, 0.0, False)) or "plain"


def make_params(dtype=torch.float64, sizes=SIZES, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(s, generator=g, dtype=torch.float64).to(dtype=dtype, device=device))
            for s in sizes]


def grads_for(params, step, seed=1, skip=()):
    """Deterministic gradients for a step; params whose index is in `skip` get grad None."""
    g = torch.Generator().manual_seed(seed * 1000 + step)
    out = []
    for i, p in enumerate(params):
        grad = torch.randn(p.shape, generator=g, dtype=torch.float64).to(dtype=p.dtype, device=p.device)
        out.append(None if i in skip else grad)
    return out


def train(opt_factory, params, steps=STEPS, skip_fn=lambda step: ()):
    opt = opt_factory(params)
    for step in range(steps):
        for p, g in zip(params, grads_for(params, step, skip=skip_fn(step))):
            p.grad = g
        opt.step()
    return opt


def fused_sgd(**kw):
    return lambda params: fused_linreg.FusedSGD(params, **kw)


def torch_sgd(**kw):
    return lambda params: torch.optim.SGD(params, foreach=False, **kw)


def assert_same_state(opt_a, params_a, opt_b, params_b, close_dtype=None):
    check = (lambda a, e, m: assert_close(a, e, close_dtype, msg=m)) if close_dtype else assert_same
    for i, (pa, pb) in enumerate(zip(params_a, params_b)):
        check(pa.detach(), pb.detach(), f"param {i}")
        ba = opt_a.state.get(pa, {}).get("momentum_buffer")
        bb = opt_b.state.get(pb, {}).get("momentum_buffer")
        assert (ba is None) == (bb is None), f"momentum buffer of param {i}: {ba is None} vs {bb is None}"
        if ba is not None:
            check(ba, bb, f"momentum buffer {i}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("options", OPTION_SETS, ids=options_id)
def test_matches_torch_sgd(options, dtype, device):
    """Bitwise the same trajectory as torch.optim.SGD over 31 steps (both round each operation of
    the update the same way in float32/float64)."""
    pa, pb = make_params(dtype, device=device), make_params(dtype, device=device)
    # param 1 has no gradient on every third step: skipped, its momentum buffer kept.
    skip = lambda step: (1,) if step % 3 == 0 else ()
    oa = train(fused_sgd(lr=0.05, **options), pa, skip_fn=skip)
    ob = train(torch_sgd(lr=0.05, **options), pb, skip_fn=skip)
    assert_same_state(oa, pa, ob, pb)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("options", [dict(), dict(momentum=0.9, weight_decay=0.1),
                                     dict(momentum=0.9, nesterov=True, maximize=True),
                                     dict(momentum=0.8, dampening=0.5)], ids=options_id)
def test_low_precision_one_step(options, dtype, device):
    """One step from the same state: within one rounding of torch.optim.SGD (which rounds to the
    low-precision dtype after every operation; FusedSGD computes in float32 and rounds once)."""
    for first in (True, False):
        pa, pb = make_params(dtype, device=device), make_params(dtype, device=device)
        oa, ob = fused_sgd(lr=0.1, **options)(pa), torch_sgd(lr=0.1, **options)(pb)
        if not first and options.get("momentum"):
            for p, q in zip(pa, pb):
                buf = torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())).to(dtype=dtype,
                                                                                                  device=device)
                oa.state[p]["momentum_buffer"] = buf.clone()
                ob.state[q]["momentum_buffer"] = buf.clone()
        for p, q, g in zip(pa, pb, grads_for(pa, 0)):
            p.grad, q.grad = g.clone(), g.clone()
        before = [p.detach().double().abs() + p.grad.double().abs() for p in pa]
        bufs = [oa.state[p].get("momentum_buffer") for p in pa]
        before = [s if b is None else s + b.double().abs() for s, b in zip(before, bufs)]
        oa.step()
        ob.step()
        # Within a few roundings of the magnitudes involved (|param| + |grad| + |buffer|).
        for i, (p, q) in enumerate(zip(pa, pb)):
            tol = 4 * torch.finfo(dtype).eps * before[i] + torch.finfo(dtype).tiny
            err = (p.detach().double() - q.detach().double()).abs()
            assert bool((err <= tol).all()), f"param {i}: max diff {err.max().item()}"


@pytest.mark.parametrize("dtype", [torch.bfloat16], ids=str)
def test_low_precision_trajectory(dtype):
    pa, pb = make_params(dtype, sizes=[(1000,)]), make_params(dtype, sizes=[(1000,)])
    oa = train(fused_sgd(lr=0.01, momentum=0.9, weight_decay=0.01), pa)
    ob = train(torch_sgd(lr=0.01, momentum=0.9, weight_decay=0.01), pb)
    diff = (pa[0].detach().float() - pb[0].detach().float()).abs()
    assert diff.max().item() < 0.1 and diff.mean().item() < 0.01


def test_param_groups_with_their_own_options(device):
    def groups(params):
        return [
            {"params": params[:2], "lr": 0.1, "momentum": 0.9, "nesterov": True},
            {"params": params[2:3], "weight_decay": 0.3, "maximize": True},
            {"params": params[3:], "momentum": 0.5, "dampening": 0.25, "lr": 0.001},
        ]
    pa, pb = make_params(device=device), make_params(device=device)
    oa = train(lambda p: fused_linreg.FusedSGD(groups(p), lr=0.05), pa)
    ob = train(lambda p: torch.optim.SGD(groups(p), lr=0.05, foreach=False), pb)
    assert_same_state(oa, pa, ob, pb)


def test_params_without_grads_are_untouched(device):
    pa, pb = make_params(device=device), make_params(device=device)
    never = (0, 3)
    oa = train(fused_sgd(lr=0.1, momentum=0.9), pa, skip_fn=lambda s: never)
    ob = train(torch_sgd(lr=0.1, momentum=0.9), pb, skip_fn=lambda s: never)
    assert_same_state(oa, pa, ob, pb)
    fresh = make_params(device=device)
    for i in never:
        assert_same(pa[i].detach(), fresh[i].detach(), f"param {i} changed without a gradient")
        assert "momentum_buffer" not in oa.state.get(pa[i], {})


def test_mixed_dtypes_in_one_group(device):
    def params():
        return [torch.nn.Parameter(torch.randn(50, generator=torch.Generator().manual_seed(i),
                                               dtype=dt).to(device)) for i, dt in
                enumerate([torch.float32, torch.float64, torch.float32, torch.float64])]
    pa, pb = params(), params()
    oa = train(fused_sgd(lr=0.1, momentum=0.9, weight_decay=0.01), pa)
    ob = train(torch_sgd(lr=0.1, momentum=0.9, weight_decay=0.01), pb)
    assert_same_state(oa, pa, ob, pb)


def test_tensor_lr_and_lr_changes_between_steps():
    pa, pb = make_params(sizes=[(40,), (7,)]), make_params(sizes=[(40,), (7,)])
    oa = fused_linreg.FusedSGD(pa, lr=0.1, momentum=0.9)
    ob = torch.optim.SGD(pb, lr=0.1, momentum=0.9, foreach=False)
    for step in range(10):
        for o in (oa, ob):
            o.param_groups[0]["lr"] = 0.1 / (step + 1)  # a scheduler
        for p, q, g in zip(pa, pb, grads_for(pa, step)):
            p.grad, q.grad = g.clone(), g.clone()
        oa.step()
        ob.step()
    assert_same_state(oa, pa, ob, pb)


def test_closure_is_called_and_its_loss_returned():
    pa, pb = make_params(sizes=[(5,)]), make_params(sizes=[(5,)])
    oa = fused_linreg.FusedSGD(pa, lr=0.1, momentum=0.9)
    ob = torch.optim.SGD(pb, lr=0.1, momentum=0.9, foreach=False)
    for _ in range(5):
        losses = []
        for opt, params in ((oa, pa), (ob, pb)):
            def closure(params=params, opt=opt):
                opt.zero_grad()
                loss = (params[0] ** 3).sum()
                loss.backward()
                return loss
            losses.append(opt.step(closure))
        assert_same(losses[0].detach(), losses[1].detach(), "closure loss")
    assert_same_state(oa, pa, ob, pb)


def test_zero_grad_then_step_is_a_no_op_on_none_grads():
    pa = make_params(sizes=[(5,)])
    opt = fused_linreg.FusedSGD(pa, lr=0.1, momentum=0.9)
    before = pa[0].detach().clone()
    opt.zero_grad(set_to_none=True)
    opt.step()
    assert_same(pa[0].detach(), before)


# ---- layouts -------------------------------------------------------------------------------------

def _randn(g, d, *shape):
    return torch.randn(*shape, generator=g).to(d)


LAYOUTS = {
    # name: (param builder (generator, device), grad builder (generator, param, device))
    "param_transposed": (lambda g, d: _randn(g, d, 6, 4).t(), lambda g, p, d: _randn(g, d, *p.shape)),
    "param_and_grad_transposed": (lambda g, d: _randn(g, d, 6, 4).t(), lambda g, p, d: _randn(g, d, 6, 4).t()),
    "param_stepped": (lambda g, d: _randn(g, d, 5, 8)[:, ::2], lambda g, p, d: _randn(g, d, *p.shape)),
    "grad_stepped": (lambda g, d: _randn(g, d, 4, 4), lambda g, p, d: _randn(g, d, 4, 8)[:, 1::2]),
    "grad_expanded": (lambda g, d: _randn(g, d, 3, 5), lambda g, p, d: _randn(g, d, 1, 5).expand(3, 5)),
    "grad_scalar_expanded": (lambda g, d: _randn(g, d, 100), lambda g, p, d: _randn(g, d, 1).expand(100)),
}


@pytest.mark.parametrize("momentum", [0.0, 0.9])
@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_non_contiguous_params_and_grads(layout, momentum, device):
    make_p, make_g = LAYOUTS[layout]
    results = []
    for factory in (fused_sgd, torch_sgd):
        g = torch.Generator().manual_seed(0)
        base = make_p(g, device)
        p = torch.nn.Parameter(base)  # keeps the strides of `base`
        opt = factory(lr=0.1, momentum=momentum, weight_decay=0.1)([p])
        for _ in range(3):
            p.grad = make_g(g, p, device)
            opt.step()
        results.append((p.detach().clone(), opt.state[p].get("momentum_buffer")))
    (pa, ba), (pb, bb) = results
    assert_same(pa, pb, f"{layout}: param")
    if momentum:
        assert_same(ba, bb, f"{layout}: momentum buffer")


# ---- state_dict ----------------------------------------------------------------------------------


@pytest.mark.parametrize("direction", ["fused_to_torch", "torch_to_fused"])
@pytest.mark.parametrize("options", [dict(momentum=0.9, weight_decay=0.01),
                                     dict(momentum=0.9, nesterov=True, maximize=True),
                                     dict()], ids=options_id)
def test_state_dict_round_trip(direction, options, device):
    """Train 10 steps with one optimizer, move params and state_dict to the other, train 10 more:
    identical to training 20 steps with either."""
    first, second = (fused_sgd, torch_sgd) if direction == "fused_to_torch" else (torch_sgd, fused_sgd)
    params = make_params(sizes=[(33,), (4, 5), (1,)], device=device)
    opt = first(lr=0.05, **options)(params)
    for step in range(10):
        for p, g in zip(params, grads_for(params, step)):
            p.grad = g
        opt.step()
    saved = copy.deepcopy(opt.state_dict())
    moved = [torch.nn.Parameter(p.detach().clone()) for p in params]
    opt2 = second(lr=123.0, **options)(moved)  # lr comes from the state_dict
    opt2.load_state_dict(saved)
    assert opt2.param_groups[0]["lr"] == 0.05
    for step in range(10, 20):
        for p, q, g in zip(params, moved, grads_for(params, step)):
            p.grad, q.grad = g.clone(), g.clone()
        opt.step()
        opt2.step()
    assert_same_state(opt, params, opt2, moved)
    # And the state_dicts have the same structure and values.
    sa, sb = opt.state_dict(), opt2.state_dict()
    assert sa["param_groups"] == sb["param_groups"] or [
        {k: v for k, v in g.items() if k not in ("foreach", "fused", "differentiable")}
        for g in sa["param_groups"]] == [
        {k: v for k, v in g.items() if k not in ("foreach", "fused", "differentiable")}
        for g in sb["param_groups"]]
    assert sa["state"].keys() == sb["state"].keys()


# ---- one kernel call per param group -------------------------------------------------------------


class _CountSgdOps(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.calls = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is OPS.sgd_step_.default:
            self.calls += 1
        return func(*args, **(kwargs or {}))


def test_one_kernel_call_per_group_per_step(monkeypatch, device):
    params = make_params(sizes=[(10,), (20,), (30,), (40,), (50,), (60,)], device=device)
    opt = fused_linreg.FusedSGD(
        [{"params": params[:3]}, {"params": params[3:5], "momentum": 0.9}, {"params": params[5:]}],
        lr=0.1)
    python_calls = []
    real = fused_linreg._ops.sgd_step_

    def counting(*args, **kwargs):
        python_calls.append(len(args[0]))
        return real(*args, **kwargs)

    monkeypatch.setattr(fused_linreg._ops, "sgd_step_", counting)
    for step in range(4):
        # The last group has no gradient on odd steps: no call for it then.
        for p, g in zip(params, grads_for(params, step, skip=(5,) if step % 2 else ())):
            p.grad = g
        before = len(python_calls)
        with _CountSgdOps() as mode:
            opt.step()
        expected = 3 if step % 2 == 0 else 2
        assert len(python_calls) - before == expected
        assert mode.calls == expected
    assert python_calls[:3] == [3, 2, 1]


def test_sparse_gradient_is_rejected():
    p = torch.nn.Parameter(torch.randn(4, 3))
    opt = fused_linreg.FusedSGD([p], lr=0.1)
    p.grad = torch.randn(4, 3).to_sparse()
    with pytest.raises(RuntimeError, match="sparse"):
        opt.step()


@pytest.mark.parametrize("kwargs", [dict(lr=-1.0), dict(momentum=-0.1), dict(weight_decay=-1.0),
                                    dict(nesterov=True), dict(nesterov=True, momentum=0.9, dampening=0.1)])
def test_invalid_options_raise_like_sgd(kwargs):
    p = torch.nn.Parameter(torch.randn(3))
    with pytest.raises(ValueError) as expected:
        torch.optim.SGD([p], **{"lr": 0.1, **kwargs})
    with pytest.raises(ValueError) as got:
        fused_linreg.FusedSGD([p], **{"lr": 0.1, **kwargs})
    assert str(got.value) == str(expected.value)
