"""What the backward keeps alive: input, weight and the 1-bit ReLU mask, never the output."""
import pytest
import torch

import fused_linreg


class SavedTensors(torch.autograd.graph.saved_tensors_hooks):
    def __init__(self):
        self.saved = []
        super().__init__(self._pack, lambda t: t)

    def _pack(self, t):
        self.saved.append(t)
        return t


def _storage(t):
    return t.untyped_storage().data_ptr()


PATHS = {
    "module": lambda x, w, b: _module(x, w, b),
    "functional": lambda x, w, b: fused_linreg.functional.linear_relu(x, w, b),
    "op": lambda x, w, b: torch.ops.fused_linreg.linear_relu_forward(x, w, b)[0],
    "LinearReLUFunction": lambda x, w, b: fused_linreg.LinearReLUFunction.apply(x, w, b),
}


def _module(x, w, b):
    mod = fused_linreg.FusedLinearReLU(w.shape[1], w.shape[0], device=w.device)
    mod.weight, mod.bias = w, b
    return mod(x)


@pytest.mark.parametrize("x_requires_grad", [True, False])
@pytest.mark.parametrize("path", sorted(PATHS))
def test_linear_relu_saves_input_weight_and_bitmask_only(path, x_requires_grad, device):
    M, K, N = 37, 19, 70
    x = torch.randn(M, K, device=device).requires_grad_(x_requires_grad)
    w = torch.nn.Parameter(torch.randn(N, K, device=device))
    b = torch.nn.Parameter(torch.randn(N, device=device))
    hooks = SavedTensors()
    with hooks:
        y = PATHS[path](x, w, b)
    saved = [t for t in hooks.saved if t is not None]
    # Never the output (nor anything sharing its memory).
    assert all(_storage(t) != _storage(y) for t in saved), "the output is saved for backward"
    # Exactly: the input, the weight, and a uint8 bitmask of ceil(N/32)*4 bytes per row.
    by_storage = {_storage(t): t for t in saved}
    assert _storage(x) in by_storage, "input not saved"
    assert _storage(w) in by_storage, "weight not saved"
    masks = [t for t in saved if t.dtype == torch.uint8]
    assert len(masks) == 1 and masks[0].shape == (M, (N + 31) // 32 * 4)
    assert set(by_storage) == {_storage(x), _storage(w), _storage(masks[0])}, \
        [(t.shape, t.dtype) for t in saved]
    saved_bytes = sum(t.numel() * t.element_size() for t in by_storage.values())
    assert saved_bytes == (M * K + N * K) * 4 + M * ((N + 31) // 32 * 4)
    assert saved_bytes < (M * K + N * K + M * N) * 4  # less than input + weight + output
    # And the backward still works from what was saved.
    y.sum().backward()
    assert w.grad is not None and b.grad is not None


def test_linear_saves_input_and_weight_only():
    x = torch.randn(5, 3, requires_grad=True)
    w = torch.nn.Parameter(torch.randn(4, 3))
    for fn in (lambda: fused_linreg.functional.linear(x, w), lambda: fused_linreg.LinearFunction.apply(x, w)):
        hooks = SavedTensors()
        with hooks:
            y = fn()
        saved = {_storage(t) for t in hooks.saved if t is not None}
        assert saved == {_storage(x), _storage(w)}
        assert _storage(y) not in saved


def test_saved_tensors_freed_after_backward():
    """Once the backward ran, the graph no longer holds the saved tensors (nothing leaks)."""
    import weakref
    x = torch.randn(8, 6, requires_grad=True)
    w = torch.nn.Parameter(torch.randn(5, 6))
    hooks = SavedTensors()
    with hooks:
        y = fused_linreg.functional.linear_relu(x, w)
    mask_ref = weakref.ref([t for t in hooks.saved if t.dtype == torch.uint8][0])
    hooks.saved.clear()
    y.sum().backward()
    del y
    assert mask_ref() is None


def test_backward_makes_no_gradient_for_the_mask():
    # The mask is a non-differentiable output of the node: the engine must not allocate and zero
    # a gradient of its shape before calling the backward (it did, once per layer and step).
    x = torch.randn(64, 40, requires_grad=True)
    w = torch.randn(24, 40, requires_grad=True)
    b = torch.randn(24, requires_grad=True)
    y = fused_linreg.functional.linear_relu(x, w, b)
    grad = torch.randn_like(y)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        y.backward(grad)
    ops = {e.key for e in prof.key_averages()}
    assert "fused_linreg::linear_backward" in ops
    assert not ops & {"aten::zeros", "aten::zero_", "aten::fill_"}, sorted(ops)
