"""Bad input: every op and public function fed wrong dims, dtypes, devices, list lengths, aliased
memory, non-float types and huge sizes raises a Python exception whose message names the argument.

Every case runs first in a subprocess (all cases share a few interpreters: a crash fails that case
and the rest continue in a fresh one), so a segfault or abort fails the test instead of killing
pytest; cases that exited cleanly there are then also run in this process with pytest.raises.
"""
import json
import os
import re
import subprocess
import sys
import textwrap

import pytest

from conftest import ROOT

SETUP = """
import warnings
import torch
import torch.nn.functional as F
import fused_linreg as fl
ops = torch.ops.fused_linreg
torch.manual_seed(0)
x, w, b = torch.randn(3, 4), torch.randn(5, 4), torch.randn(5)
go = torch.randn(3, 5)
y, mask = ops.linear_relu_forward(x, w, b)
meta = lambda *s, dtype=torch.float32: torch.empty(*s, device="meta", dtype=dtype)
huge_rows = torch.zeros(1, 1).expand(2 ** 62, 1)  # 2^62 logical rows, one element of memory
p, q = torch.zeros(10), torch.zeros(10)
g1, g2 = torch.ones(10), torch.ones(10)
def bsgd(w, b=None, wb=None, bb=None, momentum=0.9, grad_output=None, input=None, relu_mask=None):
    grad_output = go if grad_output is None else grad_output
    return ops.linear_backward_sgd_(grad_output, x if input is None else input, w, relu_mask, b, wb, bb,
                                    True, True, 0.1, momentum, 0.0, 0.0, False, False)
w0, wb0 = torch.zeros(5, 4), torch.zeros(5, 4)
def sgd(params, grads, bufs=(), init=(), momentum=0.0, grad_scale=None, found_inf=None):
    return ops.sgd_step_(list(params), list(grads), list(bufs), list(init), 0.1, momentum, 0.0, 0.0,
                         False, False, grad_scale, found_inf)
"""

# Every public way into the linear forward kernels; `{f}(a, w_, b_)` is substituted below.
FORWARDS = {
    "op_linear": "ops.linear_forward({})",
    "op_linear_relu": "ops.linear_relu_forward({})",
    "functional_linear": "fl.functional.linear({})",
    "functional_linear_relu": "fl.functional.linear_relu({})",
    "LinearFunction": "fl.LinearFunction.apply({})",
    "LinearReLUFunction": "fl.LinearReLUFunction.apply({})",
}

# (arguments, exception type, regexes that must all be found in the message)
FORWARD_CASES = {
    "in_features": ("torch.randn(3, 4), torch.randn(5, 6), None", "RuntimeError",
                    [r"input", r"in_features", r"\b4\b", r"\b6\b"]),
    "in_features_3d": ("torch.randn(2, 3, 7), torch.randn(5, 6), None", "RuntimeError",
                       [r"input", r"in_features", r"\b7\b", r"\b6\b"]),
    "weight_1d": ("x, torch.randn(4), None", "RuntimeError", [r"weight", r"2-D"]),
    "weight_3d": ("x, torch.randn(5, 4, 1), None", "RuntimeError", [r"weight", r"2-D"]),
    "bias_shape": ("x, w, torch.randn(6)", "RuntimeError", [r"bias", r"\b5\b", r"\b6\b"]),
    "bias_2d": ("x, w, torch.randn(1, 5)", "RuntimeError", [r"bias"]),
    "input_0d": ("torch.tensor(1.0), torch.randn(5, 1), None", "RuntimeError", [r"input", r"0-d"]),
    "dtype_mismatch": ("x.double(), w, None", "TensorTypeError", [r"input", r"weight", r"dtype"]),
    "bias_dtype": ("x, w, b.double()", "TensorTypeError", [r"bias", r"dtype"]),
    "int_input": ("x.long(), w.long(), None", "UnsupportedDtypeError", [r"input", r"float"]),
    "int_weight": ("x, w.int(), None", "UnsupportedDtypeError", [r"weight", r"float"]),
    "bool_input": ("x > 0, w > 0, None", "UnsupportedDtypeError", [r"input", r"float"]),
    "complex_input": ("x.cfloat(), w.cfloat(), None", "UnsupportedDtypeError", [r"input", r"float"]),
    "uint8_input": ("x.byte(), w.byte(), None", "UnsupportedDtypeError", [r"input", r"float"]),
    "device_input_meta": ("meta(3, 4), w, None", "RuntimeError", [r"input", r"weight", r"device"]),
    "device_weight_meta": ("x, meta(5, 4), None", "RuntimeError", [r"input", r"weight", r"device"]),
    "device_bias_meta": ("x, w, meta(5)", "RuntimeError", [r"bias", r"device"]),
    "meta_in_features": ("meta(3, 4), meta(5, 6), None", "RuntimeError", [r"in_features", r"\b4\b", r"\b6\b"]),
    "meta_dtype": ("meta(3, 4), meta(5, 4, dtype=torch.float64), None", "TensorTypeError", [r"input", r"weight", r"dtype"]),
    "meta_int": ("meta(3, 4, dtype=torch.int32), meta(5, 4, dtype=torch.int32), None", "UnsupportedDtypeError",
                 [r"input", r"float"]),
    "sparse_input": ("x.to_sparse(), w, None", "TensorTypeError", [r"input", r"dense|sparse"]),
    "sparse_weight": ("x, w.to_sparse(), None", "TensorTypeError", [r"weight", r"dense|sparse"]),
    "not_a_tensor": ("[[1.0, 2.0, 3.0, 4.0]], w, None", "RuntimeError|TypeError", [r"input"]),
    "huge_output": ("huge_rows, torch.randn(4, 1), None", "RuntimeError", [r"output|input", r"2\^63|too"]),
    "huge_meta_output": ("meta(2 ** 40, 8), meta(2 ** 40, 8), None", "RuntimeError", [r"output|input", r"2\^63|too"]),
}

OTHER_CASES = {
    # linear_backward
    "backward_grad_output_shape": ("ops.linear_backward(torch.randn(3, 4), x, w, None, [True] * 3)",
                                   "RuntimeError", [r"grad_output", r"\[3, 5\]"]),
    "backward_grad_output_dtype": ("ops.linear_backward(go.double(), x, w, None, [True] * 3)",
                                   "TensorTypeError", [r"grad_output", r"dtype"]),
    "backward_grad_output_int": ("ops.linear_backward(go.long(), x, w, None, [True] * 3)",
                                 "UnsupportedDtypeError", [r"grad_output", r"float"]),
    "backward_grad_output_meta": ("ops.linear_backward(meta(3, 5), x, w, None, [True] * 3)",
                                  "RuntimeError", [r"grad_output", r"device"]),
    "backward_in_features": ("ops.linear_backward(go, torch.randn(3, 6), w, None, [True] * 3)",
                             "RuntimeError", [r"in_features"]),
    "backward_mask_dtype": ("ops.linear_backward(go, x, w, mask.float(), [True] * 3)", "TensorTypeError",
                            [r"relu_mask", r"uint8"]),
    "backward_mask_shape": ("ops.linear_backward(go, x, w, mask[:, :2], [True] * 3)", "RuntimeError",
                            [r"relu_mask", r"shape"]),
    "backward_mask_meta": ("ops.linear_backward(go, x, w, meta(3, 4, dtype=torch.uint8), [True] * 3)",
                           "RuntimeError", [r"relu_mask", r"device"]),
    # bool[3] in the schema (as in ATen's own *_backward ops): PyTorch rejects another length
    # before the kernel runs, with its own message that states the expected size.
    "backward_output_mask_length": ("ops.linear_backward(go, x, w, None, [True, True])", "RuntimeError",
                                    [r"List with 2 elements", r"size 3"]),
    "backward_sparse_grad_output": ("ops.linear_backward(go.to_sparse(), x, w, None, [True] * 3)",
                                    "TensorTypeError", [r"grad_output", r"dense|sparse"]),
    # linear_backward_sgd_ (SGD inside the backward)
    "bsgd_in_features": ("bsgd(torch.zeros(5, 6), wb=torch.zeros(5, 6))", "RuntimeError", [r"in_features"]),
    "bsgd_grad_output_shape": ("bsgd(w0, wb=wb0, grad_output=torch.randn(3, 6))", "RuntimeError",
                               [r"grad_output", r"shape"]),
    "bsgd_weight_not_contiguous": ("bsgd(torch.zeros(4, 5).t(), wb=wb0)", "RuntimeError", [r"weight", r"contiguous"]),
    "bsgd_missing_buffer": ("bsgd(w0)", "RuntimeError", [r"weight_momentum_buffer"]),
    "bsgd_missing_bias_buffer": ("bsgd(w0, b=torch.zeros(5), wb=wb0)", "RuntimeError", [r"bias_momentum_buffer"]),
    "bsgd_buffer_shape": ("bsgd(w0, wb=torch.zeros(4, 5))", "RuntimeError", [r"weight_momentum_buffer", r"shape"]),
    "bsgd_buffer_dtype": ("bsgd(w0, wb=wb0.double())", "TensorTypeError", [r"weight_momentum_buffer", r"dtype"]),
    "bsgd_int_weight": ("bsgd(w0.long(), wb=wb0.long())", "UnsupportedDtypeError", [r"weight", r"float"]),
    "bsgd_buffer_is_weight": ("bsgd(w0, wb=w0)", "RuntimeError", [r"weight\b", r"weight_momentum_buffer", r"share"]),
    "bsgd_buffer_overlaps_weight": ("base = torch.zeros(40); bsgd(base[:20].view(5, 4), wb=base[4:24].view(5, 4))",
                                    "RuntimeError", [r"weight", r"weight_momentum_buffer", r"share"]),
    "bsgd_bias_overlaps_weight": ("base = torch.zeros(20); bsgd(base.view(5, 4), b=base[15:], wb=wb0, bb=torch.zeros(5))",
                                  "RuntimeError", [r"weight", r"bias", r"share"]),
    "bsgd_input_is_weight": ("wq = torch.zeros(4, 4); "
                             "bsgd(wq, wb=torch.zeros(4, 4), grad_output=torch.randn(4, 4), input=wq)",
                             "RuntimeError", [r"weight", r"input", r"share"]),
    "bsgd_expanded_buffer": ("bsgd(w0, wb=torch.zeros(1, 1).expand(5, 4))", "RuntimeError",
                             [r"weight_momentum_buffer", r"contiguous|expanded|share"]),
    "bsgd_meta_weight": ("bsgd(meta(5, 4), wb=wb0)", "RuntimeError", [r"weight", r"device"]),
    "bsgd_meta_buffer": ("bsgd(w0, wb=meta(5, 4))", "RuntimeError", [r"weight_momentum_buffer", r"device"]),
    "bsgd_sparse_grad_output": ("bsgd(w0, wb=wb0, grad_output=go.to_sparse())", "TensorTypeError",
                                [r"grad_output", r"dense|sparse"]),
    # sgd_step_
    "sgd_fewer_grads": ("sgd([p, q], [g1])", "RuntimeError", [r"2 params", r"1 grads"]),
    "sgd_more_grads": ("sgd([p], [g1, g2])", "RuntimeError", [r"1 params", r"2 grads"]),
    "sgd_missing_buffers": ("sgd([p, q], [g1, g2], [torch.zeros(10)], [True, True], momentum=0.9)",
                            "RuntimeError", [r"momentum_buffers", r"momentum"]),
    "sgd_missing_init_flags": ("sgd([p, q], [g1, g2], [torch.zeros(10), torch.zeros(10)], [True], momentum=0.9)",
                               "RuntimeError", [r"init_momentum_buffers"]),
    "sgd_grad_shape": ("sgd([p], [torch.ones(11)])", "RuntimeError", [r"params\[0\]", r"grads\[0\]", r"shape"]),
    "sgd_grad_shape_second": ("sgd([p, q], [g1, torch.ones(2, 5)])", "RuntimeError", [r"grads\[1\]", r"shape"]),
    "sgd_buffer_shape": ("sgd([p], [g1], [torch.zeros(9)], [False], momentum=0.9)", "RuntimeError",
                         [r"momentum_buffers\[0\]", r"shape"]),
    "sgd_grad_dtype": ("sgd([p], [g1.double()])", "TensorTypeError", [r"grads\[0\]", r"dtype"]),
    "sgd_buffer_dtype": ("sgd([p], [g1], [torch.zeros(10, dtype=torch.float64)], [False], momentum=0.9)",
                         "TensorTypeError", [r"momentum_buffers\[0\]", r"dtype"]),
    "sgd_int_params": ("sgd([p.long()], [g1.long()])", "UnsupportedDtypeError", [r"params\[0\]", r"float"]),
    "sgd_bool_params": ("sgd([p.bool()], [g1.bool()])", "UnsupportedDtypeError", [r"params\[0\]", r"float"]),
    "sgd_int_grad": ("sgd([p], [g1.int()])", "UnsupportedDtypeError", [r"grads\[0\]", r"float|dtype"]),
    "sgd_int_buffer": ("sgd([p], [g1], [torch.zeros(10, dtype=torch.int32)], [False], momentum=0.9)",
                       "UnsupportedDtypeError", [r"momentum_buffers\[0\]", r"float|dtype"]),
    "sgd_grad_meta": ("sgd([p], [meta(10)])", "RuntimeError", [r"grads\[0\]", r"device"]),
    "sgd_params_two_devices": ("sgd([p, meta(10)], [g1, meta(10)])", "RuntimeError", [r"params", r"device"]),
    "sgd_buffer_meta": ("sgd([p], [g1], [meta(10)], [True], momentum=0.9)", "RuntimeError",
                        [r"momentum_buffers\[0\]", r"device"]),
    "sgd_sparse_grad": ("sgd([p], [g1.to_sparse()])", "TensorTypeError", [r"grads\[0\]", r"sparse"]),
    "sgd_duplicate_param": ("sgd([p, p], [g1, g2])", "RuntimeError", [r"params\[0\]", r"params\[1\]", r"share"]),
    "sgd_overlapping_params": ("base = torch.zeros(20); sgd([base[:10], base[5:15]], [g1, g2])", "RuntimeError",
                               [r"params\[0\]", r"params\[1\]", r"share"]),
    "sgd_param_is_buffer": ("sgd([p], [g1], [p], [True], momentum=0.9)", "RuntimeError",
                            [r"params\[0\]", r"momentum_buffers\[0\]", r"share"]),
    "sgd_shared_buffer": ("buf = torch.zeros(10); sgd([p, q], [g1, g2], [buf, buf], [True, True], momentum=0.9)",
                          "RuntimeError", [r"momentum_buffers\[0\]", r"momentum_buffers\[1\]", r"share"]),
    "sgd_buffer_overlaps_param": ("base = torch.zeros(20); sgd([base[:10]], [g1], [base[5:15]], [True], momentum=0.9)",
                                  "RuntimeError", [r"params\[0\]", r"momentum_buffers\[0\]", r"share"]),
    "sgd_grad_overlaps_param": ("base = torch.zeros(20); sgd([base[:10]], [base[5:15]])", "RuntimeError",
                                [r"params\[0\]", r"grads\[0\]", r"share"]),
    "sgd_grad_is_other_param": ("sgd([p, q], [q, g2])", "RuntimeError", [r"params\[1\]", r"grads\[0\]", r"share"]),
    "sgd_expanded_param": ("sgd([torch.zeros(1).expand(10)], [g1])", "RuntimeError",
                           [r"params\[0\]", r"expanded|share"]),
    "sgd_huge_expanded_param": ("sgd([torch.zeros(1).expand(2 ** 40)], [torch.ones(1).expand(2 ** 40)])",
                                "RuntimeError", [r"params\[0\]", r"expanded|share"]),
    "sgd_expanded_buffer": ("sgd([p], [g1], [torch.zeros(1).expand(10)], [False], momentum=0.9)", "RuntimeError",
                            [r"momentum_buffers\[0\]", r"expanded|share"]),
    "sgd_grad_scale_numel": ("sgd([p], [g1], grad_scale=torch.ones(2))", "RuntimeError", [r"grad_scale", r"one element"]),
    "sgd_found_inf_meta": ("sgd([p], [g1], found_inf=meta(1))", "RuntimeError", [r"found_inf", r"device"]),
    # FusedSGD and the other public functions
    "FusedSGD_duplicate_params": ("warnings.simplefilter('ignore'); p.grad = g1; "
                                  "fl.FusedSGD([p, p], lr=0.1)", "ValueError",
                                  [r"shape \[10\]", r"listed twice"]),
    "FusedSGD_param_in_two_groups": ("fl.FusedSGD([{'params': [p]}, {'params': [p]}], lr=0.1)", "ValueError",
                                     [r"more than one parameter group"]),
    "FusedSGD_sparse_grad": ("pp = torch.nn.Parameter(torch.zeros(4, 3)); pp.grad = torch.ones(4, 3).to_sparse(); "
                             "fl.FusedSGD([pp], lr=0.1).step()", "RuntimeError|TypeError", [r"sparse"]),
    "FusedSGD_int_param": ("pi = torch.zeros(3, dtype=torch.int64); pi.grad = torch.ones(3, dtype=torch.int64); "
                           "fl.FusedSGD([pi], lr=0.1).step()", "UnsupportedDtypeError", [r"params\[0\]", r"float"]),
    "FusedSGD_negative_lr": ("fl.FusedSGD([p], lr=-1.0)", "ValueError", [r"learning rate|lr"]),
    "module_in_features": ("fl.FusedLinear(4, 5)(torch.randn(3, 6))", "RuntimeError", [r"in_features", r"\b6\b", r"\b4\b"]),
    "module_relu_in_features": ("fl.FusedLinearReLU(4, 5)(torch.randn(3, 6))", "RuntimeError",
                                [r"in_features", r"\b6\b", r"\b4\b"]),
    "module_0d": ("fl.FusedLinear(1, 5)(torch.tensor(1.0))", "RuntimeError", [r"input", r"0-d"]),
    "module_int_input": ("fl.FusedLinearReLU(4, 5)(torch.ones(3, 4, dtype=torch.int64))", "UnsupportedDtypeError",
                         [r"input", r"float"]),
    "module_dtype_mismatch": ("fl.FusedLinear(4, 5)(torch.randn(3, 4, dtype=torch.float64))", "TensorTypeError",
                              [r"input", r"weight", r"dtype"]),
    "from_linear_not_linear": ("fl.FusedLinear.from_linear(torch.nn.Conv1d(3, 3, 1))", "TypeError", [r"nn.Linear"]),
    "set_cpu_isa_unknown": ("fl.set_cpu_isa('sse9')", "ValueError", [r"sse9", r"supported"]),
    "set_cpu_isa_not_str": ("fl.set_cpu_isa(3)", "TypeError", [r"name|str"]),
}

CASES = {}
for fname, template in FORWARDS.items():
    for cname, (args, exc, patterns) in FORWARD_CASES.items():
        CASES[f"{fname}-{cname}"] = (template.format(args), exc, patterns)
CASES.update(OTHER_CASES)

RUNNER = r"""
import json, sys, traceback
cases = json.loads(sys.stdin.read())
ns = {}
exec(compile(SETUP, "<setup>", "exec"), ns)
for name, code in cases:
    print("START " + name, flush=True)
    env = dict(ns)
    try:
        exec(compile(code, name, "exec"), env)
        result = {"type": None, "message": ""}
    except BaseException as e:  # noqa: B902
        result = {"type": type(e).__name__, "message": str(e)}
    print("RESULT " + json.dumps([name, result]), flush=True)
"""


TIMEOUT_S = 240  # for one interpreter running all remaining cases (they take ~10 s together)


def _run_all(names):
    """Runs the named cases in as few subprocesses as crashes allow."""
    results, pending = {}, list(names)
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    while pending:
        payload = json.dumps([(n, CASES[n][0]) for n in pending])
        code = "SETUP = " + repr(textwrap.dedent(SETUP)) + "\n" + RUNNER
        try:
            proc = subprocess.run([sys.executable, "-c", code], input=payload, capture_output=True,
                                  text=True, cwd=ROOT, env=env, timeout=TIMEOUT_S)
            stdout, stderr, returncode = proc.stdout, proc.stderr, proc.returncode
        except subprocess.TimeoutExpired as e:  # a case hung: it is reported, the rest go on
            stdout = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
            stderr, returncode = f"timed out after {TIMEOUT_S}s", "timeout"
        started = None
        for line in stdout.splitlines():
            if line.startswith("START "):
                started = line[6:]
            elif line.startswith("RESULT "):
                name, result = json.loads(line[7:])
                results[name] = result
                started = None
        if started is not None or returncode != 0:
            crashed = started or next((n for n in pending if n not in results), None)
            if crashed is None:
                break
            results[crashed] = {"type": "CRASH", "message":
                                f"exit code {returncode}; stderr:\n{stderr[-3000:]}"}
        pending = [n for n in pending if n not in results]
    return results


@pytest.fixture(scope="module")
def subprocess_results():
    return _run_all(sorted(CASES))


def _check(exc_type, message, expected_types, patterns, name):
    assert exc_type != "CRASH", f"{name}: the process crashed: {message}"
    assert exc_type is not None, f"{name}: no exception raised"
    assert re.fullmatch(expected_types, exc_type), f"{name}: raised {exc_type} (expected {expected_types}): {message}"
    for pattern in patterns:
        assert re.search(pattern, message), f"{name}: message does not match {pattern!r}: {message}"


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_raises_naming_the_argument(name, subprocess_results):
    code, expected_types, patterns = CASES[name]
    result = subprocess_results[name]
    _check(result["type"], result["message"], expected_types, patterns, name + " (subprocess)")
    # Safe to repeat in this process now: it raised cleanly there.
    ns = {}
    exec(compile(textwrap.dedent(SETUP), "<setup>", "exec"), ns)
    try:
        exec(compile(code, name, "exec"), ns)
    except Exception as e:  # noqa: BLE001
        _check(type(e).__name__, str(e), expected_types, patterns, name)
    else:
        pytest.fail(f"{name}: no exception raised in-process")


# What plain PyTorch raises for the same input: F.linear for the functional forms and autograd
# Functions, aten's op through torch.ops for the raw ops (both argument parsers are PyTorch's:
# F.linear's raises TypeError for a non-tensor, the ops' schema parser RuntimeError), nn.Linear
# for the modules, torch.optim.SGD for FusedSGD. Code that catches what PyTorch raises must catch
# ours; where PyTorch raises nothing (it supports more dtypes and layouts), there is nothing to match.
TORCH_FORWARDS = {
    "op_linear": "torch.ops.aten.linear({})",
    "op_linear_relu": "torch.ops.aten.relu(torch.ops.aten.linear({}))",
    "functional_linear": "F.linear({})",
    "functional_linear_relu": "F.relu(F.linear({}))",
    "LinearFunction": "F.linear({})",
    "LinearReLUFunction": "F.relu(F.linear({}))",
}
TORCH_EQUIVALENTS = {f"{fname}-{cname}": template.format(args)
                     for fname, template in TORCH_FORWARDS.items()
                     for cname, (args, _, _) in FORWARD_CASES.items()}
TORCH_EQUIVALENTS.update({
    name: code.replace("fl.FusedLinearReLU", "torch.nn.Linear").replace("fl.FusedLinear", "torch.nn.Linear")
    .replace("fl.FusedSGD", "torch.optim.SGD")
    for name, (code, _, _) in OTHER_CASES.items() if name.startswith(("module_", "FusedSGD_"))
})


def _raised(code):
    ns = {}
    exec(compile(textwrap.dedent(SETUP), "<setup>", "exec"), ns)
    try:
        exec(compile(code, "<case>", "exec"), ns)
    except Exception as e:  # noqa: BLE001
        return e
    return None


def test_torch_raises_for_the_cases_compared():
    """The comparison below covers the kinds of bad input nn.Linear rejects: wrong dtypes, shape
    and device mismatches, a non-tensor (else it would compare nothing)."""
    raising = {name.split("-")[-1] for name, code in TORCH_EQUIVALENTS.items() if _raised(code) is not None}
    assert {"dtype_mismatch", "bias_dtype", "int_weight", "bool_input", "in_features", "bias_shape",
            "device_bias_meta", "not_a_tensor", "module_dtype_mismatch", "module_int_input",
            "FusedSGD_int_param"} <= raising, raising


@pytest.mark.parametrize("name", sorted(TORCH_EQUIVALENTS))
def test_bad_input_raises_what_torch_raises(name, subprocess_results):
    expected = _raised(TORCH_EQUIVALENTS[name])
    assert subprocess_results[name]["type"] not in ("CRASH", None), subprocess_results[name]
    ours = _raised(CASES[name][0])  # safe in this process: it raised cleanly in the subprocess
    if expected is not None:
        assert isinstance(ours, type(expected)), (
            f"{name}: PyTorch raises {type(expected).__name__} ({expected}); ours raises "
            f"{type(ours).__name__}, which is not one: {ours}")


def test_type_errors_are_also_what_torch_raises():
    """The wrong-dtype/layout errors stay TypeErrors (what fused_linreg raised before) and are
    RuntimeErrors as nn.Linear's; unsupported dtypes are also NotImplementedErrors, as ATen's."""
    import fused_linreg as fl
    assert issubclass(fl.TensorTypeError, TypeError) and issubclass(fl.TensorTypeError, RuntimeError)
    assert issubclass(fl.UnsupportedDtypeError, fl.TensorTypeError)
    assert issubclass(fl.UnsupportedDtypeError, NotImplementedError)


def test_runner_reports_crashes():
    """The subprocess runner itself: a case that kills the interpreter is reported as a crash and
    the cases after it still run."""
    CASES["__crash"] = ("import os; os.abort()", "RuntimeError", [])
    CASES["__after"] = ("raise ValueError('fine')", "ValueError", [])
    try:
        results = _run_all(["__crash", "__after"])
    finally:
        del CASES["__crash"], CASES["__after"]
    assert results["__crash"]["type"] == "CRASH"
    assert results["__after"] == {"type": "ValueError", "message": "fine"}


def test_runner_reports_hangs(monkeypatch):
    """A case that never returns is reported (as a crash, with the timeout) and the cases after it
    still run."""
    monkeypatch.setattr(__import__(__name__), "TIMEOUT_S", 12)
    CASES["__hang"] = ("import time\nwhile True: time.sleep(1)", "RuntimeError", [])
    CASES["__after"] = ("raise ValueError('fine')", "ValueError", [])
    try:
        results = _run_all(["__hang", "__after"])
    finally:
        del CASES["__hang"], CASES["__after"]
    assert results["__hang"]["type"] == "CRASH" and "timed out" in results["__hang"]["message"]
    assert results["__after"] == {"type": "ValueError", "message": "fine"}


def test_valid_edge_inputs_do_not_raise():
    """The checks do not reject what is valid: empty tensors, disjoint views of one buffer as
    separate params, columns of one matrix, a gradient that is its own parameter."""
    import torch
    import fused_linreg as fl
    ops = torch.ops.fused_linreg
    fl.functional.linear(torch.randn(0, 4), torch.randn(5, 4))
    fl.functional.linear_relu(torch.randn(3, 0), torch.randn(5, 0), torch.randn(5))
    flat = torch.zeros(20)
    ops.sgd_step_([flat[:10], flat[10:]], [torch.ones(10), torch.ones(10)], [], [], 0.1, 0.0, 0.0,
                  0.0, False, False)
    assert torch.equal(flat, torch.full((20,), -0.1))
    m = torch.zeros(4, 6)
    ops.sgd_step_([m[:, :3], m[:, 3:]], [torch.ones(4, 3), torch.ones(4, 3)], [], [], 0.1, 0.0, 0.0,
                  0.0, False, False)
    # (the values of stepped non-contiguous params are test_sgd.py's business)
    p = torch.ones(5)
    ops.sgd_step_([p], [p], [], [], 0.5, 0.0, 0.0, 0.0, False, False)
    assert p.tolist() == [0.5] * 5
    ops.sgd_step_([torch.zeros(0), torch.zeros(0)], [torch.zeros(0), torch.zeros(0)], [], [], 0.1,
                  0.0, 0.0, 0.0, False, False)
