"""An MLP classifier of ``FusedLinearReLU`` layers on scikit-learn's handwritten digits (1797 8x8
images, ships with scikit-learn: no download), trained with ``FusedSGD`` beside the same MLP in plain
PyTorch (``nn.Linear`` + ``nn.ReLU``, ``torch.optim.SGD``) from the same initial weights on the same
mini-batches. Prints test accuracy and the time per epoch of each.

    python examples/mlp_digits.py [--epochs 20] [--plot digits.png]
"""
import argparse
import os
import sys

import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import (add_common_args, minibatch_epoch, plot_curves, print_header,  # noqa: E402
                     print_times, train_side_by_side)

import fused_linreg  # noqa: E402
from fused_linreg import FusedSGD  # noqa: E402
from fused_linreg._text import help_description  # noqa: E402


def load(seed):
    x, y = load_digits(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(x / 16.0, y, test_size=0.25, random_state=seed,
                                                        stratify=y)
    f32 = lambda a: torch.tensor(a, dtype=torch.float32)  # noqa: E731
    return f32(x_train), torch.tensor(y_train), f32(x_test), torch.tensor(y_test)


def main(argv=None):
    p = argparse.ArgumentParser(description=help_description(__doc__))
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--momentum", type=float, default=0.9)
    add_common_args(p)
    args = p.parse_args(argv)
    print_header("MLP classifier on scikit-learn's digits: nn.Linear + nn.ReLU vs FusedLinearReLU",
                 args.threads)

    x_train, y_train, x_test, y_test = load(args.seed)
    torch.manual_seed(args.seed)
    h = args.hidden
    plain = nn.Sequential(nn.Linear(64, h), nn.ReLU(), nn.Linear(h, h), nn.ReLU(), nn.Linear(h, 10))
    fused = fused_linreg.fuse(plain)  # a copy: Linear+ReLU -> FusedLinearReLU, Linear -> FusedLinear
    print(f"{len(x_train)} training / {len(x_test)} test images; fused model:\n{fused}")
    print(f"CrossEntropyLoss, SGD(lr={args.lr}, momentum={args.momentum}), batch {args.batch_size}, "
          f"{args.epochs} epochs")
    models = {"plain PyTorch": plain, "fused_linreg": fused}
    optimizers = {
        "plain PyTorch": torch.optim.SGD(plain.parameters(), lr=args.lr, momentum=args.momentum),
        "fused_linreg": FusedSGD(fused.parameters(), lr=args.lr, momentum=args.momentum),
    }
    criterion = nn.CrossEntropyLoss()

    def epoch_fn(name):
        return lambda epoch: minibatch_epoch(models[name], optimizers[name], criterion, x_train, y_train,
                                             args.batch_size, args.seed + epoch)

    @torch.no_grad()
    def evaluate(name):
        accuracy = (models[name](x_test).argmax(1) == y_test).float().mean().item()
        return {"test accuracy (%)": 100 * accuracy}

    history = train_side_by_side({name: epoch_fn(name) for name in models}, args.epochs, evaluate)

    print()
    for name, hist in history.items():
        print(f"{name:>14}: train loss {hist['train loss'][0]:.4f} -> {hist['train loss'][-1]:.4f}, "
              f"test accuracy {hist['test accuracy (%)'][-1]:.2f} %")
    print_times(history)
    if args.plot:
        plot_curves(args.plot, history, ["train loss", "test accuracy (%)"],
                    "MLP on digits: nn.Linear + nn.ReLU + SGD vs FusedLinearReLU + FusedSGD",
                    log_y=[True, False])
    return history


if __name__ == "__main__":
    main()
