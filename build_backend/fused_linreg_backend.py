"""PEP 517 build backend: setuptools', building against the torch of the environment that the
package is being installed into.

A C++ extension must be built against the exact torch it runs with. With build isolation (a plain
`pip install .`), the build runs in a temporary environment that would get whatever torch is
newest. Instead, this backend looks for the installing environment's torch and builds against it
in place (its directories are appended to the build's sys.path, after the build tools):

- pip's default isolation runs the backend with pip's own interpreter (that of the target
  environment), hiding its site-packages through PYTHONPATH: that interpreter, run without
  PYTHONPATH, sees them.
- pip's venv isolation (`--use-feature venv-isolation`) and other frontends run the backend with
  the temporary environment's interpreter; then the parent process, when it is a Python (pip),
  and $VIRTUAL_ENV / $CONDA_PREFIX are asked.

Only an interpreter of this one's ABI counts (its torch is imported here). When none has torch
(a fresh environment), torch is a build requirement as usual, and setup.py pins the built wheel
to exactly that torch, so that pip installs that one with it.
"""
import functools
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import sysconfig

from setuptools import build_meta as _setuptools

# What the interpreter of a candidate environment reports: its ABI, its torch and its sys.path.
# torch is not imported (seconds); its version.py is a plain file.
_PROBE = r"""
import importlib.util, json, os, runpy, sys, sysconfig
spec = importlib.util.find_spec("torch")
version = None
if spec is not None and spec.submodule_search_locations:
    path = os.path.join(list(spec.submodule_search_locations)[0], "version.py")
    if os.path.isfile(path):
        version = runpy.run_path(path).get("__version__")
print(json.dumps({"ext_suffix": sysconfig.get_config_var("EXT_SUFFIX"), "torch": version,
                  "origin": spec.origin if spec else None, "sys_path": sys.path}))
"""

# The variables by which pip isolates the build from the target environment.
_ISOLATION_VARIABLES = ("PYTHONPATH", "PYTHONNOUSERSITE", "PYTHONHOME")


def _log(message):
    print(f"fused_linreg build: {message}", file=sys.stderr, flush=True)


def _parent_python():
    """The parent process's interpreter, as the path it was started by (a venv's python keeps
    its venv that way; /proc/PID/exe would resolve it to the base interpreter), when the parent
    is a Python at all. Linux only (/proc)."""
    proc = f"/proc/{os.getppid()}"
    try:
        with open(f"{proc}/cmdline", "rb") as f:
            argv0 = f.read().split(b"\0")[0].decode()
        with open(f"{proc}/environ", "rb") as f:
            environ = dict(item.decode(errors="replace").split("=", 1)
                           for item in f.read().split(b"\0") if b"=" in item)
        exe = os.path.realpath(f"{proc}/exe")
        cwd = os.readlink(f"{proc}/cwd")
    except (OSError, ValueError):
        return None
    if os.sep in argv0:
        path = os.path.join(cwd, argv0)
    else:
        path = shutil.which(argv0, path=environ.get("PATH", ""))
    if path and os.path.realpath(path) == exe:
        return path
    return None


def _candidates():
    """Interpreters that may be the target environment's, most likely first."""
    yield sys.executable
    yield _parent_python()
    for variable in ("VIRTUAL_ENV", "CONDA_PREFIX"):
        if os.environ.get(variable):
            yield os.path.join(os.environ[variable], "bin", "python")


def _probe(python):
    env = {k: v for k, v in os.environ.items() if k not in _ISOLATION_VARIABLES}
    try:
        out = subprocess.run([python, "-c", _PROBE], env=env, capture_output=True, text=True,
                             timeout=120, check=True).stdout
        return json.loads(out.strip().splitlines()[-1])
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None


@functools.lru_cache(maxsize=None)
def _target_torch():
    """(interpreter, its report) of the first candidate with a torch for this ABI, or None."""
    seen = set()
    for python in _candidates():
        if not python or not os.path.isfile(python) or python in seen:
            continue
        seen.add(python)
        report = _probe(python)
        if (report and report["torch"]
                and report["ext_suffix"] == sysconfig.get_config_var("EXT_SUFFIX")):
            return python, report
    return None


def _torch_requirements():
    """[] when the build can use a torch already installed (here, or in the target environment),
    else ["torch"]."""
    if importlib.util.find_spec("torch") is not None:
        return []
    found = _target_torch()
    if found is None:
        _log("no torch found in the environment being installed into; building against the "
             "newest torch, to which the wheel is pinned (to build against another torch, install "
             "it first, or use: pip install --no-build-isolation .)")
        return ["torch"]
    return []


def _use_target_torch():
    """Makes the target environment's torch importable in this (build) process: its sys.path is
    appended, so the build environment's own packages (setuptools, ninja) come first."""
    if importlib.util.find_spec("torch") is not None:
        return
    found = _target_torch()
    if found is None:
        return  # setup.py then says that torch is missing, and how to install it
    python, report = found
    sys.path.extend(p for p in report["sys_path"] if p and p not in sys.path)
    importlib.invalidate_caches()
    _log(f"building against torch {report['torch']} of {python} ({os.path.dirname(report['origin'])})")


def _building(hook):
    @functools.wraps(hook)
    def run(*args, **kwargs):
        _use_target_torch()
        return hook(*args, **kwargs)
    return run


# setup.py imports torch, so every hook that runs it needs the target's torch importable; the
# requirements hooks do not run it (setuptools' would, and it has no requirements to add).
def get_requires_for_build_wheel(config_settings=None):
    return _torch_requirements()


def get_requires_for_build_editable(config_settings=None):
    return _torch_requirements()


def get_requires_for_build_sdist(config_settings=None):
    return _torch_requirements()


prepare_metadata_for_build_wheel = _building(_setuptools.prepare_metadata_for_build_wheel)
prepare_metadata_for_build_editable = _building(_setuptools.prepare_metadata_for_build_editable)
build_wheel = _building(_setuptools.build_wheel)
build_editable = _building(_setuptools.build_editable)
build_sdist = _building(_setuptools.build_sdist)
