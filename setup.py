"""Builds fused_linreg._C: the CPU kernels always, the CUDA kernels when a CUDA toolkit and a
CUDA build of torch are present (FUSED_LINREG_CUDA=0|1 forces either way).

It is built against the torch of the environment it is installed into: `pip install .` finds
that torch (build_backend/fused_linreg_backend.py), and so does `pip install --no-build-isolation .`.
The wheel requires exactly that torch version; the extension records it and refuses to load
under another (see fused_linreg/_build_check.py).
"""
import glob
import hashlib
import json
import os
import sys
import sysconfig

from setuptools import find_packages, setup

try:
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
except ImportError:
    sys.exit(
        "fused_linreg: torch must be installed before building, and the build must see it. In the "
        "environment you will run in, install torch and the build tools (setuptools, wheel, ninja; "
        "a C++ compiler is needed too), then build without isolation:\n"
        "    pip install torch setuptools wheel ninja && pip install --no-build-isolation ."
    )

ROOT = os.path.dirname(os.path.abspath(__file__))
DEFAULT_CUDA_ARCHS = "8.0;9.0"


def cuda_toolkit_found():
    """torch guesses CUDA_HOME from $CUDA_HOME, else from the nvcc on PATH, which may be a wrapper
    outside the toolkit (then the headers are missing): check that it holds nvcc and headers."""
    needed = [("bin", "nvcc"), ("include", "cuda_runtime.h")]
    return CUDA_HOME is not None and all(
        os.path.exists(os.path.join(CUDA_HOME, *p)) for p in needed)


def want_cuda():
    """CUDA kernels whenever a CUDA build of torch and a CUDA toolkit are found (no GPU needed);
    FUSED_LINREG_CUDA=0|1 forces either way."""
    forced = os.environ.get("FUSED_LINREG_CUDA")
    possible = torch.version.cuda is not None and cuda_toolkit_found()
    if forced == "1":
        if not possible:
            sys.exit(
                "fused_linreg: FUSED_LINREG_CUDA=1 needs a CUDA build of torch "
                f"(this is {torch.__version__}) and a CUDA toolkit with nvcc and headers "
                f"(CUDA_HOME={CUDA_HOME}; set CUDA_HOME, e.g. CUDA_HOME=/usr/local/cuda)"
            )
        return True
    if forced == "0":
        return False
    if torch.version.cuda is not None and not possible:
        print(f"fused_linreg: no CUDA toolkit at CUDA_HOME={CUDA_HOME}: "
              "building the CPU kernels only")
    return possible


def cuda_wheel_include_dirs():
    """CUDA headers shipped inside the nvidia-* wheels (cuBLAS, cuSPARSE, ...), which ATen's CUDA
    headers include but a bare nvcc toolkit may lack."""
    dirs = []
    for base in sys.path:
        dirs += glob.glob(os.path.join(base, "nvidia", "cu*", "include"))
        dirs += glob.glob(os.path.join(base, "nvidia", "*", "include"))
    return sorted(set(d for d in dirs if os.path.isdir(d)))


def extension(with_cuda):
    sources = sorted(glob.glob("csrc/*.cpp") + glob.glob("csrc/cpu/*.cpp") + glob.glob("csrc/bench/*.cpp"))
    defines = [f'-DFUSED_LINREG_TORCH_VERSION="{torch.__version__}"']
    # -g0: no debug info, so rebuilds and links stay quick. -ffp-contract=fast: a * b + c is one
    # FMA in the kernels, as in ATen's vectorized code. -fopenmp: at::parallel_for is an inline
    # OpenMP loop, serial without it; only compiled in, not linked, so that its GOMP_* calls bind
    # to the OpenMP runtime torch already loaded (one thread pool, set by torch.set_num_threads).
    cxx = ["-O3", "-g0", "-ffp-contract=fast", "-fno-math-errno", "-fopenmp", *defines]
    link = []
    if os.environ.get("FUSED_LINREG_SANITIZE") == "1":  # the sanitizer build that CI tests
        cxx += ["-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-fno-sanitize-recover=all"]
        link += ["-fsanitize=address,undefined"]
    if not with_cuda:
        return CppExtension(
            "fused_linreg._C",
            sources,
            include_dirs=[os.path.join(ROOT, "csrc")],
            extra_compile_args={"cxx": cxx},
            extra_link_args=link,
        )
    archs = os.environ.get("TORCH_CUDA_ARCH_LIST") or DEFAULT_CUDA_ARCHS
    os.environ["TORCH_CUDA_ARCH_LIST"] = archs
    cuda_defines = ["-DFUSED_LINREG_WITH_CUDA", f'-DFUSED_LINREG_CUDA_ARCHS="{archs}"']
    return CUDAExtension(
        "fused_linreg._C",
        sources + sorted(glob.glob("csrc/cuda/*.cu") + glob.glob("csrc/cuda/*.cpp")),
        include_dirs=[os.path.join(ROOT, "csrc")] + cuda_wheel_include_dirs(),
        extra_link_args=link,
        extra_compile_args={
            "cxx": cxx + cuda_defines,
            "nvcc": ["-O3", "--expt-relaxed-constexpr", *defines, *cuda_defines],
        },
    )


def build_temp_dir():
    """The object files' directory, kept between builds: setuptools compiles an editable install
    in a new temporary directory each time, so ninja would rebuild everything. One directory per
    interpreter, torch installation and build variant, so that builds against different torches
    do not replace each other's objects; within one, ninja rebuilds only what changed."""
    variant = {
        "torch": os.path.dirname(torch.__file__),
        "torch_version": torch.__version__,
        "cuda": WITH_CUDA,
        "sanitize": os.environ.get("FUSED_LINREG_SANITIZE") == "1",
    }
    key = hashlib.sha256(json.dumps(variant, sort_keys=True).encode()).hexdigest()[:10]
    tag = sysconfig.get_config_var("SOABI") or f"py{sys.version_info[0]}{sys.version_info[1]}"
    return os.path.join(ROOT, "build", f"objects-{tag}-torch{torch.__version__}-{key}")


class BuildWithMetadata(BuildExtension):
    """Builds in build_temp_dir(), and also writes fused_linreg/_build_meta.json next to the
    extension: what it was built against, read at import time before the extension is loaded."""

    def finalize_options(self):
        super().finalize_options()
        self.build_temp = build_temp_dir()
        # distutils adds the include directory of the build's venv, which holds no headers (and
        # under pip's venv isolation is a new temporary path each time): on the command lines it
        # would only make ninja rebuild everything.
        self.include_dirs = [d for d in self.include_dirs
                             if any(files for _, _, files in os.walk(d))]
        # setuptools skips an extension whose output is newer than its sources, even when that
        # output (build/lib..., shared by all builds in this tree) was linked against another
        # torch. ninja decides what to recompile; the link always runs (a few seconds).
        self.force = True

    def run(self):
        super().run()
        for ext in self.extensions:
            out_dir = os.path.dirname(self.get_ext_fullpath(ext.name))
            meta = {
                "torch_version": torch.__version__,
                "cuda": WITH_CUDA,
            }
            with open(os.path.join(out_dir, "_build_meta.json"), "w") as f:
                json.dump(meta, f)


WITH_CUDA = want_cuda()

setup(
    name="fused_linreg",
    version="0.1.0",
    description="Fused Linear+ReLU and SGD kernels (C++/CUDA) for PyTorch training loops",
    packages=find_packages(include=["fused_linreg", "fused_linreg.*"]),
    ext_modules=[extension(WITH_CUDA)],
    cmdclass={"build_ext": BuildWithMetadata.with_options(use_ninja=True)},
    python_requires=">=3.9",
    # Exactly the torch built against: a wheel installs only where it can be imported.
    install_requires=[f"torch=={torch.__version__}", "numpy"],
    zip_safe=False,
)
