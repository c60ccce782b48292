"""``python -m fused_linreg.demo``: the classic PyTorch linear-regression example, trained twice on
the same data from the same initial weights: with plain PyTorch (``nn.Linear`` + ``torch.optim.SGD``)
and with fused_linreg (``FusedLinear`` + ``FusedSGD``). Prints both losses, both times and the learned w, b.

The model, loss, optimizer and loop are those of that example (a ``LinearRegressionModel`` holding
one linear layer, ``MSELoss``, ``SGD(lr=0.01)``, full-batch steps), on synthetic data
``y = 2x + 1 + noise``.
"""
import argparse
import copy
import time
from typing import Dict, List, Optional, Sequence, Tuple, Type

import torch
from torch import nn

import fused_linreg
from fused_linreg import FusedLinear, FusedSGD
from fused_linreg._text import help_description

__all__ = ["LinearRegressionModel", "make_data", "train_step", "train", "main"]


class LinearRegressionModel(nn.Module):
    """The classic example's model: ``out = linear(x)``. ``linear`` is the layer class, ``nn.Linear``
    there; pass ``fused_linreg.FusedLinear`` for the fused kernels (nothing else changes)."""

    def __init__(self, input_dim: int, output_dim: int, linear: Type[nn.Linear] = nn.Linear):
        super().__init__()
        self.linear = linear(input_dim, output_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)


def make_data(samples: int, seed: int = 0) -> Tuple[torch.Tensor, torch.Tensor]:
    """``x`` uniform in [0, 10), ``y = 2x + 1`` plus Gaussian noise (std 0.1); shapes [samples, 1]."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(samples, 1, generator=g) * 10
    y = 2 * x + 1 + 0.1 * torch.randn(samples, 1, generator=g)
    return x, y


criterion = nn.MSELoss()  # the example's loss


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, inputs: torch.Tensor,
               labels: torch.Tensor) -> torch.Tensor:
    """One step of the example's training loop (full batch). Returns the loss."""
    optimizer.zero_grad()
    outputs = model(inputs)
    loss = criterion(outputs, labels)
    loss.backward()
    optimizer.step()
    return loss.detach()


def train(runs: Dict[str, Tuple[nn.Module, torch.optim.Optimizer]], inputs: torch.Tensor,
          labels: torch.Tensor, epochs: int) -> Dict[str, Tuple[List[float], float]]:
    """Trains every (model, optimizer) of ``runs`` for ``epochs`` with :func:`train_step`,
    interleaved epoch by epoch so that a busy machine slows all of them alike. Returns
    {name: (loss per epoch, seconds spent in that run's steps)}."""
    losses = {name: torch.empty(epochs) for name in runs}
    seconds = dict.fromkeys(runs, 0.0)
    for epoch in range(epochs):
        for name, (model, optimizer) in runs.items():
            start = time.perf_counter()
            loss = train_step(model, optimizer, inputs, labels)
            seconds[name] += time.perf_counter() - start
            losses[name][epoch] = loss  # no .item(): no sync inside the timed step
    return {name: (losses[name].tolist(), seconds[name]) for name in runs}


def _parse(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m fused_linreg.demo", description=help_description(__doc__))
    p.add_argument("--epochs", type=int, default=1000, help="full-batch steps (default 1000)")
    p.add_argument("--samples", type=int, default=10000, help="data points (default 10000)")
    p.add_argument("--lr", type=float, default=0.01, help="SGD learning rate (default 0.01, as in the example)")
    p.add_argument("--log-every", type=int, default=100, help="print the losses every N epochs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, help="CPU threads (default: torch's default)")
    return p.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> dict:
    args = _parse(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    info, threads = fused_linreg.build_info(), torch.get_num_threads()
    print(f"fused_linreg {fused_linreg.__version__} on torch {torch.__version__} "
          f"(CPU kernels: {info['cpu_isa_active']}, {threads} thread{'s' if threads != 1 else ''})")
    print(f"LinearRegressionModel(1, 1), MSELoss, SGD(lr={args.lr}), {args.epochs} full-batch epochs "
          f"on y = 2x + 1 + noise ({args.samples} points)\n")

    inputs, labels = make_data(args.samples, args.seed)
    torch.manual_seed(args.seed)
    plain = LinearRegressionModel(1, 1)                          # nn.Linear
    fused = LinearRegressionModel(1, 1, linear=FusedLinear)      # the only change to the model
    fused.load_state_dict(plain.state_dict())                    # same initial w, b
    w0, b0 = plain.linear.weight.item(), plain.linear.bias.item()
    runs = {
        "plain PyTorch": (plain, torch.optim.SGD(plain.parameters(), lr=args.lr)),
        "fused_linreg": (fused, FusedSGD(fused.parameters(), lr=args.lr)),
    }
    # Warm up both paths (first-call allocations, lazy init) on throwaway copies.
    warm = {n: copy.deepcopy(m) for n, (m, _) in runs.items()}
    train({n: (m, type(runs[n][1])(m.parameters(), lr=args.lr)) for n, m in warm.items()},
          inputs, labels, 3)

    results = train(runs, inputs, labels, args.epochs)

    names = list(runs)
    print(f"{'epoch':>6}  " + "  ".join(f"{n + ' loss':>20}" for n in names))
    every = max(1, args.log_every)
    for epoch in range(args.epochs):
        if epoch == 0 or (epoch + 1) % every == 0 or epoch + 1 == args.epochs:
            print(f"{epoch + 1:>6}  " + "  ".join(f"{results[n][0][epoch]:>20.6f}" for n in names))
    print()
    print(f"initial w, b: {w0:.4f}, {b0:.4f}   (data: w = 2, b = 1)")
    summary = {}
    for n in names:
        model = runs[n][0]
        w, b = model.linear.weight.item(), model.linear.bias.item()
        losses, seconds = results[n]
        summary[n] = dict(w=w, b=b, loss=losses[-1], seconds=seconds)
        print(f"{n:>14}: learned w = {w:.4f}, b = {b:.4f}   final loss {losses[-1]:.6f}   "
              f"time {seconds:.3f} s ({1e6 * seconds / args.epochs:.1f} us/epoch)")
    diff = max((p - q).abs().max().item() for p, q in zip(plain.parameters(), fused.parameters()))
    print(f"max |fused - plain| over the learned parameters: {diff:.3g}")
    return summary


if __name__ == "__main__":
    main()
