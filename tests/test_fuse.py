"""fused_linreg.fuse(model): which modules it replaces, and that weights and outputs are unchanged."""
import copy

import pytest
import torch
from torch import nn
from torch.nn.utils import prune

import fused_linreg
from fused_linreg import FusedLinear, FusedLinearReLU, FusedSGD, fuse


class Block(nn.Module):
    """A custom module holding a Linear attribute and a Sequential, used from forward."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(6, 8)
        self.mlp = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 8), nn.ReLU(inplace=True))
        self.heads = nn.ModuleList([nn.Linear(8, 3), nn.Linear(8, 3, bias=False)])

    def forward(self, x):
        h = self.mlp(self.proj(x))
        return self.heads[0](h) + self.heads[1](h)


def make_model():
    torch.manual_seed(0)
    return nn.Sequential(
        Block(),
        nn.ReLU(),
        nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 4), nn.ReLU()),
    ).double()


def test_replacements_nested_and_types():
    model = make_model()
    fused = fuse(model)
    block = fused[0]
    assert type(block.proj) is FusedLinear
    assert [type(m) for m in block.mlp] == [FusedLinearReLU, nn.Identity, FusedLinearReLU, nn.Identity]
    assert [type(m) for m in block.heads] == [FusedLinear, FusedLinear]
    assert block.heads[1].bias is None
    assert [type(m) for m in fused[2]] == [FusedLinear, nn.Tanh, FusedLinearReLU, nn.Identity]
    assert type(fused[1]) is nn.ReLU  # follows a Block, not a Linear: left as it is
    assert not any(type(m) is nn.Linear for m in fused.modules())


def test_outputs_gradients_and_state_dict_unchanged():
    model = make_model()
    fused = fuse(model)
    assert list(fused.state_dict()) == list(model.state_dict())
    for (name, a), b in zip(model.state_dict().items(), fused.state_dict().values()):
        assert torch.equal(a, b), name
    x = torch.randn(7, 6, dtype=torch.float64)
    y_ref, y = model(x), fused(x)
    torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-12)
    y_ref.square().sum().backward()
    y.square().sum().backward()
    for (name, p_ref), p in zip(model.named_parameters(), fused.parameters()):
        torch.testing.assert_close(p.grad, p_ref.grad, rtol=1e-10, atol=1e-12, msg=name)


def test_not_inplace_leaves_model_alone_and_copies_parameters():
    model = make_model()
    before = copy.deepcopy(model.state_dict())
    fused = fuse(model)
    assert fused is not model
    assert type(model[0].proj) is nn.Linear and type(model[0].mlp[1]) is nn.ReLU
    assert all(p.data_ptr() != q.data_ptr() for p, q in zip(model.parameters(), fused.parameters()))
    with torch.no_grad():
        for p in fused.parameters():
            p.add_(1)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_inplace_keeps_parameters_so_an_existing_optimizer_still_trains_it():
    model = make_model()
    params = list(model.parameters())
    opt = FusedSGD(model.parameters(), lr=0.1, momentum=0.9)
    out = fuse(model, inplace=True)
    assert out is model
    assert all(p is q for p, q in zip(params, model.parameters()))
    before = [p.detach().clone() for p in params]
    model[0](torch.randn(4, 6, dtype=torch.float64)).sum().backward()  # reaches every Block layer
    opt.step()
    changed = [not torch.equal(p, b) for p, b in zip(params, before)]
    assert changed == [p.grad is not None and bool(p.grad.any()) for p in params]
    assert sum(changed) == 9  # all of the Block's parameters


def test_root_linear_shared_layers_and_train_mode():
    lin = nn.Linear(4, 2)
    lin.eval()
    f = fuse(lin, inplace=True)
    assert type(f) is FusedLinear and f.weight is lin.weight and not f.training

    shared = nn.Linear(4, 4)
    model = nn.Sequential(shared, nn.Tanh(), shared)  # the same layer twice (tied)
    fused = fuse(model)
    assert fused[0] is fused[2] and type(fused[0]) is FusedLinear
    x = torch.randn(3, 4)
    torch.testing.assert_close(fused(x), model(x))


def test_subclasses_hooks_and_already_fused_layers():
    class MyLinear(nn.Linear):  # may compute anything: left alone
        def forward(self, x):
            return super().forward(x) * 2

    seen = []
    hooked = nn.Linear(3, 3)
    hooked.register_forward_hook(lambda m, i, o: seen.append(o.shape))
    model = nn.Sequential(MyLinear(3, 3), nn.ReLU(), hooked, nn.ReLU(), FusedLinear(3, 3), nn.ReLU(),
                          nn.MultiheadAttention(3, 1))
    fused = fuse(model)
    assert type(fused[0]) is MyLinear and type(fused[1]) is nn.ReLU
    # A hooked Linear keeps its hook and is not merged with its ReLU (the hook sees the pre-ReLU output).
    assert type(fused[2]) is FusedLinear and type(fused[3]) is nn.ReLU
    assert type(fused[4]) is FusedLinearReLU and type(fused[5]) is nn.Identity
    assert type(fused[6].out_proj) is not FusedLinear
    x = torch.randn(2, 3)
    torch.testing.assert_close(fused[:6](x), model[:6](x))
    assert len(seen) == 2


def test_exported_and_rejects_non_modules():
    assert fused_linreg.fuse is fuse and "fuse" in fused_linreg.__all__
    with pytest.raises(TypeError, match="torch.nn.Module"):
        fuse(torch.randn(2))


def _register(module, kind, calls):
    """One hook of the given kind on module that records its calls; returns its handle."""
    def record(*args, **kwargs):
        calls.append(kind)
    if kind == "forward":
        return module.register_forward_hook(record)
    if kind == "forward_with_kwargs":
        return module.register_forward_hook(record, with_kwargs=True)
    if kind == "forward_always_called":
        return module.register_forward_hook(record, always_call=True)
    if kind == "forward_pre":
        return module.register_forward_pre_hook(record)
    if kind == "forward_pre_with_kwargs":
        return module.register_forward_pre_hook(record, with_kwargs=True)
    if kind == "full_backward":
        return module.register_full_backward_hook(record)
    assert kind == "full_backward_pre"
    return module.register_full_backward_pre_hook(record)


HOOKS = ["forward", "forward_with_kwargs", "forward_always_called", "forward_pre",
         "forward_pre_with_kwargs", "full_backward", "full_backward_pre"]


def _one_step(model):
    x = torch.randn(2, 3, requires_grad=True)
    model(x).sum().backward()


@pytest.mark.parametrize("kind", HOOKS)
def test_inplace_hook_handles_still_remove_the_hooks(kind):
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    calls = []
    handle = _register(model[0], kind, calls)
    fuse(model, inplace=True)
    assert type(model[0]) is FusedLinear and type(model[1]) is nn.ReLU
    _one_step(model)
    assert calls == [kind]
    handle.remove()
    _one_step(model)
    assert calls == [kind]
    # Once the hook is gone, a new fuse() merges the layer with its ReLU.
    assert type(fuse(model)[0]) is FusedLinearReLU


@pytest.mark.parametrize("kind", HOOKS)
def test_copy_keeps_the_hooks_that_handles_remove_from_the_original(kind):
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    calls = []
    handle = _register(model[0], kind, calls)
    fused = fuse(model)
    _one_step(fused)
    assert calls == [kind]
    # As with copy.deepcopy: the handle belongs to `model`; the copy has hooks of its own.
    handle.remove()
    _one_step(model)
    assert calls == [kind]
    _one_step(fused)
    assert calls == [kind, kind]


def test_hooks_of_a_root_linear_and_of_a_shared_layer():
    calls = []
    root = nn.Linear(3, 2)
    handle = _register(root, "full_backward", calls)
    fused = fuse(root, inplace=True)
    _one_step(fused)
    handle.remove()
    _one_step(fused)
    assert calls == ["full_backward"]

    shared = nn.Linear(3, 3)
    handle = _register(shared, "forward", calls)
    model = fuse(nn.Sequential(shared, nn.Tanh(), shared), inplace=True)
    _one_step(model)
    assert calls == ["full_backward"] + ["forward"] * 2
    handle.remove()
    _one_step(model)
    assert calls == ["full_backward"] + ["forward"] * 2


@pytest.mark.parametrize("inplace", [True, False])
def test_state_dict_hooks_stay_on_a_layer_merged_with_its_relu(inplace):
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 4), nn.ReLU())
    calls = []
    handles = [model[0].register_state_dict_pre_hook(lambda *a: calls.append("state_dict_pre")),
               model[0].register_load_state_dict_post_hook(lambda *a: calls.append("load_post"))]
    fused = fuse(model, inplace=inplace)
    assert [type(m) for m in fused] == [FusedLinearReLU, nn.Identity] * 2  # these hooks see no output
    fused.load_state_dict(fused.state_dict())
    assert calls == ["state_dict_pre", "load_post"]
    for handle in handles:
        handle.remove()
    fused.load_state_dict(fused.state_dict())
    assert calls == ["state_dict_pre", "load_post"] * (1 if inplace else 2)


def test_a_shared_layer_merged_twice_stays_one_module():
    shared = nn.Linear(4, 4)
    fused = fuse(nn.Sequential(shared, nn.ReLU(), shared, nn.ReLU()))
    assert type(fused[0]) is FusedLinearReLU and fused[0] is fused[2]


def make_pruned_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2)).double()
    prune.global_unstructured([(model[0], "weight"), (model[2], "weight")],
                              pruning_method=prune.L1Unstructured, amount=0.5)
    prune.l1_unstructured(model[4], "bias", amount=1.0)
    prune.l1_unstructured(model[4], "weight", amount=0.3)
    return model


@pytest.mark.parametrize("inplace", [True, False])
def test_pruned_layers_are_fused_with_their_pruning(inplace):
    ref = make_pruned_model()
    model = make_pruned_model()
    fused = fuse(model, inplace=inplace)
    assert (fused is model) == inplace
    # Pruning's pre-hooks only set the masked weight: the layers still merge with their ReLU.
    assert [type(m) for m in fused] == [FusedLinearReLU, nn.Identity] * 2 + [FusedLinear]
    assert list(fused.state_dict()) == list(ref.state_dict())
    for name, value in ref.state_dict().items():
        assert torch.equal(fused.state_dict()[name], value), name
    opts = [torch.optim.SGD(m.parameters(), lr=0.1) for m in (fused, ref)]
    for step in range(2):  # the second step sees the updated weight_orig, masked again
        x = torch.randn(5, 3, dtype=torch.float64)
        for m, opt in zip((fused, ref), opts):
            opt.zero_grad()
            m(x).square().sum().backward()
            opt.step()
        for (name, p), q in zip(ref.named_parameters(), fused.parameters()):
            torch.testing.assert_close(q, p, rtol=1e-12, atol=1e-12, msg=name)
        torch.testing.assert_close(fused(x), ref(x), rtol=1e-12, atol=1e-12)
    assert not fused[4].bias.any()  # pruned to zero, and kept at zero by the mask
    if not inplace:  # the original still works on its own Parameters
        torch.testing.assert_close(model(x), make_pruned_model()(x), rtol=0, atol=0)
    prune.remove(fused[0], "weight")
    assert isinstance(fused[0].weight, nn.Parameter) and "0.weight" in fused.state_dict()


def test_layers_with_other_reparametrizations_are_left_unfused():
    with pytest.warns(FutureWarning):
        normed = torch.nn.utils.weight_norm(nn.Linear(3, 4))
    model = nn.Sequential(normed, nn.ReLU(), nn.utils.parametrizations.weight_norm(nn.Linear(4, 2)))
    x = torch.randn(2, 3)
    expected = model(x)
    fuse(model, inplace=True)
    assert model[0] is normed and type(model[1]) is nn.ReLU
    assert not isinstance(model[2], FusedLinear)
    torch.testing.assert_close(model(x), expected, rtol=0, atol=0)
