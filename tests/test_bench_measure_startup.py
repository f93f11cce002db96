"""benchmarks/bench_measure_startup.py: ONNX Runtime's measuring process timed as it is and with
torch imported first; each way's imports read back, the run failing where they are not as said."""

from __future__ import annotations

import json
import os

import pytest
from conftest import benchmark_module


def test_both_ways_run_and_only_one_imports_torch(tmp_path):
    bench = benchmark_module("bench_measure_startup")
    out = tmp_path / "startup.json"
    assert bench.main(["--rounds", "1", "--out", str(out)]) == 0
    rows = {r["way"]: r for r in json.loads(out.read_text())["rows"]}
    assert rows.keys() == set(bench.WAYS)
    assert rows["as it is (no torch)"]["torch_imported"] is False
    assert rows["torch imported first"]["torch_imported"] is True
    assert all(len(r["all_s"]) == 1 and r["median_s"] > 0 for r in rows.values())
    text = bench.table(list(rows.values()))
    assert "| as it is (no torch) |" in text and "| 1.0x |" in text


def test_a_failing_process_stops_the_benchmark(tmp_path):
    bench = benchmark_module("bench_measure_startup")
    job = bench._job(tmp_path)  # noqa: SLF001 - the benchmark's own job
    (tmp_path / "add.onnx").unlink()  # the process cannot open its session
    with pytest.raises(SystemExit, match="the measuring process failed"):
        bench._run("as it is (no torch)", job, dict(os.environ))  # noqa: SLF001
