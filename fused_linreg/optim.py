"""FusedSGD: torch.optim.SGD's interface and semantics, one kernel call per parameter group."""
from collections import defaultdict
from typing import Callable, Optional

import torch
from torch.optim.optimizer import ParamsT

from fused_linreg import _ops
from fused_linreg.in_backward import _GRAD_SCALER_MESSAGE, InBackwardSGD

__all__ = ["FusedSGD"]


class FusedSGD(torch.optim.SGD):
    """Drop-in for ``torch.optim.SGD`` (same arguments, checks, param groups, closure and
    ``state[p]['momentum_buffer']``, so checkpoints move between the two either way).

    Each parameter group is stepped by one multi-tensor kernel call per device. Works with
    ``torch.amp.GradScaler`` like ``SGD(fused=True)``: scaled gradients are unscaled inside the
    step, and a step with inf/NaN gradients changes nothing.

    >>> opt = fused_linreg.FusedSGD(model.parameters(), lr=0.01, momentum=0.9)

    ``in_backward=True`` updates the weight and bias of fused layers (FusedLinear,
    FusedLinearReLU, fused_linreg.functional) inside ``loss.backward()``, as their gradients are
    produced, without materialising the weight gradients; ``step()`` then updates the other
    parameters. See fused_linreg.in_backward for the limits.
    """

    _step_supports_amp_scaling = True

    def __init__(self, params: ParamsT, lr: float = 1e-3, momentum: float = 0,
                 dampening: float = 0, weight_decay: float = 0, nesterov: bool = False, *,
                 maximize: bool = False, foreach: Optional[bool] = None,
                 differentiable: bool = False, fused: Optional[bool] = None,
                 in_backward: bool = False) -> None:
        # foreach and fused choose among torch's implementations of the same update; every
        # FusedSGD step is one multi-tensor kernel, whatever they say. They are kept in the param
        # groups so that state_dicts stay torch.optim.SGD's.
        if differentiable:
            raise ValueError("FusedSGD does not support differentiable=True (its update is not "
                             "recorded by autograd); use torch.optim.SGD(differentiable=True)")
        self._in_backward = None
        super().__init__(params, lr=lr, momentum=momentum, dampening=dampening,
                         weight_decay=weight_decay, nesterov=nesterov, maximize=maximize,
                         foreach=foreach, differentiable=False, fused=fused)
        self._in_backward = InBackwardSGD(self) if in_backward else None

    @property
    def in_backward(self) -> bool:
        """Whether the fused layers' parameters are updated inside the backward."""
        return self._in_backward is not None

    # Not a param-group default: the state_dict format stays torch.optim.SGD's. Pickling and
    # deepcopy carry the flag; the copy gets a controller of its own, over its own parameters.
    def __getstate__(self) -> dict:
        state = super().__getstate__()
        state["in_backward"] = self.in_backward
        return state

    def __setstate__(self, state: dict) -> None:
        if "in_backward" not in state:
            # Optimizer.load_state_dict: new state and groups for this very optimizer.
            if self._in_backward is not None:
                self._in_backward.refuse_pending_updates("load_state_dict()")
            super().__setstate__(state)
            if self._in_backward is not None:
                self._in_backward.reset()
            return
        in_backward = state.pop("in_backward")
        super().__setstate__(state)
        self._in_backward = InBackwardSGD(self) if in_backward else None

    def zero_grad(self, set_to_none: bool = True) -> None:
        if self._in_backward is not None:
            self._in_backward.zero_grad(set_to_none)  # raises over updates no step() has taken
        super().zero_grad(set_to_none)

    def add_param_group(self, param_group: dict) -> None:
        super().add_param_group(param_group)  # warns about a parameter listed twice
        seen = set()
        for p in self.param_groups[-1]["params"]:
            if id(p) in seen:
                # torch.optim.SGD steps it twice, each time from the momentum buffer as it was
                # before the step; one kernel call per group cannot, so it is refused.
                del self.param_groups[-1]
                raise ValueError(f"FusedSGD: a parameter of shape {list(p.shape)} is listed twice "
                                 "in one param group; list each parameter once")
            seen.add(id(p))
        if getattr(self, "_in_backward", None) is not None:
            self._in_backward.attach(self.param_groups[-1]["params"])

    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], float]] = None) -> Optional[float]:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        grad_scale = getattr(self, "grad_scale", None)
        found_inf = getattr(self, "found_inf", None)
        if self._in_backward is not None:
            if grad_scale is not None or found_inf is not None:
                raise RuntimeError(_GRAD_SCALER_MESSAGE)
            self._in_backward.check_step()
            for group in self.param_groups:
                # torch.optim.SGD has a zero .grad for these, and steps them with it.
                for p in self._in_backward.zero_grads_to_step(group):
                    p.grad = torch.zeros_like(p)
        for group in self.param_groups:
            self._step_group(group, grad_scale, found_inf)
        if self._in_backward is not None:
            self._in_backward.stepped()
        return loss

    def _step_group(self, group, grad_scale, found_inf):
        momentum = group["momentum"]
        # Per device: params, grads, momentum buffers, first-step flags.
        batches = defaultdict(lambda: ([], [], [], []))
        for p in group["params"]:
            if p.grad is None:
                continue
            if p.grad.is_sparse:
                raise RuntimeError("FusedSGD does not support sparse gradients")
            if self._in_backward is not None and self._in_backward.updated_since_step(p):
                # Stepped inside the backward; what is in .grad came from elsewhere in the graph.
                self._in_backward.fold_in(p, p.grad, group)
                continue
            params, grads, buffers, init = batches[p.device]
            params.append(p)
            grads.append(p.grad)
            if momentum != 0:
                state = self.state[p]
                buf = state.get("momentum_buffer")
                init.append(buf is None)
                if buf is None:
                    buf = state["momentum_buffer"] = torch.empty_like(p, memory_format=torch.preserve_format)
                buffers.append(buf)
        for device, (params, grads, buffers, init) in batches.items():
            device_found_inf = None if found_inf is None else found_inf.to(device)
            _ops.sgd_step_(
                params, grads, buffers, init,
                lr=float(group["lr"]), momentum=momentum, dampening=group["dampening"],
                weight_decay=group["weight_decay"], nesterov=group["nesterov"],
                maximize=group["maximize"],
                grad_scale=None if grad_scale is None else grad_scale.to(device),
                found_inf=device_found_inf,
            )
            if any(init) and device_found_inf is not None and device_found_inf.item() != 0:
                # A skipped (inf/NaN) first step wrote nothing into the new momentum buffers:
                # drop them, so that the next step starts them as a first step would.
                for p, new in zip(params, init):
                    if new:
                        del self.state[p]["momentum_buffer"]
