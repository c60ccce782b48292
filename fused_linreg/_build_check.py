"""Loads the compiled extension, or says exactly why it cannot and which command fixes it.

setup.py writes _build_meta.json next to the extension (the torch version it was built against
and whether CUDA kernels were compiled); it is read before the extension is loaded, because
loading an extension built against another torch fails with an unreadable symbol error, or worse.
"""
import glob
import importlib.machinery
import json
import os
import shlex
import sys

import torch

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


class BuildError(ImportError):
    """The compiled part of fused_linreg is missing, stale or broken (an ImportError)."""


def _meta_path():
    return os.path.join(_PACKAGE_DIR, "_build_meta.json")


def _source_checkout():
    """The source tree this package sits in (an in-place / editable build), or None."""
    root = os.path.dirname(_PACKAGE_DIR)
    return root if os.path.isfile(os.path.join(root, "setup.py")) else None


def rebuild_command(cuda=False):
    """The command that rebuilds the extension against the torch of this interpreter."""
    env = "FUSED_LINREG_CUDA=1 " if cuda else ""
    python = shlex.quote(sys.executable)
    root = _source_checkout()
    if root is not None:
        return f"cd {shlex.quote(root)} && {env}{python} -m pip install --no-build-isolation --no-deps -e ."
    return (f"{env}{python} -m pip install --no-build-isolation --force-reinstall --no-deps . "
            "(from the fused_linreg source checkout)")


def _extension_files():
    return [f for suffix in importlib.machinery.EXTENSION_SUFFIXES
            for f in glob.glob(os.path.join(_PACKAGE_DIR, "_C" + suffix))]


def read_build_meta():
    """What the extension was built against (a dict), or None when no metadata is present.
    Raises BuildError when the metadata is unreadable."""
    try:
        with open(_meta_path()) as f:
            meta = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise BuildError(
            f"fused_linreg: the build metadata {_meta_path()} is unreadable ({e}), so the build is "
            f"incomplete or damaged. Rebuild it: {rebuild_command()}") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("torch_version"), str):
        raise BuildError(
            f"fused_linreg: the build metadata {_meta_path()} lacks the torch version the extension "
            f"was built against (got {meta!r}). Rebuild it: {rebuild_command()}")
    return meta


def load_extension():
    meta = read_build_meta()
    extensions = _extension_files()
    if not extensions:
        raise BuildError(
            "fused_linreg: the compiled extension fused_linreg._C is missing (the package was not "
            f"built, or its build output was removed). Build it: {rebuild_command()}")
    if meta is None:
        raise BuildError(
            f"fused_linreg: the compiled extension is present ({os.path.basename(extensions[0])}) but "
            "its build metadata _build_meta.json is missing, so it is unknown which torch it was built "
            f"against (it was not built by this package's setup.py). Rebuild it: {rebuild_command()}")
    if meta["torch_version"] != torch.__version__:
        raise BuildError(
            f"fused_linreg was built against torch {meta['torch_version']} but this is torch "
            f"{torch.__version__}; extensions must be built against the torch they run with "
            "(a plain `pip install .` builds against whatever torch pip downloads into an isolated "
            f"build environment). Rebuild it inside this environment: {rebuild_command()}")
    try:
        from fused_linreg import _C
    except ImportError as e:
        raise BuildError(
            f"fused_linreg: the compiled extension failed to load ({e}). Rebuild it against this "
            f"torch ({torch.__version__}): {rebuild_command()}") from e
    built_cuda = bool(_C.build_info()["cuda"])
    if bool(meta.get("cuda", built_cuda)) != built_cuda:
        raise BuildError(
            f"fused_linreg: the build metadata says CUDA kernels were {'' if meta.get('cuda') else 'not '}"
            f"built, but the extension was built {'with' if built_cuda else 'without'} them: the "
            f"build is inconsistent. Rebuild it: {rebuild_command(cuda=bool(meta.get('cuda')))}")
    return _C


def cuda_missing_message(device):
    return (
        f"fused_linreg was built without CUDA kernels, so it cannot run on {device}. Rebuild it with "
        "a CUDA build of torch and the CUDA toolkit (CUDA_HOME set, nvcc on PATH): "
        f"{rebuild_command(cuda=True)}"
    )
