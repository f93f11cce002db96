"""benchmarks/bench_avx2_kloop.py: both forms of the AVX2 GEMM's K loop build against csrc/kernels,
give the same bits on every BERT-base shape, and are timed; the table names this CPU's form."""

from __future__ import annotations

import json
import platform
import re
from pathlib import Path

import pytest
from conftest import benchmark_module


def cpuinfo(name: str) -> str:
    """A field of /proc/cpuinfo's first processor ("" where it is missing)."""
    path = Path("/proc/cpuinfo")
    found = re.search(rf"^{name}\s*:\s*(.*)$", path.read_text(), re.M) if path.is_file() else None
    return found.group(1).strip() if found else ""


@pytest.fixture(scope="module")
def bench():
    if platform.machine() not in ("x86_64", "AMD64"):
        pytest.skip(f"needs an x86 CPU (the K loops are AVX2 code); this is {platform.machine()}")
    if not {"avx2", "f16c"} <= set(cpuinfo("flags").split()):
        pytest.skip("needs a CPU with avx2 and f16c (the AVX2 path), read from /proc/cpuinfo")
    return benchmark_module("bench_avx2_kloop", needs_cxx=True)


def cpu_kloop_expected() -> str:
    """The form bitmaps should pick here, from what the OS reports: folded on AMD family 17h
    below model 30h (Zen 1 / Zen+), Hygon family 18h (Dhyana) and AMD family 19h models 00h-0Fh
    and 20h-5Fh (Zen 3), registers elsewhere."""
    vendor, family = cpuinfo("vendor_id"), cpuinfo("cpu family")
    model = int(cpuinfo("model") or 0)
    amd = vendor == "AuthenticAMD"
    zen1 = (amd and family == "23" and model < 0x30) or (
        vendor == "HygonGenuine" and family == "24"
    )
    zen3 = amd and family == "25" and (model < 0x10 or 0x20 <= model < 0x60)
    return "folded" if zen1 or zen3 else "registers"


def test_both_forms_agree_and_are_timed(bench, tmp_path: Path) -> None:
    out = tmp_path / "kloop.json"
    assert bench.main(["--rounds", "1", "--reps", "2", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["shape"] for r in rows] == ["768 x 2304", "768 x 768", "768 x 3072", "3072 x 768",
                                          "3072 x 768, unsigned"]  # fmt: skip
    for r in rows:
        assert 0 < r["registers_min_us"] <= r["registers_us"]
        assert 0 < r["folded_min_us"] <= r["folded_us"]
        assert r["registers_over_folded"] == pytest.approx(r["registers_us"] / r["folded_us"])
        assert r["cpu_kloop"] == cpu_kloop_expected()
    assert f"bitmaps runs `{rows[0]['cpu_kloop']}` on this CPU" in bench.table(rows)


def test_bad_counts_are_refused(bench) -> None:
    with pytest.raises(SystemExit) as exc:
        bench.main(["--rounds", "0"])
    assert exc.value.code == 2
