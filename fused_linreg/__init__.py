"""fused_linreg: fused Linear+ReLU and SGD kernels (C++ and CUDA) for PyTorch training loops.

Swap ``nn.Linear`` for :class:`FusedLinear`, ``nn.Linear`` + ``nn.ReLU`` for :class:`FusedLinearReLU`
and ``torch.optim.SGD`` for :class:`FusedSGD`; results match plain PyTorch.
"""
from fused_linreg import _autocast  # noqa: F401  (registers the ops' autocast kernels)
from fused_linreg import functional
from fused_linreg._checks import TensorTypeError, UnsupportedDtypeError
from fused_linreg._ops import _C
from fused_linreg.autograd import LinearFunction, LinearReLUFunction
from fused_linreg.fuse import fuse
from fused_linreg.modules import FusedLinear, FusedLinearReLU, FusedMLP
from fused_linreg.optim import FusedSGD

__version__ = "0.1.0"

__all__ = [
    "FusedLinear",
    "FusedLinearReLU",
    "FusedMLP",
    "FusedSGD",
    "LinearFunction",
    "LinearReLUFunction",
    "TensorTypeError",
    "UnsupportedDtypeError",
    "build_info",
    "functional",
    "fuse",
    "set_cpu_isa",
]


def build_info() -> dict:
    """What this build contains: the torch version it was built against, whether CUDA kernels
    were compiled (and for which archs), and the CPU ISA paths compiled, supported and active."""
    return dict(_C.build_info())


def set_cpu_isa(name: str) -> None:
    """Use the named CPU kernels ("avx512", "avx2" or "generic") from now on; for testing and
    benchmarking. The default is the best this CPU supports (or $FUSED_LINREG_CPU_ISA)."""
    try:
        _C.set_cpu_isa(name)
    except ValueError as e:
        raise ValueError(f"{e}; supported here: {build_info()['cpu_isas_supported']}") from None
