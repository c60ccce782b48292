"""The peers: the other libraries on this machine that compute the same forward, timed beside
fused_linreg so that "faster than eager PyTorch" cannot hide a kernel slower than the machine's
best GEMM library (on AMD CPUs MKL runs its AVX2 code path).

- openblas: numpy's matmul (the BLAS numpy is built with: OpenBLAS in the PyPI wheels) into a
            preallocated array, then ``+= bias`` and ``max(., 0)`` in place: one BLAS call and two
            light passes. float32 and float64.
- onednn:   torch's ``torch._C._nn.mkldnn_linear`` on tensors converted to oneDNN's layout outside
            the timing, bias fused, then ReLU in place. float32 (bfloat16 where the CPU has it).

Both run the forward of a layer (Linear+bias+ReLU) and the GEMM (no bias, no ReLU), on CPU only.
Each result is checked once against plain PyTorch before timing, so a broken peer cannot win. A
peer that is not installed or fails is a skipped row with the reason, never an error of the run.
"""
import contextlib
import os
import subprocess
import sys

import torch

from fused_linreg._bench.timing import describe_error

__all__ = ["NAMES", "RUN_COMMAND", "parse", "env_notes", "thread_limit", "describe", "build"]

NAMES = ("openblas", "onednn")
RUN_COMMAND = ("env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE OPENBLAS_THREAD_TIMEOUT=4 "
               "python -m fused_linreg.bench")
# Sums of K products in another order differ by a few ulps times sqrt(K); a missing bias or ReLU
# differs by far more.
_RTOL = {torch.float32: 1e-4, torch.float64: 1e-10, torch.bfloat16: 3e-2}


def parse(spec: str, device: torch.device):
    """The peers a --peers value names: "auto" (all on CPU, none on CUDA), "none", or a
    comma-separated list of NAMES. Raises ValueError."""
    if spec == "auto":
        return NAMES if device.type == "cpu" else ()
    if spec == "none":
        return ()
    chosen = []
    for token in (t.strip() for t in spec.split(",")):
        if token not in NAMES:
            raise ValueError(f"--peers: unknown peer {token!r}; give {', '.join(NAMES)}, none or auto")
        if token not in chosen:
            chosen.append(token)
    return tuple(chosen)


def env_notes(peers, environ=os.environ):
    """Notes for the header when the environment skews the openblas peer."""
    if "openblas" not in peers:
        return []
    notes = []
    if "OPENBLAS_THREAD_TIMEOUT" not in environ:
        notes.append("OPENBLAS_THREAD_TIMEOUT is not set: OpenBLAS's idle threads busy-wait long after "
                     "each call and take the cores from whatever is timed next")
    forced = [f"{k}={environ[k]}" for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE") if k in environ]
    if forced:
        notes.append(f"{' '.join(forced)} is set: it forces that OpenBLAS kernel, not this CPU's own")
    if notes:
        notes.append(f"run the peers as: {RUN_COMMAND}")
    return notes


@contextlib.contextmanager
def thread_limit(peers, threads):
    """numpy's BLAS on ``threads`` threads, as torch, while the block runs (threadpoolctl)."""
    if "openblas" not in peers:
        yield
        return
    try:
        import numpy  # noqa: F401  (loads the BLAS so that threadpoolctl finds it)
        from threadpoolctl import threadpool_limits
    except ImportError:  # no numpy: the peer is skipped; no threadpoolctl: said in the header
        yield
        return
    with threadpool_limits(limits=threads, user_api="blas"):
        yield


def _blas_info():
    try:
        import numpy as np
    except ImportError as e:
        return {"status": "skipped", "text": f"numpy is not installed ({e})"}
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return {"status": "ok", "text": f"numpy {np.__version__}, its BLAS unknown (no threadpoolctl)"}
    libs = [lib for lib in threadpool_info() if lib.get("user_api") == "blas"]
    # numpy's own copy first: torch or scipy may load other BLAS libraries into the process.
    libs.sort(key=lambda lib: "numpy" not in lib.get("filepath", ""))
    if not libs:
        return {"status": "ok", "text": f"numpy {np.__version__}, its BLAS unknown (threadpoolctl sees none)"}
    lib = libs[0]
    api = lib.get("internal_api", "?")
    name = {"openblas": "OpenBLAS", "mkl": "MKL", "blis": "BLIS"}.get(api, api)
    text = (f"numpy {np.__version__}'s BLAS: {name} {lib.get('version') or '(version unknown)'}, core type "
            f"{lib.get('architecture') or 'unknown'}, {lib.get('num_threads')} threads"
            + (f" ({lib['threading_layer']})" if lib.get("threading_layer") else ""))
    if api != "openblas":
        text += "; not OpenBLAS: this numpy is built on another BLAS"
    return {"status": "ok", "text": text, "threadpoolctl": lib}


# One tiny mkldnn_linear with oneDNN's verbose log on, in a fresh process: the log names the ISA
# oneDNN dispatches to and the kernel it chose, and turning it on here would print into the report.
_ONEDNN_PROBE = ("import sys, torch; torch.set_num_threads(int(sys.argv[1])); "
                 "x = torch.randn(64, 64).to_mkldnn(); torch._C._nn.mkldnn_linear(x, x, None)")


def _onednn_info(threads):
    if not torch.backends.mkldnn.is_available():
        return {"status": "skipped", "text": "this torch is built without oneDNN (mkldnn)"}
    env = {**os.environ, "ONEDNN_VERBOSE": "1", "DNNL_VERBOSE": "1"}
    try:
        log = subprocess.run([sys.executable, "-c", _ONEDNN_PROBE, str(threads)], env=env,
                             capture_output=True, text=True, timeout=120).stdout
    except (OSError, subprocess.SubprocessError) as e:
        log = ""
        error = describe_error(e)
    else:
        error = "no verbose log"
    found = {}
    for line in log.splitlines():
        fields = line.split(",")
        if not fields[0].endswith("_verbose"):
            continue
        for f in fields:
            for key in ("isa:", "nthr:", "oneDNN v"):
                if f.startswith(key):
                    found.setdefault(key, f[len(key):])
        if "exec" in fields and "inner_product" in fields:
            found.setdefault("kernel", fields[fields.index("inner_product") + 1])
    if "isa:" not in found:
        return {"status": "ok", "text": f"oneDNN in torch {torch.__version__}, ISA unknown ({error})"}
    version = found.get("oneDNN v", "?").split()[0]  # "3.12.0 (commit ...)": the version alone
    text = (f"oneDNN v{version}, ISA {found['isa:']}, {found.get('nthr:', '?')} threads"
            + (f", inner product kernel {found['kernel']}" if "kernel" in found else ""))
    return {"status": "ok", "text": text, "isa": found["isa:"], "kernel": found.get("kernel")}


def describe(peers, device, threads):
    """name -> {"status": "ok" or "skipped", "text": what the header says, ...} for each peer."""
    out = {}
    for name in peers:
        if device.type != "cpu":
            out[name] = {"status": "skipped", "text": f"a CPU library, not timed on {device}"}
        else:
            out[name] = _blas_info() if name == "openblas" else _onednn_info(threads)
    return out


def _openblas(x, weight, bias):
    import numpy as np

    if x.dtype not in (torch.float32, torch.float64):
        return f"numpy's BLAS has no {str(x.dtype).replace('torch.', '')} matmul"
    xn, wt = x.numpy(), weight.numpy().T  # W.T: a transposed view, BLAS's "T" flag, no copy
    out = np.empty((x.shape[0], weight.shape[0]), dtype=xn.dtype)
    matmul, add, maximum = np.matmul, np.add, np.maximum
    if bias is None:
        def run():
            return matmul(xn, wt, out=out)
    else:
        bn = bias.numpy()

        def run():
            matmul(xn, wt, out=out)
            add(out, bn, out=out)
            return maximum(out, 0, out=out)
    return run, torch.from_numpy


def _onednn(x, weight, bias):
    if not torch.backends.mkldnn.is_available():
        return "this torch is built without oneDNN (mkldnn)"
    if x.dtype == torch.float64:
        return "oneDNN has no float64"
    xm, wm = x.to_mkldnn(), weight.to_mkldnn()
    linear = torch._C._nn.mkldnn_linear
    if bias is None:
        def run():
            return linear(xm, wm, None)
    else:
        def run():
            return torch.relu_(linear(xm, wm, bias))
    return run, lambda y: y.to_dense()


def _checked(make, x, weight, bias, expected):
    """The peer's callable after one call whose result matched ``expected``, or why not."""
    try:
        made = make(x, weight, bias)
        if isinstance(made, str):
            return "skipped: " + made
        run, to_tensor = made
        got = to_tensor(run())
    except Exception as e:  # not installed, or fails on this dtype or CPU: reported, never fatal
        return "skipped: " + describe_error(e)
    rtol = _RTOL.get(x.dtype, 1e-4)
    atol = rtol * max(1.0, expected.abs().max().item())
    if got.shape != expected.shape or not torch.allclose(got.to(expected.dtype), expected, rtol=rtol, atol=atol):
        diff = (got.to(expected.dtype) - expected).abs().max().item() if got.shape == expected.shape else None
        what = f"max |difference| {diff:.3g}, tolerance {atol:.3g}" if diff is not None else f"shape {tuple(got.shape)}"
        return f"wrong result against plain PyTorch: {what}"
    return run


def build(peers, device, x, weight, bias, reference):
    """name -> callable (result checked) or why not, for each peer; ``bias`` None: the GEMM.
    ``reference()`` computes plain PyTorch's result, only when there is a peer to check."""
    makers = {"openblas": _openblas, "onednn": _onednn}
    if device.type != "cpu":
        return {name: f"skipped: a CPU library, not timed on {device}" for name in peers}
    if not peers:
        return {}
    expected = reference()
    return {name: _checked(makers[name], x, weight, bias, expected) for name in peers}
