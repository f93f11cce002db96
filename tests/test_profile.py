"""`bitmaps profile`: rows for every available (model, backend) in DESIGN.md's schema, the plot,
`--show`, weight bytes of binary BERT-base, the measuring helpers, and bad input (one line, exit 2,
no output file).

The end-to-end runs use a real small model: BERT-tiny as the teacher and its binarization as the
student (untrained: latency and memory do not depend on training; accuracy is only checked for
consistency), with few repeats.
"""

from __future__ import annotations

import copy
import errno
import json
import math
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from conftest import amx_withhold_problem, assert_one_line_error, benchmark_module

from bitmaps.cli import main

SCHEMA = {
    "model",
    "backend",
    "device",
    "batch",
    "seq",
    "latency_ms_p50",
    "latency_ms_p90",
    "latency_ms_p99",
    "throughput_seq_s",
    "weights_mb",
    "file_mb",
    "peak_mem_mb",
}
ACCURACY = {"cross_entropy", "accuracy", "mrr"}
FAST = ["--repeats", "2", "--min-time", "0", "--warmup", "1", "--warmup-time", "0"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def run(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["profile", *args])
    out, err = capsys.readouterr()
    return code, out, err


def _available(backend: str) -> bool:
    from bitmaps.runtime.backends import backend_problem

    return backend_problem(backend) is None


def _expected_targets() -> tuple[set[tuple[str, str, str]], set[tuple[str, str, str]]]:
    """(rows expected, (backend, device, model) left out) from what this machine reports, the
    way `profile --backend all` decides: fp16 on a CPU (torch, ONNX Runtime) only where it computes in FP16
    (AVX512-FP16, AMX-FP16, Arm FP16 flags in /proc/cpuinfo), CUDA rows only with a GPU, each
    backend only where installed."""
    from bitmaps.runtime.backends import cpu_has_fp16_math, model_problem

    devices = {"torch": ["cpu"], "onnxruntime": ["cpu"], "tensorrt": []}
    if torch.cuda.is_available():
        devices["torch"].append("cuda")
        devices["tensorrt"].append("cuda")
    expected, left_out = set(), set()
    for backend, found in devices.items():
        for device in found if _available(backend) else []:
            for model in ("fp32", "fp16", "int8", "binary"):
                fp16_emulated = (
                    (device, model) == ("cpu", "fp16")
                    and backend in ("torch", "onnxruntime")
                    and not cpu_has_fp16_math()
                )
                missing = model_problem(backend, device, model, named=False) is not None
                target = (backend, device, model)
                (left_out if fp16_emulated or missing else expected).add(target)
    return expected, left_out


@pytest.fixture(scope="module")
def tiny_pair(tmp_path_factory, bert_tiny_dir):
    """(teacher.pt, student.pt): BERT-tiny and its W1A1 binarization, as bitmaps checkpoints."""
    from bitmaps.core.checkpoint import save_checkpoint
    from bitmaps.core.config import BinarizeConfig
    from bitmaps.train.binary_linear import binarize_
    from bitmaps.train.models import load_model

    folder = tmp_path_factory.mktemp("ckpt")
    loaded = load_model("bert-tiny")
    teacher = save_checkpoint(
        folder / "teacher.pt",
        model=loaded.model,
        tokenizer=loaded.tokenizer_info,
        meta={"stage": "teacher"},
    )
    student_model = copy.deepcopy(loaded.model)
    cfg = BinarizeConfig()
    binarize_(student_model, cfg)
    student = save_checkpoint(
        folder / "student.pt",
        model=student_model,
        tokenizer=loaded.tokenizer_info,
        binarize=cfg.to_dict(),
        meta={"stage": "student"},
    )
    return teacher, student


@pytest.fixture(scope="module")
def tiny_workdir(tmp_path_factory):
    """One --workdir for the runs on tiny_pair: an export one run made (same checkpoint, model,
    dtype, output and target: the same cache key) is reused by the next, as in `make demo`."""
    return tmp_path_factory.mktemp("profile-work")


@pytest.fixture(scope="module")
def tiny_run(tiny_pair, tiny_workdir, tmp_path_factory, sotu_dir):
    """One real run over every backend installed here, with --data, --json and --plot."""
    teacher, student = tiny_pair
    out = tmp_path_factory.mktemp("profile")
    json_path, plot_path = out / "profile.json", out / "profile.png"
    args = ["--model", str(student), "--teacher", str(teacher), "--backend", "all"]
    args += ["--batch", "1,2", "--seq", "8,16", "--data", str(sotu_dir), "--eval-sequences", "16"]
    args += ["--json", str(json_path), "--plot", str(plot_path), "--workdir", str(tiny_workdir)]
    args += FAST
    code = main(["profile", *args])
    assert code == 0
    return json_path, plot_path


@pytest.mark.slow
def test_rows_for_every_available_model_and_backend(tiny_run) -> None:
    data = json.loads(tiny_run[0].read_text())
    rows, meta = data["rows"], data["meta"]
    expected, left_out = _expected_targets()
    assert {("torch", "cpu", "fp32"), ("torch", "cpu", "binary")} <= expected  # on any machine
    if not _available("tensorrt"):
        assert any(
            s["backend"] == "tensorrt" and "TensorRT" in s["reason"] for s in meta["skipped"]
        )
    assert {(r["backend"], r["device"], r["model"]) for r in rows} == expected
    skipped = {(s["backend"], s["device"], s["model"]) for s in meta["skipped"]}
    assert left_out <= skipped, "every model left out is listed in meta.skipped with its reason"
    for target in expected:  # every (batch, seq) of every (model, backend, device)
        shapes = {(r["batch"], r["seq"]) for r in rows if (r["backend"], r["device"], r["model"])
                  == target}  # fmt: skip
        assert shapes == {(1, 8), (1, 16), (2, 8), (2, 16)}, target
    for r in rows:
        assert set(r) == SCHEMA | ACCURACY, r
        lat = [r["latency_ms_p50"], r["latency_ms_p90"], r["latency_ms_p99"]]
        assert all(math.isfinite(v) and v > 0 for v in lat), r
        assert lat == sorted(lat), r
        assert math.isfinite(r["throughput_seq_s"]) and r["throughput_seq_s"] > 0, r
        assert r["weights_mb"] > 0 and r["file_mb"] > 0 and r["peak_mem_mb"] > 0, r
        assert 0 < r["accuracy"] <= r["mrr"] <= 1 and r["cross_entropy"] > 0
    assert meta["command"].startswith("bitmaps profile --model")
    assert meta["machine"]["threads"] >= 1 and meta["machine"]["native_status"]
    paths = {(p["backend"], p["device"], p["model"]): p["path"] for p in meta["paths"]}
    assert set(paths) == expected
    if _available("onnxruntime"):
        assert "libbitmaps_ort.so" in paths["onnxruntime", "cpu", "binary"]
        assert "plain ONNX Runtime" in paths["onnxruntime", "cpu", "fp32"]


@pytest.mark.slow
def test_binary_rows_are_smaller_and_accuracy_is_per_model(tiny_run) -> None:
    rows = json.loads(tiny_run[0].read_text())["rows"]
    by = {(r["backend"], r["model"], r["batch"], r["seq"]): r for r in rows}
    for (backend, model, b, s), r in by.items():
        if model == "binary" and (backend, "fp32", b, s) in by:
            assert r["weights_mb"] < by[backend, "fp32", b, s]["weights_mb"]
    if ("onnxruntime", "int8", 1, 8) in by:  # ONNX Runtime's INT8: smaller than fp32, scored too
        int8, fp32 = by["onnxruntime", "int8", 1, 8], by["onnxruntime", "fp32", 1, 8]
        assert int8["weights_mb"] < fp32["weights_mb"] / 3
        assert 0 < int8["accuracy"] <= 1
    for model in ("fp32", "binary"):  # one model, one evaluation, on every backend row
        scores = {
            (r["cross_entropy"], r["accuracy"], r["mrr"]) for r in rows if r["model"] == model
        }
        assert len(scores) == 1


@pytest.mark.slow
def test_plot_is_a_png(tiny_run) -> None:
    data = tiny_run[1].read_bytes()
    assert len(data) > 10_000 and data.startswith(PNG_MAGIC)


@pytest.mark.slow
def test_show_round_trip(capsys, tiny_run, tmp_path) -> None:
    json_path = tiny_run[0]
    code, first, err = run(capsys, "--show", str(json_path), "--plot", str(tmp_path / "again.png"))
    assert code == 0, err
    rows = json.loads(json_path.read_text())["rows"]
    for r in rows:
        assert f"{r['throughput_seq_s']:.1f}" in first
    assert "speed-up of binary" in first and "vs fp32" in first
    assert (tmp_path / "again.png").read_bytes().startswith(PNG_MAGIC)
    code, second, _ = run(capsys, "--show", str(json_path))
    assert code == 0 and second == first
    bare = tmp_path / "rows.json"  # a bare list of rows is a valid file too
    bare.write_text(json.dumps(rows))
    code, out, err = run(capsys, "--show", str(bare))
    assert code == 0, err
    assert "bitmaps profile" in out


def test_bert_base_binary_weights(capsys, tmp_path) -> None:
    """BERT-base shapes: the encoder (what is binarized) > 7x smaller; the whole encoder model
    with its FP32 embeddings > 4x; fp32 = 4 bytes per parameter of BertModel(BertConfig())."""
    from transformers import BertConfig, BertModel

    json_path = tmp_path / "p.json"
    code, out, err = run(
        capsys,
        "--shape",
        "bert-base",
        "--backend",
        "torch",
        "--models",
        "fp32,binary",
        "--batch",
        "1",
        "--seq",
        "8",
        "--json",
        str(json_path),
        "--repeats",
        "1",
        "--min-time",
        "0",
        "--warmup",
        "0",
    )
    assert code == 0, err
    data = json.loads(json_path.read_text())
    w = {r["model"]: r["weights_mb"] for r in data["rows"]}
    with torch.device("meta"):
        ref = BertModel(BertConfig(), add_pooling_layer=False)
    fp32_bytes = sum(p.numel() * 4 for p in ref.parameters())
    # buffers (position_ids, token_type_ids) are index tables, not weights: not counted
    assert w["fp32"] == pytest.approx(fp32_bytes / 1e6, rel=1e-9)
    assert w["binary"] < w["fp32"] / 4
    parts = data["meta"]["weights_by_part_mb"]
    assert parts["binary"]["encoder"] < parts["fp32"]["encoder"] / 7
    # the student's embeddings as `bitmaps export` ships them (bitmaps/core/embeddings.py):
    # per table row, packed values + one scale per group, in the model's dtype (fp32: 4 bytes)
    from bitmaps.core.embeddings import STUDENT_EMBEDDING_GROUP, STUDENT_EMBEDDINGS, num_groups

    cfg, mode = BertConfig(), STUDENT_EMBEDDINGS
    rows = cfg.vocab_size + cfg.max_position_embeddings + cfg.type_vocab_size
    h = cfg.hidden_size
    groups = num_groups(h, mode, STUDENT_EMBEDDING_GROUP)
    half = groups * STUDENT_EMBEDDING_GROUP // 2
    packed = {"fp32": 4 * h, "fp16": 2 * h, "int8": h, "int4": half}
    table = rows * (packed[mode] + 4 * groups) + 2 * 4 * h  # + the embedding LayerNorm
    assert parts["binary"]["embeddings"] == pytest.approx(table / 1e6, rel=1e-9)
    assert "goal: binary encoder >= 7x smaller in weight bytes than FP32: met" in out


# --------------------------------------------------------------------------- helpers


class FakeClock:
    """A clock that each timed call advances by a fixed step: the stop rule without sleeping."""

    def __init__(self, step_s: float) -> None:
        self.now, self.step_s = 0.0, step_s

    def __call__(self) -> float:
        return self.now

    def call(self, calls: list[int]):  # noqa: ANN201
        def call(i: int) -> float:
            calls.append(i)
            self.now += self.step_s
            return self.step_s * 1e3

        return call


def test_time_calls_stop_rule() -> None:
    from bitmaps.runtime.timing import MIN_CALLS, time_calls

    clock, calls = FakeClock(0.01), []
    timing = {"warmup": 2, "repeats": 5, "min_time": 0.0, "max_time": 10.0}
    assert time_calls(clock.call(calls), timing, clock) == [10.0] * 5
    assert calls == [0, 1, 0, 1, 2, 3, 4]  # 2 warm-up, 5 timed
    calls.clear()  # min_time holds it beyond repeats: 0.1 s of 0.01 s calls
    timing = {"warmup": 0, "repeats": 2, "min_time": 0.1, "max_time": 10.0}
    assert len(time_calls(clock.call(calls), timing, clock)) == 10
    calls.clear()  # max_time ends it, after MIN_CALLS at least
    timing = {"warmup": 0, "repeats": 10**9, "min_time": 0.0, "max_time": 0.05}
    assert len(time_calls(clock.call(calls), timing, clock)) == 5
    slow = FakeClock(1.0)
    assert len(time_calls(slow.call([]), timing, slow)) == MIN_CALLS
    calls.clear()  # warm-up runs for warmup_time: 0.05 s of 0.01 s calls, then 2 timed
    timing = {"warmup": 1, "warmup_time": 0.05, "repeats": 2, "min_time": 0.0, "max_time": 1.0}
    assert time_calls(clock.call(calls), timing, clock) == [10.0] * 2
    assert calls == [0, 1, 2, 3, 4, 0, 1]


def test_time_alternating_takes_turns() -> None:
    from bitmaps.runtime.timing import time_alternating

    order: list[str] = []

    def timer(name: str, ms: float):  # noqa: ANN202
        return lambda i: order.append(name) or ms + i

    a, b = time_alternating([timer("a", 1.0), timer("b", 5.0)], repeats=3)
    assert order == ["a", "b"] * 3 and a == [1.0, 2.0, 3.0] and b == [5.0, 6.0, 7.0]


def test_inputs_are_the_same_for_every_model() -> None:
    from bitmaps.runtime.measure import make_inputs

    a = make_inputs(30522, 2, 16, seed=0, rotations=3)
    b = make_inputs(30522, 2, 16, seed=0, rotations=3)
    assert len(a) == 3 and all(np.array_equal(x[0], y[0]) for x, y in zip(a, b, strict=True))
    assert not np.array_equal(a[0][0], a[1][0])  # rotated: different batches
    assert int(a[0][0].min()) >= 1000 and a[0][0].max() < 30522
    assert a[0][0].dtype == a[0][1].dtype == np.int64 and a[0][0].shape == (2, 16)
    assert not np.array_equal(a[0][0], make_inputs(30522, 2, 16, seed=1, rotations=1)[0][0])


def test_onnxruntime_measuring_process_imports_no_torch(tmp_path) -> None:
    """ONNX Runtime's measuring process (python -m bitmaps.runtime.measure) times a model and
    reports its shapes without importing torch (the job of benchmarks/bench_measure_startup.py:
    a trivial model, two shapes)."""
    from bitmaps.runtime.measure import RESULT_PREFIX
    from bitmaps.runtime.profile import run_worker

    job_file = benchmark_module("bench_measure_startup")._job(tmp_path)  # noqa: SLF001
    results = []
    run_worker(json.loads(job_file.read_text()), results.append)
    assert [r.get("loaded") for r in results[:1]] == [{}]
    assert sorted((r["batch"], r["seq"]) for r in results[1:]) == [(1, 8), (2, 16)]
    # -X importtime: every module the process imports, on stderr
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "bitmaps.runtime.measure", str(job_file)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count(RESULT_PREFIX) == 3
    imported = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines()}
    assert {"onnxruntime.capi._pybind_state", "bitmaps.core.ort"} <= imported
    assert "torch" not in imported and "bitmaps.runtime.measure_torch" not in imported


def test_weight_breakdown_counts_packed_words_and_the_panels_held_beside_them() -> None:
    from transformers import BertConfig, BertForMaskedLM

    from bitmaps.core.config import BinarizeConfig
    from bitmaps.runtime.backends import inference_module, weight_breakdown
    from bitmaps.train.binary_linear import binarize_

    cfg = BertConfig(
        vocab_size=100,
        hidden_size=40,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=70,
        max_position_embeddings=32,
    )
    fp32 = BertForMaskedLM(cfg).eval()
    binary = copy.deepcopy(fp32)
    binarize_(binary, BinarizeConfig())
    a = weight_breakdown(inference_module(fp32, "fp32", "hidden", "cpu"))
    module = inference_module(copy.deepcopy(binary), "binary", "hidden", "cpu")
    b = weight_breakdown(inference_module(binary, "binary", "hidden", "cpu"))
    # per layer: 4 linears 40->40, 40->70, 70->40; FP32 weights out, packed words + scale in
    words = 4 * 40 * 2 + 70 * 2 + 40 * 3  # ceil(40/32) = 2, ceil(70/32) = 3
    dropped = (4 * 40 * 40 + 40 * 70 + 70 * 40) * 4
    added = words * 4 + (4 * 40 + 70 + 40) * 4  # packed int32 + float32 w_scale
    # held beside them on the CPU: the GEMM's panels [ceil(N/16), KW, 16] int32 per linear, and
    # each FFN's bit table
    panels = (4 * 3 * 2 + 5 * 2 + 3 * 3) * 16 * 4
    tables = sum(t.numel() * 4 for n, t in module.named_buffers() if n.endswith("ffn_table"))
    assert tables > 0
    assert a["encoder"] - b["encoder"] == 2 * (dropped - added - panels) - tables
    # the binary model ships quantized embedding tables (bitmaps/core/embeddings.py): smaller
    assert 0 < b["embeddings"] < a["embeddings"] and a["head"] == 0
    assert a["total"] == a["encoder"] + a["embeddings"]


def test_speedups_from_rows() -> None:
    from bitmaps.runtime.report import best_vs_best, speedups

    def row(model: str, backend: str, p50: float) -> dict:
        return {
            "model": model,
            "backend": backend,
            "device": "cpu",
            "batch": 1,
            "seq": 128,
            "latency_ms_p50": p50,
        }

    rows = [
        row("fp32", "torch", 100.0),
        row("binary", "torch", 25.0),
        row("fp16", "torch", 50.0),
        row("fp32", "onnxruntime", 80.0),
        row("binary", "onnxruntime", 40.0),
        row("int8", "onnxruntime", 60.0),
    ]
    s = {x["backend"]: x for x in speedups(rows)}
    assert s["torch"]["vs_fp32"] == 4.0 and s["torch"]["vs_fp16"] == 2.0
    assert s["onnxruntime"]["vs_fp32"] == 2.0 and s["onnxruntime"]["vs_fp16"] is None
    assert s["onnxruntime"]["vs_int8"] == 1.5 and s["torch"]["vs_int8"] == 60.0 / 25.0
    (best,) = best_vs_best(rows)
    assert best["fp32"]["backend"] == "onnxruntime" and best["binary"]["backend"] == "torch"
    assert best["speedup"] == 80.0 / 25.0


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--backend", "torch,nope"], "nope"),
        (["--batch", "0"], "batch size must be >= 1"),
        (["--batch", "1,x"], "--batch"),
        (["--seq", "513"], "512"),
        (["--models", "int2"], "int2"),
        (["--model", "student.pt"], "--teacher"),
        (["--teacher", "teacher.pt", "--models", "binary"], "--model"),
        (["--teacher", "nope.pt", "--models", "fp32"], "nope.pt"),
        (["--shape", "bert-base", "--model", "s.pt", "--teacher", "t.pt"], "not both"),
        (["--shape", "bert-base", "--data", "x.txt"], "--data"),
        (["--repeats", "0"], "repeats"),
        (["--batch", "1,99999999999999999999"], "batch size must be <= 65536"),
        (["--threads", "99999999999999999999"], "threads must be <= 4096"),
        (["--warmup", "99999999999999999999"], "warmup must be <= 100000"),
        (["--seed", "99999999999999999999"], "seed must be <= 4294967295"),
        (["--min-time", "5", "--max-time", "1"], "max_time"),
        (["--amx", "off"], "--amx"),
    ],
)
def test_bad_input_one_line_no_output(capsys, tmp_path, monkeypatch, args, needle) -> None:
    monkeypatch.chdir(tmp_path)
    out = ["--json", str(tmp_path / "p.json"), "--plot", str(tmp_path / "p.png")]
    code, _, err = run(capsys, *args, *out, "--workdir", str(tmp_path / "w"))
    assert_one_line_error(code, err, needle)
    assert not (tmp_path / "p.json").exists() and not (tmp_path / "p.png").exists()


def test_amx_withhold_elsewhere_is_one_line(capsys, tmp_path, monkeypatch) -> None:
    """--amx withhold where it cannot work (not Linux on x86-64): refused before any work."""
    from bitmaps.runtime import amx

    monkeypatch.setattr(amx, "supported", lambda: False)
    code, _, err = run(capsys, "--amx", "withhold", "--json", str(tmp_path / "p.json"))
    assert_one_line_error(code, err, "--amx withhold needs Linux on x86-64")
    assert not (tmp_path / "p.json").exists()


def test_amx_withhold_run(capsys, tmp_path, tiny_pair, tiny_workdir) -> None:
    """A real run with --amx withhold: the measuring processes refuse the tiles (their INT8 runs
    on VNNI where the CPU has AMX), and the JSON, the command and the machine line say so."""
    if amx_withhold_problem() is not None:
        pytest.skip(amx_withhold_problem())
    teacher, student = tiny_pair
    json_path = tmp_path / "p.json"
    args = ["--model", str(student), "--teacher", str(teacher), "--backend", "onnxruntime"]
    args += ["--models", "int8,binary", "--batch", "1", "--seq", "8", "--amx", "withhold"]
    args += ["--json", str(json_path), "--workdir", str(tiny_workdir), *FAST]
    code, out, _ = run(capsys, *args)
    assert code == 0
    meta = json.loads(json_path.read_text())["meta"]
    assert meta["machine"]["amx"] == "withheld" and "--amx withhold" in meta["command"]
    assert meta["config"]["amx"] == "withhold"
    assert "AMX withheld from every backend" in out
    rows = json.loads(json_path.read_text())["rows"]
    assert {r["model"] for r in rows} == {"int8", "binary"}


def test_tensorrt_not_installed(capsys, tmp_path) -> None:
    if _available("tensorrt"):
        pytest.skip("TensorRT is installed here with a GPU: nothing to refuse")
    code, _, err = run(capsys, "--backend", "tensorrt", "--json", str(tmp_path / "p.json"))
    assert_one_line_error(code, err, "TensorRT")
    assert not (tmp_path / "p.json").exists()


def test_cuda_without_gpu(capsys) -> None:
    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present: --device cuda is valid here")
    code, _, err = run(capsys, "--device", "cuda")
    assert_one_line_error(code, err, "CUDA")


def test_missing_data_with_real_checkpoints(capsys, tmp_path, tiny_pair) -> None:
    teacher, student = tiny_pair
    code, _, err = run(
        capsys,
        "--model",
        str(student),
        "--teacher",
        str(teacher),
        "--data",
        str(tmp_path / "missing.txt"),
        "--json",
        str(tmp_path / "p.json"),
    )
    assert_one_line_error(code, err, "missing.txt")
    assert not (tmp_path / "p.json").exists()


def test_swapped_checkpoints(capsys, tiny_pair) -> None:
    teacher, student = tiny_pair
    code, _, err = run(capsys, "--model", str(teacher), "--teacher", str(student))
    assert_one_line_error(code, err, "not")


def test_plot_must_be_png(capsys, tmp_path) -> None:
    code, _, err = run(capsys, "--plot", str(tmp_path / "p.jpg"))
    assert_one_line_error(code, err, ".png")


@pytest.mark.parametrize("content", ["", "{not json", '{"rows": []}', '[{"model": "fp32"}]'])
def test_show_bad_files(capsys, tmp_path, content) -> None:
    path = tmp_path / "bad.json"
    path.write_text(content)
    code, _, err = run(capsys, "--show", str(path))
    assert_one_line_error(code, err, str(path))


def test_show_missing_file(capsys, tmp_path) -> None:
    code, _, err = run(capsys, "--show", str(tmp_path / "none.json"))
    assert_one_line_error(code, err, "none.json")


def test_other_work_is_measured_without_counting_the_profiler() -> None:
    from bitmaps.runtime.profile import _cpu_seconds, _other_cpu_load
    from bitmaps.runtime.report import _other_work

    # 10 s on 2 cores: the machine was busy 15 CPU-seconds, 10 of them ours -> 25 % other work
    assert _other_cpu_load((0.0, 10.0, 1.0), (10.0, 25.0, 11.0), 2) == 0.25
    assert _other_cpu_load((0.0, 10.0, 1.0), (10.0, 20.0, 11.0), 2) == 0.0  # only us
    assert _other_cpu_load(None, (1.0, 1.0, 1.0), 2) is None
    assert "25%" in _other_work({"other_cpu_load": 0.25})
    assert (
        _other_work({"other_cpu_load": 0.05, "load_average_1min": [2.0, 2.0], "cores": 2}) is None
    )
    assert "load average" in _other_work({"load_average_1min": [1.8, 1.7], "cores": 2})  # old file
    sample = _cpu_seconds()
    if sample is not None:  # Linux
        busy_before, own_before = sample[1], sample[2]
        end = time.process_time() + 0.3
        while time.process_time() < end:  # burn 0.3 s of CPU in this process (not wall time)
            pass
        after = _cpu_seconds()  # both count in clock ticks (10 ms): allow a few
        assert after[2] - own_before >= 0.25 and after[1] - busy_before >= 0.25


def _valid_row(**changes) -> dict:
    row = {"model": "binary", "backend": "onnxruntime", "device": "cpu", "batch": 1, "seq": 8}
    row |= {"latency_ms_p50": 1.0, "latency_ms_p90": 1.1, "latency_ms_p99": 1.2}
    row |= {"throughput_seq_s": 1000.0, "weights_mb": 2.3, "file_mb": 2.4, "peak_mem_mb": 17.0}
    return row | changes


@pytest.mark.parametrize(
    ("changes", "needle"),
    [
        ({"latency_ms_p50": "abc"}, "latency_ms_p50 'abc'"),
        ({"latency_ms_p50": float("nan")}, "latency_ms_p50 nan"),
        ({"latency_ms_p50": None}, "latency_ms_p50 None"),
        ({"latency_ms_p90": -5}, "latency_ms_p90 -5"),
        ({"throughput_seq_s": True}, "throughput_seq_s True"),
        ({"model": 5}, "model that is not a name"),
        ({"batch": "x"}, "batch 'x'"),
        ({"seq": 0}, "seq 0"),
        ({"peak_mem_mb": "big"}, "peak_mem_mb 'big'"),
        ({"accuracy": -0.5}, "accuracy -0.5"),
        ({"latency_ms_p90": 0.5}, "latency percentiles out of order"),
    ],
)
def test_show_rows_of_wrong_types(capsys, tmp_path, changes, needle) -> None:
    # stop 44's probe: each of these was a traceback, some after the plot had been written
    path = tmp_path / "p.json"
    path.write_text(json.dumps({"rows": [_valid_row(), _valid_row(**changes)], "meta": {}}))
    code, _, err = run(capsys, "--show", str(path), "--plot", str(tmp_path / "p.png"))
    assert_one_line_error(code, err, "row 1", needle)
    assert not (tmp_path / "p.png").exists()


def test_show_accepts_sizes_not_measured(capsys, tmp_path) -> None:
    rows = [_valid_row(model="fp32"), _valid_row(peak_mem_mb=None, file_mb=float("nan"))]
    path = tmp_path / "p.json"
    path.write_text(json.dumps({"rows": rows, "meta": {}}))
    code, out, err = run(capsys, "--show", str(path))
    assert code == 0, err
    assert "n/a" in out


def test_a_cached_export_that_is_not_one_is_made_again(tmp_path) -> None:
    # a work folder's file truncated (full disk) or replaced by hand was a traceback in the
    # measuring process; now it is logged and exported again
    import onnx
    from onnx import TensorProto, helper

    from bitmaps.export.onnx_export import METADATA_PREFIX
    from bitmaps.runtime.artifacts import _reusable

    def model_file(name, **meta):
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
        graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x], [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
        ])  # fmt: skip
        model = helper.make_model(graph)
        helper.set_model_props(model, {f"{METADATA_PREFIX}{k}": v for k, v in meta.items()})
        onnx.save(model, tmp_path / name)
        return tmp_path / name

    expected = {"kind": "binary", "target": "onnxruntime"}
    logged: list[str] = []
    assert _reusable(tmp_path / "absent.onnx", expected, logged.append) is None and not logged
    (tmp_path / "garbage.onnx").write_bytes(b"\x08\x07 not a protobuf \xff\xfe")
    assert _reusable(tmp_path / "garbage.onnx", expected, logged.append) is None
    assert "does not parse" in logged[-1]
    foreign = model_file("foreign.onnx")
    assert _reusable(foreign, expected, logged.append) is None
    assert "kind, target" in logged[-1] and "making it again" in logged[-1]
    other_target = model_file("other.onnx", kind="binary", target="portable")
    assert _reusable(other_target, expected, logged.append) is None
    assert "(target)" in logged[-1]
    ours = model_file("ours.onnx", kind="binary", target="onnxruntime", dtype="fp32")
    assert _reusable(ours, expected, logged.append) is not None
    assert logged[-1] == f"reusing {ours}"


def test_show_refuses_measuring_options(capsys, tmp_path) -> None:
    path = tmp_path / "p.json"
    path.write_text(json.dumps({"rows": [_valid_row()], "meta": {}}))
    out = tmp_path / "x.json"
    code, _, err = run(capsys, "--show", str(path), "--json", str(out), "--model", "nope.pt")
    assert_one_line_error(code, err, "--show", "--model, --json")
    assert not out.exists()


def test_list_options_measure_each_item_once() -> None:
    # stop 44's probe: --models binary,binary --batch 1,1 measured the same row four times; an
    # empty item (stop 47) is refused (test_lists_and_paths_are_read_strictly)
    from bitmaps.runtime.plan import parse_int_list, parse_names

    assert parse_int_list("1,1,8,1", "--batch") == (1, 8)
    assert parse_int_list("128, 64,128", "--seq") == (128, 64)
    assert parse_names("binary,fp32,binary", "--models") == ("binary", "fp32")
    assert parse_names(" torch , torch", "--backend") == ("torch",)
    assert parse_names(None, "--models") == ()


def test_show_refuses_what_is_no_json_file(capsys, tmp_path) -> None:
    # stop 44's probe: --show /dev/zero read until the machine ran out of memory
    code, _, err = run(capsys, "--show", "/dev/zero")
    assert_one_line_error(code, err, "is not a file")
    big = tmp_path / "big.json"
    with big.open("wb") as f:
        f.truncate(65 << 20)  # sparse: no 65 MB written
    code, _, err = run(capsys, "--show", str(big))
    assert_one_line_error(code, err, "65 MB", "larger than any profile JSON file")


def test_device_metavar_is_as_typed(capsys) -> None:
    assert main(["profile", "--help"]) == 0
    assert "--device [auto|cpu|cuda]" in capsys.readouterr().out


def test_a_model_onnx_runtime_refuses_is_one_error(tmp_path) -> None:
    # stop 44's probe: a work-folder export with a bad BinaryLinear attribute was a traceback
    import onnx
    from onnx import TensorProto, helper

    from bitmaps.core.errors import BitmapsError
    from bitmaps.runtime.measure import OrtRunner

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    node = helper.make_node("NoSuchOp", ["x"], ["y"], domain="nowhere")
    graph = helper.make_graph([node], "g", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    with pytest.raises(BitmapsError, match="ONNX Runtime cannot load .*m.onnx.*delete it") as info:
        OrtRunner(str(path), "function", 1)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("meta", "needle"),
    [
        ({"format": "x"}, "meta.format is 'x'"),
        ({"format": "bitmaps-profile", "version": 5}, "version 5, newer than this bitmaps reads"),
        ({"format": "bitmaps-profile", "version": "1"}, "meta.version is '1'"),
    ],
)
def test_show_refuses_a_file_of_another_format_or_version(capsys, tmp_path, meta, needle) -> None:
    path = tmp_path / "p.json"
    path.write_text(json.dumps({"rows": [_valid_row()], "meta": meta}))
    code, _, err = run(capsys, "--show", str(path))
    assert_one_line_error(code, err, needle)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--models", ""], "--models has an empty item"),
        (["--models", ","], "--models has an empty item"),
        (["--batch", "1,,2"], "--batch has an empty item"),
        (["--seq", "8,0_1"], "--seq must be integers"),
        (["--backend", "tensorrt,all"], "all already names every backend"),
        (["--data", ""], "--data: an empty path"),
        (["--workdir", "/proc"], "cannot use --workdir /proc"),
    ],
)
def test_lists_and_paths_are_read_strictly(capsys, tmp_path, args, needle) -> None:
    """Stop 47's probe: an empty list item was dropped (`--models ""` ran the default models),
    `tensorrt,all` skipped tensorrt, `--data ""` read the current folder, and a work folder that
    takes no files (/proc) failed inside the measuring worker with two tracebacks."""
    if args[0] == "--workdir" and not os.path.isdir("/proc/self"):
        pytest.skip("needs /proc (a folder the access check passes that takes no files)")
    base = ["--shape", "bert-base"] if args[0] != "--data" else []
    code, _, err = run(capsys, *base, "--batch", "1", "--seq", "8", *args,
                       "--json", str(tmp_path / "p.json"))  # fmt: skip
    assert_one_line_error(code, err, needle)
    assert not (tmp_path / "p.json").exists()


def test_a_failed_second_output_leaves_neither(capsys, tmp_path, tiny_pair, tiny_workdir,
                                               monkeypatch) -> None:  # fmt: skip
    """Stop 48's probe: --json was written and stayed when --plot then failed (a full disk)."""
    import pathlib

    real = pathlib.Path.write_bytes

    def full(self, data):  # noqa: ANN001, ANN202
        if self.name.startswith(".p.png."):
            raise OSError(errno.ENOSPC, "No space left on device", str(self))
        return real(self, data)

    monkeypatch.setattr(pathlib.Path, "write_bytes", full)
    teacher, student = tiny_pair
    json_path, plot_path = tmp_path / "p.json", tmp_path / "p.png"
    args = ["--model", str(student), "--teacher", str(teacher), "--backend", "torch"]
    args += ["--models", "binary", "--batch", "1", "--seq", "8", "--json", str(json_path)]
    args += ["--plot", str(plot_path), "--workdir", str(tiny_workdir), *FAST]
    code, _, err = run(capsys, *args)
    assert_one_line_error(code, err, "cannot write", "p.png", "No space")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_stacked_qkv_panels_are_held_once() -> None:
    """fuse_qkv_ stacks Q, K and V's panels for one GEMM call; each layer's own panels become
    views of that buffer (they were a third copy of those weights), counted once."""
    from transformers import BertConfig, BertForMaskedLM

    from bitmaps.core.config import BinarizeConfig
    from bitmaps.runtime.backends import inference_module, weight_breakdown
    from bitmaps.train.binary_linear import binarize_

    cfg = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=32)  # fmt: skip
    model = BertForMaskedLM(cfg).eval()
    binarize_(model, BinarizeConfig(activation_quantizer="ste"))
    module = inference_module(model, "binary", "hidden", "cpu")
    attention = module.encoder.layer[0].attention.self
    assert attention.qkv_panels is not None
    for m in (attention.query, attention.key, attention.value):
        assert m.panels.untyped_storage().data_ptr() == attention.qkv_panels.data_ptr()
    from bitmaps.core import ops

    h = torch.randn(2, 7, 32)
    with torch.inference_mode():  # each layer through its view = the op on its packed rows
        for m in (attention.query, attention.key, attention.value):
            want = ops.binary_linear(h, m.packed_weight, m.w_scale, m.bias, m.in_features,
                                     m.act_threshold, m.act_scale)  # fmt: skip
            torch.testing.assert_close(m(h), want)
    parts = weight_breakdown(module)
    everything = sum(
        t.numel() * t.element_size()
        for n, t in (*module.named_parameters(), *module.named_buffers())
        if not n.endswith(("position_ids", "token_type_ids"))
    )
    views = sum(m.panels.numel() * 4 for m in (attention.query, attention.key, attention.value))
    assert parts["total"] == everything - views


def test_the_runtimes_own_memory_is_measured_beside_the_peaks(
    tiny_pair, tiny_workdir, tmp_path, capsys
) -> None:
    """Every peak includes the runtime's session, arena and threads (ONNX Runtime: some 17 MB for
    a graph of one op), which shrinks the peak ratios between models; a one-op model without
    weights, measured the same way, says how much."""
    teacher, student = tiny_pair
    json_path = tmp_path / "p.json"
    args = ["--model", str(student), "--teacher", str(teacher), "--backend", "onnxruntime"]
    args += ["--models", "fp32,binary", "--batch", "1", "--seq", "8", "--json", str(json_path)]
    code = main(["profile", *args, "--workdir", str(tiny_workdir), *FAST])
    out = capsys.readouterr().out
    assert code == 0
    data = json.loads(json_path.read_text())
    floors = data["meta"]["peak_floor_mb"]
    assert set(floors) == {"onnxruntime"}  # one per CPU backend measured, torch not asked for
    assert all(0 < floors["onnxruntime"] < r["peak_mem_mb"] for r in data["rows"])
    assert f"onnxruntime {floors['onnxruntime']:.1f} MB" in " ".join(out.split())


def test_fp16_on_a_cpu_without_fp16_arithmetic_is_measured_only_when_named(monkeypatch) -> None:
    """Emulated (torch) or float32 between casts (ONNX Runtime): not a deployment target, and a
    "vs fp16" ratio against it would flatter the binary model; by name it is measured."""
    from bitmaps.runtime import backends

    monkeypatch.setattr(backends, "cpu_has_fp16_math", lambda: False)
    for backend in ("torch", "onnxruntime"):
        why = backends.model_problem(backend, "cpu", "fp16", named=False)
        assert why is not None and "name it in --models" in why and backend in why
        assert backends.model_problem(backend, "cpu", "fp16", named=True) is None
    monkeypatch.setattr(backends, "cpu_has_fp16_math", lambda: True)
    assert backends.model_problem("onnxruntime", "cpu", "fp16", named=False) is None


def test_an_int8_file_that_is_not_quantized_is_made_again(tmp_path) -> None:
    """The INT8 file's metadata is its FP32 source's (quantize_dynamic copies it), so an FP32
    export under the INT8 name was reused and the int8 row measured the FP32 model."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from bitmaps.runtime.artifacts import INT8_OPS, Artifact, int8_artifact

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 64])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 64])
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((64, 64), np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g", [x], [y], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    helper.set_model_props(model, {"bitmaps.kind": "baseline", "bitmaps.dtype": "fp32"})
    fp32_path = tmp_path / "m-fp32-fp32-hidden.onnx"
    onnx.save(model, fp32_path)
    fp32 = Artifact(fp32_path, 64 * 64 * 4, fp32_path.stat().st_size)
    logs: list[str] = []
    made = int8_artifact(fp32, logs.append)
    assert any(n.op_type in INT8_OPS for n in onnx.load(made.path).graph.node)
    made.path.write_bytes(fp32_path.read_bytes())  # an FP32 file under the INT8 name
    again = int8_artifact(fp32, logs.append)
    assert any("not the export its name says" in m for m in logs), logs
    assert any(n.op_type in INT8_OPS for n in onnx.load(again.path).graph.node)
    int8_artifact(fp32, logs.append)  # the file made again is reused
    assert logs[-1].startswith("reusing"), logs
