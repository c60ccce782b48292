"""Functional forms, drop-in for torch.nn.functional.linear and relu(linear(...))."""
from typing import Optional

import torch

from fused_linreg import _checks
from fused_linreg._ops import ops
from fused_linreg.in_backward import LinearInBackwardSGD, controller_for

__all__ = ["linear", "linear_relu"]


def torchscript_unsupported(what: str) -> NotImplementedError:
    return NotImplementedError(
        f"{what} cannot be compiled by TorchScript (torch.jit.script): its kernels are called "
        "through Python code that TorchScript does not support. Use torch.compile(model), or "
        "torch.export.export(model, args) for a graph to save and deploy")

# The overloads themselves: calling them skips the packet's overload resolution (per-call cost).
_linear_forward = ops.linear_forward.default


def linear(input: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``input @ weight.T + bias`` over the last dim of ``input``, like ``F.linear``.

    >>> y = fused_linreg.functional.linear(x, layer.weight, layer.bias)  # same as F.linear
    """
    try:
        controller = controller_for(weight)
        if controller is not None:
            return LinearInBackwardSGD.apply(input, weight, bias, False, controller)
        return _linear_forward(input, weight, bias)
    except RuntimeError:
        _checks.tensor_arguments("linear", input=input, weight=weight, bias=bias)
        raise


def linear_relu(input: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``relu(input @ weight.T + bias)`` in one kernel, like ``F.relu(F.linear(...))``.

    Only a 1-bit-per-element ReLU mask is kept for backward, not the output (and none at all
    when no autograd graph is recorded).
    """
    try:
        controller = controller_for(weight)
        if controller is not None:
            return LinearInBackwardSGD.apply(input, weight, bias, True, controller)
        return _linear_forward(input, weight, bias, True)
    except RuntimeError:
        _checks.tensor_arguments("linear_relu", input=input, weight=weight, bias=bias)
        raise


def _refuse_torchscript(fn):
    # torch.jit.script calls a function's __prepare_scriptable__ before compiling it (also when it
    # compiles a module whose forward calls it): the one place to say why, instead of a compiler
    # error deep inside the in-backward optimizer code.
    def prepare_scriptable():
        raise torchscript_unsupported(f"fused_linreg.functional.{fn.__name__}")
    fn.__prepare_scriptable__ = prepare_scriptable


for _fn in (linear, linear_relu):
    _refuse_torchscript(_fn)
