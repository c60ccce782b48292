"""Argument checks for the fake (meta) kernels: the same rules and messages as csrc/checks.cpp,
so that meta tensors, mixed meta/real devices and torch.compile tracing reject what the real
kernels reject instead of returning a tensor of a made-up shape."""
import math

import torch


class TensorTypeError(TypeError, RuntimeError):
    """A tensor argument of the wrong dtype or layout (e.g. input and weight of different dtypes,
    a sparse tensor). A TypeError, and also a RuntimeError: what nn.Linear and torch.optim.SGD
    raise for such input, so that code catching PyTorch's errors catches these too."""


class UnsupportedDtypeError(TensorTypeError, NotImplementedError):
    """A tensor of a dtype the kernels do not implement (integer, bool, complex): a
    TensorTypeError, and a NotImplementedError as ATen's "not implemented for 'Bool'" is."""


def _check_type(cond, message, error=TensorTypeError):
    """As torch._check_type, but raising `error` rather than a plain TypeError."""
    if not cond:
        raise error(message())


_FLOATING = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
_MAX_BYTES = 2 ** 63 - 1


def _floating(op, name, t):
    _check_type(t.dtype in _FLOATING,
                lambda: f"{op}: {name} must be float32, float64, bfloat16 or float16, got {t.dtype}",
                UnsupportedDtypeError)
    _check_type(t.layout == torch.strided, lambda: f"{op}: {name} must be a dense tensor, got layout {t.layout}")


def _same(op, name, t, ref, ref_name):
    _check_type(t.dtype == ref.dtype, lambda: f"{op}: expected {name} and {ref_name} to have the "
                f"same dtype, got {t.dtype} and {ref.dtype}")
    torch._check(t.device == ref.device, lambda: f"{op}: expected {name} and {ref_name} on the same "
                 f"device, got {t.device} and {ref.device}")


def tensor_arguments(op, **arguments):
    """The TypeError F.linear's argument parser raises for an argument that is not a tensor (the
    ops' schema parser raises a RuntimeError, as for aten's ops called through torch.ops)."""
    for name, value in arguments.items():
        if not isinstance(value, torch.Tensor) and not (name == "bias" and value is None):
            raise TypeError(f"{op}(): argument '{name}' must be Tensor, not {type(value).__name__}") from None


def _concrete(*sizes):
    return all(isinstance(s, int) for s in sizes)


def linear_args(op, input, weight, bias):
    _floating(op, "input", input)
    _floating(op, "weight", weight)
    torch._check(input.dim() >= 1, lambda: f"{op}: input must have at least 1 dimension, got a 0-d tensor")
    torch._check(weight.dim() == 2, lambda: f"{op}: weight must be 2-D [out_features, in_features], got "
                 f"shape {list(weight.shape)}")
    torch._check(input.shape[-1] == weight.shape[1], lambda: (
        f"{op}: input's last dimension (shape {list(input.shape)}) must equal weight's in_features "
        f"(shape {list(weight.shape)}): {input.shape[-1]} != {weight.shape[1]}"))
    _same(op, "input", input, weight, "weight")
    out_shape = (*input.shape[:-1], weight.shape[0])
    if _concrete(*out_shape):
        n = input.element_size()
        for s in out_shape:
            n *= s
        torch._check(n <= _MAX_BYTES, lambda: (
            f"{op}: the output for input of shape {list(input.shape)} and weight of shape "
            f"{list(weight.shape)} would have more than 2^63 bytes"))
    if bias is not None:
        _floating(op, "bias", bias)
        torch._check(bias.dim() == 1 and bias.shape[0] == weight.shape[0], lambda: (
            f"{op}: bias must have shape [out_features] = [{weight.shape[0]}], got {list(bias.shape)}"))
        _same(op, "bias", bias, weight, "weight")


def linear_backward_args(grad_output, input, weight, relu_mask):
    op = "fused_linreg.linear_backward"
    linear_args(op, input, weight, None)
    _floating(op, "grad_output", grad_output)
    _same(op, "grad_output", grad_output, input, "input")
    expected = [*input.shape[:-1], weight.shape[0]]
    torch._check(list(grad_output.shape) == expected, lambda: (
        f"{op}: grad_output must have shape {expected} (input {list(input.shape)}, weight "
        f"{list(weight.shape)}), got {list(grad_output.shape)}"))
    if relu_mask is not None:
        mask_shape = [*input.shape[:-1], (weight.shape[0] + 31) // 32 * 4]
        _check_type(relu_mask.dtype == torch.uint8, lambda: f"{op}: relu_mask must be uint8, got {relu_mask.dtype}")
        torch._check(list(relu_mask.shape) == mask_shape, lambda: (
            f"{op}: relu_mask must have shape {mask_shape}, got {list(relu_mask.shape)}"))
        torch._check(relu_mask.device == input.device, lambda: (
            f"{op}: relu_mask must be on the input's device {input.device}, got {relu_mask.device}"))


def linear_backward_sgd_args(grad_output, input, weight, relu_mask, bias, weight_momentum_buffer,
                             bias_momentum_buffer, momentum):
    op = "fused_linreg.linear_backward_sgd_"
    linear_backward_args(grad_output, input, weight, relu_mask)
    linear_args(op, input, weight, bias)
    params = [("weight", weight, "weight_momentum_buffer", weight_momentum_buffer)]
    if bias is not None:
        params.append(("bias", bias, "bias_momentum_buffer", bias_momentum_buffer))
    for name, param, buf_name, buf in params:
        torch._check(param.is_contiguous(), lambda: f"{op}: {name} must be contiguous to be updated in the backward")
        if momentum != 0:
            torch._check(buf is not None, lambda: f"{op}: momentum={momentum} needs {buf_name}")
            torch._check(buf.shape == param.shape, lambda: (
                f"{op}: {buf_name} has shape {list(buf.shape)} but its parameter has shape {list(param.shape)}"))
            _same(op, buf_name, buf, param, "its parameter")
            torch._check(buf.is_contiguous(), lambda: f"{op}: {buf_name} must be contiguous")


def sgd_args(params, grads, momentum_buffers, init_momentum_buffers, momentum, grad_scale, found_inf):
    op = "fused_linreg.sgd_step_"
    torch._check(len(grads) == len(params), lambda: f"{op}: got {len(params)} params but {len(grads)} grads")
    if momentum != 0:
        torch._check(len(momentum_buffers) == len(params), lambda: (
            f"{op}: momentum={momentum} needs one momentum buffer per param: got {len(params)} params "
            f"and {len(momentum_buffers)} momentum_buffers"))
        torch._check(len(init_momentum_buffers) == len(params), lambda: (
            f"{op}: got {len(params)} params but {len(init_momentum_buffers)} init_momentum_buffers flags"))
    for i, (p, g) in enumerate(zip(params, grads)):
        _check_type(g.layout == torch.strided,
                    lambda: f"{op}: grads[{i}] is sparse; FusedSGD does not support sparse gradients")
        _floating(op, f"params[{i}]", p)
        _floating(op, f"grads[{i}]", g)
        torch._check(p.shape == g.shape, lambda: (
            f"{op}: params[{i}] has shape {list(p.shape)} but grads[{i}] has shape {list(g.shape)}"))
        _same(op, f"params[{i}]", p, g, f"grads[{i}]")
        torch._check(p.device == params[0].device, lambda: (
            f"{op}: all params must be on one device, got {params[0].device} and {p.device} (params[{i}])"))
        if momentum != 0:
            b = momentum_buffers[i]
            _floating(op, f"momentum_buffers[{i}]", b)
            torch._check(b.shape == p.shape, lambda: (
                f"{op}: momentum_buffers[{i}] has shape {list(b.shape)} but params[{i}] has shape "
                f"{list(p.shape)}"))
            _same(op, f"momentum_buffers[{i}]", b, p, f"params[{i}]")
    for t in (grad_scale, found_inf):
        if t is None or not params:
            continue
        torch._check(t.numel() == 1, lambda: (
            f"{op}: grad_scale and found_inf must have one element, got shape {list(t.shape)}"))
        torch._check(t.device == params[0].device, lambda: (
            f"{op}: grad_scale and found_inf must be on the params' device {params[0].device}, got {t.device}"))


def mlp_args(op, input, weights, biases):
    torch._check(len(weights) >= 1, lambda: f"{op}: needs at least one layer, got no weights")
    torch._check(len(biases) == len(weights), lambda: (
        f"{op}: needs one bias entry (a tensor or None) per layer: got {len(weights)} weights and "
        f"{len(biases)} biases"))
    linear_args(op, input, weights[0], biases[0])
    for i in range(1, len(weights)):
        w, prev, b = weights[i], weights[i - 1], biases[i]
        _floating(op, f"weights[{i}]", w)
        torch._check(w.dim() == 2, lambda: (
            f"{op}: weights[{i}] must be 2-D [out_features, in_features], got shape {list(w.shape)}"))
        torch._check(w.shape[1] == prev.shape[0], lambda: (
            f"{op}: weights[{i}] (shape {list(w.shape)}) must take the {prev.shape[0]} outputs of "
            f"weights[{i - 1}] (shape {list(prev.shape)})"))
        _same(op, f"weights[{i}]", w, weights[0], "weights[0]")
        if b is not None:
            _floating(op, f"biases[{i}]", b)
            torch._check(b.dim() == 1 and b.shape[0] == w.shape[0], lambda: (
                f"{op}: biases[{i}] must have shape [out_features] = [{w.shape[0]}], got {list(b.shape)}"))
            _same(op, f"biases[{i}]", b, w, f"weights[{i}]")


def mlp_kernel_dtype(op, input):
    _check_type(input.dtype in (torch.float32, torch.float64), lambda: (
        f"{op}: the CPU kernel supports float32 and float64, got {input.dtype} (FusedMLP runs "
        "other dtypes layer by layer)"), UnsupportedDtypeError)


def mlp_backward_args(grad_output, input, weights, activations, masks, has_bias):
    op = "fused_linreg.mlp_backward"
    mlp_args(op, input, weights, [None] * len(weights))
    hidden = len(weights) - 1
    torch._check(len(has_bias) == len(weights), lambda: (
        f"{op}: needs one has_bias flag per layer: got {len(weights)} weights and {len(has_bias)} flags"))
    torch._check(len(activations) == hidden and len(masks) == hidden, lambda: (
        f"{op}: needs one saved activation and mask per hidden layer ({hidden}), got "
        f"{len(activations)} and {len(masks)}; call mlp_forward with save_for_backward=True"))
    _floating(op, "grad_output", grad_output)
    _same(op, "grad_output", grad_output, input, "input")
    expected = [*input.shape[:-1], weights[-1].shape[0]]
    torch._check(list(grad_output.shape) == expected, lambda: (
        f"{op}: grad_output must have shape {expected}, got {list(grad_output.shape)}"))
    rows = math.prod(input.shape[:-1])
    for i in range(hidden):
        n = weights[i].shape[0]
        a, m = activations[i], masks[i]
        _same(op, f"activations[{i}]", a, input, "input")
        torch._check(list(a.shape) == [rows, n], lambda: (
            f"{op}: activations[{i}] must be contiguous of shape {[rows, n]}, got {list(a.shape)}"))
        _check_type(m.dtype == torch.uint8, lambda: f"{op}: masks[{i}] must be uint8, got {m.dtype}")
        torch._check(list(m.shape) == [rows, (n + 31) // 32 * 4], lambda: (
            f"{op}: masks[{i}] must be contiguous of shape {[rows, (n + 31) // 32 * 4]}, got {list(m.shape)}"))


# Argument names of each operator, for naming the sparse one.
_ARGUMENTS = {
    "linear_forward": ("input", "weight", "bias"),
    "linear_relu_forward": ("input", "weight", "bias"),
    "linear_backward": ("grad_output", "input", "weight", "relu_mask"),
    "linear_backward_sgd_": ("grad_output", "input", "weight", "relu_mask", "bias",
                             "weight_momentum_buffer", "bias_momentum_buffer"),
    "sgd_step_": ("params", "grads", "momentum_buffers"),
    "mlp_forward": ("input", "weights", "biases"),
    "mlp_backward": ("grad_output", "input", "weights", "activations", "masks"),
}


def not_dense(op_name):
    """A kernel for the sparse dispatch keys: a TensorTypeError that names the sparse argument."""
    def kernel(*args, **kwargs):
        for name, value in zip(_ARGUMENTS[op_name], args):
            items = value if isinstance(value, (list, tuple)) else [value]
            for i, t in enumerate(items):
                if isinstance(t, torch.Tensor) and t.layout != torch.strided:
                    where = f"{name}[{i}]" if isinstance(value, (list, tuple)) else name
                    if op_name == "sgd_step_" and name == "grads":
                        raise TensorTypeError(f"fused_linreg.{op_name}: {where} is sparse; FusedSGD does not "
                                        "support sparse gradients")
                    raise TensorTypeError(f"fused_linreg.{op_name}: {where} must be a dense tensor, got "
                                          f"layout {t.layout}")
        raise TensorTypeError(f"fused_linreg.{op_name}: every tensor argument must be dense (strided)")
    return kernel
