"""Second derivatives and torch.func transforms of the fused layers, against plain PyTorch.

The backward of linear / linear+ReLU is again a pair of the same GEMMs (the ReLU mask is constant
almost everywhere), so double backward, gradgradcheck, Hessians, torch.func.grad / jacrev / vjp /
jvp / jacfwd / hessian and per-sample gradients (vmap over grad) must give PyTorch's answers.
"""
import pytest
import torch
import torch.nn.functional as F
from torch.autograd import gradcheck, gradgradcheck

import fused_linreg
from conftest import OPS, assert_close, assert_same, exact_randn, fused, make_generator, reference

OPS_UNDER_TEST = ["linear", "linear_relu"]
SHAPES = [((3, 4), 5), ((2, 3, 4), 6), ((4,), 3), ((7, 33), 40)]  # (input shape, out_features)


def smooth_inputs(shape, n, bias, seed, dtype=torch.float64, requires_grad=True):
    """Continuous (x, w, b) whose pre-activations are all at least 0.05 away from the ReLU's kink,
    so that finite differences never cross it."""
    g = make_generator(seed)
    while True:
        x = torch.randn(*shape, dtype=dtype, generator=g)
        w = torch.randn(n, shape[-1], dtype=dtype, generator=g)
        b = torch.randn(n, dtype=dtype, generator=g) if bias else None
        if bool((F.linear(x, w, b).abs() > 0.05).all()):
            return tuple(None if t is None else t.requires_grad_(requires_grad) for t in (x, w, b))


def exact_inputs(shape, n, seed, requires_grad=True):
    g = make_generator(seed)
    x = exact_randn(*shape, dtype=torch.float64, generator=g)
    w = exact_randn(n, shape[-1], dtype=torch.float64, generator=g)
    b = exact_randn(n, dtype=torch.float64, generator=g)
    go = exact_randn(*shape[:-1], n, dtype=torch.float64, generator=g)
    return tuple(t.requires_grad_(requires_grad) for t in (x, w, b, go))


def present(*tensors):
    return tuple(t for t in tensors if t is not None)


# ---- second derivatives (torch.autograd) ----------------------------------------------------------


@pytest.mark.parametrize("op", OPS_UNDER_TEST)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("shape,n", SHAPES, ids=lambda s: str(s))
def test_gradgradcheck(op, bias, shape, n):
    x, w, b = smooth_inputs(shape, n, bias, seed=len(shape) * 100 + n)

    def f(x, w, *b):
        return fused(op, x, w, b[0] if b else None)

    inputs = present(x, w, b)
    assert gradcheck(f, inputs, check_forward_ad=True)
    assert gradgradcheck(f, inputs, check_fwd_over_rev=True, check_rev_over_rev=True)


@pytest.mark.parametrize("op", OPS_UNDER_TEST)
def test_third_derivative(op):
    """The backward of the backward is itself differentiable (it is made of the same ops)."""
    x, w, b = smooth_inputs((3, 4), 5, True, seed=3)
    go = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)

    def first_grads(x, w, b, go):
        return torch.autograd.grad(fused(op, x, w, b), (x, w, b), go, create_graph=True)

    assert gradgradcheck(first_grads, (x, w, b, go))


@pytest.mark.parametrize("op", OPS_UNDER_TEST)
@pytest.mark.parametrize("shape,n", SHAPES, ids=lambda s: str(s))
def test_gradient_penalty_matches_pytorch(op, shape, n):
    """Double backward on exact data: a gradient penalty (a function of the first gradients) is
    differentiated again, w.r.t. the inputs, the parameters and grad_output; bitwise PyTorch's."""
    results = []
    for fn in (fused, reference):
        x, w, b, go = exact_inputs(shape, n, seed=n)
        x.data += 0.0625  # no pre-activation exactly 0, where PyTorch's ReLU gradient is a choice
        gx, gw, gb = torch.autograd.grad(fn(op, x, w, b), (x, w, b), go, create_graph=True)
        penalty = (gx * gx).sum() + (gw * gw * 0.5).sum() + (gb * gb).sum() + (gx * x).sum()
        # The bias enters no first gradient: PyTorch says zeros, fused_linreg None (unused).
        results.append(torch.autograd.grad(penalty, (x, w, b, go), materialize_grads=True))
    for name, got, expected in zip(("x", "weight", "bias", "grad_output"), *results):
        assert_same(got, expected, f"d penalty / d {name}")


@pytest.mark.parametrize("op", OPS_UNDER_TEST)
def test_second_derivative_of_one_input_only(op):
    """Only some first gradients reach the second backward (the others are undefined)."""
    x, w, b = smooth_inputs((5, 6), 4, True, seed=11)
    xr, wr, br = (t.detach().clone().requires_grad_() for t in (x, w, b))
    for inputs, wrt in (((x,), (w, b)), ((w,), (x,)), ((b,), (x, w)), ((x, b), (x, w))):
        got = torch.autograd.grad(fused(op, x, w, b).pow(2).sum(), inputs, create_graph=True)
        got = torch.autograd.grad(sum(g.sin().sum() for g in got), wrt, allow_unused=True)
        ref_in = tuple({id(x): xr, id(w): wr, id(b): br}[id(t)] for t in inputs)
        ref_wrt = tuple({id(x): xr, id(w): wr, id(b): br}[id(t)] for t in wrt)
        expected = torch.autograd.grad(reference(op, xr, wr, br).pow(2).sum(), ref_in,
                                       create_graph=True)
        expected = torch.autograd.grad(sum(g.sin().sum() for g in expected), ref_wrt,
                                       allow_unused=True)
        for a, e in zip(got, expected):
            if e is None:
                assert a is None or not bool(a.any())
            else:
                torch.testing.assert_close(a, e)


@pytest.mark.parametrize("op", OPS_UNDER_TEST)
def test_hessian_matches_pytorch(op):
    x, w, b = smooth_inputs((3, 4), 5, True, seed=5, requires_grad=False)

    def loss(fn):
        return lambda x, w, b: (fn(op, x, w, b).tanh() * torch.arange(5.0, dtype=x.dtype)).sum()

    got = torch.autograd.functional.hessian(loss(fused), (x, w, b))
    expected = torch.autograd.functional.hessian(loss(reference), (x, w, b))
    for i, (row_got, row_expected) in enumerate(zip(got, expected)):
        for j, (a, e) in enumerate(zip(row_got, row_expected)):
            torch.testing.assert_close(a, e, msg=f"hessian block ({i}, {j})")


def test_backward_op_is_differentiable():
    """torch.ops.fused_linreg.linear_backward is public: its own gradients, for every output_mask."""
    x, w, b = smooth_inputs((4, 3), 5, True, seed=2)
    _, mask = OPS.linear_relu_forward(x, w, b)
    go = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    for relu_mask in (None, mask):
        for output_mask in ([True, True, True], [True, False, False], [False, True, True],
                            [False, False, True]):
            def f(go, x, w):
                return tuple(t for t in OPS.linear_backward(go, x, w, relu_mask, output_mask)
                             if t is not None)
            assert gradcheck(f, (go, x, w), check_forward_ad=True)
            assert gradgradcheck(f, (go, x, w))


def test_double_backward_gives_the_mask_no_gradient():
    """The mask output stays non-differentiable when the backward records a graph."""
    x, w, b = smooth_inputs((6, 5), 4, True, seed=9)
    y, mask = OPS.linear_relu_forward(x, w, b)
    assert not mask.requires_grad and mask.grad_fn is None
    (gx,) = torch.autograd.grad(y.sum(), x, create_graph=True)
    (gw,) = torch.autograd.grad(gx.sum(), w)
    (rgx,) = torch.autograd.grad(reference("linear_relu", x, w, b).sum(), x, create_graph=True)
    (rgw,) = torch.autograd.grad(rgx.sum(), w)
    torch.testing.assert_close(gw, rgw)


# ---- torch.func --------------------------------------------------------------------------------


def loss_of(op, fn):
    return lambda x, w, b: (fn(op, x, w, b).sin() * 1.5).sum()


@pytest.mark.parametrize("op", OPS_UNDER_TEST)
@pytest.mark.parametrize("transform", ["grad", "jacrev", "vjp", "jvp", "jacfwd", "hessian",
                                       "jacrev_jacrev", "grad_grad"])
def test_torch_func_matches_pytorch(op, transform):
    x, w, b = smooth_inputs((3, 4), 5, True, seed=17, requires_grad=False)
    argnums = (0, 1, 2)
    results = []
    for fn in (fused, reference):
        loss = loss_of(op, fn)
        layer = lambda x, w, b: fn(op, x, w, b)  # noqa: E731
        if transform == "grad":
            out = torch.func.grad(loss, argnums=argnums)(x, w, b)
        elif transform == "jacrev":
            out = torch.func.jacrev(layer, argnums=argnums)(x, w, b)
        elif transform == "vjp":
            y, pullback = torch.func.vjp(layer, x, w, b)
            out = (y, *pullback(torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)))
        elif transform == "jvp":
            tangents = tuple(torch.ones_like(t) * 0.5 for t in (x, w, b))
            out = torch.func.jvp(layer, (x, w, b), tangents)
        elif transform == "jacfwd":
            out = torch.func.jacfwd(layer, argnums=argnums)(x, w, b)
        elif transform == "hessian":
            out = torch.func.hessian(loss, argnums=argnums)(x, w, b)
        elif transform == "jacrev_jacrev":
            out = torch.func.jacrev(torch.func.jacrev(loss, argnums=argnums), argnums=argnums)(x, w, b)
        else:
            out = torch.func.grad(lambda x, w, b: torch.func.grad(loss, argnums=1)(x, w, b).sum(),
                                  argnums=argnums)(x, w, b)
        results.append(torch.utils._pytree.tree_leaves(out))
    got, expected = results
    assert len(got) == len(expected)
    for i, (a, e) in enumerate(zip(got, expected)):
        torch.testing.assert_close(a, e, msg=f"{transform} result {i}")


@pytest.mark.parametrize("module", ["FusedLinear", "FusedLinearReLU"])
def test_per_sample_gradients_with_functional_call(module):
    """The torch.func recipe for per-sample gradients: vmap over grad of functional_call."""
    torch.manual_seed(0)
    layer = getattr(fused_linreg, module)(6, 4, dtype=torch.float64)
    ref = torch.nn.Linear(6, 4, dtype=torch.float64)
    ref.load_state_dict(layer.state_dict())
    ref_model = ref if module == "FusedLinear" else torch.nn.Sequential(ref, torch.nn.ReLU())
    x, target = torch.randn(8, 6, dtype=torch.float64), torch.randn(8, 4, dtype=torch.float64)

    def per_sample(model, params):
        def loss(params, x, t):
            return ((torch.func.functional_call(model, params, (x[None],)) - t) ** 2).sum()
        return torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0, 0))(params, x, target)

    got = per_sample(layer, dict(layer.named_parameters()))
    expected = per_sample(ref, dict(ref.named_parameters())) if module == "FusedLinear" else \
        per_sample(ref_model, {"0." + k: v for k, v in ref.named_parameters()})
    for name in ("weight", "bias"):
        key = name if module == "FusedLinear" else "0." + name
        torch.testing.assert_close(got[name], expected[key], msg=name)


@pytest.mark.parametrize("op", OPS_UNDER_TEST)
def test_forward_ad_matches_pytorch(op):
    """forward_ad dual numbers, exact data: the tangent is bitwise PyTorch's."""
    x, w, b, _ = exact_inputs((4, 6), 5, seed=4, requires_grad=False)
    tx, tw, tb, _ = exact_inputs((4, 6), 5, seed=40, requires_grad=False)
    x += 0.0625
    results = []
    for fn in (fused, reference):
        with torch.autograd.forward_ad.dual_level():
            dual = [torch.autograd.forward_ad.make_dual(p, t) for p, t in ((x, tx), (w, tw), (b, tb))]
            y = fn(op, *dual)
            results.append(torch.autograd.forward_ad.unpack_dual(y))
    (y, ty), (ry, rty) = results
    assert_same(y, ry, "primal")
    assert_same(ty, rty, "tangent")


def test_tangent_of_one_input_only():
    """jvp with a tangent for one of input, weight, bias (the others have none)."""
    x, w, b = smooth_inputs((3, 4), 5, True, seed=8, requires_grad=False)
    for op in OPS_UNDER_TEST:
        for i in range(3):
            def with_arg(fn):
                return lambda t: fn(op, *[t if j == i else a for j, a in enumerate((x, w, b))])
            primal = (x, w, b)[i]
            tangent = torch.randn_like(primal)
            got = torch.func.jvp(with_arg(fused), (primal,), (tangent,))
            expected = torch.func.jvp(with_arg(reference), (primal,), (tangent,))
            for a, e in zip(got, expected):
                torch.testing.assert_close(a, e, msg=f"{op}: tangent of input {i}")


@pytest.mark.parametrize("op", OPS_UNDER_TEST)
@pytest.mark.parametrize("batched", ["input", "weight", "bias", "all"])
def test_vmap_matches_a_loop(op, batched):
    """torch.vmap over any of input, weight, bias: one result per sample, as a loop gives."""
    x, w, b, _ = exact_inputs((4, 3), 5, seed=21, requires_grad=False)
    x += 0.0625
    names = ("input", "weight", "bias")
    args = [torch.stack([t * (i + 1) for i in range(3)]) if batched in (name, "all") else t
            for name, t in zip(names, (x, w, b))]
    in_dims = tuple(0 if batched in (name, "all") else None for name in names)
    got = torch.func.vmap(lambda *a: fused(op, *a), in_dims=in_dims)(*args)
    expected = torch.stack([reference(op, *[a[i] if d == 0 else a for a, d in zip(args, in_dims)])
                            for i in range(3)])
    assert_same(got, expected, f"vmap over {batched}")


@pytest.mark.parametrize("relu", [False, True], ids=["linear", "relu"])
@pytest.mark.parametrize("output_mask", [[True, False, False], [True, True, True], [False, True, False]])
@pytest.mark.parametrize("batched", ["grad_output", "input", "weight"])
def test_vmap_of_the_backward_op(relu, output_mask, batched):
    x, w, b, go = exact_inputs((4, 6), 5, seed=3, requires_grad=False)
    mask = OPS.linear_relu_forward(x, w, b)[1] if relu else None
    names = ("grad_output", "input", "weight")
    args = [torch.stack([t * (i - 1) for i in range(3)]) if batched == name else t
            for name, t in zip(names, (go, x, w))]
    in_dims = tuple(0 if batched == name else None for name in names) + (None, None)
    out_dims = tuple(0 if want else None for want in output_mask)
    got = torch.func.vmap(OPS.linear_backward, in_dims=in_dims, out_dims=out_dims)(
        *args, mask, output_mask)
    for i, want in enumerate(output_mask):
        if not want:
            assert got[i] is None
            continue
        expected = torch.stack([OPS.linear_backward(*[a[s] if d == 0 else a for a, d in
                                                      zip(args, in_dims[:3])], mask, output_mask)[i]
                                for s in range(3)])
        assert_same(got[i], expected, f"output {i}, vmap over {batched}")


def test_first_gradient_records_a_graph_only_through_what_it_depends_on():
    """grad_input = grad_output W does not depend on x: with W frozen, create_graph records
    nothing for it, as for F.linear (a second backward then says it does not require grad)."""
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    w = torch.randn(5, 4, dtype=torch.float64)
    for fn in (fused, reference):
        (gx,) = torch.autograd.grad(fn("linear", x, w, None).sum(), x, create_graph=True)
        assert not gx.requires_grad, fn.__name__
