"""benchmarks/bench_attention_int8_speed.py: the int8 prototype builds against csrc/kernels, agrees
with the scalar version of its integer scheme, stays near the float kernel, and both are timed."""

from __future__ import annotations

import json
import platform
from pathlib import Path

import pytest
from conftest import benchmark_module


@pytest.fixture(scope="module")
def bench():
    if platform.machine() not in ("x86_64", "AMD64"):
        pytest.skip(f"needs an x86 CPU (the prototype is AVX2 code); this is {platform.machine()}")
    return benchmark_module("bench_attention_int8_speed", needs_cxx=True)


def test_prototype_matches_its_scalar_scheme_and_is_timed(bench, tmp_path: Path) -> None:
    out = tmp_path / "int8.json"
    assert bench.main(["--rounds", "1", "--reps", "2", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["kernel"] for r in rows] == ["float32 (bitmaps)", "int8 prototype (avx2)",
                                           "int8 (bitmaps)"]  # fmt: skip
    for r in rows:
        assert 0 < r["min_us"] <= r["median_us"]
        assert r["max_abs_vs_scalar"] < 1e-4  # the AVX2 kernel computes the scalar scheme
        # rounded operands: near the float kernel's output, not equal to it
        assert 0 < r["max_abs_vs_float"] < 0.1 * r["max_abs_float"]
        # the shipped scheme rounds the probabilities a little differently (module docstring)
        assert r["shipped_max_abs_vs_scalar"] < 0.05 * r["max_abs_float"]
    assert rows[0]["speedup_vs_float"] == 1.0
    assert "int8 prototype" in bench.table(rows)


def test_bad_counts_are_refused(bench) -> None:
    with pytest.raises(SystemExit) as exc:
        bench.main(["--reps", "0"])
    assert exc.value.code == 2
