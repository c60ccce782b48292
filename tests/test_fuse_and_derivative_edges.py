"""Edge setups of fuse(), from_linear, TorchScript and derivatives (legacy vmap, empty batches,
frozen weights), against plain PyTorch. Every test here failed on main at d8d6ab1.
"""
import gc
import types
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fused_linreg
from conftest import fused, reference

OPS_UNDER_TEST = ["linear", "linear_relu"]


def _inputs(seed=0, rows=4, k=5, n=3):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(rows, k, dtype=torch.float64, generator=g),
            torch.randn(n, k, dtype=torch.float64, generator=g),
            torch.randn(n, dtype=torch.float64, generator=g))


# ---- vmap rules: a batch of size 0 --------------------------------------------------------------


@pytest.mark.parametrize("op", OPS_UNDER_TEST)
def test_jacrev_wrt_weight_of_an_empty_batch(op):
    """jacrev vmaps the backward over the output's elements: with 0 rows that is a vmap of size 0,
    and the per-sample vmap rule indexes outs[0] of an empty list (IndexError)."""
    _, w, b = _inputs()
    x = torch.randn(0, 5, dtype=torch.float64)
    results = [torch.func.jacrev(lambda w: fn(op, x, w, b), argnums=(0,))(w)[0] for fn in (fused, reference)]
    assert results[0].shape == results[1].shape == (0, 3, 3, 5)


@pytest.mark.parametrize("op", OPS_UNDER_TEST)
def test_vmap_over_an_empty_stack_of_weights(op):
    x, _, b = _inputs()
    weights = torch.randn(0, 3, 5, dtype=torch.float64)
    got = torch.func.vmap(lambda w: fused(op, x, w, b))(weights)
    expected = torch.func.vmap(lambda w: reference(op, x, w, b))(weights)
    assert got.shape == expected.shape == (0, 4, 3)


# ---- legacy batched gradients (torch._vmap_internals) -------------------------------------------
# torch.autograd.grad(is_grads_batched=True), which autograd.functional.jacobian/hessian
# (vectorize=True) and gradcheck(check_batched_grad=True) use, batches with the legacy vmap, whose
# fallback cannot batch linear_backward (optional outputs): they failed with 'Batching rule not
# implemented for fused_linreg::linear_backward. We could not generate a fallback.' The legacy
# vmap is refused with a message naming torch.func, which computes the same batched gradients.

LEGACY_VMAP = r"cannot be batched by PyTorch's legacy vmap.*Use torch.func"


@pytest.mark.parametrize("op", OPS_UNDER_TEST)
def test_is_grads_batched_is_refused_for_torch_func(op):
    x, w, b = (t.requires_grad_() for t in _inputs())
    y = fused(op, x, w, b)
    grad_outputs = torch.eye(y.numel(), dtype=y.dtype).view(y.numel(), *y.shape)
    with pytest.raises(RuntimeError, match=LEGACY_VMAP):
        torch.autograd.grad(y, (x, w, b), grad_outputs, is_grads_batched=True)
    results = []
    for fn in (fused, reference):
        _, vjp = torch.func.vjp(lambda *t: fn(op, *t), x.detach(), w.detach(), b.detach())
        results.append(torch.func.vmap(vjp)(grad_outputs))
    for name, got, expected in zip(("input", "weight", "bias"), *results):
        torch.testing.assert_close(got, expected, msg=name)


@pytest.mark.parametrize("op", OPS_UNDER_TEST)
def test_vectorized_hessian_and_batched_gradcheck_are_refused_for_torch_func(op):
    x, w, b = _inputs()
    with pytest.raises(RuntimeError, match=LEGACY_VMAP):
        torch.autograd.functional.hessian(lambda w: fused(op, x, w, b).tanh().sum(), w, vectorize=True)
    with pytest.raises(RuntimeError, match=LEGACY_VMAP):
        torch.autograd.gradcheck(lambda w: fused(op, x, w, b), w.requires_grad_(), check_batched_grad=True)
    got, expected = (torch.func.hessian(lambda w: fn(op, x, w, b).tanh().sum())(w.detach())
                     for fn in (fused, reference))
    torch.testing.assert_close(got, expected)


# ---- second derivatives -------------------------------------------------------------------------


@pytest.mark.parametrize("wrt", [0, 1], ids=["input", "weight"])
def test_second_derivative_of_a_relu_layer_wrt_the_only_tensor_that_requires_grad(wrt):
    """d/dx of grad_x for a ReLU layer whose weight and bias do not require grad (likewise d/dW of
    grad_W with x and b frozen): PyTorch's answer is zero (the mask is locally constant);
    fused_linreg's gradient recorded no graph, so the second torch.autograd.grad raised 'element 0
    of tensors does not require grad'."""
    results = []
    for fn in (fused, reference):
        tensors = _inputs()
        t = tensors[wrt].requires_grad_()
        (g,) = torch.autograd.grad(fn("linear_relu", *tensors).sum(), t, create_graph=True)
        results.append(torch.autograd.grad(g.sum(), t, allow_unused=True, materialize_grads=True)[0])
    torch.testing.assert_close(results[0], results[1])


def test_in_place_change_of_grad_output_after_create_graph_relu():
    """PyTorch's ReLU double backward saves the masked gradient, not grad_output, so changing
    grad_output in place after torch.autograd.grad(create_graph=True) is fine; fused_linreg's
    FusedLinearBackwardBackward saved grad_output itself and raises a version-counter error."""
    results = []
    for fn in (fused, reference):
        x, w, b = (t.requires_grad_() for t in _inputs())
        y = fn("linear_relu", x, w, b)
        go = torch.ones_like(y, requires_grad=True)
        gx, gw = torch.autograd.grad(y, (x, w), go, create_graph=True)
        with torch.no_grad():
            go.mul_(3)
        results.append(torch.autograd.grad(gx.sum() + gw.sum(), (x, w, go), allow_unused=True,
                                           materialize_grads=True))
    for name, got, expected in zip(("x", "weight", "grad_output"), *results):
        torch.testing.assert_close(got, expected, msg=name)


# ---- fuse(): what an nn.Linear instance carries besides its Parameters ----------------------------


def test_fuse_respects_a_linear_whose_forward_was_replaced_on_the_instance():
    """An nn.Linear whose forward is overridden on the instance (adapter injection, debugging
    patches) computes something else than F.linear: fuse() replaces it anyway and the model's
    output changes silently."""
    torch.manual_seed(0)
    lin = nn.Linear(3, 4)
    lin.forward = types.MethodType(lambda self, x: F.linear(x, self.weight, self.bias) * 2.0, lin)
    model = nn.Sequential(lin, nn.ReLU(), nn.Linear(4, 2))
    x = torch.randn(5, 3)
    torch.testing.assert_close(fused_linreg.fuse(model)(x), model(x), rtol=0, atol=0)
    with pytest.raises(TypeError, match="forward set on the instance"):
        fused_linreg.FusedLinear.from_linear(lin)


@pytest.mark.parametrize("inplace", [False, True])
def test_fuse_keeps_the_submodules_and_attributes_of_a_linear(inplace):
    """from_linear copies _parameters and _buffers only: modules attached to the Linear (and their
    Parameters) vanish from state_dict() and parameters(), and instance attributes are lost."""
    lin = nn.Linear(3, 4)
    lin.adapter = nn.Linear(2, 2)
    lin.tag = "kept"
    model = nn.Sequential(lin, nn.Tanh())
    keys, n_params = list(model.state_dict()), len(list(model.parameters()))
    fused_model = fused_linreg.fuse(model, inplace=inplace)
    assert list(fused_model.state_dict()) == keys
    assert len(list(fused_model.parameters())) == n_params
    assert getattr(fused_model[0], "tag", None) == "kept"


def test_fuse_of_a_model_prepared_for_quantization_still_runs():
    """torch.ao.quantization.prepare attaches an observer submodule and a forward hook that calls
    it; after fuse() the hook is kept but the observer is not: AttributeError in forward."""
    from torch.ao.quantization import get_default_qconfig, prepare
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)).eval()
    model.qconfig = get_default_qconfig("x86")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # eager-mode quantization is deprecated
        prepared = prepare(model)
    x = torch.randn(5, 3)
    expected = prepared(x)
    fused_model = fused_linreg.fuse(prepared)
    assert type(fused_model[0]) is fused_linreg.FusedLinear  # fused, with its observer
    torch.testing.assert_close(fused_model(x), expected)  # random data: not bit for bit


@pytest.mark.parametrize("inplace", [False, True])
def test_load_state_dict_pre_hook_still_works_after_fuse(inplace):
    """register_load_state_dict_pre_hook wraps the hook with a weakref to the module it was
    registered on; fuse() shares (or copies) the hook dict onto the fused layer, the old Linear is
    collected and load_state_dict raises 'You are trying to call the hook of a dead Module!'."""
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    seen = []
    model[0].register_load_state_dict_pre_hook(lambda module, *args: seen.append(module))
    fused_model = fused_linreg.fuse(model, inplace=inplace)
    gc.collect()
    fused_model.load_state_dict(fused_model.state_dict())
    assert seen == [fused_model[0]]


# ---- error messages -----------------------------------------------------------------------------


def test_from_linear_error_for_a_buffer_weight_says_what_it_is():
    """A weight kept as a buffer (a frozen layer) is reported as 'computed by forward pre-hooks ()',
    an empty list of hooks that computes nothing."""
    lin = nn.Linear(3, 4)
    weight = lin.weight.detach().clone()
    del lin.weight
    lin.register_buffer("weight", weight)
    with pytest.raises(TypeError) as info:
        fused_linreg.FusedLinear.from_linear(lin)
    assert "pre-hooks ()" not in str(info.value)
    assert "weight is not a Parameter but a buffer" in str(info.value)
    del lin.bias
    lin.bias = None
    with pytest.raises(TypeError, match=r"bias is not a Parameter but a plain attribute set to None"):
        fused_linreg.FusedLinear.from_linear(lin)


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_torchscript_of_a_module_calling_the_functional_api_is_a_clear_error():
    """Issue 18 item 6 for the functional entry points: a user module calling
    fused_linreg.functional.linear_relu still fails with 'global variables aren't supported'
    pointing into in_backward.py."""
    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.randn(2, 3))

        def forward(self, x):
            return fused_linreg.functional.linear_relu(x, self.weight, None)

    with pytest.raises(NotImplementedError) as info:
        torch.jit.script(Model())
    assert "fused_linreg.functional.linear_relu cannot be compiled by TorchScript" in str(info.value)
    assert "torch.compile" in str(info.value)
