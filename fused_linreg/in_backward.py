"""SGD applied inside the backward: ``FusedSGD(..., in_backward=True)``.

For the weight and bias of fused layers, an ordinary ``loss.backward()`` computes grad_input with
the old weight, then lets the weight-gradient GEMM's epilogue apply SGD straight into the
parameter and its momentum buffer (torch.ops.fused_linreg.linear_backward_sgd_), so the weight
gradient is never materialised and ``.grad`` stays None. ``step()`` then updates the other
parameters, and adds what other parts of the graph put in a fused parameter's ``.grad`` (an L2
penalty, a tied embedding) to the update the backward made.

The rule: a parameter is updated in the backward only when that backward accumulates its gradient
(``loss.backward()``, or ``backward(inputs=...)`` naming it); ``torch.autograd.grad`` and
backwards that leave the parameter out get ordinary gradients and change nothing. Every parameter
steps with the options of its own param group. Setups whose answer would differ from
torch.optim.SGD are refused before any parameter changes: several processes (DDP all-reduces
gradients the backward has already applied), GradScaler (it unscales and skips steps after the
backward), two forwards of a layer before its backward (gradient accumulation, shared weights),
a backward after step() without optimizer.zero_grad() (torch would add the gradients), a second
pass through an updated graph. Parameters whose gradient hooks must run, or that the kernels
cannot write in place, get ordinary gradients. The full list: docs/in_backward.md.
"""
import gc
import weakref
from typing import List, Optional, Tuple

import torch
from torch.utils.weak import WeakIdKeyDictionary

from fused_linreg._autocast import cast_linear_args
from fused_linreg._ops import ops

# Parameter -> the InBackwardSGD controllers that claimed it (only live ones count).
_controllers: WeakIdKeyDictionary = WeakIdKeyDictionary()
# Live in-backward optimizers. A plain int, so that torch.compile folds the common case (none) to
# the ordinary path without tracing into the registry.
_live_optimizers = 0

_USE_IN_BACKWARD_FALSE = "; use FusedSGD(in_backward=False) for this setup"


def _optimizer_gone() -> None:
    global _live_optimizers
    _live_optimizers -= 1


def _owner(p: torch.Tensor) -> Optional["InBackwardSGD"]:
    """The live in-backward optimizer of ``p``, if any, forgetting the dead ones."""
    claimed = _controllers.get(p)
    if claimed is None:
        return None
    live = [c for c in claimed if c.alive()]
    if len(live) != len(claimed):
        if live:
            _controllers[p] = live
        else:
            del _controllers[p]
    if len(live) > 1:
        raise RuntimeError(
            f"FusedSGD(in_backward=True): a parameter of shape {list(p.shape)} belongs to two "
            "in-backward optimizers that are both alive, so which one updates it in the backward "
            "is ambiguous; delete the old optimizer" + _USE_IN_BACKWARD_FALSE)
    return live[0] if live else None


def controller_for(weight: torch.Tensor) -> Optional["InBackwardSGD"]:
    """The in-backward optimizer of this weight, when its forward should take the in-backward path."""
    if (_live_optimizers == 0 or not torch.is_grad_enabled() or not weight.requires_grad
            or torch._C._are_functorch_transforms_active()):
        return None
    controller = _owner(weight)
    # A weight the update kernel cannot take takes the ordinary path (step() updates it): decided
    # here, in the forward, because a refusal in the backward would come after later layers'
    # updates.
    if controller is None or controller.group_of(weight) is None or not controller.can_update(weight):
        return None
    return controller


def _has_grad_hooks(p: torch.Tensor) -> bool:
    """Whether hooks expect to see (and may change) this parameter's gradient."""
    return bool(p._backward_hooks) or bool(getattr(p, "_post_accumulate_grad_hooks", None))


def _refuse_distributed() -> None:
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        raise RuntimeError(
            f"FusedSGD(in_backward=True) with torch.distributed (world size {dist.get_world_size()}): "
            "the update would run inside this process's backward, before DistributedDataParallel "
            "or FSDP reduce the gradient across processes, so each replica would apply only its "
            "own gradient" + _USE_IN_BACKWARD_FALSE)


def _grad_scaler_in_use() -> bool:
    """Whether some torch.amp.GradScaler has scaled a loss in this process.

    A scaled loss cannot be seen from a layer's backward (the scale sits in the graph's root, which
    autograd does not expose), but the scaler that made it holds its scale from its first
    ``scale()`` call on. Scanning for scalers walks the heap, so it runs once per optimizer, at its
    first in-backward update; a scaler used only later is caught by step()."""
    scaler_types, todo = [], [torch.amp.GradScaler]
    while todo:
        t = todo.pop()
        scaler_types.append(t)
        todo.extend(t.__subclasses__())
    return any(type(obj) in scaler_types and obj.is_enabled() and getattr(obj, "_scale", None) is not None
               for t in scaler_types for obj in gc.get_referrers(t))


_GRAD_SCALER_MESSAGE = (
    "FusedSGD(in_backward=True) with torch.amp.GradScaler: the scaled gradient would be applied "
    "inside the backward, before the scaler can unscale it or skip a step with inf/NaN "
    "gradients" + _USE_IN_BACKWARD_FALSE + " (FusedSGD supports GradScaler there)")


def _sgd_options(group: dict) -> Tuple[float, float, float, float, bool, bool]:
    return (float(group["lr"]), float(group["momentum"]), float(group["dampening"]),
            float(group["weight_decay"]), bool(group["nesterov"]), bool(group["maximize"]))


class _ById:
    """A dict keyed by tensor identity that holds its keys (their optimizer holds them anyway):
    several lookups per layer and step, where WeakIdKeyDictionary makes a weak reference for each."""

    __slots__ = ("_entries",)

    def __init__(self):
        self._entries = {}

    def __contains__(self, p) -> bool:
        return id(p) in self._entries

    def __getitem__(self, p):
        return self._entries[id(p)][1]

    def get(self, p, default=None):
        entry = self._entries.get(id(p))
        return default if entry is None else entry[1]

    def __setitem__(self, p, value) -> None:
        self._entries[id(p)] = (p, value)

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self):
        return (p for p, _ in self._entries.values())

    def items(self):
        return self._entries.values()


class _PendingBackward:
    """A forward whose backward has not run yet (held by its graph: gone with it)."""

    finished = False


class InBackwardSGD:
    """The in-backward side of one FusedSGD: which parameters the backward updated since step()."""

    def __init__(self, optimizer: torch.optim.Optimizer):
        global _live_optimizers
        _refuse_distributed()
        _live_optimizers += 1
        weakref.finalize(optimizer, _optimizer_gone)
        self._optimizer = weakref.ref(optimizer)
        # Parameter -> (whether its update in the backward was its first momentum step, the
        # options it was made with).
        self._updated = _ById()
        # Parameters that torch.optim.SGD would have a .grad for (updated in a backward since the
        # last zero_grad(set_to_none=True)), and whether zero_grad() keeps zero gradients.
        self._has_grad = _ById()
        self._zero_grad_keeps_zeros = False
        self._zeroed_since_step = False
        self._pending = _ById()
        self._groups_key = None
        self._group_index = _ById()
        self._checked_grad_scaler = False
        for group in optimizer.param_groups:
            self.attach(group["params"])

    def attach(self, params) -> None:
        for p in params:
            _controllers[p] = [c for c in _controllers.get(p, []) if c.alive()] + [self]

    def alive(self) -> bool:
        return self._optimizer() is not None

    def owns(self, p: torch.Tensor) -> bool:
        """Whether this optimizer steps ``p``: claimed by it and still in one of its param groups."""
        return _owner(p) is self and self.group_of(p) is not None

    def can_update(self, p: torch.Tensor) -> bool:
        """Whether the update kernels can write ``p`` and its momentum buffer in place."""
        if not p.is_contiguous():
            return False
        buf = self._optimizer().state.get(p, {}).get("momentum_buffer")
        return buf is None or (buf.is_contiguous() and buf.dtype == p.dtype and buf.device == p.device
                               and buf.shape == p.shape)

    def updated_since_step(self, p: torch.Tensor) -> bool:
        return p in self._updated

    def reset(self) -> None:
        """Called by load_state_dict(): nothing of an earlier step is pending."""
        self._updated = _ById()
        self._pending = _ById()

    def stepped(self) -> None:
        """Called by step(): this step's in-backward updates are done."""
        self.reset()
        self._zeroed_since_step = False

    def _mark_updated(self, p: torch.Tensor, first_momentum_step: bool, group: dict) -> None:
        self._updated[p] = (first_momentum_step, _sgd_options(group))
        self._has_grad[p] = True

    # ---- zero_grad() and step() ----------------------------------------------------------------

    def refuse_pending_updates(self, what: str) -> None:
        """Raises if a backward has updated parameters that no step() has taken yet."""
        if self._updated:
            raise RuntimeError(
                f"FusedSGD(in_backward=True): {what} after a backward that already updated "
                f"{len(self._updated)} parameters inside the backward, with no step() in between. "
                "torch.optim.SGD would discard that gradient (a backward through this model for "
                "another model's loss, or a skipped step), but here it has been applied. Call "
                "step() after every backward that reaches these parameters, or run such backwards "
                "with torch.autograd.grad" + _USE_IN_BACKWARD_FALSE)

    def zero_grad(self, set_to_none: bool) -> None:
        self.refuse_pending_updates("zero_grad()")
        self._zero_grad_keeps_zeros = not set_to_none
        self._zeroed_since_step = True
        if set_to_none:
            self._has_grad = _ById()
        # A forward whose backward never came (a skipped batch) no longer blocks the next one.
        self._pending = _ById()

    def check_step(self) -> None:
        """Raises, before step() changes anything, where the backward's updates cannot be
        torch.optim.SGD's: the options of a param group changed after the backward had used them,
        or a second step() without zero_grad() would step again with the gradients torch keeps."""
        if not self._zeroed_since_step and any(p not in self._updated for p in self._has_grad):
            raise RuntimeError(
                "FusedSGD(in_backward=True): step() again without a backward through the fused "
                "layers and without optimizer.zero_grad() since the last step(): torch.optim.SGD "
                "would step them again with the gradients left in .grad, which the update inside "
                "the backward does not keep" + _USE_IN_BACKWARD_FALSE)
        for p, (_, used) in self._updated.items():
            group = self.group_of(p)
            if group is not None and _sgd_options(group) != used:
                names = ("lr", "momentum", "dampening", "weight_decay", "nesterov", "maximize")
                changed = {n: (a, b) for n, a, b in zip(names, used, _sgd_options(group)) if a != b}
                raise RuntimeError(
                    "FusedSGD(in_backward=True): options of a param group changed between the "
                    "backward and step() (" + ", ".join(f"{n} {a} -> {b}" for n, (a, b) in changed.items())
                    + "); the update inside the backward already used the old values. Change "
                    "them before the forward or after step()" + _USE_IN_BACKWARD_FALSE)

    def zero_grads_to_step(self, group: dict) -> List[torch.Tensor]:
        """Parameters of ``group`` that torch.optim.SGD would step with a zero gradient: kept by
        zero_grad(set_to_none=False) although no backward reached them this time."""
        if not self._zero_grad_keeps_zeros:
            return []
        return [p for p in group["params"]
                if p.grad is None and p in self._has_grad and p not in self._updated]

    # ---- forward and backward of the fused layers ----------------------------------------------

    def forward_started(self, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> Optional[_PendingBackward]:
        if torch._C._current_graph_task_id() != -1:
            # A forward inside a backward: activation checkpointing recomputing the layer. The
            # forward it recomputes is the one pending.
            return None
        _refuse_distributed()
        params = [weight] + ([bias] if bias is not None and self.owns(bias) else [])
        for p in params:
            previous = self._pending.get(p)
            previous = previous() if previous is not None else None
            if previous is not None and not previous.finished:
                raise RuntimeError(
                    f"FusedSGD(in_backward=True): a fused layer's {'weight' if p is weight else 'bias'} "
                    f"(shape {list(p.shape)}) is used by a second forward before the backward of the "
                    "first has run (a parameter shared by two layers, gradient accumulation over "
                    "micro-batches, or an evaluation forward outside torch.no_grad() whose output "
                    "is still alive). In-backward SGD applies each update in its own backward, so "
                    "each parameter may take part in one forward per backward; optimizer.zero_grad() "
                    "forgets a forward whose backward never came (a skipped batch)" + _USE_IN_BACKWARD_FALSE)
        pending = _PendingBackward()
        for p in params:
            self._pending[p] = weakref.ref(pending)
        return pending

    def check_can_update(self, params: List[torch.Tensor]) -> None:
        """Raises, before anything changes, for the setups the update in the backward gets wrong."""
        for p in params:
            if p in self._updated:
                raise RuntimeError(
                    "FusedSGD(in_backward=True): a second backward reached a parameter that was "
                    "already updated in an earlier backward since the last step(); gradient "
                    "accumulation over several backwards is not supported" + _USE_IN_BACKWARD_FALSE)
            if p in self._has_grad and not self._zeroed_since_step:
                raise RuntimeError(
                    "FusedSGD(in_backward=True): a backward after step() without optimizer."
                    "zero_grad() in between. torch.optim.SGD would add this gradient to the one "
                    "still in .grad; the update inside the backward cannot, and it cannot see "
                    "model.zero_grad(). Call optimizer.zero_grad() once per step" + _USE_IN_BACKWARD_FALSE)
        if not self._checked_grad_scaler:
            if _grad_scaler_in_use():
                raise RuntimeError(_GRAD_SCALER_MESSAGE)
            self._checked_grad_scaler = True

    def group_of(self, p: torch.Tensor) -> Optional[dict]:
        groups = self._optimizer().param_groups
        # load_state_dict and add_param_group replace or add group dicts: index them again then.
        key = tuple((id(g), len(g["params"])) for g in groups)
        if key != self._groups_key:
            self._group_index = _ById()
            for i, group in enumerate(groups):
                for q in group["params"]:
                    self._group_index[q] = i
            self._groups_key = key
        index = self._group_index.get(p)
        return groups[index] if index is not None else None

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

    def _step(self, p: torch.Tensor, grad: torch.Tensor, group: dict) -> None:
        buf, init = self._momentum_buffer(p, group["momentum"])
        ops.sgd_step_([p], [grad.to(p.dtype)], [buf] if buf is not None else [], [init] if buf is not None else [],
                      *_sgd_options(group))
        self._mark_updated(p, init, group)

    def update(self, grad_output, input, weight_as_computed, relu_mask, weight, bias) -> None:
        """Applies SGD to ``weight`` and/or ``bias`` (either may be None) from this layer's gradient.

        grad_output, input and weight_as_computed are in the dtype the layer computed in."""
        weight_group = self.group_of(weight) if weight is not None else None
        bias_group = self.group_of(bias) if bias is not None else None
        # The weight-gradient GEMM with the update as its epilogue, when the parameter's dtype is
        # the computed one and the CPU kernels have it (float16 on CPU computes through float32).
        in_epilogue = (weight is not None and input.dtype == weight.dtype
                       and not (weight.dtype == torch.float16 and weight.device.type == "cpu"))
        if in_epilogue:
            bias_in_epilogue = bias is not None and _sgd_options(bias_group) == _sgd_options(weight_group)
            momentum = weight_group["momentum"]
            weight_buf, init_weight = self._momentum_buffer(weight, momentum)
            bias_buf, init_bias = (self._momentum_buffer(bias, momentum) if bias_in_epilogue
                                   else (None, False))
            ops.linear_backward_sgd_(grad_output, input, weight, relu_mask,
                                     bias if bias_in_epilogue else None, weight_buf, bias_buf,
                                     init_weight, init_bias, *_sgd_options(weight_group))
            self._mark_updated(weight, init_weight, weight_group)
            if bias_in_epilogue:
                self._mark_updated(bias, init_bias, bias_group)
                bias = None
            weight = None
        if weight is None and bias is None:
            return
        # The rest from materialised gradients: autocast (gradients in a lower precision than the
        # parameters), float16 on CPU, or a bias whose param group has other options.
        _, grad_weight, grad_bias = ops.linear_backward(
            grad_output, input, weight_as_computed, relu_mask, [False, weight is not None, bias is not None])
        if weight is not None:
            self._step(weight, grad_weight, weight_group)
        if bias is not None:
            self._step(bias, grad_bias, bias_group)

    # ---- step(): the gradient that reached an updated parameter from elsewhere -----------------

    def fold_in(self, p: torch.Tensor, extra_grad: torch.Tensor, group: dict) -> None:
        """Adds ``extra_grad`` to the update the backward already applied to ``p``.

        SGD's update is linear in the gradient once weight decay (applied in the backward, on the
        old value) is taken out: the momentum buffer grows by c * g and the parameter moves by
        -lr * c * g (nesterov: -lr * (1 + momentum * c) * g), with c = 1 on the buffer's first step
        and 1 - dampening after, as torch.optim.SGD computes them."""
        lr, momentum, dampening, _, nesterov, maximize = _sgd_options(group)
        g = -extra_grad if maximize else extra_grad
        if momentum == 0:
            p.add_(g, alpha=-lr)
            return
        first_step = self._updated[p][0]
        c = 1.0 if first_step else 1.0 - dampening
        self._optimizer().state[p]["momentum_buffer"].add_(g, alpha=c)
        p.add_(g, alpha=-lr * (1.0 + momentum * c if nesterov else c))


def _engine_route(ctx, index: int) -> str:
    """What this backward does with the gradient of the Function's input ``index``: "accumulate"
    (it flows into the parameter's .grad: loss.backward()), "return" (torch.autograd.grad asked
    for this very tensor) or "skip" (not needed)."""
    node = ctx.next_functions[index][0]
    if node is None:
        return "skip"
    try:
        return "accumulate" if torch._C._will_engine_execute_node(node) else "skip"
    except RuntimeError:
        # autograd refuses the question for a leaf that torch.autograd.grad captures: the caller
        # wants this gradient returned, not applied.
        return "return"


class LinearInBackwardSGD(torch.autograd.Function):
    """A fused layer whose backward applies the in-backward optimizer to its weight and bias."""

    @staticmethod
    def forward(ctx, input, weight, bias, relu: bool, controller: InBackwardSGD):
        ctx.pending = controller.forward_started(weight, bias)
        # Under torch.autocast the layer computes in the autocast dtype, as nn.Linear does; the
        # update still goes to the parameters in their own dtype.
        x, w, b = cast_linear_args(input, weight, bias, input.device.type)
        if relu:
            output, relu_mask = ops.linear_relu_forward(x, w, b)
        else:
            output, relu_mask = ops.linear_forward(x, w, b), None
        ctx.save_for_backward(x, w, relu_mask)
        # The parameters themselves, not saved tensors: checkpointing and saved-tensor hooks
        # unpack other tensor objects, and the update must go to these.
        ctx.params = (weight, bias)
        ctx.controller = controller
        ctx.updated = False
        return output

    @staticmethod
    def backward(ctx, grad_output):
        if ctx.updated:
            raise RuntimeError(
                "FusedSGD(in_backward=True): a second backward (or torch.autograd.grad) through a "
                "graph kept with retain_graph=True, whose first backward already updated this "
                "layer's parameters: the gradients it asks for would use the new values"
                + _USE_IN_BACKWARD_FALSE)
        x, w, relu_mask = ctx.saved_tensors
        weight, bias = ctx.params
        controller = ctx.controller
        if torch.is_grad_enabled():
            # create_graph=True: the gradients must themselves be differentiable, so they are
            # returned as the ordinary layer returns them and nothing is applied.
            routes = ["return", "return", "return" if bias is not None else "skip"]
        else:
            routes = [None, _engine_route(ctx, 1), _engine_route(ctx, 2) if bias is not None else "skip"]
            for i, p in ((1, weight), (2, bias)):
                # Ordinary gradients for a parameter in another optimizer or in none, one whose
                # gradient hooks must see it, or one the kernels cannot update in place.
                if routes[i] == "accumulate" and (not controller.owns(p) or _has_grad_hooks(p)
                                                  or not controller.can_update(p)):
                    routes[i] = "return"
        update = [p for p, r in ((weight, routes[1]), (bias, routes[2])) if r == "accumulate"]
        if update:
            controller.check_can_update(update)
        wanted = [ctx.needs_input_grad[0], routes[1] == "return" and ctx.needs_input_grad[1],
                  routes[2] == "return" and ctx.needs_input_grad[2]]
        grads = [None, None, None]
        if any(wanted):  # grad_input with the weight as it was in the forward, before any update
            grads = list(ops.linear_backward(grad_output, x, w, relu_mask, wanted))
        if update:
            controller.update(grad_output, x, w, relu_mask, weight if routes[1] == "accumulate" else None,
                              bias if routes[2] == "accumulate" else None)
            ctx.updated = True
        if ctx.pending is not None and (update or not torch._C._autograd._get_current_graph_task_keep_graph()):
            ctx.pending.finished = True
        grad_weight = grads[1].to(weight.dtype) if grads[1] is not None else None
        grad_bias = grads[2].to(bias.dtype) if grads[2] is not None else None
        return grads[0], grad_weight, grad_bias, None, None
