"""``fuse(model)``: an existing model on fused_linreg's kernels, without editing its code."""
import copy
from typing import Dict, List, TypeVar

from torch import nn

from torch.nn.modules.module import _WrappedHook

from fused_linreg.modules import (FusedLinear, FusedLinearReLU, FusedMLP, bound_to_instance,
                                  computed_tensors, mlp_run_end, plain_relu, pruning_hooks)

__all__ = ["fuse"]

M = TypeVar("M", bound=nn.Module)

# Modules whose forward is exactly F.linear(x, weight, bias). Subclasses of nn.Linear are left
# alone (they may override forward, or be used only for their parameters, like
# nn.MultiheadAttention's out_proj).
_LINEARS = (nn.Linear, FusedLinear)


# Every hook dict of a Module (forward, pre, backward, with_kwargs, state_dict, ...), as this
# PyTorch version names them.
_HOOK_DICTS = tuple(name for name, value in vars(nn.Module()).items()
                    if "hook" in name and isinstance(value, dict))


def _has_hooks(module: nn.Module) -> bool:
    """Hooks that would see something else if the module were merged with its neighbour. Pruning's
    forward pre-hooks only set the masked weight, so they do not count."""
    pre_hooks = len(module._forward_pre_hooks) - len(pruning_hooks(module))
    return bool(module._forward_hooks or pre_hooks or module._backward_hooks
                or getattr(module, "_backward_pre_hooks", None))


def _fusable(module: nn.Module) -> bool:
    """A Linear whose weight and bias are Parameters (or pruned ones) and whose forward is its
    class's: from_linear carries it over."""
    return type(module) in _LINEARS and not computed_tensors(module) and not bound_to_instance(module)


def _replacement(linear: nn.Module, cls: type, memo: Dict[tuple, nn.Module]) -> nn.Module:
    """``cls.from_linear(linear)`` with linear's hooks, one per instance and class (so shared
    layers stay shared)."""
    key = (id(linear), cls)
    if key not in memo:
        fused = cls.from_linear(linear)
        # The very same hook dicts, not copies: a RemovableHandle holds a weakref to the dict it
        # removes its hook from, so handles taken before fusing keep working on the fused layer.
        for name in _HOOK_DICTS + ("_is_full_backward_hook",):
            object.__setattr__(fused, name, getattr(linear, name))
        # load_state_dict pre-hooks hold a weakref to the module they were registered on, which
        # is called with them: now the fused layer (the Linear may be collected).
        hooks = fused._load_state_dict_pre_hooks
        for hook_id, hook in hooks.items():
            if isinstance(hook, _WrappedHook) and hook.with_module and hook.module() is linear:
                hooks[hook_id] = _WrappedHook(hook.hook, fused)
        memo[key] = fused
    return memo[key]


def _mlp_runs(module: nn.Module) -> List[range]:
    """The children indices of each run Linear, ReLU, ..., Linear (at least two Linears) that a
    FusedMLP computes as one operator: FusedMLP.forward finds the same ones at every call."""
    children = list(module._modules.values())
    runs, i = [], 0
    while i < len(children):
        end = mlp_run_end(children, i)
        if end - i >= 3:
            runs.append(range(i, end))
        i = max(end, i + 1)
    return runs


def _fuse_children(module: nn.Module, memo: Dict[tuple, nn.Module], seen: set, mlp: bool) -> None:
    if id(module) in seen:
        return
    seen.add(id(module))
    names = list(module._modules)
    in_runs = set()
    # A FusedMLP's runs stay as they are, with or without mlp.
    if type(module) is FusedMLP or (mlp and type(module) is nn.Sequential):
        runs = _mlp_runs(module)
        if runs:
            # The Sequential becomes a FusedMLP in place: the same object, children, names, hooks,
            # parameters and buffers, so state_dict keys and parameter paths stay as they were.
            module.__class__ = FusedMLP
        in_runs = {i for run in runs for i in run}
    for i, name in enumerate(names):
        child = module._modules[name]
        if child is None or i in in_runs:  # a run's Linears stay plain nn.Linear for FusedMLP
            continue
        following = module._modules[names[i + 1]] if i + 1 < len(names) else None
        if (isinstance(module, nn.Sequential) and _fusable(child)
                and plain_relu(following) and not _has_hooks(child)):
            # Linear then ReLU: one FusedLinearReLU on the same Parameters; the ReLU becomes an
            # Identity so that indices and state_dict keys stay as they were.
            module._modules[name] = _replacement(child, FusedLinearReLU, memo)
            module._modules[names[i + 1]] = nn.Identity()
        elif type(child) is nn.Linear and _fusable(child):
            module._modules[name] = _replacement(child, FusedLinear, memo)
        else:
            _fuse_children(child, memo, seen, mlp)


def _deepcopy(model: M) -> M:
    """``copy.deepcopy(model)``, also of a pruned model: the masked tensors that pruning keeps as
    plain attributes are not graph leaves, which deepcopy refuses, so the copy gets them from its
    own ``<name>_orig`` and ``<name>_mask``, as its pruning hooks do before every forward."""
    pruned = [(m, hook) for m in model.modules() for hook in pruning_hooks(m)]
    memo = {id(getattr(m, hook._tensor_name)): None for m, hook in pruned}
    copied = copy.deepcopy(model, memo)
    for m, hook in pruned:
        memo[id(hook)](memo[id(m)], ())
    return copied


def fuse(model: M, inplace: bool = False, mlp: bool = False) -> M:
    """``model`` with every ``nn.Linear`` computed by fused_linreg.

    Inside every ``nn.Sequential``, an ``nn.Linear`` directly followed by an ``nn.ReLU`` becomes
    one :class:`FusedLinearReLU` (and the ReLU an ``nn.Identity``, so indices and ``state_dict``
    keys do not change); every other ``nn.Linear`` becomes a :class:`FusedLinear`. Nested
    modules are included, weights are kept, outputs are unchanged. Only modules whose type is
    exactly ``nn.Linear`` are replaced (subclasses may compute something else).

    With ``inplace=False`` (the default) ``model`` is deep-copied first and left as it was; with
    ``inplace=True`` it is changed in place and the fused layers use its own Parameters, so an
    optimizer already built over ``model.parameters()`` keeps working. A model that *is* an
    ``nn.Linear`` comes back as a new :class:`FusedLinear` (on the same Parameters when
    ``inplace=True``).

    With ``mlp=True``, an ``nn.Sequential`` holding a run Linear, ReLU, Linear, ..., Linear (at
    least two Linears, without hooks or pruning) becomes a :class:`FusedMLP`, which computes each
    such run as one operator: the same object with its class changed, so its children, names,
    parameters, buffers, hooks and ``state_dict`` keys stay as they were and checkpoints load
    either way. Its other children are fused as without ``mlp``.

    A Linear keeps its hooks; one with forward or backward hooks is not merged with its ReLU
    (they would see the ReLU's output and gradients instead of its own). With ``inplace=True``
    the fused layer shares the Linear's hook dicts, so the handles returned when the hooks were
    registered still remove them. With ``inplace=False`` the copy has copies of the hooks, as
    with ``copy.deepcopy``: the old handles remove the hooks from ``model`` only, and the
    returned model keeps firing them.

    A layer pruned with ``torch.nn.utils.prune`` is fused and stays pruned (same ``weight_orig``,
    ``weight_mask`` and pruning hook, same ``state_dict`` keys). Modules and attributes attached
    to a Linear (observers, adapters, tags) are carried over to its fused layer. A Linear whose
    weight another reparametrization computes (``weight_norm``, ``spectral_norm``, ``parametrize``)
    or whose ``forward`` was replaced on the instance is left as it is.

    >>> model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
    >>> model = fused_linreg.fuse(model)
    >>> model
    Sequential(
      (0): FusedLinearReLU(in_features=64, out_features=128, bias=True)
      (1): Identity()
      (2): FusedLinear(in_features=128, out_features=10, bias=True)
    )
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"fuse expects a torch.nn.Module, got {type(model).__name__}")
    if not inplace:
        model = _deepcopy(model)
    memo: Dict[tuple, nn.Module] = {}
    if type(model) is nn.Linear:
        return _replacement(model, FusedLinear, memo) if _fusable(model) else model
    _fuse_children(model, memo, set(), mlp)
    return model
