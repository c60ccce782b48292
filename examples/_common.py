"""What the examples share: the header, plain-vs-fused training side by side, and the loss plot."""
import argparse
import math
import time
from typing import Callable, Dict, List, Optional, Sequence

import torch
from tqdm import tqdm

import fused_linreg


def threads_text() -> str:
    n = torch.get_num_threads()
    return f"{n} thread" + ("s" if n != 1 else "")


def add_common_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, help="CPU threads (default: torch's default)")
    parser.add_argument("--plot", metavar="PATH", help="save the curves as a PNG")


def print_header(title: str, threads: Optional[int] = None) -> None:
    """Sets the thread count (when given) and prints what runs where."""
    if threads:
        torch.set_num_threads(threads)
    info = fused_linreg.build_info()
    print(title)
    print(f"fused_linreg {fused_linreg.__version__}, torch {torch.__version__}, CPU kernels "
          f"{info['cpu_isa_active']}, {threads_text()}\n")


def minibatch_epoch(model: torch.nn.Module, optimizer: torch.optim.Optimizer, criterion: Callable,
                    x: torch.Tensor, y: torch.Tensor, batch_size: int, seed: int) -> float:
    """One epoch of mini-batch steps in a shuffled order fixed by ``seed`` (so that the plain and
    the fused run see the same batches). Returns the mean training loss."""
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    total = torch.zeros(())
    for idx in order.split(batch_size):
        optimizer.zero_grad()
        loss = criterion(model(x[idx]), y[idx])
        loss.backward()
        optimizer.step()
        total += loss.detach() * len(idx)
    return total.item() / len(x)


def train_side_by_side(runs: Dict[str, Callable[[int], float]], epochs: int,
                       evaluate: Callable[[str], Dict[str, float]], desc: str = "epochs"
                       ) -> Dict[str, Dict[str, List[float]]]:
    """Runs ``runs[name](epoch) -> mean training loss`` for every name, epoch by epoch in turn
    (so that a busy machine slows all of them alike), with a tqdm bar. After each epoch
    ``evaluate(name)`` gives that run's metrics. Returns {name: {"train loss": [...], "seconds": [...],
    metric: [...]}} with one entry per epoch; "seconds" times the training epoch only."""
    history = {name: {"train loss": [], "seconds": []} for name in runs}
    bar = tqdm(range(epochs), desc=desc, unit="epoch")
    for epoch in bar:
        for name, run_epoch in runs.items():
            start = time.perf_counter()
            loss = run_epoch(epoch)
            history[name]["seconds"].append(time.perf_counter() - start)
            history[name]["train loss"].append(loss)
            for key, value in evaluate(name).items():
                history[name].setdefault(key, []).append(value)
        bar.set_postfix({name.split()[0]: f"{h['train loss'][-1]:.4g}" for name, h in history.items()})
    return history


def print_times(history: Dict[str, Dict[str, List[float]]]) -> None:
    """Total and per-epoch training time per run. The per-epoch mean leaves out the first epoch,
    which includes one-time costs (first calls, allocations), and says so."""
    epochs = len(next(iter(history.values()))["seconds"])
    steady = f"epochs 2-{epochs}" if epochs > 1 else "1 epoch"
    for name, h in history.items():
        s = h["seconds"]
        per_epoch = s[1:] or s
        print(f"{name:>14}: {sum(s):.2f} s training ({epochs} epochs), "
              f"{1e3 * sum(per_epoch) / len(per_epoch):.1f} ms/epoch over {steady}")
    if epochs > 1:
        print("(ms/epoch leaves out the first epoch: it includes one-time costs)")
    names = list(history)
    if len(names) == 2:
        a, b = (sum(history[n]["seconds"][1:] or history[n]["seconds"]) for n in names)
        print(f"{names[1]} / {names[0]} time per epoch: {b / a:.2f}x")


def log_ticks(low: float, high: float) -> List[float]:
    """Ticks for a log axis over [low, high]: 1, 2, 5 x 10^k, finer when that gives fewer than
    four (a loss that falls by less than a decade would otherwise get one or two labels)."""
    decades = range(math.floor(math.log10(low)), math.floor(math.log10(high)) + 1)
    for subs in ((1, 2, 5), range(1, 10), [m / 2 for m in range(2, 20)]):
        ticks = [m * 10.0 ** k for k in decades for m in subs if low <= m * 10.0 ** k <= high]
        if len(ticks) >= 4:
            break
    return ticks


def curves_figure(history: Dict[str, Dict[str, List[float]]], keys: Sequence[str], title: str,
                  log_y: Optional[Sequence[bool]] = None):
    """One panel per key of ``history`` (e.g. "train loss", "test MSE"), one curve per run; epochs
    on whole-number ticks, log axes labelled in plain numbers. Returns the matplotlib figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, MaxNLocator, NullFormatter

    fig, axes = plt.subplots(1, len(keys), figsize=(5.5 * len(keys), 4), squeeze=False)
    for i, (ax, key) in enumerate(zip(axes[0], keys)):
        for (name, h), style in zip(history.items(), ("-", "--", ":")):
            ax.plot(range(1, len(h[key]) + 1), h[key], style, label=name)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, steps=[1, 2, 5, 10]))
        ax.set_ylabel(key)
        if log_y and log_y[i]:
            ax.set_yscale("log")
            values = [v for h in history.values() for v in h[key] if v > 0]
            ticks = log_ticks(min(values), max(values)) if values else []
            if len(ticks) >= 2:  # else (a flat curve) matplotlib's own
                ax.set_yticks(ticks)
                ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
                ax.yaxis.set_minor_formatter(NullFormatter())
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_curves(path: str, history: Dict[str, Dict[str, List[float]]], keys: Sequence[str],
                title: str, log_y: Optional[Sequence[bool]] = None) -> None:
    """curves_figure(...) saved as a PNG."""
    import matplotlib.pyplot as plt

    fig = curves_figure(history, keys, title, log_y)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    print(f"plot saved to {path}")
