"""Build the private native solver modules.

- ``mads_fast._solver_cpu``: C++ lazy-greedy facility location (OpenMP, AVX-512 kernels chosen at run time).
  Always built; set ``MADS_FAST_BUILD_CPU=0`` to install the pure-Python (NumPy) backend only.
- ``mads_fast._solver_cuda``: the CUDA twin, compiled with nvcc against the CUDA runtime only (never torch).
  ``MADS_FAST_BUILD_CUDA=1`` forces it (and fails loudly without nvcc), ``=0`` skips it, unset builds it when
  ``nvcc`` is found.

Both compile csrc/graph_greedy.cpp (host C++: the greedy over a given kNN graph, ``graph_lazy_greedy``).

The top-level ``kernels/`` folder installs as ``mads_fast.kernels`` so that no package named ``kernels`` lands
in site-packages.
"""
import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).parent.resolve()


def _flag(name):
    value = os.environ.get(name, "").strip().lower()
    if value in ("", "auto"):
        return None
    return value not in ("0", "false", "no", "off")


def _nvcc():
    explicit = os.environ.get("NVCC")
    if explicit:
        return explicit
    found = shutil.which("nvcc")
    if found:
        return found
    cuda_home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH") or "/usr/local/cuda"
    candidate = Path(cuda_home) / "bin" / "nvcc"
    return str(candidate) if candidate.exists() else None


def _cublas(nvcc):
    """(include dir, library file) of cuBLAS: the toolkit's own, else the nvidia-cublas wheel (cu13 or cu12)."""
    import glob
    import importlib.util

    roots = [Path(nvcc).resolve().parent.parent]
    for pkg in ("nvidia.cu13", "nvidia.cublas"):
        try:
            spec = importlib.util.find_spec(pkg)
        except ModuleNotFoundError:
            spec = None
        if spec and spec.submodule_search_locations:
            roots += [Path(p) for p in spec.submodule_search_locations]
    for root in roots:
        header = root / "include" / "cublas_v2.h"
        libs = sorted(glob.glob(str(root / "lib64" / "libcublas.so*")) + glob.glob(str(root / "lib" / "libcublas.so*")))
        if header.exists() and libs:
            return str(header.parent), libs[0]
    raise RuntimeError("cuBLAS not found (cublas_v2.h + libcublas.so): install the CUDA toolkit's cuBLAS or "
                       "`pip install nvidia-cublas`")


ext_modules = []
build_cpu = _flag("MADS_FAST_BUILD_CPU")
if build_cpu is None or build_cpu:
    from pybind11.setup_helpers import Pybind11Extension

    ext_modules.append(
        Pybind11Extension(
            "mads_fast._solver_cpu",
            sources=["csrc/facility_location.cpp", "csrc/graph_greedy.cpp", "csrc/bindings_cpu.cpp"],
            include_dirs=["csrc"],
            depends=sorted(str(p.relative_to(ROOT)) for p in (ROOT / "csrc").glob("*.h")),  # rebuild on a header
            cxx_std=17,
            extra_compile_args=["-O3", "-fopenmp", "-fno-math-errno"],
            extra_link_args=["-fopenmp"],
        )
    )


class BuildExt(build_ext):
    """build_ext that also compiles the CUDA module with nvcc when asked or available."""

    def run(self):
        super().run()
        want = _flag("MADS_FAST_BUILD_CUDA")
        nvcc = _nvcc()
        if want is False:
            return
        if nvcc is None:
            if want:
                raise RuntimeError("MADS_FAST_BUILD_CUDA=1 but nvcc was not found (set NVCC or CUDA_HOME)")
            return
        if not (ROOT / "csrc" / "facility_location.cu").exists():
            if want:
                raise RuntimeError("MADS_FAST_BUILD_CUDA=1 but csrc/facility_location.cu is missing")
            return
        self._build_cuda(nvcc)

    def _build_cuda(self, nvcc):
        import pybind11
        import sysconfig

        suffix = sysconfig.get_config_var("EXT_SUFFIX")
        target = Path(self.get_ext_fullpath("mads_fast._solver_cuda"))
        target.parent.mkdir(parents=True, exist_ok=True)
        archs = os.environ.get("MADS_FAST_CUDA_ARCHS", "80;90").split(";")
        gencode = []
        for arch in archs:
            arch = arch.strip()
            if arch:
                gencode += [f"-gencode=arch=compute_{arch},code=sm_{arch}"]
        blas_include, blas_lib = _cublas(nvcc)
        cmd = [
            nvcc, "-O3", "-std=c++17", "--shared", "-Xcompiler", "-fPIC", "-Xcompiler", "-fvisibility=hidden",
            *gencode,
            f"-I{ROOT / 'csrc'}", f"-I{blas_include}", f"-I{pybind11.get_include()}",
            f"-I{sysconfig.get_paths()['include']}",
            str(ROOT / "csrc" / "facility_location.cu"), str(ROOT / "csrc" / "graph_greedy.cpp"),
            str(ROOT / "csrc" / "bindings_cuda.cpp"),
            "-cudart=static", f"-Xlinker={blas_lib}", f"-Xlinker=-rpath,{Path(blas_lib).parent}", "-o", str(target),
        ]
        print("building mads_fast._solver_cuda:", " ".join(cmd), file=sys.stderr)
        subprocess.check_call(cmd)
        if self.inplace:
            dest = ROOT / "mads_fast" / f"_solver_cuda{suffix}"
            if dest.resolve() != target.resolve():
                shutil.copyfile(target, dest)


setup(
    packages=["mads_fast", "mads_fast.extraction", "mads_fast.solver", "mads_fast.store", "mads_fast.kernels"],
    package_dir={"mads_fast.kernels": "kernels"},
    # PEP 561: the package is typed, and the compiled modules have stubs
    package_data={"mads_fast": ["py.typed", "*.pyi"]},
    ext_modules=ext_modules,
    cmdclass={"build_ext": BuildExt},
    zip_safe=False,
)
