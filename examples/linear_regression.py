"""The classic PyTorch linear-regression example on real data: scikit-learn's diabetes data set (442
patients, 10 features, ships with scikit-learn: no download), trained with ``FusedLinear`` +
``FusedSGD`` beside plain PyTorch (``nn.Linear`` + ``torch.optim.SGD``) from the same initial
weights on the same mini-batches. Prints both loss curves' end points, the test MSE and the times.

    python examples/linear_regression.py [--epochs 100] [--plot linreg.png]
"""
import argparse
import copy
import os
import sys

import torch
from sklearn.datasets import load_diabetes
from sklearn.linear_model import LinearRegression
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import (add_common_args, minibatch_epoch, plot_curves, print_header,  # noqa: E402
                     print_times, train_side_by_side)

from fused_linreg import FusedLinear, FusedSGD  # noqa: E402
from fused_linreg._text import help_description  # noqa: E402
from fused_linreg.demo import LinearRegressionModel  # noqa: E402  (the classic example's model)


def load(seed):
    """Standardized features; the target standardized for training (MSE reported in its units)."""
    x, y = load_diabetes(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.2, random_state=seed)
    scaler = StandardScaler().fit(x_train)
    y_mean, y_std = y_train.mean(), y_train.std()
    as_tensor = lambda a: torch.tensor(a, dtype=torch.float32)  # noqa: E731
    data = dict(
        x_train=as_tensor(scaler.transform(x_train)), y_train=as_tensor((y_train - y_mean) / y_std)[:, None],
        x_test=as_tensor(scaler.transform(x_test)), y_test=as_tensor(y_test)[:, None],
    )
    lstsq = LinearRegression().fit(scaler.transform(x_train), y_train)
    data["lstsq_test_mse"] = float(((lstsq.predict(scaler.transform(x_test)) - y_test) ** 2).mean())
    return data, float(y_mean), float(y_std)


def main(argv=None):
    p = argparse.ArgumentParser(description=help_description(__doc__))
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=0.01, help="SGD learning rate (default 0.01, as in the classic example)")
    add_common_args(p)
    args = p.parse_args(argv)
    print_header("Linear regression (the classic PyTorch example's LinearRegressionModel) on "
                 "scikit-learn's diabetes data",
                 args.threads)

    data, y_mean, y_std = load(args.seed)
    n_features = data["x_train"].shape[1]
    torch.manual_seed(args.seed)
    plain = LinearRegressionModel(n_features, 1)                        # nn.Linear
    fused = LinearRegressionModel(n_features, 1, linear=FusedLinear)    # FusedLinear
    fused.load_state_dict(plain.state_dict())
    models = {"plain PyTorch": plain, "fused_linreg": fused}
    optimizers = {"plain PyTorch": torch.optim.SGD(plain.parameters(), lr=args.lr),
                  "fused_linreg": FusedSGD(fused.parameters(), lr=args.lr)}
    criterion = nn.MSELoss()
    print(f"{len(data['x_train'])} training / {len(data['x_test'])} test patients, {n_features} features; "
          f"MSELoss, SGD(lr={args.lr}), batch {args.batch_size}, {args.epochs} epochs")

    def epoch_fn(name):
        return lambda epoch: minibatch_epoch(models[name], optimizers[name], criterion, data["x_train"],
                                             data["y_train"], args.batch_size, args.seed + epoch)

    @torch.no_grad()
    def evaluate(name):
        prediction = models[name](data["x_test"]) * y_std + y_mean
        return {"test MSE": criterion(prediction, data["y_test"]).item()}

    history = train_side_by_side({name: epoch_fn(name) for name in models}, args.epochs, evaluate)

    print()
    for name, h in history.items():
        print(f"{name:>14}: train loss (standardized target) {h['train loss'][0]:.4f} -> "
              f"{h['train loss'][-1]:.4f}, test MSE {h['test MSE'][-1]:.1f}")
    print(f"{'least squares':>14}: test MSE {data['lstsq_test_mse']:.1f} "
          "(scikit-learn's exact fit, for reference)")
    print_times(history)
    diff = max((a - b).abs().max().item() for a, b in zip(plain.parameters(), fused.parameters()))
    print(f"max |fused - plain| over the learned parameters: {diff:.3g}")
    if args.plot:
        plot_curves(args.plot, history, ["train loss", "test MSE"],
                    "LinearRegressionModel on diabetes: nn.Linear + SGD vs FusedLinear + FusedSGD",
                    log_y=[True, True])
    return history


if __name__ == "__main__":
    main()
