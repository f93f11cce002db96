"""benchmarks/bench_add_layer_norm_fusion.py: its C++ experiment builds against csrc/kernels and
runs, every variant of both cache states yields a time, and the table and files come out."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import benchmark_module


@pytest.fixture(scope="module")
def bench():
    return benchmark_module("bench_add_layer_norm_fusion", needs_cxx=True)


def test_every_variant_is_timed_in_both_cache_states(bench, tmp_path: Path) -> None:
    out = tmp_path / "fusion.json"
    assert bench.main(["--rounds", "1", "--reps", "2", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [(r["cache"], r["variant"]) for r in rows] == [
        (cache, v) for cache in ("warm", "cold") for v in bench.VARIANTS
    ]
    for r in rows:
        assert r["workers"] >= 1
        assert 0 < r["min_us"] <= r["median_us"]
        if r["variant"] == "separate":
            assert r["vs_separate"] == 1.0
    assert "| cold | fused |" in bench.table(rows)


def test_bad_counts_are_refused(bench) -> None:
    with pytest.raises(SystemExit) as exc:
        bench.main(["--rounds", "0"])
    assert exc.value.code == 2
