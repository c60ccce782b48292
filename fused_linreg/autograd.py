"""Public autograd functions: ``LinearFunction.apply(x, W, b)`` and ``LinearReLUFunction.apply(x, W, b)``.

The autograd nodes are C++ (csrc/autograd.cpp), registered as the autograd kernels of
torch.ops.fused_linreg.linear_forward / linear_relu_forward / linear_backward: these classes are
their public face, with ``torch.autograd.Function``'s calling convention. Every derivative is
defined once, there, from the same operators, so it can be differentiated again: double backward,
``torch.autograd.functional.hessian``, forward mode (``forward_ad``) and the ``torch.func``
transforms (grad, vjp, jacrev, jvp, jacfwd, hessian; vmap through fused_linreg/_ops.py's rules).
"""
from typing import Optional

import torch

from fused_linreg import _checks
from fused_linreg._ops import ops

__all__ = ["LinearFunction", "LinearReLUFunction"]


class LinearFunction:
    """``y = x @ W.T + b``; the backward saves x and W.

    >>> y = LinearFunction.apply(x, weight, bias)
    """

    @staticmethod
    def apply(input: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
        try:
            return ops.linear_forward(input, weight, bias)
        except RuntimeError:
            _checks.tensor_arguments("LinearFunction.apply", input=input, weight=weight, bias=bias)
            raise


class LinearReLUFunction:
    """``y = relu(x @ W.T + b)``; the backward saves x, W and the 1-bit ReLU mask, never y.

    >>> y = LinearReLUFunction.apply(x, weight, bias)
    """

    @staticmethod
    def apply(input: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
        try:
            return ops.linear_relu_forward(input, weight, bias)[0]
        except RuntimeError:
            _checks.tensor_arguments("LinearReLUFunction.apply", input=input, weight=weight, bias=bias)
            raise
