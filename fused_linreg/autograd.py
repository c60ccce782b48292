"""Public autograd Functions: ``LinearFunction.apply(x, W, b)`` and ``LinearReLUFunction.apply(x, W, b)``.

They are a face over the operators: the same forward op and the same backward
(fused_linreg._ops.linear_backward) that torch.ops.fused_linreg.* carry under autograd.
"""
import torch

from fused_linreg._ops import linear_backward, ops, save_for_linear_backward

__all__ = ["LinearFunction", "LinearReLUFunction"]


class LinearFunction(torch.autograd.Function):
    """``y = x @ W.T + b``."""

    @staticmethod
    def forward(ctx, input, weight, bias=None):
        save_for_linear_backward(ctx, input, weight, bias, None)
        return ops.linear_forward(input, weight, bias)

    @staticmethod
    def backward(ctx, grad_output):
        return linear_backward(ctx, grad_output)


class LinearReLUFunction(torch.autograd.Function):
    """``y = relu(x @ W.T + b)``; saves x, W and the ReLU bitmask, never y."""

    @staticmethod
    def forward(ctx, input, weight, bias=None):
        output, relu_mask = ops.linear_relu_forward(input, weight, bias)
        save_for_linear_backward(ctx, input, weight, bias, relu_mask)
        return output

    @staticmethod
    def backward(ctx, grad_output):
        return linear_backward(ctx, grad_output)
