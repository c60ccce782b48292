"""--plot: a PNG bar chart of eager/fused (> 1: fused_linreg faster), one bar per comparison."""

__all__ = ["check_available", "plot_ratios"]


def check_available():
    """Raises ImportError with the fix before a long run, not after."""
    try:
        import matplotlib  # noqa: F401
    except ImportError as e:
        raise ImportError(f"--plot needs matplotlib ({e}): pip install matplotlib") from None


def plot_ratios(path, speed_rows, title):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    rows = [r for r in speed_rows if r["impl"] == "fused" and r.get("speedup_vs_eager") is not None]
    labels = [f"{r['case']}\n{r['pass']}" for r in rows]
    ratios = [r["speedup_vs_eager"] for r in rows]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(rows) + 2), 4.5))
    colors = ["tab:green" if v >= 1 else "tab:red" for v in ratios]
    # Bars grow from 1 (as fast as eager), up when fused is faster, down when slower.
    bars = ax.bar(range(len(rows)), [v - 1 for v in ratios], bottom=1, color=colors)
    ax.bar_label(bars, labels=[f"{v:.2f}" for v in ratios], fontsize=8)
    ax.axhline(1.0, color="black", linestyle="--", linewidth=1)
    ax.set_yscale("log")  # 2x faster and 2x slower look alike
    plain = matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}")
    ax.yaxis.set_major_formatter(plain)
    ax.yaxis.set_minor_formatter(plain)
    ax.set_xticks(range(len(rows)), labels, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("eager time / fused time (> 1: fused faster)")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
