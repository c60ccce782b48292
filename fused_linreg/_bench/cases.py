"""What the benchmark compares, and the --cases selection.

Names: a single layer is ``MxKxN`` (batch M x in_features K x out_features N: input [M, K],
weight [N, K]); an MLP training step is ``mlp-BxWxD`` (batch B, width W, depth D: D - 1
FusedLinearReLU layers and a FusedLinear, all W -> W); the GEMM against the FMA peak is ``gemm-S``
(S x S x S); the whole MLP in one operator is ``fusedmlp-BxWxD`` (FusedMLP, the same shape as
mlp-BxWxD: a training step and a forward). Any such name may be given to --cases, not only the
defaults, as may a group: layer, odd (layers of sizes that are multiples of nothing), mlp,
fusedmlp, gemm, memory, all (= layer,odd,mlp,fusedmlp,gemm).
"""
import re
from dataclasses import astuple, dataclass, field
from typing import List, Tuple

__all__ = ["LayerCase", "MlpCase", "FusedMlpCase", "GemmCase", "MemoryConfig", "default_cases", "select_cases",
           "memory_configs"]


@dataclass(frozen=True)
class LayerCase:
    """fused_linreg.functional.linear_relu against F.relu(F.linear(...)): forward, forward+backward."""

    m: int
    k: int
    n: int
    group: str = field(default="layer", compare=False)  # "odd" for the sizes of that group
    passes = ("fwd", "fwd+bwd")

    @property
    def name(self):
        return f"{self.m}x{self.k}x{self.n}"

    def flops(self, pass_):
        # The backward computes grad_input and grad_weight: two more GEMMs of the same size.
        return 2 * self.m * self.k * self.n * (3 if pass_ == "fwd+bwd" else 1)


@dataclass(frozen=True)
class MlpCase:
    """A full training step (forward, MSE loss, backward, SGD with momentum) of an MLP."""

    batch: int
    width: int
    depth: int
    group = "mlp"
    passes = ("step",)

    @property
    def name(self):
        return f"mlp-{self.batch}x{self.width}x{self.depth}"

    def flops(self, pass_):
        # Forward, grad_weight and grad_input GEMMs; the first layer needs no grad_input.
        return 2 * self.batch * self.width * self.width * (3 * self.depth - 1)


@dataclass(frozen=True)
class FusedMlpCase:
    """FusedMLP (one operator for every layer) against eager, torch.compile of the plain model and
    the per-layer fused model: a training step as MlpCase's, and an inference forward."""

    batch: int
    width: int
    depth: int
    group = "fusedmlp"
    passes = ("step", "fwd")

    @property
    def name(self):
        return f"fusedmlp-{self.batch}x{self.width}x{self.depth}"

    def flops(self, pass_):
        layer = 2 * self.batch * self.width * self.width
        return layer * (3 * self.depth - 1 if pass_ == "step" else self.depth)


@dataclass(frozen=True)
class GemmCase:
    """Our GEMM (functional.linear without bias) and torch.mm at S^3, against the FMA peak."""

    size: int
    group = "gemm"
    passes = ("fwd",)

    @property
    def name(self):
        return f"gemm-{self.size}"

    def flops(self, pass_):
        return 2 * self.size ** 3


@dataclass(frozen=True)
class MemoryConfig:
    """The memory cases: peak memory of training steps of an MLP (batch, width, depth), per momentum."""

    batch: int
    width: int
    depth: int
    steps: int  # measured steps, after one warm-up step
    momenta: Tuple[float, ...] = (0.0, 0.9)
    variants: Tuple[str, ...] = ("eager", "fused", "fused-inbwd")


_DEFAULT = {
    # Large and mid-sized layers, then the narrow and short outputs that have paths of their own:
    # the classic linear-regression example (one feature) over 10000 points, a regression head, a
    # batch of one.
    "layer": [LayerCase(4096, 1024, 1024), LayerCase(512, 256, 256), LayerCase(65536, 64, 64),
              LayerCase(64, 4096, 4096), LayerCase(100, 1, 1), LayerCase(10000, 1, 1),
              LayerCase(10000, 64, 1), LayerCase(1, 1024, 1024)],
    # Sizes that are multiples of no tile: every product ends in partial tiles (a batch of 4 rows
    # against a large weight; 20 inputs, 50 outputs over 100000 rows).
    "odd": [LayerCase(3000, 700, 1100, "odd"), LayerCase(333, 555, 777, "odd"),
            LayerCase(4, 4096, 1024, "odd"), LayerCase(100000, 20, 50, "odd")],
    "mlp": [MlpCase(2048, 1024, 3), MlpCase(4096, 256, 4), MlpCase(256, 64, 2)],
    # Issue 16's targets: a large batch of a narrow MLP, a wider and deeper one, a small batch.
    "fusedmlp": [FusedMlpCase(65536, 64, 4), FusedMlpCase(16384, 128, 6), FusedMlpCase(256, 64, 2)],
    "gemm": [GemmCase(2048)],
}
# --quick: the same code paths on tiny shapes (one per default case, alike in aspect).
_QUICK = {
    "layer": [LayerCase(64, 32, 32), LayerCase(16, 16, 16), LayerCase(512, 8, 8),
              LayerCase(4, 128, 128), LayerCase(3, 1, 1), LayerCase(300, 1, 1), LayerCase(300, 16, 1),
              LayerCase(1, 64, 64)],
    "odd": [LayerCase(30, 7, 11, "odd"), LayerCase(33, 55, 77, "odd"), LayerCase(4, 409, 102, "odd"),
            LayerCase(1000, 2, 5, "odd")],
    "mlp": [MlpCase(32, 32, 3), MlpCase(64, 16, 2)],
    "fusedmlp": [FusedMlpCase(512, 16, 3), FusedMlpCase(64, 16, 2)],
    "gemm": [GemmCase(256)],
}
_MEMORY = MemoryConfig(batch=256, width=4096, depth=8, steps=3)
_MEMORY_QUICK = MemoryConfig(batch=64, width=512, depth=3, steps=2)
# With the fusedmlp group: the memory of its first case, FusedMLP against the per-layer model.
_MLP_VARIANTS = ("eager", "fused", "fused-mlp")
_MLP_MEMORY = MemoryConfig(batch=65536, width=64, depth=4, steps=3, variants=_MLP_VARIANTS)
_MLP_MEMORY_QUICK = MemoryConfig(batch=512, width=16, depth=3, steps=2, variants=_MLP_VARIANTS)
GROUPS = ("layer", "odd", "mlp", "fusedmlp", "gemm")


def default_cases(quick: bool):
    table = _QUICK if quick else _DEFAULT
    return [case for group in GROUPS for case in table[group]]


def memory_configs(quick: bool, selected) -> List[MemoryConfig]:
    """The memory cases: the per-layer MLP's, and FusedMLP's when a fusedmlp case is selected."""
    configs = [_MEMORY_QUICK if quick else _MEMORY]
    if any(c.group == "fusedmlp" for c in selected):
        configs.append(_MLP_MEMORY_QUICK if quick else _MLP_MEMORY)
    return configs


def _parse_name(token):
    if m := re.fullmatch(r"(\d+)x(\d+)x(\d+)", token):
        return LayerCase(*map(int, m.groups()))
    if m := re.fullmatch(r"mlp-(\d+)x(\d+)x(\d+)", token):
        return MlpCase(*map(int, m.groups()))
    if m := re.fullmatch(r"fusedmlp-(\d+)x(\d+)x(\d+)", token):
        return FusedMlpCase(*map(int, m.groups()))
    if m := re.fullmatch(r"gemm-(\d+)", token):
        return GemmCase(int(m.group(1)))
    return None


def select_cases(spec: str, quick: bool) -> Tuple[List[object], bool]:
    """The cases named by a --cases value (comma-separated groups and names) in the order given,
    without repeats, and whether the memory comparison was asked for. Raises ValueError."""
    table = _QUICK if quick else _DEFAULT
    cases, memory = [], False
    for token in (t.strip() for t in spec.split(",")):
        if not token:
            continue
        if token == "memory":
            memory = True
            continue
        if token == "all":
            chosen = default_cases(quick)
        elif token in table:
            chosen = table[token]
        else:
            case = _parse_name(token)
            if case is None or 0 in astuple(case):
                raise ValueError(
                    f"--cases: unknown case {token!r}; give groups ({', '.join(GROUPS)}, memory, all) "
                    "or names like 4096x1024x1024, mlp-2048x1024x3, fusedmlp-65536x64x4, gemm-2048 (--list-cases shows "
                    "the defaults)")
            chosen = [case]
        cases += [c for c in chosen if c not in cases]
    return cases, memory
