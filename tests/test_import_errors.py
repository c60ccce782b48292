"""Import and build errors are clear: a missing extension, one built for another torch, damaged
build metadata, an extension that fails to load, and missing CUDA kernels each raise an error
that says what happened and gives the command that fixes it.

Each case imports a temporary copy of the package (with _build_meta.json or the extension
altered) in a subprocess; the cases that never load the extension share one interpreter."""
import json
import os
import shutil

import pytest
import torch

import fused_linreg
from fused_linreg import _build_check
from conftest import ROOT, run_python

PACKAGE = os.path.join(ROOT, "fused_linreg")
EXTENSION = os.path.basename(_build_check._extension_files()[0])
COMMAND = "pip install --no-build-isolation"


def _meta(**kw):
    return json.dumps({"torch_version": torch.__version__, "cuda": fused_linreg.build_info()["cuda"], **kw})


# name: (how to alter the copy, regexes the message must contain)
CASES = {
    "extension_and_meta_missing": (dict(remove=["_build_meta.json", EXTENSION]),
                                   ["extension", "missing"]),
    "extension_missing": (dict(remove=[EXTENSION]), ["extension", "missing"]),
    "meta_missing": (dict(remove=["_build_meta.json"]), ["metadata", "missing", "which torch"]),
    "other_torch": (dict(write={"_build_meta.json": _meta(torch_version="1.13.0+cu999")}),
                    ["built against torch 1.13.0\\+cu999", "this is torch " + torch.__version__.replace("+", "\\+"),
                     "Rebuild"]),
    "meta_not_json": (dict(write={"_build_meta.json": "{not json"}), ["metadata", "unreadable"]),
    "meta_without_version": (dict(write={"_build_meta.json": json.dumps({"cuda": False})}),
                             ["metadata", "torch version"]),
    "extension_broken": (dict(write={EXTENSION: "not an ELF file"}), ["failed to load", "Rebuild"]),
}
LOADING_CASES = {  # these load the real extension: one interpreter each
    "meta_cuda_mismatch": (dict(write={"_build_meta.json": _meta(cuda=not fused_linreg.build_info()["cuda"])}),
                           ["inconsistent", "CUDA"]),
}

RUNNER = """
import importlib.util, json, sys
results = {}
for name, site in json.loads(sys.argv[1]):
    sys.path.insert(0, site)
    try:
        spec = importlib.util.find_spec("fused_linreg")
        assert spec.origin.startswith(site), (spec.origin, site)
        import fused_linreg
        results[name] = {"type": None, "message": "imported"}
    except BaseException as e:
        results[name] = {"type": type(e).__name__, "mro": [c.__name__ for c in type(e).__mro__],
                         "message": str(e)}
    finally:
        sys.path.remove(site)
        for mod in [m for m in sys.modules if m == "fused_linreg" or m.startswith("fused_linreg.")]:
            del sys.modules[mod]
print("RESULTS " + json.dumps(results))
"""


def _copy(tmp_path, name, write=(), remove=()):
    site = tmp_path / name
    shutil.copytree(PACKAGE, site / "fused_linreg", ignore=shutil.ignore_patterns("__pycache__"))
    for f in remove:
        os.remove(site / "fused_linreg" / f)
    for f, text in dict(write).items():
        (site / "fused_linreg" / f).write_text(text)
    return str(site)


def _run(tmp_path, cases):
    sites = [(name, _copy(tmp_path, name, **alter)) for name, (alter, _) in cases.items()]
    proc = run_python(RUNNER.replace("sys.argv[1]", repr(json.dumps(sites))), cwd=str(tmp_path),
                      env={"PYTHONPATH": ""})
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULTS ")]
    assert proc.returncode == 0 and line, proc.stdout + proc.stderr
    return json.loads(line[0][len("RESULTS "):])


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    return _run(tmp_path_factory.mktemp("import_errors"), CASES)


def _check_message(result, patterns):
    import re
    assert result["type"] is not None, "the import succeeded"
    assert "ImportError" in result["mro"], f"{result['type']} is not an ImportError: {result['message']}"
    message = result["message"]
    for pattern in patterns:
        assert re.search(pattern, message), f"message lacks {pattern!r}: {message}"
    assert COMMAND in message, f"message lacks the command that fixes it: {message}"


@pytest.mark.parametrize("name", sorted(CASES))
def test_import_error_says_what_and_how_to_fix(name, results):
    _check_message(results[name], CASES[name][1])


@pytest.mark.parametrize("name", sorted(LOADING_CASES))
def test_import_error_loading_cases(name, tmp_path):
    _check_message(_run(tmp_path, {name: LOADING_CASES[name]})[name], LOADING_CASES[name][1])


def test_unaltered_copy_imports(tmp_path):
    """The control: the same procedure on an unaltered copy imports fine (so the failures above
    come from the alterations)."""
    result = _run(tmp_path, {"unaltered": (dict(), [])})["unaltered"]
    assert result["type"] is None, result


@pytest.mark.skipif(fused_linreg.build_info()["cuda"], reason="this build has CUDA kernels")
@pytest.mark.parametrize("op", ["linear_forward", "linear_relu_forward", "linear_backward", "sgd_step_"])
def test_missing_cuda_kernels_error(op):
    """Without CUDA kernels, every op dispatched to CUDA says so and gives the rebuild command
    (reached here by redispatching CPU tensors to the CUDA kernel, as no GPU may be present)."""
    x, w = torch.ones(2, 3), torch.ones(4, 3)
    args = {
        "linear_forward": (x, w, None),
        "linear_relu_forward": (x, w, None),
        "linear_backward": (torch.ones(2, 4), x, w, None, [True, True, True]),
        "sgd_step_": ([torch.ones(2)], [torch.ones(2)], [], [], 0.1, 0.0, 0.0, 0.0, False, False, None, None),
    }[op]
    keyset = torch._C.DispatchKeySet(torch._C.DispatchKey.CUDA)
    with pytest.raises(RuntimeError) as info:
        getattr(torch.ops.fused_linreg, op).default.redispatch(keyset, *args)
    message = str(info.value)
    assert "built without CUDA kernels" in message and "FUSED_LINREG_CUDA=1" in message
    assert COMMAND in message


def test_rebuild_command_in_a_source_checkout():
    """In this checkout the command rebuilds in place with this interpreter."""
    cmd = _build_check.rebuild_command()
    assert cmd.startswith(f"cd {ROOT} && ") and "-m pip install --no-build-isolation" in cmd
    assert __import__("sys").executable in cmd
