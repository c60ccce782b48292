"""The in-tree build backend (build_backend/fused_linreg_backend.py) finds the torch of the
environment being installed into, in the situations pip and other frontends put it in. The
whole `pip install .` into a fresh venv is CI's (scripts/ci_pip_install.sh)."""
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from conftest import ROOT

BACKEND_DIR = os.path.join(ROOT, "build_backend")

# Runs in the interpreter under test, as a PEP 517 frontend runs a hook: the backend's directory
# first on sys.path, the source tree as the working directory.
HOOK = textwrap.dedent("""
    import importlib.util, json, sys
    sys.path.insert(0, {backend_dir!r})
    import fused_linreg_backend as backend
    before = importlib.util.find_spec("torch") is not None
    requires = backend.get_requires_for_build_wheel()
    backend._use_target_torch()
    import torch
    found = backend._target_torch()
    print(json.dumps({{"torch_visible_before": before, "requires": requires,
                      "torch": torch.__version__, "target": found and found[0]}}))
""")
HOOK_NO_TORCH = textwrap.dedent("""
    import json, sys
    sys.path.insert(0, {backend_dir!r})
    import fused_linreg_backend as backend
    print(json.dumps({{"requires": backend.get_requires_for_build_wheel()}}))
""")


@pytest.fixture(scope="module")
def build_tools(tmp_path_factory):
    """A directory holding only setuptools (what a build environment holds besides wheel and
    ninja), not torch."""
    import _distutils_hack
    import setuptools
    tools = tmp_path_factory.mktemp("build-env")
    for module in (setuptools, _distutils_hack):
        os.symlink(os.path.dirname(module.__file__), tools / os.path.basename(os.path.dirname(module.__file__)))
    return str(tools)


@pytest.fixture(scope="module")
def bare_python(tmp_path_factory):
    """The python of a new venv without torch (a build environment's interpreter)."""
    venv = tmp_path_factory.mktemp("bare") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    return str(venv / "bin" / "python")


def clean_env(**extra):
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONNOUSERSITE", "VIRTUAL_ENV", "CONDA_PREFIX")}
    env.update(extra)
    return env


def run_hook(python, env, code=HOOK, via_shell=False):
    """Runs `code` under `python`; via_shell: as the child of a shell, so that the hook's parent
    process is no Python."""
    code = code.format(backend_dir=BACKEND_DIR)
    argv = [python, "-c", code]
    if via_shell:
        argv = ["sh", "-c", '"$0" -c "$1"; status=$?; exit $status', python, code]
    proc = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1]), proc.stderr


def test_pip_default_isolation_builds_against_the_target_torch(tmp_path, build_tools):
    """pip's default isolation: the hook runs under pip's own interpreter (the target's), with
    its site-packages hidden by a sitecustomize on PYTHONPATH and only the build tools visible."""
    site_dir = tmp_path / "site"
    site_dir.mkdir()
    (site_dir / "sitecustomize.py").write_text(textwrap.dedent(f"""
        import os, site, sys
        hidden = {{os.path.normcase(p) for p in site.getsitepackages() + [site.getusersitepackages()]}}
        sys.path[:] = [p for p in sys.path if os.path.normcase(p) not in hidden]
        site.addsitedir({build_tools!r})
    """))
    env = clean_env(PYTHONPATH=str(site_dir), PYTHONNOUSERSITE="1")
    result, stderr = run_hook(sys.executable, env, via_shell=True)  # found as itself, not as the parent
    assert not result["torch_visible_before"]  # the isolation works as pip's does
    assert result["requires"] == []  # no torch downloaded into the build environment
    assert result["torch"] == torch.__version__
    assert result["target"] == sys.executable
    assert f"building against torch {torch.__version__}" in stderr


def test_venv_isolation_finds_the_installing_python(bare_python, build_tools):
    """pip's venv isolation (and other frontends): the hook runs under the build venv's python,
    a child of pip's interpreter, here this one."""
    result, stderr = run_hook(bare_python, clean_env(PYTHONPATH=build_tools))
    assert not result["torch_visible_before"]
    assert result["requires"] == []
    assert result["torch"] == torch.__version__
    assert os.path.normpath(result["target"]) == os.path.normpath(sys.executable)


def test_virtual_env_variable_is_a_fallback(bare_python, build_tools):
    """A frontend that is not a Python (e.g. a shell in between): $VIRTUAL_ENV names the target."""
    venv = os.path.dirname(os.path.dirname(sys.executable))
    if not os.path.isfile(os.path.join(venv, "bin", "python")):
        pytest.fail(f"the test suite's python {sys.executable} is not in a venv's bin/")
    result, _ = run_hook(bare_python, clean_env(PYTHONPATH=build_tools, VIRTUAL_ENV=venv), via_shell=True)
    assert result["requires"] == [] and result["torch"] == torch.__version__
    assert result["target"] == os.path.join(venv, "bin", "python")


def test_no_torch_anywhere_asks_for_torch(bare_python, build_tools):
    """No interpreter in sight has torch (a fresh environment): torch becomes a build
    requirement, and the wheel is pinned to it (setup.py)."""
    result, stderr = run_hook(bare_python, clean_env(PYTHONPATH=build_tools), HOOK_NO_TORCH, via_shell=True)
    assert result["requires"] == ["torch"]
    assert "no torch found" in stderr and "--no-build-isolation" in stderr

