"""The demo and the examples run, print what the README shows, and reach what they claim."""
import importlib.util
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(ROOT, "examples")


def run(*args, timeout=300):
    """``python *args`` from the repository root with fused_linreg importable; returns stdout."""
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, f"{args} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout, proc.stderr


def load_example(name):
    spec = importlib.util.spec_from_file_location(f"example_{name}", os.path.join(EXAMPLES, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def assert_png(path):
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    assert os.path.getsize(path) > 10_000  # two panels of curves, not an empty figure


def test_demo_learns_y_equals_2x_plus_1_like_plain_pytorch():
    from fused_linreg import demo

    summary = demo.main([])  # the defaults the README runs
    plain, fused = summary["plain PyTorch"], summary["fused_linreg"]
    for result in (plain, fused):
        assert abs(result["w"] - 2) < 0.01 and abs(result["b"] - 1) < 0.02, result
        assert result["loss"] < 0.0105  # the noise variance is 0.01
    assert abs(plain["w"] - fused["w"]) < 1e-5 and abs(plain["b"] - fused["b"]) < 1e-5


def test_demo_command_line():
    out, _ = run("-m", "fused_linreg.demo", "--epochs", "20", "--samples", "300", "--log-every", "5")
    assert re.search(r"^\s+20\s+\d+\.\d+\s+\d+\.\d+$", out, re.M), out  # the loss table's last row
    for name in ("plain PyTorch", "fused_linreg"):
        assert re.search(rf"{name}: learned w = -?\d+\.\d+, b = -?\d+\.\d+ .* time \d+\.\d+ s", out), out


@pytest.mark.parametrize("script,expect", [
    ("linear_regression.py", [r"fused_linreg: train loss .* test MSE \d+\.\d", r"least squares: test MSE"]),
    ("mlp_digits.py", [r"fused_linreg: train loss .* test accuracy \d+\.\d+ %", r"FusedLinearReLU\("]),
])
def test_examples_command_line_with_plot(script, expect, tmp_path):
    png = tmp_path / "curves.png"
    out, err = run(os.path.join("examples", script), "--epochs", "2", "--plot", str(png))
    for pattern in expect + [r"\(2 epochs\), \d+\.\d ms/epoch over epochs 2-2\n",
                             r"ms/epoch leaves out the first epoch", r"time per epoch: \d+\.\d+x",
                             "plot saved to"]:
        assert re.search(pattern, out), f"{pattern!r} not in:\n{out}"
    assert "2/2" in err  # the tqdm bar finished
    assert_png(png)


def test_plots_label_epochs_as_whole_numbers_and_log_axes_in_plain_numbers():
    common = load_example("_common")
    epochs = 20
    history = {name: {"train loss": [2.09 * 0.78 ** e for e in range(epochs)],  # 2.09 -> 0.02
                      "test MSE": [5300 - 100 * e for e in range(epochs)],       # under a decade
                      "accuracy": [50 + e for e in range(epochs)]}
               for name in ("plain PyTorch", "fused_linreg")}
    fig = common.curves_figure(history, ["train loss", "test MSE", "accuracy"], "t", log_y=[True, True, False])
    fig.canvas.draw()
    for ax in fig.axes:
        low, high = ax.get_xlim()
        shown = [t for t in ax.get_xticks() if low <= t <= high]
        assert len(shown) >= 3 and all(float(t).is_integer() for t in shown), shown
        if ax.get_yscale() == "log":
            low, high = ax.get_ylim()
            labels = [t.get_text() for t in ax.get_yticklabels() if low <= t.get_position()[1] <= high]
            labels = [t for t in labels if t]
            assert len(labels) >= 4, (ax.get_ylabel(), labels)
            for label in labels:
                float(label)  # a plain number, not 6×10^-1
    import matplotlib.pyplot as plt
    plt.close(fig)


def test_linear_regression_reaches_least_squares():
    example = load_example("linear_regression")
    history = example.main([])
    lstsq = example.load(0)[0]["lstsq_test_mse"]
    for name, h in history.items():
        assert h["test MSE"][-1] < 1.1 * lstsq, (name, h["test MSE"][-1], lstsq)
        assert h["train loss"][-1] < 0.5 * h["train loss"][0]
    plain, fused = history.values()
    assert abs(plain["test MSE"][-1] - fused["test MSE"][-1]) < 1e-3 * plain["test MSE"][-1]


def test_mlp_digits_reaches_95_percent():  # the full default run: a few seconds on 2 cores
    history = load_example("mlp_digits").main([])
    for name, h in history.items():
        assert h["test accuracy (%)"][-1] >= 95, (name, h["test accuracy (%)"][-1])


# ---- words a user can read ----------------------------------------------------------------------

# The project's own history means nothing to a user.
JARGON = re.compile(r"\bseed's\b|\bthe seed\b|\bissue #\d|``")


def help_texts(capsys):
    from fused_linreg import bench, demo
    texts = {"bench": bench._parser().format_help()}
    for name, parse in [("demo", demo._parse), ("linear_regression", load_example("linear_regression").main),
                        ("mlp_digits", load_example("mlp_digits").main)]:
        with pytest.raises(SystemExit):
            parse(["--help"])
        texts[name] = capsys.readouterr().out
    return texts


def test_help_texts_are_plain_words(capsys):
    for name, text in help_texts(capsys).items():
        assert "usage:" in text, (name, text)
        assert not JARGON.search(text), f"{name} --help: {JARGON.search(text).group()!r} in\n{text}"


def test_docs_list_every_option(capsys):
    """The README lists the examples' options and docs/examples.md the demo's: all of them."""
    with open(README) as f:
        readme = f.read()
    readme = readme[readme.index("## The demo and the examples"):readme.index("## With the rest of PyTorch")]
    with open(os.path.join(ROOT, "docs", "examples.md")) as f:
        examples_md = f.read()
    texts = help_texts(capsys)
    for name, doc in [("demo", examples_md), ("linear_regression", readme), ("mlp_digits", readme)]:
        options = set(re.findall(r"--[a-z][a-z-]*", texts[name])) - {"--help"}
        assert len(options) >= 6, (name, options)
        missing = sorted(o for o in options if f"`{o}" not in doc)
        assert not missing, f"{name}'s options {missing} are not in its documentation"


def test_docs_and_outputs_use_no_project_jargon(capsys):
    for path in USER_DOCS:
        with open(path) as f:
            text = f.read().replace("``", "")  # Markdown code spans may hold backticks
        assert not JARGON.search(text), f"{path}: {JARGON.search(text).group()!r}"
    from fused_linreg import demo
    demo.main(["--epochs", "2", "--samples", "10"])
    load_example("linear_regression").main(["--epochs", "1"])
    out = capsys.readouterr().out
    assert not JARGON.search(out), out


# ---- the README's code ---------------------------------------------------------------------------

README = os.path.join(ROOT, "README.md")
# The user's documentation: the README and what it links to in docs/ (the CUDA pages are design
# notes and GPU records, whose code needs a GPU).
USER_DOCS = [README] + [os.path.join(ROOT, "docs", f) for f in
                        ("examples.md", "pytorch.md", "benchmarks.md", "in_backward.md", "determinism.md",
                         "mlp.md")]


def readme_blocks(lang, files=(README,)):
    blocks = []
    for path in files:
        with open(path) as f:
            blocks += re.findall(rf"^```{lang}\n(.*?)^```", f.read(), re.S | re.M)
    return blocks


def test_readme_commands_and_no_placeholders():
    with open(README) as f:
        text = f.read()
    bash = readme_blocks("bash")
    assert "bash scripts/setup_env.sh && .venv/bin/python -m fused_linreg.demo\n" in bash
    assert "bash scripts/setup_env.sh && .venv/bin/python -m pytest -q\n" in bash
    commands = {line for block in bash for line in block.splitlines()}
    assert {"pip install .", "pip install setuptools wheel ninja", "pip install --no-build-isolation ."} <= commands
    assert "@@" not in text and "TODO" not in text and "TBD" not in text


def test_readme_is_for_users_and_links_what_moved():
    with open(README) as f:
        text = f.read()
    assert len(text.splitlines()) <= 300
    for path in USER_DOCS[1:]:
        assert f"(docs/{os.path.basename(path)})" in text, path
        assert os.path.isfile(path)
    # what a user installing needs, in the install section
    install = text[text.index("## Install"):text.index("## Drop-in use")]
    for word in ("setuptools", "wheel", "ninja", "C++ compiler", "--no-build-isolation"):
        assert word in install, word


def test_readme_python_blocks_run():
    blocks = [b for b in readme_blocks("python", USER_DOCS) if "init_process_group" not in b]
    assert len(blocks) >= 8
    for i, block in enumerate(blocks):
        try:
            exec(compile(block, f"README.md / docs python block {i}", "exec"), {"__name__": "readme"})
        except Exception as e:
            raise AssertionError(f"README / docs python block {i} failed: {e!r}\n{block}") from e


def test_readme_ddp_script_runs_under_torchrun(tmp_path):
    (script,) = [b for b in readme_blocks("python", USER_DOCS) if "init_process_group" in b]
    path = tmp_path / "train_ddp.py"
    path.write_text(script)
    out, err = run("-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(path))
    assert re.search(r"^epoch 2: loss \d+\.\d+$", out, re.M), out + err
    assert out.count("epoch 2") == 1  # printed by rank 0 only
