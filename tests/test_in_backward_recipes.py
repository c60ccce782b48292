"""FusedSGD(in_backward=True) in training recipes beyond the basic loop, against nn.Linear + torch.optim.SGD.

The claim under test: every setup gives torch.optim.SGD's parameters (float64, ~1e-10 relative)
or raises a clear error before any parameter changes. Each test here failed on the code it was
written against; a fix may either make the setup match torch or refuse it before any change, so
where refusal is a valid fix the tests accept a RuntimeError that leaves every parameter as it was.
"""
import pytest
import torch
from torch import nn

import fused_linreg
from fused_linreg import FusedLinear, FusedSGD

OPTIONS = dict(lr=0.1, momentum=0.9, weight_decay=0.1)


def mlp(fused, seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 3)).double()
    return fused_linreg.fuse(model) if fused else model


def data():
    g = torch.Generator().manual_seed(1)
    return torch.randn(8, 5, dtype=torch.float64, generator=g), torch.randn(8, 3, dtype=torch.float64, generator=g)


def pair(**options):
    ref, fused = mlp(False), mlp(True)
    options = {**OPTIONS, **options}
    return ref, torch.optim.SGD(ref.parameters(), **options), fused, FusedSGD(fused.parameters(), in_backward=True, **options)


def assert_same_params(fused, ref):
    for a, b in zip(fused.parameters(), ref.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def snapshot(model):
    return [p.detach().clone() for p in model.parameters()]


def unchanged(model, before):
    return all(torch.equal(a, b) for a, b in zip(model.parameters(), before))


def step(model, opt, x, y, penalty=0.0, **zero_grad):
    opt.zero_grad(**zero_grad)
    loss = nn.functional.mse_loss(model(x), y)
    if penalty:
        loss = loss + penalty * model[0].weight.pow(2).sum()
    loss.backward()
    opt.step()


def matches_torch_or_refuses_cleanly(run_ref, run_fused, ref, fused):
    """run_ref() on the reference; run_fused() must give the same parameters, or raise a
    RuntimeError without having changed any parameter."""
    run_ref()
    before = snapshot(fused)
    try:
        run_fused()
    except RuntimeError:
        assert unchanged(fused, before), "refused only after parameters had changed"
        return
    assert_same_params(fused, ref)


# ---- load_state_dict turns in_backward off while its controller keeps updating ----------------

def test_load_state_dict_keeps_in_backward_and_resumes_like_torch():
    """Resuming from a checkpoint: a fresh in-backward optimizer, load_state_dict, train on.
    Optimizer.load_state_dict calls __setstate__ without the "in_backward" key, so the optimizer
    reports in_backward=False, step() no longer resets the (still registered) controller, and the
    second backward raises "gradient accumulation"."""
    x, y = data()
    ref, ref_opt, fused, opt = pair()
    step(ref, ref_opt, x, y)
    step(fused, opt, x, y)
    checkpoint = opt.state_dict()
    del opt
    opt = FusedSGD(fused.parameters(), in_backward=True, **OPTIONS)
    opt.load_state_dict(checkpoint)
    assert opt.in_backward
    for _ in range(3):
        step(ref, ref_opt, x, y)
        step(fused, opt, x, y)
    assert_same_params(fused, ref)


def test_load_state_dict_then_penalty_step_matches_torch():
    """Silent: after load_state_dict, step() treats a fused weight's .grad (an L2 penalty) as its
    whole gradient and applies weight decay and momentum a second time (0.54 relative off)."""
    x, y = data()
    ref, ref_opt, fused, opt = pair()
    ref_opt.load_state_dict(ref_opt.state_dict())
    opt.load_state_dict(opt.state_dict())
    step(ref, ref_opt, x, y, penalty=1.0)
    step(fused, opt, x, y, penalty=1.0)
    assert_same_params(fused, ref)


# ---- options changed after the backward, before step() ------------------------------------

def test_lr_set_between_backward_and_step_matches_torch():
    """adjust_learning_rate(opt, it) called after loss.backward(): torch steps with the new lr at
    step(); the in-backward update already used the old one (silent, 0.05 relative off)."""
    x, y = data()
    ref, ref_opt, fused, opt = pair()
    for i in range(3):
        for model, o in ((ref, ref_opt), (fused, opt)):
            o.zero_grad()
            nn.functional.mse_loss(model(x), y).backward()
            for group in o.param_groups:
                group["lr"] = 0.1 / (i + 2)
            try:
                o.step()
            except RuntimeError:
                assert o is opt  # a refusal at step() is a valid answer: the user is told
                return
    assert_same_params(fused, ref)


# ---- hooks on the parameters -----------------------------------------------------------------

def test_tensor_hook_on_weight_is_applied_or_refused():
    """weight.register_hook(clamp) (per-parameter gradient clipping): torch steps with the clamped
    gradient; in-backward steps with the raw one and then calls the hook with None (silent when
    the hook guards None, else AttributeError after the update)."""
    x, y = data()
    ref, ref_opt, fused, opt = pair()
    for model in (ref, fused):
        model[0].weight.register_hook(lambda g: None if g is None else g.clamp(-0.01, 0.01))
    def train(model, o):
        return lambda: [step(model, o, x, y) for _ in range(3)]
    matches_torch_or_refuses_cleanly(train(ref, ref_opt), train(fused, opt), ref, fused)


def test_post_accumulate_grad_hook_is_applied_or_refused():
    """register_post_accumulate_grad_hook that scales .grad: torch steps with the scaled gradient;
    in-backward calls the hook with p.grad None after it has already updated p (silent)."""
    x, y = data()
    ref, ref_opt, fused, opt = pair()
    for model in (ref, fused):
        def halve(p):
            if p.grad is not None:
                p.grad.mul_(0.5)
        model[0].weight.register_post_accumulate_grad_hook(halve)
    def train(model, o):
        return lambda: [step(model, o, x, y) for _ in range(3)]
    matches_torch_or_refuses_cleanly(train(ref, ref_opt), train(fused, opt), ref, fused)


# ---- zero_grad(set_to_none=False): torch keeps stepping parameters with a zero gradient -------

def test_zero_grad_keep_zeros_and_frozen_layer_matches_torch():
    """Freezing a layer mid-training with zero_grad(set_to_none=False): torch keeps a zero .grad
    and goes on applying momentum and weight decay to it; the fused weight has no .grad, so it
    stops (silent, 0.036 off)."""
    x, y = data()
    ref, ref_opt, fused, opt = pair()
    for i in range(3):
        for model, o in ((ref, ref_opt), (fused, opt)):
            if i == 1:
                model[0].weight.requires_grad_(False)
            step(model, o, x, y, set_to_none=False)
    assert_same_params(fused, ref)


def test_zero_grad_keep_zeros_and_layer_skipped_in_an_iteration_matches_torch():
    """Conditional computation (a head skipped in one iteration) with set_to_none=False: torch
    steps the skipped head with its zero .grad (momentum, weight decay); the fused one stays."""
    x, y = data()
    ref, ref_opt, fused, opt = pair()
    for i in range(3):
        for model, o in ((ref, ref_opt), (fused, opt)):
            o.zero_grad(set_to_none=False)
            hidden = model[1](model[0](x))
            out = model[2](hidden) if i != 1 else hidden[:, :3]
            nn.functional.mse_loss(out, y).backward()
            o.step()
    assert_same_params(fused, ref)


def test_no_zero_grad_matches_torch_or_refuses():
    """Without zero_grad() torch sums the gradients of successive steps; the in-backward update
    uses only the current one (silent, 2.5 off after 4 steps)."""
    x, y = data()
    ref, ref_opt, fused, opt = pair()
    def train(model, o):
        def run():
            for _ in range(4):
                nn.functional.mse_loss(model(x), y).backward()
                o.step()
        return run
    train(ref, ref_opt)()
    try:
        train(fused, opt)()
    except RuntimeError:
        return  # refused: it can only be at the second step, once the first has been applied
    assert_same_params(fused, ref)


# ---- a backward of another model's loss through the in-backward layers ---------------------

@pytest.mark.parametrize("critic_zeroed_first", [False, True], ids=["no-zero-grad", "zero-grad"])
def test_actor_loss_through_in_backward_critic_is_refused(critic_zeroed_first):
    """DDPG/GAN pattern: the actor's loss is -critic(s, actor(s)); torch accumulates the critic's
    gradient and the next critic_opt.zero_grad() discards it. In-backward cannot leave it alone:
    without a critic zero_grad() since its step the actor's backward is refused before any change;
    after one, the critic is updated in that backward and the zero_grad() that would discard the
    gradient raises instead of passing silently."""
    s, a = torch.randn(16, 4, dtype=torch.float64), torch.randn(16, 2, dtype=torch.float64)
    r = torch.randn(16, 1, dtype=torch.float64)
    torch.manual_seed(0)
    actor = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)).double()
    critic = fused_linreg.fuse(nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 1)).double())
    actor_opt = torch.optim.SGD(actor.parameters(), lr=0.1)
    critic_opt = FusedSGD(critic.parameters(), lr=0.1, in_backward=True)
    critic_opt.zero_grad()
    nn.functional.mse_loss(critic(torch.cat([s, a], 1)), r).backward()
    critic_opt.step()
    after_critic_step = snapshot(critic)
    actor_opt.zero_grad()
    if critic_zeroed_first:
        critic_opt.zero_grad()
        (-critic(torch.cat([s, actor(s)], 1)).mean()).backward()
        with pytest.raises(RuntimeError, match="zero_grad.*no step"):
            critic_opt.zero_grad()
    else:
        with pytest.raises(RuntimeError, match="without optimizer.zero_grad"):
            (-critic(torch.cat([s, actor(s)], 1)).mean()).backward()
        assert unchanged(critic, after_critic_step)


# ---- optimizer / model structure changed after construction --------------------------------

def test_parameter_removed_from_param_group():
    """opt.param_groups[0]["params"] without the first layer's weight (freeze by removing it):
    torch gives it a .grad and leaves it; in-backward raises KeyError (a weakref) from group_of,
    after the last layer was already updated."""
    x, y = data()
    ref, ref_opt, fused, opt = pair()
    step(ref, ref_opt, x, y)
    step(fused, opt, x, y)
    for model, o in ((ref, ref_opt), (fused, opt)):
        o.param_groups[0]["params"] = [p for p in o.param_groups[0]["params"] if p is not model[0].weight]
    matches_torch_or_refuses_cleanly(lambda: step(ref, ref_opt, x, y), lambda: step(fused, opt, x, y), ref, fused)


def test_bias_shared_by_two_fused_layers():
    """Two layers sharing one bias (weights distinct): the forward check only looks at weights,
    so the second layer's backward raises "second backward ... gradient accumulation" after the
    first layer's weight and the shared bias were updated."""
    x, _ = data()
    models = []
    for fused in (False, True):
        torch.manual_seed(0)
        first, second = nn.Linear(5, 7).double(), nn.Linear(7, 7).double()
        second.bias = first.bias
        if fused:
            first, second = FusedLinear.from_linear(first), FusedLinear.from_linear(second)
        models.append(nn.Sequential(first, nn.Tanh(), second))
    ref, fused = models
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.1)
    opt = FusedSGD(fused.parameters(), lr=0.1, in_backward=True)
    def train(model, o):
        return lambda: (model(x).pow(2).sum().backward(), o.step())
    matches_torch_or_refuses_cleanly(train(ref, ref_opt), train(fused, opt), ref, fused)


def test_non_contiguous_weight():
    """layer.weight = nn.Parameter(w.t()) (a transposed checkpoint, weight tying with a
    transpose): torch trains it; the first layer's backward raises "weight must be contiguous"
    after the last layer was already updated."""
    x, y = data()
    ref, fused = mlp(False), mlp(True)
    for model in (ref, fused):
        torch.manual_seed(4)
        model[0].weight = nn.Parameter(torch.randn(5, 7, dtype=torch.float64).t())
    ref_opt = torch.optim.SGD(ref.parameters(), **OPTIONS)
    opt = FusedSGD(fused.parameters(), in_backward=True, **OPTIONS)
    def train(model, o):
        return lambda: [step(model, o, x, y) for _ in range(2)]
    matches_torch_or_refuses_cleanly(train(ref, ref_opt), train(fused, opt), ref, fused)


def test_retain_graph_then_gradient_of_the_input():
    """loss.backward(retain_graph=True) then torch.autograd.grad(loss, x) (an input-gradient
    read after the training backward): torch returns x's gradient; in-backward raises autograd's
    "modified by an inplace operation" about a [3, 7] tensor, naming neither FusedSGD nor
    in_backward."""
    x = torch.randn(8, 5, dtype=torch.float64, requires_grad=True)
    ref, ref_opt, fused, opt = pair()
    grads = []
    for model in (ref, fused):
        loss = model(x).pow(2).sum()
        loss.backward(retain_graph=True)
        try:
            grads.append(torch.autograd.grad(loss, x)[0])
        except RuntimeError as e:
            assert "in_backward" in str(e), f"unclear error: {e}"
            return
    torch.testing.assert_close(grads[1], grads[0])


# ---- second red-team pass: loop orders around step(), zero_grad() and load_state_dict() -----

def test_skipped_batch_then_zero_grad_trains_like_torch():
    """A batch skipped after its forward (no backward, no step): the next iteration's zero_grad()
    forgets that forward, as torch.optim.SGD never knew of it."""
    x, y = data()
    ref, ref_opt, fused, opt = pair()
    for i in range(3):
        for model, o in ((ref, ref_opt), (fused, opt)):
            o.zero_grad()
            loss = nn.functional.mse_loss(model(x), y)
            if i == 1:
                continue  # e.g. a NaN loss
            loss.backward()
            o.step()
    assert_same_params(fused, ref)


@pytest.mark.parametrize("set_to_none", [True, False])
def test_second_step_without_backward_or_zero_grad_is_refused(set_to_none):
    """torch.optim.SGD steps again with the gradient left in .grad; the in-backward update keeps
    none, so a second step() is refused before it changes anything."""
    x, y = data()
    ref, ref_opt, fused, opt = pair()
    step(fused, opt, x, y, set_to_none=set_to_none)
    before = snapshot(fused)
    with pytest.raises(RuntimeError, match="step\\(\\) again"):
        opt.step()
    assert unchanged(fused, before)
    # After zero_grad(), a step() without backward is torch.optim.SGD's: nothing, or a step
    # with zero gradients (momentum and weight decay).
    for model, o in ((ref, ref_opt), (fused, opt)):
        if o is ref_opt:
            step(ref, ref_opt, x, y, set_to_none=set_to_none)
        o.zero_grad(set_to_none=set_to_none)
        o.step()
    assert_same_params(fused, ref)


def test_load_state_dict_between_backward_and_step_is_refused():
    x, y = data()
    ref, ref_opt, fused, opt = pair()
    step(fused, opt, x, y)
    saved = opt.state_dict()
    opt.zero_grad()
    nn.functional.mse_loss(fused(x), y).backward()
    state_before = {k: v["momentum_buffer"].clone() for k, v in opt.state_dict()["state"].items()}
    with pytest.raises(RuntimeError, match="load_state_dict"):
        opt.load_state_dict(saved)
    for k, v in opt.state_dict()["state"].items():
        assert torch.equal(v["momentum_buffer"], state_before[k])
    opt.step()
