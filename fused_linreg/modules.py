"""Drop-in modules: subclasses of torch.nn.Linear, so parameters, initialization, state_dict keys
and repr are nn.Linear's; and FusedMLP, an nn.Sequential of them computed as one operator."""
import numbers
from collections import OrderedDict
from typing import List, Optional, Sequence, TypeVar

import torch
from torch import nn
from torch.nn.utils import parametrize, prune

from fused_linreg import functional as F
from fused_linreg._ops import ops
from fused_linreg.in_backward import controller_for

__all__ = ["FusedLinear", "FusedLinearReLU", "FusedMLP"]


_Fused = TypeVar("_Fused", bound="_FusedLinearBase")


def pruning_hooks(module: nn.Module) -> "list[prune.BasePruningMethod]":
    """The torch.nn.utils.prune forward pre-hooks of ``module`` (they set the pruned tensor,
    ``<name>_orig * <name>_mask``, before every forward)."""
    return [h for h in module._forward_pre_hooks.values() if isinstance(h, prune.BasePruningMethod)]


def computed_tensors(linear: nn.Linear) -> "list[str]":
    """Which of weight and bias are neither a Parameter (or a None bias) nor set by pruning, but
    computed by some other reparametrization (weight_norm, spectral_norm, parametrize, ...)."""
    pruned = {hook._tensor_name for hook in pruning_hooks(linear)}
    return [name for name in ("weight", "bias") if name not in linear._parameters and name not in pruned]


def _what_is(linear: nn.Linear, name: str) -> str:
    """What ``linear``'s tensor ``name`` is instead of a Parameter, for an error message."""
    if parametrize.is_parametrized(linear, name):
        return "computed by torch.nn.utils.parametrize ({})".format(
            ", ".join(type(p).__name__ for p in linear.parametrizations[name]))
    if name in linear._buffers:
        return "a buffer"
    if name not in vars(linear):
        return "missing"
    if vars(linear)[name] is None:
        return (f"a plain attribute set to None (register_parameter({name!r}, None) is how an "
                "nn.Linear has none)")
    hooks = [type(h).__name__ for h in linear._forward_pre_hooks.values()]
    if hooks:
        return "computed by forward pre-hooks ({})".format(", ".join(hooks))
    return "a plain tensor attribute"


# What an nn.Linear holds in its instance __dict__ by itself; any other key was added to it.
_LINEAR_ATTRIBUTES = frozenset(vars(nn.Linear(1, 1, device="meta")))


def _added_attributes(linear: nn.Linear) -> "list[str]":
    return [name for name in vars(linear) if name not in _LINEAR_ATTRIBUTES]


def bound_to_instance(linear: nn.Linear) -> "list[str]":
    """The attributes of ``linear`` that a fused layer cannot take over: a ``forward`` replaced on
    the instance (the fused layer computes F.linear instead), and methods bound to ``linear``
    itself (``module.compile()``'s, an adapter's), which would keep computing with it."""
    return [name for name in _added_attributes(linear)
            if name == "forward" or getattr(vars(linear)[name], "__self__", None) is linear]


class _FusedLinearBase(nn.Linear):
    @classmethod
    def from_linear(cls: "type[_Fused]", linear: nn.Linear) -> _Fused:
        """A fused layer that uses ``linear``'s own weight and bias Parameters (not copies), so
        optimizers and state already holding them keep working.

        A Linear pruned with ``torch.nn.utils.prune`` stays pruned: the fused layer gets its
        ``weight_orig`` Parameter, ``weight_mask`` buffer and pruning forward pre-hook (the same
        objects; likewise for a pruned bias), so its ``state_dict`` keys are the Linear's and
        ``prune.remove`` works on it. Modules and attributes set on the Linear are carried over
        too (the same objects). A weight or bias that is not a Parameter (computed by another
        reparametrization: ``parametrizations.weight_norm``, ``spectral_norm``, ``parametrize``;
        or a buffer) and a ``forward`` replaced on the instance are a TypeError: ``fuse()``
        leaves such layers as they are."""
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"{cls.__name__}.from_linear expects a torch.nn.Linear, got {type(linear).__name__}")
        computed = computed_tensors(linear)
        if computed:
            what = "; ".join(f"{name} is not a Parameter but {_what_is(linear, name)}" for name in computed)
            raise TypeError(
                f"{cls.__name__}.from_linear: the Linear's {what}; only torch.nn.utils.prune is "
                "carried over. Remove the reparametrization first (e.g. "
                "torch.nn.utils.parametrize.remove_parametrizations), make it a Parameter, or keep "
                "this layer an nn.Linear")
        bound = bound_to_instance(linear)
        if bound:
            raise TypeError(
                f"{cls.__name__}.from_linear: the Linear has {', '.join(bound)} set on the instance "
                "(a replaced forward, or methods bound to it), which the fused layer would not "
                "run; keep this layer an nn.Linear")
        # Built on the meta device so that no weight is allocated or initialized twice.
        module = cls(linear.in_features, linear.out_features, bias=linear.bias is not None, device="meta")
        # The Linear's own Parameters and buffers, in its order, so that state_dict keys match
        # (with pruning: bias, weight_orig, weight_mask).
        module._parameters = dict(linear._parameters)
        module._buffers = dict(linear._buffers)
        module._non_persistent_buffers_set = set(linear._non_persistent_buffers_set)
        # Modules attached to the Linear (observers, adapters used by hooks) and attributes set on
        # it (among them the pruned tensors), so that state_dict, parameters() and hooks see them.
        module._modules = dict(linear._modules)
        for name in _added_attributes(linear):
            object.__setattr__(module, name, vars(linear)[name])
        for hook in pruning_hooks(linear):
            module.register_forward_pre_hook(hook)
        module.train(linear.training)
        return module

    def __prepare_scriptable__(self):
        # torch.jit.script calls this on every submodule before compiling anything.
        raise F.torchscript_unsupported(type(self).__name__)


class FusedLinear(_FusedLinearBase):
    """``nn.Linear`` computed by fused_linreg's kernels.

    >>> layer = fused_linreg.FusedLinear(in_features, out_features)   # was nn.Linear(...)
    """

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return F.linear(input, self.weight, self.bias)


class FusedLinearReLU(_FusedLinearBase):
    """``nn.Sequential(nn.Linear(...), nn.ReLU())`` in one kernel, with the same parameters as
    ``nn.Linear``. The backward keeps a 1-bit ReLU mask instead of the output.

    >>> layer = fused_linreg.FusedLinearReLU(in_features, out_features)
    """

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return F.linear_relu(input, self.weight, self.bias)


# The widest layer the whole-MLP kernel takes; wider networks run layer by layer (a row block of
# such activations no longer fits the caches the kernel is blocked for).
MLP_MAX_WIDTH = 256
_MLP_DTYPES = (torch.float32, torch.float64)
_mlp_forward = ops.mlp_forward.default


def _has_hooks(module: nn.Module) -> bool:
    """Hooks that run only when the module is called: FusedMLP then calls it, instead of computing
    it inside a run (pruning, weight_norm and spectral_norm set the weight in such a hook)."""
    return bool(module._forward_hooks or module._forward_pre_hooks or module._backward_hooks
                or getattr(module, "_backward_pre_hooks", None))


def _global_hooks() -> bool:
    """Hooks registered for every module (nn.modules.module.register_module_forward_hook, ...)."""
    from torch.nn.modules import module as m
    return bool(m._global_forward_hooks or m._global_forward_pre_hooks or m._global_backward_hooks
                or getattr(m, "_global_backward_pre_hooks", None))


def _computed_as(module: Optional[nn.Module], cls: type) -> bool:
    """A child that the kernels compute instead of calling it: exactly a ``cls`` (a subclass may
    change forward) with neither hooks nor a forward of its own."""
    return type(module) is cls and not _has_hooks(module) and "forward" not in vars(module)


def plain_relu(module: Optional[nn.Module]) -> bool:
    """An nn.ReLU that a fused kernel's epilogue may stand in for."""
    return _computed_as(module, nn.ReLU)


def mlp_run_end(children: Sequence[Optional[nn.Module]], start: int) -> int:
    """The end of the run Linear, ReLU, Linear, ..., Linear (chained shape to shape) that begins at
    ``children[start]``; ``start`` when no Linear begins there."""
    if not _computed_as(children[start], nn.Linear):
        return start
    end = start + 1
    while (end + 1 < len(children) and plain_relu(children[end])
           and _computed_as(children[end + 1], nn.Linear)
           and children[end + 1].in_features == children[end - 1].out_features):
        end += 2
    return end


class FusedMLP(nn.Sequential):
    """``nn.Sequential(Linear, ReLU, Linear, ReLU, ..., Linear)`` computed as one operator.

    ``sizes = [in, h1, ..., out]``: a Linear + ReLU per hidden layer and a plain Linear last. The
    module *is* that nn.Sequential (same children, initialization and RNG use, ``state_dict``
    keys, indexing); only its forward differs. It reads its children at every call: each run
    Linear, ReLU, ..., Linear of plain ``nn.Linear`` / ``nn.ReLU`` children is computed by the
    kernels, any other child (and a Linear or ReLU with hooks, e.g. pruned) is called as the
    Sequential would. A run goes through one operator (``torch.ops.fused_linreg.mlp_forward`` /
    ``mlp_backward``) on CPU, float32 / float64 and widths up to ``MLP_MAX_WIDTH``; otherwise
    (CUDA, other dtypes, autocast, torch.func transforms, torch.jit.trace, wider layers, weights
    an in-backward ``FusedSGD`` updates) through the per-layer fused kernels.

    >>> mlp = fused_linreg.FusedMLP([64, 256, 256, 10])   # was nn.Sequential(nn.Linear(64, 256), ...)
    """

    def __init__(self, sizes: Sequence[int], bias: bool = True, dtype: Optional[torch.dtype] = None,
                 device=None) -> None:
        if isinstance(sizes, OrderedDict):  # nn.Sequential's own form, which its slicing uses
            super().__init__(sizes)
            return
        sizes = [int(n) if isinstance(n, numbers.Integral) else n for n in sizes]
        if len(sizes) < 2 or not all(isinstance(n, int) and n >= 1 for n in sizes):
            raise ValueError(f"FusedMLP: sizes must be [in, hidden..., out] with at least two positive "
                             f"integers, got {sizes}")
        layers: List[nn.Module] = []
        for i in range(len(sizes) - 1):
            layers.append(nn.Linear(sizes[i], sizes[i + 1], bias=bias, dtype=dtype, device=device))
            if i + 2 < len(sizes):
                layers.append(nn.ReLU())
        super().__init__(*layers)

    @classmethod
    def from_linears(cls, linears: Sequence[nn.Linear]) -> "FusedMLP":
        """A FusedMLP over these nn.Linear modules themselves (same Parameters), a ReLU between
        each two."""
        linears = list(linears)
        if not linears:
            raise ValueError("FusedMLP.from_linears: no layers given")
        for i, lin in enumerate(linears):
            if type(lin) is not nn.Linear:
                raise TypeError(f"FusedMLP.from_linears: layer {i} is a {type(lin).__name__}, not an nn.Linear")
            if i and lin.in_features != linears[i - 1].out_features:
                raise ValueError(f"FusedMLP.from_linears: layer {i} takes {lin.in_features} features but "
                                 f"layer {i - 1} gives {linears[i - 1].out_features}")
        layers: List[nn.Module] = []
        for i, lin in enumerate(linears):
            layers.append(lin)
            if i + 1 < len(linears):
                layers.append(nn.ReLU())
        module = cls.__new__(cls)
        nn.Sequential.__init__(module, *layers)
        module.train(linears[0].training)
        return module

    def _fused_path(self, input: torch.Tensor, weights: List[torch.Tensor]) -> bool:
        return (input.device.type == "cpu" and input.dtype in _MLP_DTYPES
                and all(w.dtype == input.dtype and w.device == input.device for w in weights)
                and max(max(w.shape) for w in weights) <= MLP_MAX_WIDTH
                and not torch.is_autocast_enabled("cpu")
                and not torch._C._are_functorch_transforms_active()
                and not torch.jit.is_tracing()  # the tracer takes no Tensor?[] argument
                and all(controller_for(w) is None for w in weights))

    def _run(self, input: torch.Tensor, linears: List[nn.Linear]) -> torch.Tensor:
        weights = [lin.weight for lin in linears]
        if len(linears) > 1 and isinstance(input, torch.Tensor) and self._fused_path(input, weights):
            return _mlp_forward(input, weights, [lin.bias for lin in linears])[0]
        for lin in linears[:-1]:
            input = F.linear_relu(input, lin.weight, lin.bias)
        return F.linear(input, linears[-1].weight, linears[-1].bias)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        children = list(self._modules.values())
        called_one_by_one = _global_hooks()
        i = 0
        while i < len(children):
            end = i if called_one_by_one else mlp_run_end(children, i)
            if end == i:
                input = children[i](input)
                i += 1
            elif end == i + 1 and i + 1 < len(children) and plain_relu(children[i + 1]):
                input = F.linear_relu(input, children[i].weight, children[i].bias)  # a lone Linear+ReLU
                i += 2
            else:
                input = self._run(input, children[i:end:2])
                i = end
        return input

    def __prepare_scriptable__(self):
        raise F.torchscript_unsupported(type(self).__name__)
