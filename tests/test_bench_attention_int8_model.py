"""benchmarks/bench_attention_int8_model.py on a small student (the BERT-base one takes a minute to
export twice): both exports verify, their attention nodes differ only in the scheme, and the A/B
times the whole model and the attention node alone."""

from __future__ import annotations

import onnx
import pytest
from conftest import benchmark_module
from test_export import small_student

from bitmaps.core.ort import library_missing


@pytest.fixture(scope="module")
def bench():
    """The benchmark on the small student; each attention scheme exported once for this file's
    tests (the real export() the first time), a copy of it handed out on every call."""
    module = benchmark_module("bench_attention_int8_model")
    patch = pytest.MonkeyPatch()
    patch.setattr(module, "_student", small_student)
    real, done = module.export, {}

    def export(attention: str) -> onnx.ModelProto:
        if attention not in done:
            done[attention] = real(attention)
        copy = onnx.ModelProto()
        copy.CopyFrom(done[attention])
        return copy

    patch.setattr(module, "export", export)
    yield module
    patch.undo()


def test_exports_differ_only_in_the_attention_scheme(bench) -> None:
    models = {a: bench.export(a) for a in bench.ATTENTIONS}
    for attention, model in models.items():
        nodes = [n for n in model.graph.node if n.op_type in bench.ATTENTION_OPS]
        assert len(nodes) == 2  # the small student's two layers
        flags = {a.i for n in nodes for a in n.attribute if a.name == "int8"}
        assert flags == (set() if attention == "float" else {1})
    kinds = [[n.op_type for n in m.graph.node] for m in models.values()]
    assert kinds[0] == kinds[1]


def test_measure_times_both_in_turns(bench) -> None:
    if library_missing():
        pytest.skip(f"needs libbitmaps_ort.so: {library_missing()}")
    rows = bench.measure([2], [1], rounds=1, calls=1, seq=16)
    assert [r["what"] for r in rows] == ["model", "attention node"]
    for r in rows:
        assert r["float_ms"] > 0 and r["int8_ms"] > 0
        assert r["ratio"] == pytest.approx(r["float_ms"] / r["int8_ms"])
    model = rows[0]
    assert 0 < model["attention_share_float"] < 1 and 0 < model["attention_share_int8"] < 1
    table = bench.table(rows)
    assert "| model | 2 × 16 | 1 |" in table and "| attention node |" in table
