"""Loads the compiled extension, or says exactly why it cannot and how to fix it."""
import json
import os

import torch

_REBUILD = "pip install --no-build-isolation --force-reinstall --no-deps ."


def _meta_path():
    return os.path.join(os.path.dirname(__file__), "_build_meta.json")


def read_build_meta():
    """What the extension was built against, or None when no build is present."""
    try:
        with open(_meta_path()) as f:
            return json.load(f)
    except FileNotFoundError:
        return None


def load_extension():
    meta = read_build_meta()
    if meta is None:
        raise ImportError(
            "fused_linreg: the compiled extension fused_linreg._C is missing (the package was not "
            f"built). From the source checkout, run: {_REBUILD}"
        )
    if meta["torch_version"] != torch.__version__:
        raise ImportError(
            f"fused_linreg was built against torch {meta['torch_version']} but this is torch "
            f"{torch.__version__}; extensions must be built against the torch they run with "
            "(a plain `pip install .` builds against the torch pip downloads into an isolated "
            f"build environment). Rebuild inside this environment: {_REBUILD}"
        )
    try:
        from fused_linreg import _C
    except ImportError as e:
        raise ImportError(
            f"fused_linreg: the compiled extension failed to load ({e}). Rebuild it against this "
            f"torch ({torch.__version__}): {_REBUILD}"
        ) from e
    return _C


def cuda_missing_message(device):
    return (
        f"fused_linreg was built without CUDA kernels, so it cannot run on {device}. Rebuild with "
        f"a CUDA build of torch and the CUDA toolkit (CUDA_HOME): FUSED_LINREG_CUDA=1 {_REBUILD}"
    )
