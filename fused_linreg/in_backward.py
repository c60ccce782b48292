"""SGD applied inside the backward: ``FusedSGD(..., in_backward=True)``.

For the weight and bias of fused layers, ``loss.backward()`` computes grad_input with the old
weight, then lets the weight-gradient GEMM's epilogue apply SGD straight into the parameter and
its momentum buffer (torch.ops.fused_linreg.linear_backward_sgd_), so the weight gradient is
never materialised and ``.grad`` stays None. ``step()`` then updates only the other parameters.

Limits, raised as errors where they can be detected: one forward per parameter per backward
(no gradient accumulation over several backwards before ``step()``, no weight shared by two
layers), no ``retain_graph`` second backward. Gradient clipping and GradScaler cannot see these
gradients, so they do not apply to in-backward parameters.
"""
import weakref
from typing import Optional

import torch

from fused_linreg._autocast import cast_linear_args
from fused_linreg._ops import ops
from torch.utils.weak import WeakIdKeyDictionary

# Parameter -> the InBackwardSGD controller of the optimizer that owns it.
_controllers: WeakIdKeyDictionary = WeakIdKeyDictionary()
# Live in-backward optimizers. A plain int, so that torch.compile folds the common case (none) to
# the ordinary path without tracing into the registry.
_live_optimizers = 0


def _optimizer_gone() -> None:
    global _live_optimizers
    _live_optimizers -= 1


def controller_for(weight: torch.Tensor) -> Optional["InBackwardSGD"]:
    """The in-backward optimizer of this weight, when its forward should take the in-backward path."""
    if _live_optimizers == 0 or not torch.is_grad_enabled() or not weight.requires_grad:
        return None
    controller = _controllers.get(weight)
    if controller is not None and not controller.alive():
        del _controllers[weight]  # its optimizer is gone: ordinary gradients again
        return None
    return controller


class _PendingBackward:
    """Marks a forward whose backward (and update) has not run yet."""

    done = False


class InBackwardSGD:
    """The in-backward side of one FusedSGD: which parameters it updated since the last step()."""

    def __init__(self, optimizer: torch.optim.Optimizer):
        global _live_optimizers
        _live_optimizers += 1
        weakref.finalize(optimizer, _optimizer_gone)
        self._optimizer = weakref.ref(optimizer)
        self._updated: WeakIdKeyDictionary = WeakIdKeyDictionary()
        self._pending: WeakIdKeyDictionary = WeakIdKeyDictionary()
        for group in optimizer.param_groups:
            self.attach(group["params"])

    def attach(self, params) -> None:
        for p in params:
            owner = _controllers.get(p)
            if owner is not None and owner is not self:
                raise ValueError(
                    "FusedSGD(in_backward=True): a parameter already belongs to another in-backward "
                    "optimizer; each parameter can be updated by one optimizer in the backward"
                )
            _controllers[p] = self

    def alive(self) -> bool:
        return self._optimizer() is not None

    def updated_since_step(self, p: torch.Tensor) -> bool:
        return p in self._updated

    def reset(self) -> None:
        """Called by step(): this step's in-backward updates are done (or abandoned)."""
        self._updated = WeakIdKeyDictionary()
        self._pending = WeakIdKeyDictionary()

    def forward_started(self, weight: torch.Tensor) -> _PendingBackward:
        previous = self._pending.get(weight)
        if previous is not None and not previous.done:
            raise RuntimeError(
                "FusedSGD(in_backward=True): this fused layer's weight is used by a second forward "
                "before the backward of the first has run (a weight shared by two layers, gradient "
                "accumulation over micro-batches, or an evaluation forward outside torch.no_grad()). "
                "In-backward SGD applies each update in its own backward, so each parameter may "
                "take part in one forward per backward; use in_backward=False for these cases."
            )
        pending = _PendingBackward()
        self._pending[weight] = pending
        return pending

    def _group_of(self, p: torch.Tensor) -> dict:
        for group in self._optimizer().param_groups:
            if any(q is p for q in group["params"]):
                return group
        raise RuntimeError("FusedSGD(in_backward=True): parameter is not in any param group")

    def _momentum_buffer(self, p: torch.Tensor, momentum: float):
        """(buffer, is_new) in the optimizer's state, as torch.optim.SGD keeps it."""
        if momentum == 0:
            return None, False
        state = self._optimizer().state[p]
        buf = state.get("momentum_buffer")
        if buf is not None:
            return buf, False
        buf = state["momentum_buffer"] = torch.empty_like(p, memory_format=torch.contiguous_format)
        return buf, True

    def apply(self, grad_output, input, relu_mask, weight, bias) -> None:
        """Updates weight (and bias) in place from this layer's gradient (grad_output and input in
        the dtype the layer computed in)."""
        for p in (weight, bias):
            if p is not None and p in self._updated:
                raise RuntimeError(
                    "FusedSGD(in_backward=True): a second backward reached a parameter that was "
                    "already updated in an earlier backward since the last step(); gradient "
                    "accumulation over several backwards is not supported with in_backward=True"
                )
        group = self._group_of(weight)
        momentum = group["momentum"]
        if bias is not None and not bias.requires_grad:
            bias = None
        weight_buf, init_weight = self._momentum_buffer(weight, momentum)
        bias_buf, init_bias = self._momentum_buffer(bias, momentum) if bias is not None else (None, False)
        options = (float(group["lr"]), float(momentum), float(group["dampening"]),
                   float(group["weight_decay"]), bool(group["nesterov"]), bool(group["maximize"]))
        if input.dtype == weight.dtype:
            ops.linear_backward_sgd_(grad_output, input, weight, relu_mask, bias, weight_buf,
                                     bias_buf, init_weight, init_bias, *options)
        else:
            # Autocast: the gradients come in a lower precision than the parameters. They are
            # computed, converted to the parameters' dtype and applied; this path does
            # materialise the weight gradient.
            _, grad_weight, grad_bias = ops.linear_backward(
                grad_output, input, weight.to(input.dtype), relu_mask, [False, True, bias is not None])
            params = [weight] + ([bias] if bias is not None else [])
            grads = [grad_weight.to(weight.dtype)] + ([grad_bias.to(bias.dtype)] if bias is not None else [])
            buffers = [b for b in (weight_buf, bias_buf) if b is not None]
            ops.sgd_step_(params, grads, buffers, [init_weight, init_bias][:len(buffers)], *options)
        self._updated[weight] = True
        if bias is not None:
            self._updated[bias] = True


class LinearInBackwardSGD(torch.autograd.Function):
    """A fused layer whose backward applies the in-backward optimizer to its weight and bias."""

    @staticmethod
    def forward(ctx, input, weight, bias, relu: bool, controller: InBackwardSGD):
        ctx.pending = controller.forward_started(weight)
        # Under torch.autocast the layer computes in the autocast dtype, as nn.Linear does; the
        # update still goes to the parameters in their own dtype.
        x, w, b = cast_linear_args(input, weight, bias, input.device.type)
        if relu:
            output, relu_mask = ops.linear_relu_forward(x, w, b)
        else:
            output, relu_mask = ops.linear_forward(x, w, b), None
        ctx.save_for_backward(x, w, relu_mask, weight, bias)
        ctx.controller = controller
        return output

    @staticmethod
    def backward(ctx, grad_output):
        if ctx.pending.done:
            raise RuntimeError(
                "FusedSGD(in_backward=True): second backward through a graph whose parameters "
                "were already updated (retain_graph); not supported with in_backward=True"
            )
        x, w, relu_mask, weight, bias = ctx.saved_tensors
        grad_input = None
        if ctx.needs_input_grad[0]:  # with the weight as it was in the forward
            grad_input = ops.linear_backward(grad_output, x, w, relu_mask, [True, False, False])[0]
        ctx.controller.apply(grad_output, x, relu_mask, weight, bias)
        ctx.pending.done = True
        return grad_input, None, None, None, None
