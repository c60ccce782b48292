"""Numerical gradient check of every fused_linreg op through its public entry points.

    python -m fused_linreg.gradcheck                 # every available device
    python -m fused_linreg.gradcheck --device cpu    # one device (cpu, cuda, cuda:1, ...)
    python -m fused_linreg.gradcheck --seed 3        # other random inputs (default seed 0)

Runs torch.autograd.gradcheck in float64 for functional.linear, functional.linear_relu,
LinearFunction, LinearReLUFunction, FusedLinear and FusedLinearReLU over shapes with the edge
cases (batch 0, 1x1x1, 1-D and 3-D input, bias=False, a non-contiguous input, split K).
ReLU's kink makes finite differences wrong within eps of 0, so the inputs are drawn such that no
pre-activation is within 1e-2 of 0 (and both signs occur). Prints one line per case and a
summary; exits non-zero when any case fails. The inputs depend only on ``--seed`` (printed in the
first and last line), so the same command checks the same inputs in every run.
"""
import argparse
import sys
import time
import zlib
from typing import Callable, List, NamedTuple, Optional, Sequence

import torch

import fused_linreg
from fused_linreg import functional

MARGIN = 1e-2  # smallest |pre-activation| allowed (gradcheck's eps is 1e-6)


class Shape(NamedTuple):
    name: str
    input_shape: tuple  # [..., in_features]
    out_features: int
    bias: bool = True
    transposed_input: bool = False  # the op sees input as a transposed (non-contiguous) view
    fast: bool = False  # gradcheck's fast mode (random projections): for the large case


SHAPES = [
    Shape("1x1x1", (1, 1), 1),
    Shape("batch0", (0, 3), 4),
    Shape("2d", (7, 9), 11),
    Shape("1d", (5,), 3),
    Shape("3d", (2, 3, 4), 5),
    Shape("nobias", (6, 5), 4, bias=False),
    Shape("noncontiguous", (6, 5), 7, transposed_input=True),
    Shape("3d_nobias", (2, 1, 3), 2, bias=False),
    Shape("splitK", (1, 2049), 2, fast=True),  # K split into slices (K >= 2048, tiny output)
]


def _module_call(cls):
    def call(x, w, b):
        module = cls(w.shape[1], w.shape[0], bias=b is not None, device="meta")
        params = {"weight": w} if b is None else {"weight": w, "bias": b}
        return torch.func.functional_call(module, params, (x,))
    return call


ENTRY_POINTS = {
    "functional.linear": (functional.linear, False),
    "functional.linear_relu": (functional.linear_relu, True),
    "LinearFunction": (lambda x, w, b: fused_linreg.LinearFunction.apply(x, w, b), False),
    "LinearReLUFunction": (lambda x, w, b: fused_linreg.LinearReLUFunction.apply(x, w, b), True),
    "FusedLinear": (_module_call(fused_linreg.FusedLinear), False),
    "FusedLinearReLU": (_module_call(fused_linreg.FusedLinearReLU), True),
}


def make_inputs(shape: Shape, device, seed: int, relu: bool):
    """float64 inputs (leaves that require grad) whose pre-activations avoid the ReLU kink."""
    g = torch.Generator().manual_seed(seed)
    K, N = shape.input_shape[-1], shape.out_features
    base_shape = shape.input_shape
    if shape.transposed_input:
        base_shape = (*shape.input_shape[:-2], shape.input_shape[-1], shape.input_shape[-2])
    for _ in range(1000):
        x = torch.randn(base_shape, generator=g, dtype=torch.float64)
        w = torch.randn(N, K, generator=g, dtype=torch.float64)
        b = torch.randn(N, generator=g, dtype=torch.float64) if shape.bias else None
        view = x.transpose(-1, -2) if shape.transposed_input else x
        pre = view @ w.T + (0 if b is None else b)
        both_signs = pre.numel() < 4 or (bool((pre > 0).any()) and bool((pre < 0).any()))
        if not relu or pre.numel() == 0 or (bool((pre.abs() >= MARGIN).all()) and both_signs):
            break
    else:
        raise RuntimeError(f"gradcheck: no inputs for {shape.name} avoid the ReLU kink")
    leaves = [t.to(device).requires_grad_() for t in (x, w, b) if t is not None]
    return leaves, pre


def case_seed(seed: int, entry: str, shape: Shape) -> int:
    """A seed of its own for every case, the same in every process (unlike hash() of a str, which
    Python salts per process)."""
    return zlib.crc32(f"{seed}/{entry}/{shape.name}".encode())


def run_case(entry: str, shape: Shape, device, seed: int = 0) -> Optional[str]:
    """None when the case passes, else the reason it failed."""
    fn, relu = ENTRY_POINTS[entry]
    leaves, pre = make_inputs(shape, device, seed=case_seed(seed, entry, shape), relu=relu)

    def f(*args):
        x, w = args[0], args[1]
        b = args[2] if shape.bias else None
        if shape.transposed_input:
            x = x.transpose(-1, -2)
            assert not x.is_contiguous()
        return fn(x, w, b)

    try:
        ok = torch.autograd.gradcheck(f, tuple(leaves), eps=1e-6, atol=1e-7, rtol=1e-5,
                                      fast_mode=shape.fast, raise_exception=True)
    except Exception as e:  # noqa: BLE001 - report every failure as one line
        return f"{type(e).__name__}: {str(e).strip().splitlines()[0][:300]}"
    if not ok:
        return "gradcheck returned False"
    return None


def available_devices() -> List[str]:
    devices = ["cpu"]
    if torch.cuda.is_available() and fused_linreg.build_info()["cuda"]:
        devices.append("cuda")
    return devices


def main(argv: Optional[Sequence[str]] = None, out: Callable[[str], None] = print) -> int:
    parser = argparse.ArgumentParser(prog="python -m fused_linreg.gradcheck", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", action="append",
                        help="device to check (repeatable; default: every available device)")
    parser.add_argument("--entry", action="append", choices=sorted(ENTRY_POINTS),
                        help="only this entry point (repeatable)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the random inputs (default: 0)")
    args = parser.parse_args(argv)
    devices = args.device or available_devices()
    for device in devices:
        try:
            torch.empty(0, device=device)
        except Exception as e:  # noqa: BLE001
            out(f"gradcheck: device {device!r} is not available here: {e}")
            return 2
    entries = args.entry or list(ENTRY_POINTS)
    out(f"gradcheck: float64, seed {args.seed}")
    passed = failed = 0
    for device in devices:
        for entry in entries:
            for shape in SHAPES:
                start = time.perf_counter()
                error = run_case(entry, shape, device, args.seed)
                took = time.perf_counter() - start
                status = "PASS" if error is None else "FAIL"
                line = (f"{status} {device:<6} {entry:<22} {shape.name:<14} input {list(shape.input_shape)} "
                        f"out_features {shape.out_features} ({took:.2f}s)")
                out(line if error is None else f"{line}\n     {error}")
                passed += error is None
                failed += error is not None
    out(f"gradcheck: {passed} passed, {failed} failed on {', '.join(map(str, devices))}, seed {args.seed}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
