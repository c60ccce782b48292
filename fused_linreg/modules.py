"""Drop-in modules: subclasses of torch.nn.Linear, so parameters, initialization, state_dict keys
and repr are nn.Linear's."""
from typing import TypeVar

import torch
from torch import nn

from fused_linreg import functional as F

__all__ = ["FusedLinear", "FusedLinearReLU"]


_Fused = TypeVar("_Fused", bound="_FusedLinearBase")


class _FusedLinearBase(nn.Linear):
    @classmethod
    def from_linear(cls: "type[_Fused]", linear: nn.Linear) -> _Fused:
        """A fused layer that uses ``linear``'s own weight and bias Parameters (not copies), so
        optimizers and state already holding them keep working."""
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"{cls.__name__}.from_linear expects a torch.nn.Linear, got {type(linear).__name__}")
        # Built on the meta device so that no weight is allocated or initialized twice.
        module = cls(linear.in_features, linear.out_features, bias=linear.bias is not None, device="meta")
        module.weight = linear.weight
        module.bias = linear.bias
        module.train(linear.training)
        return module


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
