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


class _WrongBackward:
    """torch.ops.fused_linreg with a linear_backward whose grad_weight is 1% off."""

    def __init__(self, ops):
        self._ops = ops

    def __getattr__(self, name):
        return getattr(self._ops, name)

    def linear_backward(self, *args):
        gi, gw, gb = self._ops.linear_backward(*args)
        return gi, None if gw is None else gw * 1.01, gb


def test_detects_a_wrong_gradient(monkeypatch):
    monkeypatch.setattr(fused_linreg._ops, "ops", _WrongBackward(torch.ops.fused_linreg))
    lines = []
    rc = gradcheck.main(["--device", "cpu", "--entry", "functional.linear_relu",
                         "--entry", "LinearFunction"], out=lines.append)
    assert rc == 1
    text = "\n".join(lines)
    assert "FAIL cpu" in text and "functional.linear_relu" in text and "LinearFunction" in text
    # batch 0 has no gradient values to be wrong; everything else must be caught.
    fails = [line for line in lines if line.startswith("FAIL")]
    assert len(fails) >= 2 * (len(gradcheck.SHAPES) - 1)
    assert lines[-1].startswith("gradcheck: ") and " failed" in lines[-1]


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
