"""Build script for the optional native extension ``bitmaps._C``.

The CPU kernels (csrc/kernels/*.cpp + csrc/torch/*.cpp) are built everywhere a C++ compiler is found.
The CUDA kernels (csrc/kernels/*.cu + csrc/torch/*.cu) are added when torch was built with CUDA and
a CUDA toolkit is found (also through an nvcc wrapper script); ``BITMAPS_SKIP_CUDA=1`` leaves them
out, ``BITMAPS_REQUIRE_CUDA=1`` makes their absence an error, ``TORCH_CUDA_ARCH_LIST`` picks the
architectures (default: sm_80 and sm_90a, plus sm_87 on aarch64). The rules live in
csrc/cuda_build.py. When CUDA is expected (a CUDA torch and a toolkit, or BITMAPS_REQUIRE_CUDA=1), a
failed build fails the install with one line saying so. Otherwise a failed native build does not fail
the install: bitmaps then runs on its plain-PyTorch reference ops, and says so
(``bitmaps.core.ops.native_status()``).

``build_ext`` also builds ``bitmaps/libbitmaps_ort.so``, the ONNX Runtime custom-op library
(csrc/onnxruntime/build.py: needs no torch, fetches ONNX Runtime's C API headers when none are
installed). Best effort as well: without it ONNX Runtime runs the model-local function, and
``bitmaps ort-library`` says why. ``BITMAPS_SKIP_ORT=1`` leaves it out.
"""

from __future__ import annotations

import functools
import glob
import os
import sys
import sysconfig

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _sources(pattern: str) -> list[str]:
    return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern)))


@functools.cache
def _ort_build():  # noqa: ANN202 - csrc/onnxruntime/build.py as a module (no torch), loaded once
    import importlib.util

    script = os.path.join(ROOT, "csrc", "onnxruntime", "build.py")
    spec = importlib.util.spec_from_file_location("bitmaps_ort_build", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _build_ort_library(build_ext) -> None:  # noqa: ANN001
    """libbitmaps_ort.so into the package folder (in place) or build_lib; never fails the build."""
    if os.environ.get("BITMAPS_SKIP_ORT", "0") == "1":
        return
    from pathlib import Path

    base = ROOT if build_ext.inplace else build_ext.build_lib
    out = Path(base) / "bitmaps" / "libbitmaps_ort.so"
    try:
        print(f"bitmaps: built {_ort_build().build(out)}", file=sys.stderr)
    except Exception as exc:  # noqa: BLE001 - a missing compiler or header must not fail the install
        print(
            f"bitmaps: WARNING: libbitmaps_ort.so not built ({exc}); ONNX Runtime will run the "
            "model-local function for bitmaps::BinaryLinear",
            file=sys.stderr,
        )


@functools.cache
def _rules(name: str):  # noqa: ANN202 - the module csrc/<name>.py (no torch import), loaded once
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        f"bitmaps_{name}", os.path.join(ROOT, "csrc", f"{name}.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _cuda_plan():  # noqa: ANN202 - a cuda_build.CudaPlan
    """What to build (csrc/cuda_build.py); exits with one line when CUDA is required and absent."""
    import platform

    import torch

    rules = _rules("cuda_build")
    cuda_home = None
    if torch.version.cuda is not None and os.environ.get("BITMAPS_SKIP_CUDA", "0") != "1":
        cuda_home = rules.find_cuda_home(os.environ)
    try:
        plan = rules.plan_cuda(os.environ, torch.version.cuda, cuda_home)
    except rules.CudaBuildError as exc:
        raise SystemExit(f"bitmaps: {exc}") from None
    print(f"bitmaps: {plan.reason}", file=sys.stderr)
    if plan.build:
        # torch.utils.cpp_extension reads CUDA_HOME once, at import; its own guess is the parent
        # of the folder holding nvcc, which is wrong for a wrapper script (/usr/local/bin/nvcc).
        os.environ["CUDA_HOME"] = plan.cuda_home
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", rules.default_arch_list(platform.machine()))
    return plan, rules


def _extensions() -> tuple[list, dict]:
    if os.environ.get("BITMAPS_NO_EXT", "0") == "1":
        return [], {}
    try:
        import torch  # noqa: F401
    except ImportError:
        print("bitmaps: torch not importable at build time; installing without bitmaps._C", file=sys.stderr)
        return [], {}
    plan, rules = _cuda_plan()
    from torch.utils import cpp_extension
    from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension

    if plan.build:
        cpp_extension.CUDA_HOME = plan.cuda_home  # in case it was imported before _cuda_plan()

    # -ffp-contract=off: no fused multiply-add behind our back, so the CPU epilogue rounds exactly
    # like the float32 reference ((dot * s) * w_scale + bias). SIMD code needs no -m flags: the
    # AVX2 / AVX-512 functions carry target attributes and are picked at run time.
    # No -std flag: BuildExtension adds the standard the installed torch's headers need (C++20 for
    # torch 2.13, C++17 for older releases); the kernels themselves are plain C++17.
    # -g0: Python's own flags ask for debug info (-g), which made the torch-header files compile
    # 1.4-1.5x longer and bitmaps._C 21 MB instead of 1-2 MB (Zen 1 EPYC, stop 40: ops_cpu.cpp 24 s
    # -> 17 s); the symbols stay, so profilers still name every function.
    cxx = ["-O3", "-fvisibility=hidden", "-ffp-contract=off", "-g0"]
    cxx += ["-DBITMAPS_TORCH_EXTENSION"]
    # at::parallel_for is a serial loop in code compiled without OpenMP. torch ships libgomp.so.1
    # (loaded before bitmaps._C), so -fopenmp shares torch's thread pool and torch.set_num_threads.
    openmp = [] if sys.platform == "darwin" else ["-fopenmp"]
    cxx += openmp
    include_dirs = [os.path.join(ROOT, "csrc")]
    sources = _sources("csrc/kernels/*.cpp") + _sources("csrc/torch/*.cpp")
    if not sources:
        return [], {}

    if plan.build:
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
        """Build bitmaps._C; a failure fails the install only when CUDA was expected (plan)."""

        def finalize_options(self) -> None:
            # One object folder for every build of this checkout. pip's editable install (which
            # `make install` runs before `setup.py build_ext --inplace`) would otherwise compile
            # into a temporary folder, and the second build compile everything again.
            if self.build_temp is None:
                tag = f"{sysconfig.get_platform()}-{sys.implementation.cache_tag}"
                self.build_temp = os.path.join(ROOT, "build", f"temp.{tag}")
            super().finalize_options()

        def run(self) -> None:
            try:
                super().run()
            except Exception as exc:  # noqa: BLE001 - any compiler failure must not fail the install
                self._warn(exc)
            _build_ort_library(self)

        def build_extensions(self) -> None:
            self._shared_cxx_runtime()
            super().build_extensions()

        def build_extension(self, ext) -> None:
            try:
                self._shared_kernel_objects(ext)
                super().build_extension(ext)
                if sys.platform.startswith("linux"):
                    built = self.get_ext_fullpath(ext.name)
                    try:
                        _rules("cxx_build").check_extension(built)
                    except Exception:
                        os.remove(built)  # a _C that would crash on its errors is not left behind
                        raise
            except Exception as exc:  # noqa: BLE001
                self._warn(exc)

        @staticmethod
        def _shared_kernel_objects(ext) -> None:  # noqa: ANN001
            """csrc/kernels/*.cpp linked as the objects libbitmaps_ort.so, the kernel harness and
            the C++ experiments link (csrc/onnxruntime/build.py --kernel-objects: plain C++17, the
            same -O3 -ffp-contract=off, cached per compiler and flags), so a set-up compiles them
            once instead of twice (they use neither torch, OpenMP nor NDEBUG). If that build
            fails, they are compiled here with the torch sources, as before."""
            kernels = set(_sources("csrc/kernels/*.cpp"))
            if not kernels:
                return
            try:
                objects = [str(p) for p in _ort_build().kernel_objects()]
            except Exception as exc:  # noqa: BLE001 - compile them with the extension instead
                print(f"bitmaps: kernel objects not shared ({exc})", file=sys.stderr)
                return
            ext.sources = [src for src in ext.sources if src not in kernels]
            ext.extra_objects = [*ext.extra_objects, *objects]
            # a changed kernel must relink _C: setuptools rebuilds when a dependency is newer
            ext.depends = [*ext.depends, *sorted(kernels), *_sources("csrc/kernels/*.h")]

        def _shared_cxx_runtime(self) -> None:
            """Compile and link with a C++ compiler that links libstdc++ as a shared library
            (csrc/cxx_build.py says why); ninja compiles with $CXX, the link with compiler_cxx."""
            linker = getattr(self.compiler, "compiler_cxx", None)
            if not sys.platform.startswith("linux") or not linker:
                return
            current = linker[0]
            chosen, why = _rules("cxx_build").pick_cxx(current)
            if why is not None:
                print(f"bitmaps: {why}", file=sys.stderr)
                self.compiler.compiler_cxx[0] = chosen
                os.environ["CXX"] = chosen

        @staticmethod
        def _warn(exc: Exception) -> None:
            if plan.required:
                raise SystemExit(rules.failure_message(plan, exc)) from exc
            print(
                f"bitmaps: WARNING: building bitmaps._C failed ({exc}); "
                "installing the pure-Python package (reference ops only)",
                file=sys.stderr,
            )

    return [ext], {"build_ext": OptionalBuildExtension}


if __name__ == "__main__":  # also under pip: setuptools runs this file as __main__
    ext_modules, cmdclass = _extensions()
    setup(ext_modules=ext_modules, cmdclass=cmdclass)
