"""Build script for the optional native extension ``bitmaps._C``.

The CPU kernels (csrc/kernels/*.cpp + csrc/torch/*.cpp) are built everywhere a C++ compiler is found.
The CUDA kernels (csrc/kernels/*.cu + csrc/torch/*.cu) are added only when torch was built with CUDA
and nvcc is available; ``BITMAPS_SKIP_CUDA=1`` leaves them out, ``TORCH_CUDA_ARCH_LIST`` picks the
architectures (default: sm_80 and sm_90a). A failed native build never fails the install: bitmaps then
runs on its plain-PyTorch reference ops, and says so (``bitmaps.core.ops.native_status()``).
"""

from __future__ import annotations

import glob
import os
import sys

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _sources(pattern: str) -> list[str]:
    return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern)))


def _want_cuda() -> bool:
    if os.environ.get("BITMAPS_SKIP_CUDA", "0") == "1":
        return False
    try:
        import torch
        from torch.utils.cpp_extension import CUDA_HOME
    except ImportError:
        return False
    return torch.version.cuda is not None and CUDA_HOME is not None


def _extensions() -> tuple[list, dict]:
    if os.environ.get("BITMAPS_NO_EXT", "0") == "1":
        return [], {}
    try:
        from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension
    except ImportError:
        print("bitmaps: torch not importable at build time; installing without bitmaps._C", file=sys.stderr)
        return [], {}

    # -ffp-contract=off: no fused multiply-add behind our back, so the CPU epilogue rounds exactly
    # like the float32 reference ((dot * s) * w_scale + bias). SIMD code needs no -m flags: the
    # AVX2 / AVX-512 functions carry target attributes and are picked at run time.
    # No -std flag: BuildExtension adds the standard the installed torch's headers need (C++20 for
    # torch 2.13, C++17 for older releases); the kernels themselves are plain C++17.
    cxx = ["-O3", "-fvisibility=hidden", "-ffp-contract=off"]
    cxx += ["-DBITMAPS_TORCH_EXTENSION"]
    # at::parallel_for is a serial loop in code compiled without OpenMP. torch ships libgomp.so.1
    # (loaded before bitmaps._C), so -fopenmp shares torch's thread pool and torch.set_num_threads.
    openmp = [] if sys.platform == "darwin" else ["-fopenmp"]
    cxx += openmp
    include_dirs = [os.path.join(ROOT, "csrc")]
    sources = _sources("csrc/kernels/*.cpp") + _sources("csrc/torch/*.cpp")
    if not sources:
        return [], {}

    if _want_cuda():
        if "TORCH_CUDA_ARCH_LIST" not in os.environ:
            os.environ["TORCH_CUDA_ARCH_LIST"] = "8.0;9.0a"
        sources += _sources("csrc/kernels/*.cu") + _sources("csrc/torch/*.cu")
        nvcc = ["-O3", "--expt-relaxed-constexpr", "-lineinfo"]
        ext = CUDAExtension(
            "bitmaps._C",
            sources,
            include_dirs=include_dirs,
            define_macros=[("BITMAPS_WITH_CUDA", "1")],
            extra_compile_args={"cxx": cxx, "nvcc": nvcc},
            extra_link_args=openmp,
        )
    else:
        ext = CppExtension(
            "bitmaps._C",
            sources,
            include_dirs=include_dirs,
            extra_compile_args={"cxx": cxx},
            extra_link_args=openmp,
        )

    class OptionalBuildExtension(BuildExtension):
        """Build bitmaps._C, but let a pure-Python install succeed when the compiler fails."""

        def run(self) -> None:
            try:
                super().run()
            except Exception as exc:  # noqa: BLE001 - any compiler failure must not fail the install
                self._warn(exc)

        def build_extension(self, ext) -> None:
            try:
                super().build_extension(ext)
            except Exception as exc:  # noqa: BLE001
                self._warn(exc)

        @staticmethod
        def _warn(exc: Exception) -> None:
            print(
                f"bitmaps: WARNING: building bitmaps._C failed ({exc}); "
                "installing the pure-Python package (reference ops only)",
                file=sys.stderr,
            )

    return [ext], {"build_ext": OptionalBuildExtension}


ext_modules, cmdclass = _extensions()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
