"""benchmarks/goal_bounds.py: the share of the FMA peak the attention would need for issue 12's
last two goals to hold together, computed from fake result files with known numbers."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
MACS = 10_871_635_968  # BERT-base's binary multiply-accumulates at 1 x 128


@pytest.fixture
def goal_bounds(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import goal_bounds

    return goal_bounds


def _write(root: Path, name: str, rows: list[dict]) -> None:
    folder = root / "benchmarks" / "results"
    folder.mkdir(parents=True, exist_ok=True)
    meta = {"command": "fake", "date": "today", "machine": {"cpu": "Fake", "cores": 2}}
    (folder / name).write_text(json.dumps({"meta": meta, "rows": rows}), encoding="utf-8")


def _export_row(target: str, attention_ms: float, rest_ms: float, binary_ms: float) -> dict:
    return {
        "target": target,
        "batch": 1,
        "seq": 128,
        "binary_linear_ms": binary_ms,
        "remainder_ms": attention_ms + rest_ms,
        "remainder_share": (attention_ms + rest_ms) / (attention_ms + rest_ms + binary_ms),
        "remainder_top_ms": f"PackedMultiHeadAttention {attention_ms:.1f}, SkipLayerNormalization "
        f"{rest_ms:.1f}, Concat 0.0",
        "binary_macs": MACS,
        "ceiling_gmacs": 1000.0,
    }


def _cpu(goal_bounds, tmp_path: Path, rest_ms: float):
    peaks = [
        {"kind": "peak", "loop": "fp32: vfmadd231ps zmm", "gmacs": None},
        {"kind": "peak", "loop": "fp32: vfmadd231ps ymm (AVX2 + FMA)", "gmacs": 100.0},
        {"kind": "peak", "loop": "int8: vpmaddubsw+vpmaddwd+vpaddd ymm (AVX2)", "gmacs": 200.0},
        {"kind": "peak", "loop": "binary: xor+popcnt+add r64 (scalar)", "gmacs": 999.0},
    ]
    _write(tmp_path, "pc.json", peaks)
    _write(
        tmp_path,
        "et.json",
        [
            _export_row("onnxruntime", 5.0, rest_ms, 20.0),
            _export_row("onnxruntime, int8 attention", 4.0, rest_ms, 20.0),
        ],
    )
    return goal_bounds.Cpu("fake", "pc.json", ("et.json",))


def test_the_bound_is_the_attention_at_its_peak_over_what_the_budget_leaves(
    goal_bounds, tmp_path
) -> None:
    row = goal_bounds.bound(_cpu(goal_bounds, tmp_path, rest_ms=1.0), tmp_path)
    binary = MACS / 0.7e12 * 1e3  # ms at 70 % of a 1000 G ceiling
    budget = binary / 4
    attention = goal_bounds.ATTENTION_MACS / 100e9 * 1e3  # at the 100 G FMA peak
    assert row["binary_at_goal_ms"] == pytest.approx(binary)
    assert row["remainder_budget_ms"] == pytest.approx(budget)
    assert row["attention_at_fma_ms"] == pytest.approx(attention)
    assert row["rest_ms"] == pytest.approx(1.0)
    assert row["float_needs"] == pytest.approx(attention / (budget - 1.0))
    assert row["float_needs_without_rest"] == pytest.approx(attention / budget)
    assert row["float_attention_now"] == pytest.approx(attention / 5.0)
    int8 = goal_bounds.ATTENTION_MACS / 200e9 * 1e3
    assert row["int8_needs"] == pytest.approx(int8 / (budget - 1.0))
    assert row["int8_attention_now"] == pytest.approx(int8 / 4.0)
    assert row["nodes_share_now"] == pytest.approx(MACS / 20e-3 / 1e12)
    assert goal_bounds.ATTENTION_MACS == 301_989_888


def test_a_rest_over_the_budget_is_never(goal_bounds, tmp_path) -> None:
    row = goal_bounds.bound(_cpu(goal_bounds, tmp_path, rest_ms=9.0), tmp_path)
    assert math.isinf(row["float_needs"])
    assert "never" in goal_bounds.table([row])


def test_a_file_without_the_attention_node_is_refused(goal_bounds, tmp_path) -> None:
    cpu = _cpu(goal_bounds, tmp_path, rest_ms=1.0)
    row = _export_row("onnxruntime", 5.0, 1.0, 20.0)
    row["remainder_top_ms"] = "SkipLayerNormalization 1.0"
    _write(tmp_path, "et.json", [row])
    with pytest.raises(ValueError, match="PackedMultiHeadAttention"):
        goal_bounds.bound(cpu, tmp_path)
