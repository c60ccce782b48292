"""Autocast kernels for the forward operators, so that under ``torch.autocast`` the fused layers
compute in the autocast dtype exactly where ``nn.Linear`` would.

``torch.library.register_autocast`` fixes the target dtype when the kernel is registered; these
kernels read it when they run (``torch.get_autocast_dtype``), so ``torch.autocast("cuda",
dtype=torch.bfloat16)`` gives bfloat16 like it does for ``F.linear``. As in ATen's autocast, only
floating-point tensors on the autocast device that are not float64 are cast. The casts are
ordinary differentiable ops recorded before the operator's autograd, so the backward runs in the
autocast dtype and the parameters' gradients come back in the parameters' own dtype.

``linear_backward`` and ``sgd_step_`` get no autocast kernel: they run in the dtypes they are given.
"""
from typing import Callable, Optional, Tuple

import torch

from fused_linreg._ops import FORWARD_OPS, ops

__all__ = ["autocast_dtype", "cast_linear_args"]

# Device types whose autocast dispatch keys the forward ops get a kernel for.
_AUTOCAST_KEYS = {"cpu": "AutocastCPU", "cuda": "AutocastCUDA"}

_lib = torch.library.Library("fused_linreg", "IMPL")


def autocast_dtype(device_type: str) -> Optional[torch.dtype]:
    """The dtype autocast computes linear layers in on ``device_type``, or None when it is off."""
    if not torch.is_autocast_enabled(device_type):
        return None
    return torch.get_autocast_dtype(device_type)


def _cast(t: Optional[torch.Tensor], device_type: str, dtype: torch.dtype) -> Optional[torch.Tensor]:
    eligible = (t is not None and t.is_floating_point() and t.device.type == device_type
                and t.dtype != torch.float64)
    return t.to(dtype) if eligible else t


def cast_linear_args(input: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                     device_type: str) -> Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
    """(input, weight, bias) as autocast would hand them to ``F.linear`` on ``device_type``."""
    dtype = autocast_dtype(device_type)
    if dtype is None:
        return input, weight, bias
    return tuple(_cast(t, device_type, dtype) for t in (input, weight, bias))


def _autocast_kernel(op: Callable, device_type: str) -> Callable:
    def kernel(input, weight, bias=None, *flags):
        input, weight, bias = cast_linear_args(input, weight, bias, device_type)
        # Autocast off for the call itself (as ATen's autocast wrappers exclude their key), so
        # the op goes on to autograd and the device kernel.
        with torch.autocast(device_type, enabled=False):
            return op(input, weight, bias, *flags)

    return kernel


for _name in FORWARD_OPS:
    for _device_type, _key in _AUTOCAST_KEYS.items():
        _lib.impl(_name, _autocast_kernel(getattr(ops, _name).default, _device_type), _key)
