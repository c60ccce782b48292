"""FusedLinear / FusedLinearReLU as drop-ins for nn.Linear (+ nn.ReLU): parameters, initialization,
state_dict, repr, batch dims, from_linear."""
import copy
import io

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrizations, prune

import fused_linreg
from conftest import assert_close, assert_same, exact_randn, make_generator

MODULES = [fused_linreg.FusedLinear, fused_linreg.FusedLinearReLU]


def reference_module(cls, linear):
    return nn.Sequential(linear, nn.ReLU()) if cls is fused_linreg.FusedLinearReLU else linear


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("cls", MODULES, ids=lambda c: c.__name__)
def test_same_parameters_and_init_as_nn_linear(cls, bias):
    torch.manual_seed(123)
    ref = nn.Linear(17, 9, bias=bias)
    torch.manual_seed(123)
    mod = cls(17, 9, bias=bias)
    assert isinstance(mod, nn.Linear)
    assert [n for n, _ in mod.named_parameters()] == [n for n, _ in ref.named_parameters()]
    for (n, p), (_, q) in zip(mod.named_parameters(), ref.named_parameters()):
        assert isinstance(p, nn.Parameter) and p.requires_grad
        assert_same(p.detach(), q.detach(), n)
    assert (mod.bias is None) == (not bias)
    assert mod.in_features == 17 and mod.out_features == 9


@pytest.mark.parametrize("cls", MODULES, ids=lambda c: c.__name__)
def test_factory_kwargs_and_conversions(cls):
    mod = cls(4, 3, dtype=torch.float64)
    assert mod.weight.dtype == torch.float64 and mod.bias.dtype == torch.float64
    mod = cls(4, 3).double()
    assert mod.weight.dtype == torch.float64
    mod = cls(4, 3, device="meta")
    assert mod.weight.is_meta
    y = mod(torch.empty(2, 4, device="meta"))
    assert y.shape == (2, 3) and y.is_meta


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("cls", MODULES, ids=lambda c: c.__name__)
def test_state_dict_interchangeable_with_nn_linear(cls, bias):
    ref = nn.Linear(6, 5, bias=bias)
    mod = cls(6, 5, bias=bias)
    assert list(mod.state_dict().keys()) == list(ref.state_dict().keys())
    mod.load_state_dict(ref.state_dict())
    for k, v in ref.state_dict().items():
        assert_same(mod.state_dict()[k], v, k)
    ref2 = nn.Linear(6, 5, bias=bias)
    ref2.load_state_dict(mod.state_dict())


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("cls", MODULES, ids=lambda c: c.__name__)
def test_repr(cls, bias):
    mod, ref = cls(3, 4, bias=bias), nn.Linear(3, 4, bias=bias)
    assert mod.extra_repr() == ref.extra_repr()
    assert repr(mod) == f"{cls.__name__}(in_features=3, out_features=4, bias={bias})"


@pytest.mark.parametrize("input_shape", [(7,), (5, 7), (2, 3, 7), (2, 1, 3, 7), (0, 7), (2, 0, 7)],
                         ids=str)
@pytest.mark.parametrize("cls", MODULES, ids=lambda c: c.__name__)
def test_forward_backward_any_leading_dims(cls, input_shape, device):
    g = make_generator(len(input_shape))
    ref_linear = nn.Linear(7, 10)
    with torch.no_grad():
        ref_linear.weight.copy_(exact_randn(10, 7, generator=g))
        ref_linear.bias.copy_(exact_randn(10, generator=g))
    mod = cls(7, 10)
    mod.load_state_dict(ref_linear.state_dict())
    mod.to(device)
    ref_linear.to(device)
    ref = reference_module(cls, ref_linear)
    x = exact_randn(*input_shape, generator=g, device=device)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = mod(xa), ref(xb)
    assert ya.shape == yb.shape == (*input_shape[:-1], 10)
    assert_same(ya.detach(), yb.detach(), "output")
    go = exact_randn(*ya.shape, generator=g, device=device)
    ya.backward(go)
    yb.backward(go)
    assert_same(xa.grad, xb.grad, "grad_input")
    assert_same(mod.weight.grad, ref_linear.weight.grad, "grad_weight")
    assert_same(mod.bias.grad, ref_linear.bias.grad, "grad_bias")


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("cls", MODULES, ids=lambda c: c.__name__)
def test_from_linear_shares_parameters(cls, bias):
    linear = nn.Linear(5, 4, bias=bias, dtype=torch.float64)
    linear.eval()
    mod = cls.from_linear(linear)
    assert type(mod) is cls
    assert mod.weight is linear.weight
    assert mod.bias is linear.bias
    assert not mod.training
    assert mod.weight.dtype == torch.float64 and not mod.weight.is_meta
    x = torch.randn(3, 5, dtype=torch.float64)
    assert_close(mod(x).detach(), reference_module(cls, linear)(x).detach(), terms=5)
    # An optimizer holding the nn.Linear's parameters steps the fused layer's.
    opt = torch.optim.SGD(linear.parameters(), lr=1.0)
    mod(x).sum().backward()
    opt.step()
    assert_same(mod.weight.detach(), linear.weight.detach())


def _pruned_linear(how):
    torch.manual_seed(0)
    linear = nn.Linear(6, 5, dtype=torch.float64)
    prune.l1_unstructured(linear, "weight", amount=0.4)
    if how == "twice_and_bias":  # a PruningContainer on the weight, and a pruned bias
        prune.ln_structured(linear, "weight", amount=0.4, n=2, dim=0)
        prune.random_unstructured(linear, "bias", amount=0.4)
    return linear


@pytest.mark.parametrize("how", ["weight", "twice_and_bias"])
@pytest.mark.parametrize("cls", MODULES, ids=lambda c: c.__name__)
def test_from_linear_carries_pruning_over(cls, how):
    linear = _pruned_linear(how)
    mod = cls.from_linear(linear)
    ref = reference_module(cls, linear)
    assert list(mod.state_dict()) == list(linear.state_dict())
    for name, value in linear.state_dict().items():
        assert_same(mod.state_dict()[name], value, name)
    assert [p for p in mod.parameters()] == [p for p in linear.parameters()]
    assert mod.weight_orig is linear.weight_orig and mod.weight_mask is linear.weight_mask
    params = list(linear.parameters())
    opt = torch.optim.SGD(params, lr=0.5)
    for step in range(2):  # the second forward sees the stepped weight_orig, masked again
        x = torch.randn(4, 6, dtype=torch.float64)
        y, y_ref = mod(x), ref(x)
        torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-12)
        grads = torch.autograd.grad(y.square().sum(), params)
        grads_ref = torch.autograd.grad(y_ref.square().sum(), params)
        torch.testing.assert_close(grads, grads_ref, rtol=1e-12, atol=1e-12)
        for p, g in zip(params, grads):
            p.grad = g
        opt.step()
    assert not mod.weight[linear.weight_mask == 0].any() and mod.weight.grad_fn is not None
    prune.remove(mod, "weight")
    assert isinstance(mod.weight, nn.Parameter) and "weight_mask" not in mod.state_dict()


def test_from_linear_rejects_weights_computed_by_other_reparametrizations():
    linear = parametrizations.weight_norm(nn.Linear(3, 2))
    with pytest.raises(TypeError, match=r"FusedLinear.from_linear: the Linear's weight is not a "
                                        r"Parameter but computed by torch.nn.utils.parametrize "
                                        r"\(_WeightNorm\); only torch.nn.utils.prune"):
        fused_linreg.FusedLinear.from_linear(linear)
    with pytest.warns(FutureWarning):
        old_style = torch.nn.utils.weight_norm(nn.Linear(3, 2))
    with pytest.raises(TypeError, match=r"FusedLinearReLU.from_linear: the Linear's weight is not a "
                                        r"Parameter but computed by forward pre-hooks \(WeightNorm\)"):
        fused_linreg.FusedLinearReLU.from_linear(old_style)


def test_from_linear_rejects_other_modules():
    with pytest.raises(TypeError, match="nn.Linear"):
        fused_linreg.FusedLinear.from_linear(nn.Conv1d(3, 3, 1))


@pytest.mark.parametrize("cls", MODULES, ids=lambda c: c.__name__)
def test_deepcopy_and_requires_grad_false(cls):
    mod = cls(4, 3)
    clone = copy.deepcopy(mod)
    assert clone.weight is not mod.weight
    assert_same(clone.weight.detach(), mod.weight.detach())
    mod.requires_grad_(False)
    y = mod(torch.randn(2, 4))
    assert not y.requires_grad


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
@pytest.mark.parametrize("cls", MODULES, ids=lambda c: c.__name__)
def test_torchscript_is_a_clear_error_that_points_to_compile_and_export(cls):
    message = (rf"{cls.__name__} cannot be compiled by TorchScript \(torch.jit.script\).*"
               r"torch.compile\(model\).*torch.export.export\(model, args\)")
    with pytest.raises(NotImplementedError, match=message):
        torch.jit.script(cls(3, 4))
    nested = nn.Sequential(nn.Linear(3, 4), nn.Sequential(nn.Tanh(), cls(4, 2)))
    with pytest.raises(NotImplementedError, match=message):
        torch.jit.script(nested)
    # torch.export works on the same model, saved and loaded too (torch.compile: test_compile.py).
    x = torch.randn(2, 3)
    saved = io.BytesIO()
    torch.export.save(torch.export.export(nested, (x,)), saved)
    saved.seek(0)
    assert_same(torch.export.load(saved).module()(x).detach(), nested(x).detach())
