"""benchmarks/popcount_ceiling.c's peak loops: they build with the C compiler, every loop this CPU
can run returns a time that grows with the work, and each one the CPU cannot run says so (-1)."""

from __future__ import annotations

import ctypes
import platform
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LOOPS = {  # loop -> the CPU features it needs (/proc/cpuinfo flags)
    "xor_lut_ymm": {"avx2"},
    "xor_split_lut_ymm": {"avx2"},
    "xor_popcnt_r64": {"popcnt"},
    "fma_f32_ymm_avx2": {"avx2", "fma"},
    "int8_avx2_ymm": {"avx2"},
    "xor_popcnt_zmm": {"avx512f", "avx512vl", "avx512_vpopcntdq"},
    "fma_f32_zmm": {"avx512f", "avx512vl", "fma"},
}


def _cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        pytest.skip("needs /proc/cpuinfo (Linux) to know the CPU's features")
    line = next((x for x in text.splitlines() if x.startswith("flags")), "")
    return set(line.split(":", 1)[-1].split())


@pytest.fixture(scope="module")
def loops(tmp_path_factory) -> ctypes.CDLL:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("needs a C compiler (cc)")
    if platform.machine() not in ("x86_64", "AMD64"):
        pytest.skip("the peak loops are x86-64 assembly")
    lib = tmp_path_factory.mktemp("ceiling") / "loops.so"
    src = ROOT / "benchmarks" / "popcount_ceiling.c"
    done = subprocess.run([cc, "-O2", "-shared", "-fPIC", "-o", str(lib), str(src)], text=True,
                          capture_output=True)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    dll = ctypes.CDLL(str(lib))
    for name in LOOPS:
        getattr(dll, name).restype = ctypes.c_double
        getattr(dll, name).argtypes = [ctypes.c_int64]
    return dll


@pytest.mark.parametrize("name", sorted(LOOPS))
def test_each_loop_runs_where_the_cpu_has_its_instructions(loops, name):
    fn = getattr(loops, name)
    if not LOOPS[name] <= _cpu_flags():
        assert fn(1000) == -1.0
        return
    short = min(fn(20_000) for _ in range(3))
    long = min(fn(200_000) for _ in range(3))
    assert 0.0 < short < long  # ten times the iterations take longer (a loop that ran)
