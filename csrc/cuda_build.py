"""Whether setup.py builds the CUDA kernels of bitmaps._C, where the CUDA toolkit is, and whether a
failed CUDA build must fail the install. Plain Python (no torch import), so tests can drive it
on any machine: tests/test_setup_cuda.py.

The rules:
- ``BITMAPS_SKIP_CUDA=1``: no CUDA kernels, whatever is installed.
- ``BITMAPS_REQUIRE_CUDA=1``: CUDA kernels or a failed install; a torch without CUDA or a missing
  toolkit is an error at once, naming what is missing.
- Otherwise CUDA is *expected* when torch was built with CUDA and a toolkit (nvcc) is found; then
  a failed CUDA build fails the install, loudly, instead of leaving a CPU-only bitmaps._C whose
  GPU tests all skip. With a CUDA torch but no toolkit the build is CPU-only and says why.

The toolkit: ``CUDA_HOME`` / ``CUDA_PATH``; else the ``nvcc`` on PATH with symlinks resolved; else,
when that ``nvcc`` is a wrapper script outside the toolkit (``/usr/local/bin/nvcc`` holding
``exec /usr/local/cuda-13.0/bin/nvcc "$@"``), the toolkit nvcc itself reports (``nvcc --dryrun``
prints ``TOP=<toolkit>``); else ``/usr/local/cuda``. torch's own guess, the parent of the folder
holding ``nvcc``, is ``/usr/local`` for such a wrapper, which is why setup.py passes this one on.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Mapping
from typing import NamedTuple

# TORCH_CUDA_ARCH_LIST when none is set: sm_80 (mma.sync b1; runs on every sm_8x, Orin's sm_87
# included) and sm_90a (Hopper wgmma b1). aarch64 hosts add sm_87 (Jetson Orin) for its own SASS.
DEFAULT_ARCH_LIST = "8.0;9.0a"
DEFAULT_ARCH_LIST_AARCH64 = "8.0;8.7;9.0a"


class CudaBuildError(RuntimeError):
    """CUDA was required and cannot be built; the message says what is missing."""


class CudaPlan(NamedTuple):
    build: bool  # compile csrc/kernels/*.cu and csrc/torch/*.cu
    required: bool  # a failed build fails the install
    cuda_home: str | None
    reason: str  # one line for the build log


def is_toolkit(home: str | None) -> bool:
    """A folder holding a CUDA toolkit: bin/nvcc and include/cuda_runtime_api.h."""
    return bool(home) and (
        os.path.isfile(os.path.join(home, "bin", "nvcc"))
        and os.path.isfile(os.path.join(home, "include", "cuda_runtime_api.h"))
    )


def nvcc_reported_home(
    nvcc: str, run: Callable[..., subprocess.CompletedProcess] = subprocess.run
) -> str | None:
    """The toolkit folder the given nvcc (or the nvcc a wrapper script runs) says it lives in."""
    with tempfile.TemporaryDirectory() as tmp:
        try:
            proc = run(
                [nvcc, "--dryrun", "-c", "probe.cu", "-o", "probe.o"],
                cwd=tmp,
                capture_output=True,
                text=True,
                timeout=60,
            )
        except (OSError, subprocess.SubprocessError):
            return None
    for line in (proc.stdout or "").splitlines() + (proc.stderr or "").splitlines():
        if line.startswith("#$ TOP="):
            return os.path.realpath(line[len("#$ TOP=") :].strip())
    return None


def find_cuda_home(
    environ: Mapping[str, str],
    which: Callable[[str], str | None] = shutil.which,
    run: Callable[..., subprocess.CompletedProcess] = subprocess.run,
    default: str = "/usr/local/cuda",
) -> str | None:
    """The CUDA toolkit folder (see the module docstring for the order), or None."""
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if is_toolkit(environ.get(var)):
            return environ[var]
    nvcc = which("nvcc")
    if nvcc:
        home = os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))
        if is_toolkit(home):
            return home
        home = nvcc_reported_home(nvcc, run)
        if is_toolkit(home):
            return home
    return default if is_toolkit(default) else None


def plan_cuda(
    environ: Mapping[str, str], torch_cuda: str | None, cuda_home: str | None
) -> CudaPlan:
    """What to build, from the environment, torch.version.cuda and the toolkit found."""
    if environ.get("BITMAPS_SKIP_CUDA", "0") == "1":
        return CudaPlan(False, False, None, "BITMAPS_SKIP_CUDA=1: CUDA kernels left out")
    required = environ.get("BITMAPS_REQUIRE_CUDA", "0") == "1"
    if torch_cuda is None:
        if required:
            raise CudaBuildError(
                "BITMAPS_REQUIRE_CUDA=1 but the installed torch has no CUDA (torch.version.cuda is "
                "None): install a CUDA build of torch"
            )
        return CudaPlan(False, False, None, "torch has no CUDA: CPU kernels only")
    if cuda_home is None:
        if required:
            raise CudaBuildError(
                f"BITMAPS_REQUIRE_CUDA=1 but no CUDA toolkit was found for torch's CUDA {torch_cuda}"
                " (no nvcc on PATH, CUDA_HOME unset): install the toolkit or set CUDA_HOME"
            )
        return CudaPlan(
            False,
            False,
            None,
            f"torch has CUDA {torch_cuda} but no CUDA toolkit (nvcc) was found: CPU kernels only "
            "(set CUDA_HOME to build the CUDA kernels)",
        )
    why = "BITMAPS_REQUIRE_CUDA=1" if required else "expected: CUDA torch and a toolkit"
    reason = f"CUDA kernels ({why}; torch CUDA {torch_cuda}, toolkit {cuda_home})"
    return CudaPlan(True, True, cuda_home, reason)


def default_arch_list(machine: str) -> str:
    return DEFAULT_ARCH_LIST_AARCH64 if machine in ("aarch64", "arm64") else DEFAULT_ARCH_LIST


def failure_message(plan: CudaPlan, exc: BaseException) -> str:
    """The one error setup.py ends with when a required CUDA build failed."""
    return (
        f"bitmaps: building bitmaps._C with CUDA failed ({type(exc).__name__}: {exc}); "
        f"{plan.reason}. Fix the error above, or set BITMAPS_SKIP_CUDA=1 to install without the "
        "CUDA kernels"
    )
