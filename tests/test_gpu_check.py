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
