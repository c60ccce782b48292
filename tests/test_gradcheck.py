"""python -m fused_linreg.gradcheck: passes on this build, and fails (non-zero exit, FAIL lines)
when a gradient is wrong."""
import torch

import fused_linreg
from fused_linreg import gradcheck
from conftest import run_python


def test_module_entry_point_passes():
    proc = run_python("import runpy; runpy.run_module('fused_linreg.gradcheck', run_name='__main__')",
                      timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    cases = len(gradcheck.ENTRY_POINTS) * len(gradcheck.SHAPES) * len(gradcheck.available_devices())
    assert sum(line.startswith("PASS ") for line in lines) == cases
    assert lines[-1].startswith(f"gradcheck: {cases} passed, 0 failed")


class _OffByOnePercent(torch.autograd.Function):
    """The fused forward with a backward whose weight gradient is 1% off."""

    @staticmethod
    def forward(ctx, x, w, b):
        ctx.save_for_backward(x, w)
        ctx.has_bias = b is not None
        return fused_linreg.functional.linear(x, w, b)

    @staticmethod
    def backward(ctx, go):
        x, w = ctx.saved_tensors
        gx = go @ w
        gw = go.reshape(-1, go.shape[-1]).T @ x.reshape(-1, x.shape[-1])
        gb = go.reshape(-1, go.shape[-1]).sum(0) if ctx.has_bias else None
        return gx, gw * 1.01, gb


def test_detects_a_wrong_gradient(monkeypatch):
    monkeypatch.setitem(gradcheck.ENTRY_POINTS, "off_by_one_percent",
                        (lambda x, w, b: _OffByOnePercent.apply(x, w, b), False))
    lines = []
    rc = gradcheck.main(["--device", "cpu", "--entry", "off_by_one_percent", "--entry", "LinearFunction"],
                        out=lines.append)
    assert rc == 1
    fails = [line for line in lines if line.startswith("FAIL")]
    passes = [line for line in lines if line.startswith("PASS")]
    # batch 0 has no gradient values to be wrong; every other shape must be caught.
    assert len(fails) == len(gradcheck.SHAPES) - 1 and all("off_by_one_percent" in f for f in fails)
    assert len(passes) == len(gradcheck.SHAPES) + 1
    assert lines[-1] == f"gradcheck: {len(passes)} passed, {len(fails)} failed on cpu, seed 0"


def test_relu_inputs_avoid_the_kink_and_have_both_signs():
    for shape in gradcheck.SHAPES:
        leaves, pre = gradcheck.make_inputs(shape, "cpu", seed=1, relu=True)
        assert all(t.dtype == torch.float64 and t.requires_grad for t in leaves)
        if pre.numel():
            assert bool((pre.abs() >= gradcheck.MARGIN).all())
        if pre.numel() >= 4:
            assert bool((pre > 0).any()) and bool((pre < 0).any())


def test_unavailable_device_is_an_error():
    lines = []
    assert gradcheck.main(["--device", "xpu:7"], out=lines.append) == 2
    assert "not available" in lines[-1]


_RECORD_INPUTS = """
import hashlib, sys
from fused_linreg import gradcheck
digests = []
make_inputs = gradcheck.make_inputs
def recording(*args, **kwargs):
    leaves, pre = make_inputs(*args, **kwargs)
    digests.append(hashlib.sha256(b"".join(t.detach().numpy().tobytes() for t in leaves)).hexdigest())
    return leaves, pre
gradcheck.make_inputs = recording
lines = []
rc = gradcheck.main(["--device", "cpu", "--entry", "LinearFunction", "--entry", "FusedLinearReLU"]
                    + sys.argv[1:], out=lines.append)
print(rc)
print(lines[0])
print(lines[-1])
print(" ".join(digests))
"""


def _checked_inputs(hash_seed, *args):
    code = f"import sys; sys.argv[1:] = {list(args)!r}\n" + _RECORD_INPUTS
    proc = run_python(code, env={"PYTHONHASHSEED": str(hash_seed)}, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rc, first, last, digests = proc.stdout.strip().splitlines()[-4:]
    assert rc == "0", first + last
    return first, last, digests.split()


def test_same_command_checks_the_same_inputs_in_every_process():
    # str hashes are salted per process (PYTHONHASHSEED): no seed may depend on them.
    first, last, digests = _checked_inputs(1)
    assert _checked_inputs(2) == (first, last, digests)
    assert len(digests) == 2 * len(gradcheck.SHAPES) and len(set(digests)) == len(digests)
    assert "seed 0" in first and "seed 0" in last  # the default, printed so it can be passed back

    first, last, other = _checked_inputs(1, "--seed", "7")
    assert "seed 7" in first and "seed 7" in last
    assert not set(other) & set(digests)
