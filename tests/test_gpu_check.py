"""`make gpu-check` where it can run here: one line and exit 2 without a GPU, and which skips the
driver accepts for which GPU (a skip it does not expect fails the GPU run)."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _driver():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_without_a_gpu_it_is_one_line_and_exit_2():
    if shutil.which("nvidia-smi"):
        pytest.skip("this machine has nvidia-smi: gpu-check would run for real")
    if shutil.which("make") is None:
        pytest.skip("needs make")
    proc = subprocess.run(
        ["make", "-s", "gpu-check", f"GPU_PYTHON={sys.executable}"],
        cwd=ROOT, capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stdout.count("\n") == 1
    assert proc.stdout.startswith("gpu-check: no GPU to check: nvidia-smi not found")


@pytest.mark.parametrize(
    "cc,mem,allowed,refused",
    [
        ((9, 0), 141, [], ["wgmma", "mma", "test_outputs_over_2_31_elements"]),
        ((8, 6), 24, ["wgmma"], ["mma", "test_outputs_over_2_31_elements"]),
        ((12, 0), 16, ["wgmma", "mma", "test_outputs_over_2_31_elements"], []),
    ],
)
def test_expected_skips_follow_the_gpu(cc, mem, allowed, refused):
    skips = _driver().allowed_skips({"cc": list(cc), "mem_gib": mem})
    assert "test_unavailable_path_is_refused" in skips
    assert all(a in skips for a in allowed)
    assert not any(r in skips for r in refused)


def test_a_crashed_pytest_run_names_the_test_it_died_in():
    text = (
        "tests/test_cuda_ops.py::test_opcheck_on_cuda PASSED  [ 50%]\n"
        "tests/test_cuda_ops.py::test_bad_input_is_a_clear_error Fatal Python error: "
        "Segmentation fault\n\nCurrent thread 0x00007f (most recent call first):\n"
    )
    driver = _driver()
    assert (
        driver.last_started_test(text) == "tests/test_cuda_ops.py::test_bad_input_is_a_clear_error"
    )
    assert driver.last_started_test("collected 0 items\n") is None


def test_a_stage_that_raises_is_recorded_and_the_check_goes_on(capsys):
    driver = _driver()

    def broken(_arg):
        raise TypeError("sequence item 0: expected str instance, tuple found")

    driver.guarded("bert", broken, None)
    driver.guarded("sass", lambda: driver.record("sass", "PASS", "ok"))
    assert [(r["stage"], r["status"]) for r in driver.RESULTS] == [
        ("bert", "FAIL"),
        ("sass", "PASS"),
    ]
    assert "gpu_check.py raised TypeError" in driver.RESULTS[0]["note"]


def test_bad_input_cases_find_a_crash_and_its_native_frames(tmp_path, monkeypatch):
    """A case that segfaults instead of raising is named; with a C compiler, errors.log holds the
    native backtrace of the crash (the SIGSEGV handler preloaded into each case's process)."""
    driver = _driver()
    monkeypatch.setattr(driver, "OUT", tmp_path)
    monkeypatch.setattr(driver, "ERROR_CASES", ["cpu_raises", "cpu_crashes"])
    monkeypatch.setattr(
        driver,
        "ERROR_CASE",
        "import sys, ctypes\n"
        "if sys.argv[1] == 'cpu_crashes': ctypes.string_at(0)\n"
        "try:\n    raise RuntimeError('bad input')\n"
        "except RuntimeError as exc:\n    print('raised:', exc)\n",
    )
    crashed = driver.run_error_cases("test")
    assert len(crashed) == 1 and crashed[0].startswith("cpu_crashes(exit ")
    log = (tmp_path / "errors.log").read_text()
    assert "raised: bad input" in log
    if shutil.which("cc") or shutil.which("gcc"):
        assert "cpu_crashes(exit 139)" in crashed[0]
        assert "_ctypes" in log  # a native frame of the crash, not just Python's


def test_what_leaves_the_gpu_machine_fits_the_device_tool(tmp_path, monkeypatch):
    """report.md, summary.json and one archive (the device tool brings back at most 8 files); the
    full SASS dump stays behind."""
    import tarfile

    driver = _driver()
    out, dest = tmp_path / "run", tmp_path / "dest"
    out.mkdir()
    for name in ("build.log", "pytest.log", "bench-auto.md", "bert.json", "sass.log"):
        (out / name).write_text(name)
    monkeypatch.setattr(driver, "OUT", out)
    monkeypatch.setenv("GPU_CHECK_OUT", str(dest))
    driver.record("env", "PASS", "test")
    driver.write_report({"nvidia_smi": "GPU", "torch": "t", "cuda": "c"})
    assert sorted(p.name for p in dest.iterdir()) == ["gpu-check.tgz", "report.md", "summary.json"]
    with tarfile.open(dest / "gpu-check.tgz") as tar:
        names = set(tar.getnames())
    assert {"build.log", "pytest.log", "bench-auto.md", "bert.json", "report.md"} <= names
    assert "sass.log" not in names


def test_the_tensor_core_peak_loops_compile_to_their_instructions(tmp_path):
    """benchmarks/cuda_peak.cu (gpu-check's `peak` stage) builds for Hopper, and each loop is the
    instruction it is named for: b1 AND+popc, s8 and f16 mma.sync (not an emulation)."""
    from test_tensorrt_plugin import NVCC, _sass

    if NVCC is None:
        pytest.skip("needs nvcc (the CUDA toolkit) on PATH")
    exe = tmp_path / "cuda_peak"
    cmd = [NVCC, "-O3", "-std=c++17", "-gencode=arch=compute_90a,code=sm_90a", "-o", str(exe)]
    proc = subprocess.run([*cmd, str(ROOT / "benchmarks" / "cuda_peak.cu")], capture_output=True)
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    sass = _sass(exe, "sm_90a")
    for instruction in ("BMMA.168256.AND.POPC", "IMMA.16832.S8.S8", "HMMA.16816.F32"):
        assert instruction in sass, instruction
    assert "BMMA.168256.XOR" not in sass  # Hopper has no XOR b1 MMA: that loop is left out there
