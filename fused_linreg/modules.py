"""Drop-in modules: subclasses of torch.nn.Linear, so parameters, initialization, state_dict keys
and repr are nn.Linear's."""
from typing import TypeVar

import torch
from torch import nn
from torch.nn.utils import parametrize, prune

from fused_linreg import functional as F

__all__ = ["FusedLinear", "FusedLinearReLU"]


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
