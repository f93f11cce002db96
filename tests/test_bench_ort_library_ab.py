"""benchmarks/bench_ort_library_ab.py: a missing library is one line and exit 2 before anything is
exported, and two sessions of the same library on one model compare as equal (no difference, both
timed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture
def ab(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # the scripts import their siblings
    import bench_ort_library_ab

    return bench_ort_library_ab


def test_missing_library_is_one_line_and_exit_2(ab, tmp_path, capsys) -> None:
    code = ab.main([str(tmp_path / "old.so"), str(tmp_path / "new.so")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.strip().count("\n") == 0 and "no such library" in err


def test_same_library_compares_equal(ab) -> None:
    from bitmaps.core.ort import library_missing
    from bitmaps.runtime.onnxruntime import single_node_model

    if library_missing():
        pytest.skip(f"needs libbitmaps_ort.so: {library_missing()}")
    from bitmaps import get_library_path

    model, _ = single_node_model(70, 48)
    feed = {"X": np.random.default_rng(0).standard_normal((5, 70)).astype(np.float32)}
    lib = get_library_path()
    old, new, diff = ab._compare(model, feed, [lib, lib], 1, rounds=3, calls=2)
    assert diff == 0.0
    assert old > 0 and new > 0
    created = ab._creation(model, [lib, lib], 1, rounds=2)
    assert len(created) == 2 and min(created) > 0
    table = ab.table([{"what": "x", "old_ms": old, "new_ms": new, "ratio": old / new,
                       "max_abs_diff": diff},
                      {"what": "session creation", "old_ms": created[0], "new_ms": created[1],
                       "ratio": created[0] / created[1], "max_abs_diff": None}])  # fmt: skip
    assert "| x |" in table and "| session creation |" in table
