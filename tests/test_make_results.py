"""benchmarks/make_results.py on a temporary RESULTS.md and fake result files: the tables are
rendered from the files, only the marked blocks change, ``--check`` sees staleness, and a missing or
corrupt result file is one line and exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import assert_one_line_error

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
MACHINE = {"cpu": "Fake CPU 9000", "cores": 3, "torch": "0.0-test"}


@pytest.fixture
def make_results(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # the scripts import bench_results as a sibling
    import make_results

    return make_results


def _run(make_results, capsys, md: Path, root: Path, *extra: str) -> tuple[int, str, str]:
    code = make_results.main(["--results", str(md), "--root", str(root), *extra])
    out, err = capsys.readouterr()
    return code, out, err


def _record(name: str, accuracy: float, wall_s: float, steps: int = 300) -> dict:
    return {
        "name": name,
        "group": "recipe",
        "label": f"label of {name}",
        "config": {"train": {"steps": 1000, "batch_size": 32}},
        "sets": [f"train.steps={steps}", "train.batch_size=16"],
        "command": "bitmaps train ...",
        "train_wall_s": wall_s,
        "eval": {"cross_entropy": 5.0, "accuracy": accuracy, "mrr": 0.3},
        "machine": MACHINE,
    }


def _write(path: Path, data: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


@pytest.fixture
def tree(tmp_path: Path) -> tuple[Path, Path]:
    """(root with fake ablation results, RESULTS.md with one stale recipe block)."""
    results = tmp_path / "benchmarks" / "ablation" / "results"
    _write(results / "r300-b.json", _record("r300-b", 0.1, 120.0))
    _write(results / "r300-a.json", _record("r300-a", 0.2, 600.0))
    _write(results / "teacher-bert-tiny.eval.json",
           {"cross_entropy": 4.0, "accuracy": 0.4, "mrr": 0.5})  # fmt: skip
    md = tmp_path / "RESULTS.md"
    md.write_text(
        "# Results\n\nhand-written text\n\n"
        "<!-- make_results:ablation-recipe begin -->\nstale table\n"
        "<!-- make_results:ablation-recipe end -->\n\nafter the block\n"
    )
    return tmp_path, md


def test_renders_the_block_from_the_files_and_leaves_the_rest(make_results, capsys, tree) -> None:
    root, md = tree
    code, _, err = _run(make_results, capsys, md, root)
    assert code == 0, err
    text = md.read_text()
    assert text.startswith("# Results\n\nhand-written text\n\n<!-- make_results:ablation-recipe")
    assert text.endswith("<!-- make_results:ablation-recipe end -->\n\nafter the block\n")
    assert "stale table" not in text
    assert "Fake CPU 9000, 3 cores" in text
    assert "run_ablation.py --group recipe" in text
    rows = [line for line in text.splitlines() if line.startswith("| `r300-")]
    # retention = accuracy / the teacher's 0.4; train wall in minutes and per step at 300 steps
    assert rows == [
        "| `r300-a` | label of r300-a | 300 | 16 | 5.000 | 0.2000 | 0.3000 | 0.500 | 10.0 | 2.00 |",
        "| `r300-b` | label of r300-b | 300 | 16 | 5.000 | 0.1000 | 0.3000 | 0.250 | 2.0 | 0.40 |",
    ]
    assert _run(make_results, capsys, md, root, "--check")[0] == 0
    again = _run(make_results, capsys, md, root)
    assert again[0] == 0 and md.read_text() == text  # idempotent


def test_check_detects_a_stale_table_and_writes_nothing(make_results, capsys, tree) -> None:
    root, md = tree
    assert _run(make_results, capsys, md, root, "--check")[0] == 1  # the block says "stale table"
    assert "stale table" in md.read_text()
    assert _run(make_results, capsys, md, root)[0] == 0
    _write(root / "benchmarks/ablation/results/r300-c.json", _record("r300-c", 0.3, 60.0))
    before = md.read_text()
    code, _, err = _run(make_results, capsys, md, root, "--check")
    assert code == 1 and "ablation-recipe" in err
    assert md.read_text() == before


@pytest.mark.parametrize("int8_peak", [None, 2500.0])
def test_a_benchmark_file_is_rendered_by_its_own_table(
    make_results, capsys, tmp_path, int8_peak
) -> None:
    rows = [
        {"kind": "peak", "loop": "binary: fake zmm", "gmacs": 1000.0},
        {"kind": "peak", "loop": "fp32: fake zmm", "gmacs": None},
        {"kind": "peak", "loop": "int8: fake tiles", "gmacs": int8_peak},
        {
            "kind": "gemm",
            "op": "matmul fp32",
            "M": 1024,
            "K": 8,
            "N": 8,
            "best_gmacs": 50.0,
            "median_gmacs": 40.0,
        },  # fmt: skip
        {
            "kind": "gemm",
            "op": "xnor_gemm",
            "M": 1024,
            "K": 8,
            "N": 8,
            "best_gmacs": 500.0,
            "median_gmacs": 400.0,
        },  # fmt: skip
        {
            "kind": "gemm",
            "op": "onnxruntime int8 (MatMulInteger)",
            "M": 1024,
            "K": 8,
            "N": 8,
            "best_gmacs": 250.0,
            "median_gmacs": 200.0,
        },  # fmt: skip
    ]
    meta = {"command": "python benchmarks/bench_popcount_ceiling.py --threads 3",
            "date": "today", "machine": MACHINE}  # fmt: skip
    _write(tmp_path / "benchmarks/results/popcount-ceiling.json", {"meta": meta, "rows": rows})
    md = tmp_path / "RESULTS.md"
    md.write_text(
        "<!-- make_results:popcount-ceiling begin -->\n<!-- make_results:popcount-ceiling end -->\n"
    )
    code, _, err = _run(make_results, capsys, md, tmp_path)
    assert code == 0, err
    text = md.read_text()
    assert "`python benchmarks/bench_popcount_ceiling.py --threads 3` on Fake CPU 9000" in text
    assert "| fp32: fake zmm | not available (no such unit, or its use refused) |" in text
    assert "| xnor_gemm | 8 | 8 | 500.0 | 400.0 | 50 % |" in text  # 500 of the 1000 peak
    assert "vs measured torch.matmul FP32 (best shape, best sample): 20.0x" in text
    # the INT8 GEMM against the INT8 peak where the CPU has one (250 of 2500)
    share = "-" if int8_peak is None else "10 %"
    assert f"| onnxruntime int8 (MatMulInteger) | 8 | 8 | 250.0 | 200.0 | {share} |" in text
    assert "INT8 GEMM (best shape, best sample: 250 G int8 MAC/s): 4.0x; xnor_gemm" in text
    assert "vs it: 2.0x" in text
    per_mac = "popcount ceiling vs INT8 peak of the same cores (per multiply-accumulate): 0.40x"
    assert (per_mac in text) == (int8_peak is not None)
    if int8_peak is None:
        assert "| int8: fake tiles | not available (no such unit, or its use refused) |" in text


@pytest.mark.parametrize("damage", ["missing teacher", "corrupt record", "missing bench file"])
def test_a_missing_or_corrupt_result_file_is_one_line(make_results, capsys, tree, damage) -> None:
    root, md = tree
    results = root / "benchmarks/ablation/results"
    if damage == "missing teacher":
        (results / "teacher-bert-tiny.eval.json").unlink()
        needle = "teacher-bert-tiny.eval.json does not exist"
    elif damage == "corrupt record":
        (results / "r300-a.json").write_text('{"name": "r300-a", "eval": ')
        needle = "r300-a.json is not a JSON file"
    else:
        md.write_text(md.read_text() + "<!-- make_results:kernels-cpu begin -->\n"
                      "<!-- make_results:kernels-cpu end -->\n")  # fmt: skip
        needle = "kernels-cpu.json does not exist"
    before = md.read_text()
    code, _, err = _run(make_results, capsys, md, root)
    assert_one_line_error(code, err, needle)
    assert md.read_text() == before


def test_a_record_without_its_fields_and_bad_markers_are_one_line(
    make_results, capsys, tree
) -> None:
    root, md = tree
    _write(root / "benchmarks/ablation/results/r300-x.json", {"name": "r300-x"})
    code, _, err = _run(make_results, capsys, md, root)
    assert_one_line_error(code, err, "r300-x.json: not a run_ablation.py record")
    md.write_text("<!-- make_results:ablation-recipe begin -->\nno end\n")
    assert_one_line_error(*_run(make_results, capsys, md, root)[::2], "begin has no end")
    md.write_text("<!-- make_results:nope begin -->\n<!-- make_results:nope end -->\n")
    assert_one_line_error(*_run(make_results, capsys, md, root)[::2], "unknown table 'nope'")


def test_the_committed_results_md_is_up_to_date(make_results, capsys) -> None:
    # every generated table of benchmarks/RESULTS.md matches the committed result files
    code = make_results.main(["--check"])
    assert code == 0, capsys.readouterr().err


@pytest.mark.parametrize(("amx", "said"), [("withheld", True), ("available", False)])
def test_profile_table_says_when_amx_was_withheld(make_results, tmp_path, amx, said) -> None:
    rows = [
        {"model": m, "backend": "onnxruntime", "batch": 1, "seq": 128, "latency_ms_p50": p50,
         "latency_ms_p90": p50, "weights_mb": 1.0, "file_mb": 1.0, "peak_mem_mb": 2.0}
        for m, p50 in (("int8", 40.0), ("binary", 16.0))
    ]  # fmt: skip
    meta = {"command": "bitmaps profile --amx withhold", "date": "today",
            "machine": {**MACHINE, "threads": 2, "amx": amx}}  # fmt: skip
    path = tmp_path / "profile.json"
    _write(path, {"meta": meta, "rows": rows})
    text = make_results.profile_table([path])
    assert ("Fake CPU 9000, 3 cores, AMX withheld from every backend" in text) == said
    assert "| binary | onnxruntime | 1 | 128 | 16.0 |" in text and "2.50×" in text


def test_gpu_check_report_is_rendered_as_written_and_a_foreign_file_refused(
    make_results, tmp_path
) -> None:
    report = tmp_path / "report.md"
    report.write_text(
        "# gpu-check (2026-12-04 12:02 UTC, 196 s)\n\n- GPU: NVIDIA H200\n\n"
        "| stage | status | note |\n|---|---|---|\n| env | PASS | ok |\n\n## bert.md\n\n| a |\n"
    )
    text = make_results.gpu_check_report([report])
    assert text.startswith("`make gpu-check` (2026-12-04 12:02 UTC, 196 s in all):")
    assert "| env | PASS | ok |" in text and "#### bert.md" in text
    report.write_text("# something else\n")
    with pytest.raises(make_results.BitmapsError, match="not a gpu_check.py report"):
        make_results.gpu_check_report([report])
