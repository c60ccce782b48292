"""FusedMLP and fuse(model, mlp=True) against the equivalent nn.Sequential with the same weights:
outputs and every gradient, edge widths and batch sizes, training trajectories with FusedSGD
(also in_backward=True), gradcheck, state_dict compatibility both ways, torch.compile, autocast,
determinism across runs and thread counts, and the errors of the mlp ops."""
import copy
import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.library import opcheck

import fused_linreg
from conftest import exact_randn, make_generator
from fused_linreg import FusedMLP, FusedSGD
from fused_linreg.modules import MLP_MAX_WIDTH

OPS = torch.ops.fused_linreg


def sequential(sizes, bias=True, dtype=None):
    layers = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1], bias=bias, dtype=dtype))
        if i + 2 < len(sizes):
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def exact_copy(model, seed, dtype):
    """`model` with exact weights (see conftest.exact_randn): sums in float64 are then exact in
    any order, so the fused MLP must match nn.Sequential bitwise."""
    g = make_generator(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(exact_randn(*p.shape, dtype=dtype, generator=g, span=1))
    return model


def grads_of(model, x, go):
    x = x.detach().clone().requires_grad_()
    y = model(x)
    y.backward(go)
    return y.detach(), x.grad, [p.grad for p in model.parameters()]


def grad_fn_name(model, x):
    return model(x.detach().requires_grad_()).grad_fn.name()


def test_same_initialization_and_keys_as_sequential():
    torch.manual_seed(3)
    fused = FusedMLP([7, 5, 3, 2])
    after_fused = torch.randn(3)
    torch.manual_seed(3)
    ref = sequential([7, 5, 3, 2])
    after_ref = torch.randn(3)
    assert list(fused.state_dict()) == list(ref.state_dict())
    for (name, a), b in zip(fused.state_dict().items(), ref.state_dict().values()):
        assert torch.equal(a, b), name
    assert torch.equal(after_fused, after_ref)  # the same use of the RNG
    assert FusedMLP([4, 3], bias=False, dtype=torch.float64)[0].weight.dtype == torch.float64
    assert FusedMLP([4, 3], bias=False)[0].bias is None


@pytest.mark.parametrize("sizes", [[1, 1, 1], [3, 17, 5], [17, 256, 3, 9], [8, 1, 256, 1],
                                   [64, 64, 64, 64, 64], [5, 257, 4], [257, 3, 7]])
@pytest.mark.parametrize("batch", [(0,), (1,), (37,), (2, 3, 29), (1000,), (4000,)])
def test_matches_sequential_exactly_in_float64(sizes, batch):
    ref = exact_copy(sequential(sizes, dtype=torch.float64), 0, torch.float64)
    fused = FusedMLP.from_linears([copy.deepcopy(m) for m in ref if isinstance(m, nn.Linear)])
    g = make_generator(1)
    x = exact_randn(*batch, sizes[0], dtype=torch.float64, generator=g)
    go = exact_randn(*batch, sizes[-1], dtype=torch.float64, generator=g)
    expected, actual = grads_of(ref, x, go), grads_of(fused, x, go)
    assert torch.equal(actual[0], expected[0])
    assert torch.equal(actual[1], expected[1])
    for a, e in zip(actual[2], expected[2]):
        assert torch.equal(a, e)
    fused_path = max(sizes) <= MLP_MAX_WIDTH
    assert grad_fn_name(fused, x) == ("FusedMLPBackward0" if fused_path else "FusedLinearBackward0")


@pytest.mark.parametrize("bias", [True, False])
def test_float32_random_data_within_rounding(bias):
    torch.manual_seed(0)
    ref = sequential([33, 64, 17, 10], bias=bias)
    fused = FusedMLP.from_linears([copy.deepcopy(m) for m in ref if isinstance(m, nn.Linear)])
    ref64 = copy.deepcopy(ref).double()
    x = torch.randn(517, 33)
    go = torch.randn(517, 10)
    actual, expected = grads_of(fused, x, go), grads_of(ref64, x.double(), go.double())
    flat = lambda r: [r[0], r[1], *r[2]]  # noqa: E731
    for a, e in zip(flat(actual), flat(expected)):
        assert a.dtype == torch.float32
        torch.testing.assert_close(a.double(), e, rtol=1e-4, atol=1e-4 * e.abs().max().item())


def test_mixed_biases_and_non_contiguous_input():
    ref = exact_copy(nn.Sequential(nn.Linear(6, 9, bias=False, dtype=torch.float64), nn.ReLU(),
                                   nn.Linear(9, 4, dtype=torch.float64)), 2, torch.float64)
    fused = FusedMLP.from_linears([copy.deepcopy(ref[0]), copy.deepcopy(ref[2])])
    g = make_generator(3)
    base = exact_randn(40, 13, dtype=torch.float64, generator=g)
    x = base[::2, 1:13:2]  # strided rows and columns
    assert not x.is_contiguous()
    go = exact_randn(20, 4, dtype=torch.float64, generator=g)
    expected, actual = grads_of(ref, x, go), grads_of(fused, x, go)
    for a, e in zip([actual[0], actual[1], *actual[2]], [expected[0], expected[1], *expected[2]]):
        assert torch.equal(a, e)
    assert grad_fn_name(fused, x) == "FusedMLPBackward0"
    with torch.no_grad():  # inference: no activations kept
        assert torch.equal(fused(x), expected[0])


def test_only_the_gradients_asked_for():
    fused = FusedMLP([5, 8, 3], dtype=torch.float64)
    x = torch.randn(11, 5, dtype=torch.float64, requires_grad=True)
    (gx,) = torch.autograd.grad(fused(x).sum(), [x])
    ref = sequential([5, 8, 3], dtype=torch.float64)
    ref.load_state_dict(fused.state_dict())
    x2 = x.detach().requires_grad_()
    (gx_ref,) = torch.autograd.grad(ref(x2).sum(), [x2])
    torch.testing.assert_close(gx, gx_ref, rtol=1e-12, atol=1e-12)
    assert all(p.grad is None for p in fused.parameters())
    fused[2].weight.requires_grad_(False)
    fused(x.detach()).sum().backward()
    assert fused[2].weight.grad is None and fused[0].weight.grad is not None


def test_gradcheck():
    fused = FusedMLP([4, 6, 5, 3], dtype=torch.float64)
    x = torch.randn(7, 4, dtype=torch.float64, requires_grad=True)
    params = [p for p in fused.parameters()]

    def f(x, *ps):
        ws, bs = list(ps[0::2]), list(ps[1::2])
        return OPS.mlp_forward(x, ws, bs)[0]
    assert torch.autograd.gradcheck(f, (x, *params))


def test_opcheck():
    torch.manual_seed(0)
    x = torch.randn(9, 5, requires_grad=True)
    ws = [torch.randn(7, 5, requires_grad=True), torch.randn(3, 7, requires_grad=True)]
    bs = [torch.randn(7, requires_grad=True), None]
    opcheck(OPS.mlp_forward.default, (x, ws, bs, False))
    opcheck(OPS.mlp_forward.default, (x, ws, bs, True))
    _, acts, masks = OPS.mlp_forward(x.detach(), [w.detach() for w in ws], [bs[0].detach(), None], True)
    opcheck(OPS.mlp_backward.default,
            (torch.randn(9, 3), x.detach(), [w.detach() for w in ws], acts, masks, [True, False],
             [True, True, True]))


def train(model, opt_cls, steps, data, **options):
    opt = opt_cls(model.parameters(), **options)
    for x, y in data:
        opt.zero_grad()
        F.mse_loss(model(x), y).backward()
        opt.step()
    return [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("in_backward", [False, True])
def test_training_trajectory_matches_sequential_with_sgd(in_backward):
    torch.manual_seed(0)
    ref = sequential([12, 32, 32, 32, 3], dtype=torch.float64)
    fused = FusedMLP.from_linears([copy.deepcopy(m) for m in ref if isinstance(m, nn.Linear)])
    g = torch.Generator().manual_seed(1)
    data = [(torch.randn(64, 12, generator=g, dtype=torch.float64),
             torch.randn(64, 3, generator=g, dtype=torch.float64)) for _ in range(50)]
    options = dict(lr=0.02, momentum=0.9, weight_decay=1e-3)
    expected = train(ref, torch.optim.SGD, 50, data, **options)
    actual = train(fused, FusedSGD, 50, data, in_backward=in_backward, **options)
    for a, e in zip(actual, expected):
        torch.testing.assert_close(a, e, rtol=0, atol=1e-10)


def test_in_backward_updates_the_weights_inside_the_backward():
    fused = FusedMLP([6, 8, 2], dtype=torch.float64)
    opt = FusedSGD(fused.parameters(), lr=0.1, in_backward=True)
    before = fused[0].weight.detach().clone()
    fused(torch.randn(5, 6, dtype=torch.float64)).sum().backward()
    assert not torch.equal(fused[0].weight, before)
    assert fused[0].weight.grad is None
    opt.step()


def test_deterministic_and_equal_across_thread_counts():
    torch.manual_seed(0)
    fused = FusedMLP([64, 128, 128, 10])
    x = torch.randn(3000, 64)
    go = torch.randn(3000, 10)
    threads = torch.get_num_threads()
    try:
        runs = {}
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            runs[n] = [grads_of(fused, x, go) for _ in range(2)]
    finally:
        torch.set_num_threads(threads)
    for n, (first, second) in runs.items():
        for a, b in zip([first[0], first[1], *first[2]], [second[0], second[1], *second[2]]):
            assert torch.equal(a, b), n
    one = runs[1][0]
    for n in (2, 3):
        other = runs[n][0]
        assert torch.equal(other[0], one[0]) and torch.equal(other[1], one[1])
        for a, b in zip(other[2], one[2]):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5 * b.abs().max().item())


def test_fuse_mlp_whole_sequential_and_state_dicts_both_ways():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 2))
    fused = fused_linreg.fuse(model, mlp=True)
    assert type(fused) is FusedMLP and list(fused.state_dict()) == list(model.state_dict())
    x = torch.randn(9, 6)
    torch.testing.assert_close(fused(x), model(x))
    # Without mlp=True: today's per-layer fusion.
    assert type(fused_linreg.fuse(model)[0]) is fused_linreg.FusedLinearReLU
    # A checkpoint of the plain model loads into the fused one and back.
    other = copy.deepcopy(model)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(1)
    fused.load_state_dict(other.state_dict())
    torch.testing.assert_close(fused(x), other(x))
    model.load_state_dict(fused.state_dict())
    torch.testing.assert_close(model(x), other(x))


def test_fuse_mlp_run_inside_a_longer_sequential():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(),
                          nn.Linear(8, 3), nn.Softmax(-1))
    nested = nn.Module()
    nested.body = copy.deepcopy(model)
    for m in (model, nested):
        fused = fused_linreg.fuse(m, mlp=True)
        assert list(fused.state_dict()) == list(m.state_dict())
        assert [n for n, _ in fused.named_parameters()] == [n for n, _ in m.named_parameters()]
        inner = fused if m is model else fused.body
        assert type(inner) is FusedMLP and [type(c) for c in inner] == [type(c) for c in model]
        other = copy.deepcopy(m)
        with torch.no_grad():
            for p in other.parameters():
                p.mul_(-1)
        fused.load_state_dict(other.state_dict())
        x = torch.randn(5, 3, 4)
        run = (lambda mod: mod(x)) if m is model else (lambda mod: mod.body(x))
        torch.testing.assert_close(run(fused), run(other))
        m.load_state_dict(fused.state_dict())
        torch.testing.assert_close(run(m), run(other))
        # The plain model's state_dict drives torch.func.functional_call of the fused one.
        zeros = {k: torch.zeros_like(v) for k, v in m.state_dict().items()}
        torch.testing.assert_close(torch.func.functional_call(fused, zeros, (x,)) if m is model else
                                   torch.func.functional_call(fused.body, {k[5:]: v for k, v in zeros.items()}, (x,)),
                                   torch.full((5, 3), 1 / 3))
        # A part of it reloads its own state_dict; it pickles and copies.
        inner[1:6].load_state_dict(inner[1:6].state_dict())
        buffer = io.BytesIO()
        torch.save(fused, buffer)
        buffer.seek(0)
        loaded = torch.load(buffer, weights_only=False)
        loaded.load_state_dict(copy.deepcopy(fused).state_dict())
        torch.testing.assert_close(run(loaded), run(other))


def test_fuse_mlp_keeps_a_sequentials_names_parameters_and_hooks():
    from collections import OrderedDict
    torch.manual_seed(0)
    model = nn.Sequential(OrderedDict(fc1=nn.Linear(4, 5), act=nn.ReLU(), fc2=nn.Linear(5, 3)))
    model.register_buffer("scale", torch.tensor(2.0))
    calls = []
    model.register_forward_hook(lambda *args: calls.append(1))
    fused = fused_linreg.fuse(model, mlp=True)
    assert type(fused) is FusedMLP and list(fused.state_dict()) == list(model.state_dict())
    assert fused.fc1 is fused[0] and type(fused.fc1) is nn.Linear
    x = torch.randn(7, 4)
    torch.testing.assert_close(fused(x), model(x))
    assert len(calls) == 2
    fused.load_state_dict(model.state_dict())


def test_edited_children_are_computed_as_the_sequential_would():
    torch.manual_seed(0)
    x = torch.randn(3, 4, dtype=torch.float64)
    edits = [lambda m: m.append(nn.ReLU()), lambda m: m.append(nn.Softmax(-1)),
             lambda m: m.append(nn.Linear(4, 4, dtype=torch.float64)),
             lambda m: m.__setitem__(1, nn.Tanh()), lambda m: m.insert(2, nn.Dropout(0.0)),
             lambda m: m.__setitem__(0, nn.Sequential(nn.Linear(4, 6, dtype=torch.float64))),
             lambda m: m.append(nn.ReLU()).append(nn.Linear(4, 2, dtype=torch.float64))]
    for edit in edits:
        fused = FusedMLP([4, 6, 4], dtype=torch.float64)
        ref = nn.Sequential(*[copy.deepcopy(c) for c in fused])
        edit(fused)
        edit(ref)
        ref.load_state_dict(fused.state_dict())
        torch.testing.assert_close(fused(x), ref(x), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("reparametrize", ["prune", "weight_norm", "spectral_norm"])
def test_hooked_children_train_as_in_the_sequential(reparametrize):
    from torch.nn.utils import prune
    torch.manual_seed(0)
    fused = FusedMLP([4, 6, 3], dtype=torch.float64)
    ref = nn.Sequential(*[copy.deepcopy(c) for c in fused])
    for m in (fused, ref):
        if reparametrize == "prune":
            prune.l1_unstructured(m[0], "weight", amount=0.5)
        elif reparametrize == "weight_norm":
            torch.nn.utils.weight_norm(m[0])
        else:
            torch.manual_seed(1)  # spectral_norm draws its power-iteration vectors
            torch.nn.utils.spectral_norm(m[0])
    x = torch.randn(5, 4, dtype=torch.float64)
    opts = [torch.optim.SGD(m.parameters(), lr=0.5) for m in (fused, ref)]
    for _ in range(3):
        for m, opt in zip((fused, ref), opts):
            opt.zero_grad()
            m(x).square().sum().backward()
            opt.step()
    torch.testing.assert_close(fused(x), ref(x), rtol=1e-10, atol=1e-10)


def test_fuse_mlp_inplace_keeps_parameters_and_leaves_hooked_layers():
    model = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3))
    params = list(model.parameters())
    fused = fused_linreg.fuse(model, mlp=True, inplace=True)
    assert [id(p) for p in fused.parameters()] == [id(p) for p in params]
    hooked = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3))
    hooked[2].register_forward_hook(lambda *args: None)
    out = fused_linreg.fuse(hooked, mlp=True)
    assert type(out) is nn.Sequential and type(out[0]) is fused_linreg.FusedLinearReLU


def test_torch_compile_fullgraph():
    torch._dynamo.reset()
    torch.manual_seed(0)
    fused = FusedMLP([8, 16, 16, 4])
    ref = copy.deepcopy(fused)
    compiled = torch.compile(fused, fullgraph=True)
    x = torch.randn(13, 8)
    y = compiled(x)
    y.sum().backward()
    y_ref = ref(x)
    y_ref.sum().backward()
    torch.testing.assert_close(y, y_ref)
    for a, b in zip(fused.parameters(), ref.parameters()):
        torch.testing.assert_close(a.grad, b.grad)
    torch._dynamo.reset()


def test_autocast_matches_sequential_under_autocast():
    torch.manual_seed(0)
    fused = FusedMLP([8, 16, 4])
    ref = sequential([8, 16, 4])
    ref.load_state_dict(fused.state_dict())
    x = torch.randn(6, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, y_ref = fused(x), ref(x)
    assert y.dtype == y_ref.dtype == torch.bfloat16
    torch.testing.assert_close(y, y_ref, rtol=2e-2, atol=2e-2)


def test_errors_name_shapes_and_dtypes():
    x = torch.randn(3, 4)
    w1, w2 = torch.randn(5, 4), torch.randn(2, 6)
    with pytest.raises(RuntimeError, match=r"weights\[1\] \(shape \[2, 6\]\) must take the 5 outputs"):
        OPS.mlp_forward(x, [w1, w2], [None, None])
    with pytest.raises(RuntimeError, match="one bias entry"):
        OPS.mlp_forward(x, [w1], [])
    with pytest.raises(RuntimeError, match="input's last dimension"):
        OPS.mlp_forward(torch.randn(3, 3), [w1], [None])
    with pytest.raises(NotImplementedError, match="float32 and float64, got BFloat16"):
        OPS.mlp_forward(x.bfloat16(), [w1.bfloat16()], [None])
    with pytest.raises(TypeError, match="same dtype"):
        OPS.mlp_forward(x, [w1.double()], [None])
    with pytest.raises(RuntimeError, match="save_for_backward=True"):
        OPS.mlp_backward(torch.randn(3, 2), x, [w1, torch.randn(2, 5)], [], [], [False, False],
                         [True, True, True])
    with pytest.raises(ValueError, match="sizes"):
        FusedMLP([4])
    with pytest.raises(ValueError, match="sizes"):
        FusedMLP([4, 0, 2])
    fused = FusedMLP([4, 5, 2])
    with pytest.raises(RuntimeError, match="must equal weight's in_features"):
        fused(torch.randn(3, 7))


def test_double_backward_and_forward_mode_are_refused_clearly():
    fused = FusedMLP([4, 5, 2], dtype=torch.float64)
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    (gx,) = torch.autograd.grad(fused(x).sum(), [x], create_graph=True)
    with pytest.raises(RuntimeError, match="differentiable once"):
        gx.sum().backward()
    ws, bs = [fused[0].weight, fused[2].weight], [fused[0].bias, fused[2].bias]
    with torch.autograd.forward_ad.dual_level():
        dual = torch.autograd.forward_ad.make_dual(x.detach(), torch.ones_like(x))
        with pytest.raises(RuntimeError, match="forward-mode AD"):
            OPS.mlp_forward(dual, ws, bs)


def test_torch_func_runs_layer_by_layer():
    fused = FusedMLP([4, 5, 2], dtype=torch.float64)
    ref = sequential([4, 5, 2], dtype=torch.float64)
    ref.load_state_dict(fused.state_dict())
    x, t = torch.randn(3, 4, dtype=torch.float64), torch.randn(3, 4, dtype=torch.float64)
    out, tangent = torch.func.jvp(fused, (x,), (t,))
    out_ref, tangent_ref = torch.func.jvp(ref, (x,), (t,))
    torch.testing.assert_close(out, out_ref)
    torch.testing.assert_close(tangent, tangent_ref)
    torch.testing.assert_close(torch.func.jacrev(fused)(x[0]), torch.func.jacrev(ref)(x[0]))


def test_fuse_leaves_a_fused_mlp_as_it_is():
    mlp = FusedMLP([4, 5, 2])
    model = nn.Sequential(mlp, nn.ReLU(), nn.Linear(2, 3))
    for fused in (fused_linreg.fuse(model), fused_linreg.fuse(model, mlp=True)):
        assert type(fused[0]) is FusedMLP
        assert [type(m) for m in fused[0]] == [nn.Linear, nn.ReLU, nn.Linear]
    assert type(fused_linreg.fuse(mlp, mlp=True)) is FusedMLP


def test_other_dtypes_run_layer_by_layer():
    torch.manual_seed(0)
    fused = FusedMLP([8, 16, 4], dtype=torch.bfloat16)
    ref = sequential([8, 16, 4], dtype=torch.bfloat16)
    ref.load_state_dict(fused.state_dict())
    x = torch.randn(6, 8, dtype=torch.bfloat16)
    torch.testing.assert_close(fused(x), ref(x), rtol=2e-2, atol=2e-2)
    assert grad_fn_name(fused, x) == "FusedLinearBackward0"


@pytest.mark.skipif(not (torch.cuda.is_available() and fused_linreg.build_info()["cuda"]),
                    reason="needs a CUDA device and a CUDA build")
def test_cuda_runs_the_per_layer_kernels():
    torch.manual_seed(0)
    fused = FusedMLP([8, 16, 4]).cuda()
    ref = sequential([8, 16, 4]).cuda()
    ref.load_state_dict(fused.state_dict())
    x = torch.randn(6, 8, device="cuda")
    torch.testing.assert_close(fused(x), ref(x))
    with pytest.raises(NotImplementedError, match="no CUDA kernel"):
        OPS.mlp_forward(x, [fused[0].weight], [None])


def _ops_called(fn):
    with torch.autograd.profiler.profile() as prof:
        fn()
    return {e.name for e in prof.function_events if e.name.startswith("fused_linreg::")}


def test_runs_go_through_the_mlp_operator():
    torch.manual_seed(0)
    x = torch.randn(6, 12)
    mlp = FusedMLP([12, 8, 8, 3])
    assert "fused_linreg::mlp_forward" in _ops_called(lambda: mlp(x).sum().backward())
    model = fused_linreg.fuse(nn.Sequential(nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(),
                                            nn.Linear(8, 3), nn.Softmax(-1)), mlp=True)
    called = _ops_called(lambda: model(x).sum().backward())
    assert {"fused_linreg::mlp_forward", "fused_linreg::mlp_backward"} <= called
    # A lone Linear + ReLU still runs fused, per layer.
    single = FusedMLP.from_linears([nn.Linear(12, 8)]).append(nn.ReLU())
    assert "fused_linreg::linear_forward" in _ops_called(lambda: single(x))


def test_jit_trace_runs_layer_by_layer():
    torch.manual_seed(0)
    mlp = FusedMLP([4, 5, 3])
    traced = torch.jit.trace(mlp, torch.randn(2, 4))
    y = torch.randn(6, 4)
    torch.testing.assert_close(traced(y), mlp(y))


def test_a_relu_with_its_own_forward_is_called():
    torch.manual_seed(0)
    x = torch.randn(5, 4, dtype=torch.float64)
    model = nn.Sequential(nn.Linear(4, 6, dtype=torch.float64), nn.ReLU(), nn.Linear(6, 3, dtype=torch.float64))
    model[1].forward = torch.abs
    for fused in (fused_linreg.fuse(model, mlp=True), fused_linreg.fuse(model)):
        torch.testing.assert_close(fused(x), model(x), rtol=1e-12, atol=1e-12)
    lone = FusedMLP.from_linears([nn.Linear(4, 6, dtype=torch.float64)]).append(nn.ReLU())
    lone[1].forward = torch.abs
    torch.testing.assert_close(lone(x), lone[1](lone[0](x)))


def test_legacy_batched_gradients_get_a_clear_error():
    mlp = FusedMLP([4, 5, 3])
    x = torch.randn(2, 4, requires_grad=True)
    y = mlp(x)
    with pytest.raises(RuntimeError, match="cannot be batched by PyTorch's legacy vmap"):
        torch.autograd.grad(y, x, torch.randn(7, 2, 3), is_grads_batched=True)
