"""FusedSGD(in_backward=True): the SGD update applied inside the backward, against ordinary
training with torch.optim.SGD, and its limits raised as errors."""
import copy
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


def test_frozen_input_layer_and_step_changes_nothing_more():
    model = mlp(2, True)
    opt = FusedSGD(model.parameters(), lr=0.1, in_backward=True)
    x = torch.randn(16, 13)  # input does not require grad: no grad_input GEMM
    before = [p.detach().clone() for p in model.parameters()]
    nn.functional.mse_loss(model(x.double()), torch.zeros(16, 3, dtype=torch.float64)).backward()
    after_backward = [p.detach().clone() for p in model.parameters()]
    assert all(not torch.equal(a, b) for a, b in zip(before, after_backward))
    opt.step()
    with pytest.raises(RuntimeError, match="step\\(\\) again"):
        opt.step()  # torch.optim.SGD would step again with the gradients it keeps
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
    opt.zero_grad()
    model(x).sum().backward()  # fine again after step() and zero_grad()


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
    opt.zero_grad()
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


# ---- every training setup: the same parameters as torch.optim.SGD, or an error before any change --


def layer_pair(seed=0, bias=True, relu=True, in_features=7, out_features=5):
    """A plain nn.Linear and the fused layer on a copy of its parameters."""
    torch.manual_seed(seed)
    ref = nn.Linear(in_features, out_features, bias=bias).double()
    fused_type = FusedLinearReLU if relu else FusedLinear
    fused = fused_type.from_linear(copy.deepcopy(ref))
    forward_ref = (lambda x: torch.relu(ref(x))) if relu else ref
    return ref, forward_ref, fused


def assert_same_params(fused_params, ref_params):
    for a, b in zip(fused_params, ref_params):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def snapshot(params):
    return [p.detach().clone() for p in params]


def train_side_by_side(steps, x, *runs):
    """``steps`` SGD steps on sum(f(x)^2) for each (forward f, optimizers) in ``runs``."""
    for _ in range(steps):
        for f, optimizers in runs:
            for o in optimizers:
                o.zero_grad()
            f(x).pow(2).sum().backward()
            for o in optimizers:
                o.step()


@pytest.mark.parametrize("options", OPTION_SETS[::3], ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()))
def test_bias_in_its_own_param_group(options):
    """The usual "no weight decay on biases" recipe: each parameter steps with its own group."""
    ref, forward_ref, fused = layer_pair(1)
    def groups(m):
        return [{"params": [m.weight], "weight_decay": 0.5}, {"params": [m.bias], "lr": 0.3, "momentum": 0.5}]
    opts = {k: v for k, v in options.items() if k != "weight_decay"}
    if opts.get("nesterov"):
        opts["dampening"] = 0.0
    ref_opt = torch.optim.SGD(groups(ref), lr=0.1, **opts)
    opt = FusedSGD(groups(fused), lr=0.1, in_backward=True, **opts)
    train_side_by_side(4, torch.randn(9, 7, dtype=torch.float64), (forward_ref, [ref_opt]), (fused, [opt]))
    assert fused.weight.grad is None and fused.bias.grad is None
    assert_same_params(fused.parameters(), ref.parameters())


@pytest.mark.parametrize("left_out", ["bias", "weight"])
def test_parameter_in_no_optimizer_gets_an_ordinary_gradient(left_out):
    ref, forward_ref, fused = layer_pair(2)
    kept = "weight" if left_out == "bias" else "bias"
    ref_opt = torch.optim.SGD([getattr(ref, kept)], lr=0.1, momentum=0.9)
    opt = FusedSGD([getattr(fused, kept)], lr=0.1, momentum=0.9, in_backward=True)
    train_side_by_side(3, torch.randn(9, 7, dtype=torch.float64), (forward_ref, [ref_opt]), (fused, [opt]))
    assert_same_params(fused.parameters(), ref.parameters())
    torch.testing.assert_close(getattr(fused, left_out).grad, getattr(ref, left_out).grad)
    assert set(opt.state_dict()["state"]) == set(ref_opt.state_dict()["state"])
    torch.optim.SGD([getattr(ref, kept)], lr=0.1, momentum=0.9).load_state_dict(opt.state_dict())


def test_weight_and_bias_in_two_in_backward_optimizers():
    ref, forward_ref, fused = layer_pair(3)
    refs = [torch.optim.SGD([ref.weight], lr=0.1, momentum=0.9), torch.optim.SGD([ref.bias], lr=0.7)]
    opts = [FusedSGD([fused.weight], lr=0.1, momentum=0.9, in_backward=True),
            FusedSGD([fused.bias], lr=0.7, in_backward=True)]
    train_side_by_side(3, torch.randn(9, 7, dtype=torch.float64), (forward_ref, refs), (fused, opts))
    assert_same_params(fused.parameters(), ref.parameters())


@pytest.mark.parametrize("options", OPTION_SETS, ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()))
def test_gradient_from_elsewhere_is_folded_into_the_update(options):
    """An L2 penalty on the weight adds to the gradient the backward applies: step() applies the
    rest, as torch.optim.SGD applies the sum."""
    ref, fused = mlp(6, False), mlp(6, True)
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.05, **options)
    opt = FusedSGD(fused.parameters(), lr=0.05, in_backward=True, **options)
    x, y = torch.randn(32, 13, dtype=torch.float64), torch.randn(32, 3, dtype=torch.float64)
    for _ in range(5):
        for model, o in ((ref, ref_opt), (fused, opt)):
            o.zero_grad()
            loss = nn.functional.mse_loss(model(x), y) + 0.1 * model[2].weight.pow(2).sum() + model[4].bias.sum()
            loss.backward()
            o.step()
    assert_same_params(fused.parameters(), ref.parameters())
    if options["momentum"]:
        for a, b in zip(fused.parameters(), ref.parameters()):
            torch.testing.assert_close(opt.state[a]["momentum_buffer"], ref_opt.state[b]["momentum_buffer"],
                                       rtol=1e-10, atol=1e-12)


def test_tied_embedding_and_output_layer():
    def build():
        torch.manual_seed(7)
        emb, head = nn.Embedding(11, 6).double(), nn.Linear(6, 11, bias=False).double()
        head.weight = emb.weight
        return emb, head
    (emb_r, head_r), (emb_f, head_f) = build(), build()
    head_f = FusedLinear.from_linear(head_f)
    assert head_f.weight is emb_f.weight
    ref_opt = torch.optim.SGD(emb_r.parameters(), lr=0.1, momentum=0.9)
    opt = FusedSGD(emb_f.parameters(), lr=0.1, momentum=0.9, in_backward=True)
    tokens = torch.randint(0, 11, (20,))
    for _ in range(4):
        for emb, head, o in ((emb_r, head_r, ref_opt), (emb_f, head_f, opt)):
            o.zero_grad()
            nn.functional.cross_entropy(head(torch.tanh(emb(tokens))), tokens.roll(1)).backward()
            o.step()
    assert_same_params(emb_f.parameters(), emb_r.parameters())


def test_weight_also_read_by_another_op_is_right_or_an_error():
    """A weight that another op saves for its backward: autograd sees the in-place update (the
    version counter moves), so the result is torch's or autograd's in-place error, never a
    backward that silently reads the new weight."""
    ref, forward_ref, fused = layer_pair(8)
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.1)
    opt = FusedSGD(fused.parameters(), lr=0.1, in_backward=True)
    x, z = torch.randn(9, 7, dtype=torch.float64), torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    def loss(f, m):
        return f(x).sum() + (z @ m.weight).tanh().sum()
    before = snapshot(fused.parameters())
    loss(forward_ref, ref).backward()
    ref_opt.step()
    try:
        loss(fused, fused).backward()
    except RuntimeError as e:
        assert "modified by an inplace operation" in str(e)
        return
    opt.step()
    assert_same_params(fused.parameters(), ref.parameters())
    assert not torch.equal(before[0], fused.weight)


def test_optimizer_step_between_forward_and_backward_is_autograd_s_error():
    layer = FusedLinearReLU(4, 3).double()
    opt = FusedSGD(layer.parameters(), lr=0.1)
    x = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    layer(x).sum().backward()
    out = layer(x)
    opt.step()  # changes the weight the pending backward saved, as torch.optim.SGD would
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out.sum().backward()


@pytest.mark.parametrize("how", ["grad", "backward_inputs"])
def test_gradients_of_other_tensors_leave_the_parameters_alone(how):
    ref, forward_ref, fused = layer_pair(9)
    opt = FusedSGD(fused.parameters(), lr=0.1, in_backward=True)  # noqa: F841 (kept alive)
    before = snapshot(fused.parameters())
    grads = []
    for f in (forward_ref, fused):
        x = torch.randn(9, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(0), requires_grad=True)
        if how == "grad":
            grads.append(torch.autograd.grad(f(x).pow(2).sum(), x)[0])
        else:
            f(x).pow(2).sum().backward(inputs=[x])
            grads.append(x.grad)
    torch.testing.assert_close(grads[1], grads[0])
    for a, b in zip(fused.parameters(), before):
        assert torch.equal(a, b) and a.grad is None
    # an ordinary training step afterwards still takes the in-backward path
    fused(torch.randn(3, 7, dtype=torch.float64)).sum().backward()
    assert not torch.equal(fused.weight, before[0]) and fused.weight.grad is None


def test_autograd_grad_of_the_parameters_returns_them_and_changes_nothing():
    ref, forward_ref, fused = layer_pair(10)
    opt = FusedSGD(fused.parameters(), lr=0.1, in_backward=True)  # noqa: F841 (kept alive)
    before = snapshot(fused.parameters())
    x = torch.randn(9, 7, dtype=torch.float64)
    expected = torch.autograd.grad(forward_ref(x).pow(2).sum(), list(ref.parameters()))
    got = torch.autograd.grad(fused(x).pow(2).sum(), list(fused.parameters()))
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b)
    for a, b in zip(fused.parameters(), before):
        assert torch.equal(a, b)


def test_jacobian_and_hessian_free_uses_do_not_update():
    ref, forward_ref, fused = layer_pair(11)
    opt = FusedSGD(fused.parameters(), lr=0.1, in_backward=True)  # noqa: F841 (kept alive)
    before = snapshot(fused.parameters())
    v = torch.randn(7, dtype=torch.float64)
    torch.testing.assert_close(torch.autograd.functional.jacobian(fused, v),
                               torch.autograd.functional.jacobian(forward_ref, v))
    for a, b in zip(fused.parameters(), before):
        assert torch.equal(a, b)


def test_grad_scaler_is_refused_before_anything_changes():
    model = mlp(12, True, dtype=torch.float32)
    opt = FusedSGD(model.parameters(), lr=0.1, in_backward=True)
    scaler = torch.amp.GradScaler("cpu")
    before = snapshot(model.parameters())
    x = torch.randn(8, 13)
    with pytest.raises(RuntimeError, match="GradScaler"):
        scaler.scale(model(x).sum()).backward()
    for a, b in zip(model.parameters(), before):
        assert torch.equal(a, b)


def test_grad_scaler_seen_only_at_step_is_refused_there():
    model = mlp(13, True, dtype=torch.float32)
    opt = FusedSGD(model.parameters(), lr=0.1, in_backward=True)
    model(torch.randn(8, 13)).sum().backward()  # no scaler yet: an ordinary in-backward step
    opt.step()
    opt.zero_grad()
    scaler = torch.amp.GradScaler("cpu")
    loss = model(torch.randn(8, 13)).sum()
    with pytest.raises(RuntimeError, match="GradScaler"):
        scaler.scale(loss).backward()
        scaler.step(opt)


@pytest.mark.parametrize("in_backward", [False, True])
def test_deepcopy_pickle_and_torch_save(in_backward, tmp_path):
    model = mlp(14, True)
    opt = FusedSGD(model.parameters(), lr=0.1, momentum=0.9, in_backward=in_backward)
    x = torch.randn(8, 13, dtype=torch.float64)
    model(x).sum().backward()
    opt.step()
    model2, opt2 = copy.deepcopy((model, opt))
    assert opt2.in_backward is in_backward
    for m, o in ((model, opt), (model2, opt2)):
        o.zero_grad()
        m(x).sum().backward()
        o.step()
    assert_same_params(model2.parameters(), model.parameters())
    path = tmp_path / "opt.pt"
    torch.save((model, opt), path)
    model3, opt3 = torch.load(path, weights_only=False)
    model3(x).sum().backward()
    opt3.step()
    assert opt3.in_backward is in_backward


def test_new_optimizer_after_the_old_one_is_gone():
    model = mlp(15, True)
    opt = FusedSGD(model.parameters(), lr=0.1, in_backward=True)
    opt = FusedSGD(model.parameters(), lr=0.2, in_backward=True)  # the cell re-run in a notebook
    before = snapshot(model.parameters())
    model(torch.randn(4, 13, dtype=torch.float64)).sum().backward()
    opt.step()
    assert not torch.equal(before[0], model[0].weight)


def test_two_live_in_backward_optimizers_on_one_parameter_is_an_error():
    model = mlp(16, True)
    first = FusedSGD(model.parameters(), lr=0.1, in_backward=True)  # noqa: F841 (kept alive)
    second = FusedSGD(model.parameters(), lr=0.1, in_backward=True)  # noqa: F841 (kept alive)
    before = snapshot(model.parameters())
    with pytest.raises(RuntimeError, match="two in-backward optimizers"):
        model(torch.randn(4, 13, dtype=torch.float64)).sum().backward()
    for a, b in zip(model.parameters(), before):
        assert torch.equal(a, b)


@pytest.mark.parametrize("use_reentrant", [False, True])
def test_activation_checkpointing(use_reentrant):
    ref, fused = mlp(17, False), mlp(17, True)
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.05, momentum=0.9)
    opt = FusedSGD(fused.parameters(), lr=0.05, momentum=0.9, in_backward=True)
    x = torch.randn(16, 13, dtype=torch.float64, requires_grad=True)
    for _ in range(3):
        for model, o in ((ref, ref_opt), (fused, opt)):
            o.zero_grad()
            hidden = torch.utils.checkpoint.checkpoint(model[:4], x, use_reentrant=use_reentrant)
            model[4](hidden).pow(2).sum().backward()
            o.step()
    assert_same_params(fused.parameters(), ref.parameters())


def test_float16_layers_on_cpu():
    def build():
        torch.manual_seed(18)
        return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2)).half()
    ref, fused = build(), fused_linreg.fuse(build())
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.05, momentum=0.9)
    opt = FusedSGD(fused.parameters(), lr=0.05, momentum=0.9, in_backward=True)
    x = torch.randn(32, 8).half()
    for _ in range(3):
        for model, o in ((ref, ref_opt), (fused, opt)):
            o.zero_grad()
            model(x).float().pow(2).mean().backward()
            o.step()
    assert all(p.grad is None for p in fused.parameters())
    for a, b in zip(fused.parameters(), ref.parameters()):
        torch.testing.assert_close(a, b, rtol=2e-3, atol=2e-3)


@pytest.mark.parametrize("flag", ["foreach", "fused"])
@pytest.mark.parametrize("value", [None, False, True])
def test_accepts_torch_sgd_implementation_flags(flag, value):
    layer = FusedLinear(3, 2).double()
    opt = FusedSGD(layer.parameters(), lr=0.1, **{flag: value})
    ref = torch.optim.SGD(FusedLinear(3, 2).double().parameters(), lr=0.1, **{flag: value})
    assert opt.param_groups[0][flag] == ref.param_groups[0][flag]
    layer(torch.randn(2, 3, dtype=torch.float64)).sum().backward()
    opt.step()


def test_differentiable_true_is_refused_clearly():
    FusedSGD(FusedLinear(3, 2).parameters(), lr=0.1, differentiable=False)
    with pytest.raises(ValueError, match="differentiable"):
        FusedSGD(FusedLinear(3, 2).parameters(), lr=0.1, differentiable=True)


@pytest.mark.parametrize("in_backward", [False, True])
def test_duplicate_parameter_is_an_error_naming_it(in_backward):
    """torch.optim.SGD warns and steps it twice from the same old momentum buffer; FusedSGD
    refuses it after the same warning, naming the parameter."""
    layer = FusedLinear(3, 2)
    with pytest.warns(UserWarning, match="duplicate"), pytest.raises(ValueError, match=r"\[2, 3\]"):
        FusedSGD([layer.weight, layer.bias, layer.weight], lr=0.1, in_backward=in_backward)
