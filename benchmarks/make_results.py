"""Regenerate the measured tables of benchmarks/RESULTS.md from the committed result files.

Each generated table sits in RESULTS.md between two markers::

    <!-- make_results:NAME begin -->
    ...
    <!-- make_results:NAME end -->

and is rewritten in place, preceded by the command and the machine (CPU model, from the result
files) that produced its numbers. Text outside the markers is left alone. NAME is one of
:data:`TABLES`:

=================  ===========================================  ===================================
NAME               result files (relative to the repository)    written by
=================  ===========================================  ===================================
ablation-recipe    benchmarks/ablation/results/r300-*.json       run_ablation.py --group recipe
ablation-long      benchmarks/ablation/results/elastic_attn_*…   run_ablation.py --group long
profile-bert-base  benchmarks/results/profile-bert-base.json     bitmaps profile --shape bert-base
spam               benchmarks/results/spam-*.json                bench_spam.py
embeddings-accuracy  benchmarks/results/embeddings-accuracy*.json bench_embeddings_accuracy.py
ort-fusions        benchmarks/results/ort-fusions.json           bench_ort_fusions.py
kernels-cpu        benchmarks/results/kernels-cpu.json           bench_kernels.py --device cpu
kernels-cuda       benchmarks/results/kernels-cuda.json          bench_kernels.py --device cuda
popcount-ceiling   benchmarks/results/popcount-ceiling.json      bench_popcount_ceiling.py
ort-custom-op      benchmarks/results/ort-custom-op.json         bench_ort_custom_op.py
ort-float-ops      benchmarks/results/ort-float-ops.json         bench_ort_float_ops.py
torch-float-ops    benchmarks/results/torch-float-ops.json       bench_torch_float_ops.py
model-breakdown    benchmarks/results/model-breakdown.json       bench_model_breakdown.py
export-targets     benchmarks/results/export-targets.json        bench_export_targets.py
ort-thread-scaling benchmarks/results/ort-thread-scaling.json    bench_ort_thread_scaling.py
embeddings         benchmarks/results/embeddings.json            bench_embeddings.py
bert-cuda          benchmarks/results/bert-cuda.json             bench_bert_cuda.py
gpu-check-h200     benchmarks/results/gpu-check-h200/report.md   make gpu-check (gpu_check.py)
gpu-check-h200-stop31  …/gpu-check-h200-stop31/report.md         make gpu-check (stop 31)
*-epyc-avx2        the same benchmarks' files on an AVX2-only AMD EPYC (stop 29)
*-epyc-avx2-stop30 the same again after the nibble-split AVX2 GEMM (stop 30)
ort-library-ab-stop31-epyc-avx2  …-ab-*stop31-epyc-avx2*.json  bench_ort_library_ab.py (stop 31)
profile-bert-base-epyc-avx2-stop31  …/profile-bert-base-stop31-epyc-avx2-run1.json  bitmaps profile
popcount-ceiling-epyc-avx2-stop32  …/popcount-ceiling-epyc-avx2-stop32.json  bench_popcount_ceiling.py
ort-library-ab-stop32-epyc-avx2  …-ab-*stop32-epyc-avx2*.json  bench_ort_library_ab.py (stop 32)
model-breakdown-epyc-avx2-stop32  …/model-breakdown-epyc-avx2-stop32*.json  bench_model_breakdown.py
popcount-ceiling-epyc-avx2-stop33  …/popcount-ceiling-epyc-avx2-stop33.json  bench_popcount_ceiling.py
ort-library-ab-stop33-epyc-avx2  …/ort-library-ab-stop33-epyc-avx2-*.json  bench_ort_library_ab.py
export-targets-epyc-avx2-stop33  …/export-targets-stop33-epyc-avx2-final.json  bench_export_targets.py
model-breakdown-epyc-avx2-stop33  …/model-breakdown-epyc-avx2-stop33.json  bench_model_breakdown.py
profile-bert-base-epyc-avx2-stop33  …/profile-bert-base-stop33-epyc-avx2-run4.json  bitmaps profile
add-layer-norm-fusion-epyc-avx2-stop34  …/add-layer-norm-fusion-…-stop34.json  bench_add_layer_norm_fusion.py
export-targets-epyc-avx2-stop34  …/export-targets-stop34-epyc-avx2.json  bench_export_targets.py
attention-int8-accuracy-stop34  …/attention-int8-accuracy-*-stop34.json  bench_attention_int8_accuracy.py
attention-int8-speed-epyc-avx2-stop34  …/attention-int8-speed-…-stop34.json  bench_attention_int8_speed.py
profile-bert-base-epyc-avx2-stop34  …/profile-bert-base-stop34-epyc-avx2-run2.json  bitmaps profile
attention-int8-model-epyc-avx2-stop35  …/attention-int8-model-…-stop35.json  bench_attention_int8_model.py
attention-int8-speed-epyc-avx2-stop35  …/attention-int8-speed-…-stop35.json  bench_attention_int8_speed.py
attention-int8-accuracy-stop35  …/attention-int8-accuracy-*-stop35.json  bench_attention_int8_accuracy.py
profile-bert-base-epyc-avx2-stop35  …/profile-bert-base-stop35-epyc-avx2-float-run3.json  bitmaps profile
profile-bert-base-int8-attention-epyc-avx2-stop35  …-stop35-epyc-avx2-int8-run1.json  … --attention int8
export-targets-epyc-avx2-stop35  …/export-targets-stop35-epyc-avx2.json  bench_export_targets.py
ort-thread-scaling-epyc-avx2-stop34  …/ort-thread-scaling-epyc-avx2-stop34.json  bench_ort_thread_scaling.py
*-epyc-zen1-stop37 the same benchmarks on an AMD Zen 1 EPYC (stop 37): popcount-ceiling,
                   avx2-kloop (bench_avx2_kloop.py), ort-library-ab (the folded K loop),
                   profile-bert-base (float run 3), profile-bert-base-int8-attention (run 3)
export-targets-epyc-zen1-stop38  …/export-targets-epyc-zen1-stop38-run*.json  bench_export_targets.py
*-epyc-zen1-stop40 the same Zen 1 EPYC (stop 40): popcount-ceiling, avx2-kloop, ort-library-ab
                   (the K-pair loop), export-targets (run*; -oldlib: the library before it),
                   profile-bert-base (float run 1)
*-epyc-zen1-stop41 the same Zen 1 EPYC (stop 41): ort-library-ab (the tiles and lane order;
                   -wide: the one-row K-pair block; -stop41-vs-stop40: all of it), export-targets
                   (run 1), profile-bert-base
*-epyc-zen1-stop42 the same Zen 1 EPYC (stop 42): export-targets (run*: the ceiling sampled at
                   both ends), profile-bert-base (float run 1), export-time (bench_export_time.py)
measure-startup-epyc-zen1-stop43  …/measure-startup-epyc-zen1-stop43.json bench_measure_startup.py
*-epyc-zen3-stop46 an AMD Zen 3 EPYC again (stop 46): popcount-ceiling, avx2-kloop (run*),
                   ort-library-ab (the folded K loop on Zen 3; stop 36's library against stop 45's),
                   export-targets (run*; -before: stop 45's library), profile-bert-base (float
                   run 2), profile-bert-base-int8-attention (run 1)
goal-bounds        the popcount-ceiling and export-targets files     goal_bounds.py (issue 12's
                   of each CPU that goal_bounds.CPUS names            last two goals, bounded)
ort-library-ab-nibble-split-epyc-avx2  …-ab-nibble-split-epyc-avx2*.json  bench_ort_library_ab.py
ort-library-ab-panel-split-epyc-avx2   …-ab-panel-split-epyc-avx2.json    bench_ort_library_ab.py
=================  ===========================================  ===================================

and ``profile-bert-base-amx-withheld`` (benchmarks/results/profile-bert-base-amx-withheld.json:
the same ``bitmaps profile`` command with ``--amx withhold``).

A benchmark writes its file with ``--out benchmarks/results/NAME.json`` (bench_results.py); the
table is rendered by that benchmark's own table function, so RESULTS.md shows what it printed.
The ablation table's retention is each row's held-out top-1 accuracy over the teacher's
(``teacher-bert-tiny.eval.json`` in the same folder).

    python benchmarks/make_results.py            # rewrite the blocks of RESULTS.md
    python benchmarks/make_results.py --check    # exit 1 when RESULTS.md is out of date

Exit status: 0 done (or up to date), 1 out of date (``--check``), 2 an error, in one line: a
missing or unreadable result file, an unknown NAME, a marker without its pair.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from bench_results import describe, load_results, markdown_table

from bitmaps.core.atomic import atomic_output
from bitmaps.core.errors import BitmapsError

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
COMMAND = "python benchmarks/make_results.py"
MARKER = re.compile(r"<!-- make_results:(?P<name>[\w-]+) (?P<end>begin|end) -->")
TEACHER_EVAL = "teacher-bert-tiny.eval.json"


@dataclasses.dataclass(frozen=True)
class Source:
    pattern: str  # glob of the result files, relative to the root
    render: Callable[[list[Path]], str]  # the files -> the block's text (without markers)


def _script(name: str) -> ModuleType:
    """A benchmark script of this folder, imported by path (benchmarks/ is not a package)."""
    path = HERE / name
    if path.stem in sys.modules:
        return sys.modules[path.stem]
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _bench(script: str, function: str = "table") -> Callable[[list[Path]], str]:
    """Render each ``--out FILE.json`` of ``script`` (in name order) with the script's own table
    function, one table per file under its command and machine."""

    def render(paths: list[Path]) -> str:
        blocks = []
        for path in paths:
            data = load_results(path)
            try:
                table = getattr(_script(script), function)(data["rows"])
            except (KeyError, TypeError, ValueError, ZeroDivisionError) as exc:
                raise BitmapsError(f"{path}: rows do not fit {script}'s table ({exc!r})") from None
            blocks.append(f"{describe(data['meta'])}:\n\n{table}")
        return "\n\n".join(blocks)

    return render


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BitmapsError(f"{path} does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BitmapsError(f"{path} is not a JSON file: {exc}") from None


def _ablation_row(path: Path, record: Any, teacher_acc: float, effective: Callable) -> list:
    try:
        ev, steps, wall = record["eval"], effective(record, "steps"), record["train_wall_s"]
        return [
            f"`{record['name']}`",
            record["label"],
            steps,
            effective(record, "batch_size"),
            f"{ev['cross_entropy']:.3f}",
            f"{ev['accuracy']:.4f}",
            f"{ev['mrr']:.4f}",
            f"{ev['accuracy'] / teacher_acc:.3f}",
            f"{wall / 60:.1f}",
            f"{wall / steps:.2f}",
        ]
    except (KeyError, TypeError, AttributeError, ValueError, ZeroDivisionError) as exc:
        raise BitmapsError(f"{path}: not a run_ablation.py record ({exc!r})") from None


def _machine(m: dict) -> str:
    return f"{m.get('cpu', 'unknown CPU')}, {m.get('cores', '?')} cores, torch {m.get('torch')}"


def ablation_table(paths: list[Path]) -> str:
    """The rows of run_ablation.py's records against the teacher of their folder."""
    if not paths:
        raise BitmapsError("no ablation result files (benchmarks/ablation/results/r300-*.json)")
    teacher_path = paths[0].parent / TEACHER_EVAL
    teacher = _read_json(teacher_path)
    if not isinstance(teacher, dict) or not isinstance(teacher.get("accuracy"), float | int):
        raise BitmapsError(f"{teacher_path}: no 'accuracy' (a `bitmaps eval --json` file?)")
    runner = _script("ablation/run_ablation.py")
    order = {run.name: i for i, run in enumerate(runner.RUNS)}
    records = [(p, _read_json(p)) for p in paths]
    records.sort(key=lambda pr: (order.get(pr[0].stem, len(order)), pr[0].stem))
    t_acc = teacher["accuracy"]
    rows = [
        [
            "teacher (FP32)",
            "fine-tuned BERT-tiny",
            "",
            "",
            f"{teacher['cross_entropy']:.3f}",
            f"{t_acc:.4f}",
            f"{teacher['mrr']:.4f}",
            "1.000",
            "",
            "",
        ]  # fmt: skip
    ]
    rows += [_ablation_row(p, r, t_acc, runner.effective) for p, r in records]
    head = ("row", "what it varies", "steps", "batch", "cross entropy", "accuracy", "MRR",
            "retention", "train wall (min)", "s/step")  # fmt: skip
    machines = sorted({_machine(r.get("machine") or {}) for _, r in records})
    groups = sorted({str(r.get("group")) for _, r in records})
    return (
        f"`python benchmarks/ablation/run_ablation.py --group {','.join(groups)} --jobs 1` on "
        f"{'; '.join(machines)} (each row's `bitmaps train` command is in its JSON); "
        f"retention = accuracy / the teacher's ({teacher_path.name}):\n\n"
        + markdown_table(head, rows, "ll" + "r" * (len(head) - 2))
    )


def spam_table(paths: list[Path]) -> str:
    """Every ``bench_spam.py --out`` file: one row per teacher model, with its commands."""
    if not paths:
        raise BitmapsError("no spam result files (benchmarks/results/spam-*.json)")
    runs = [load_results(p) for p in paths]
    rows = [r for data in runs for r in data["rows"]]
    try:
        text = _script("bench_spam.py").table(rows)
        commands = [f"- `{c}`" for r in rows for c in r["commands"]]
    except (KeyError, TypeError, ValueError, ZeroDivisionError) as exc:
        raise BitmapsError(f"spam results do not fit bench_spam.py's table ({exc!r})") from None
    lines = [f"- {describe(data['meta'])}" for data in runs]
    return "\n".join(lines) + "\n\n" + text + "\n\nTraining commands:\n\n" + "\n".join(commands)


def profile_table(paths: list[Path]) -> str:
    """A ``bitmaps profile --json`` file: every row, then binary's p50 ratios against the fp32
    and int8 rows of the same batch and sequence (each model on its own backend, same run)."""
    if len(paths) != 1:
        raise BitmapsError(f"profile: expected one result file, found {len(paths)}")
    data = _read_json(paths[0])
    try:
        meta, rows = data["meta"], data["rows"]
        m = meta["machine"]
        p50 = {(r["model"], r["backend"], r["batch"], r["seq"]): r["latency_ms_p50"] for r in rows}
        cells = []
        for r in rows:
            key = (r["batch"], r["seq"])
            ratios = []
            for base, backend in (
                ("fp32", "onnxruntime"),
                ("fp32", "torch"),
                ("int8", "onnxruntime"),
            ):
                ref = p50.get((base, backend, *key))
                mine = r["latency_ms_p50"]
                ratios.append(f"{ref / mine:.2f}×" if ref and r["model"] == "binary" else "")
            cells.append([
                r["model"], r["backend"], r["batch"], r["seq"], f"{r['latency_ms_p50']:.1f}",
                f"{r['latency_ms_p90']:.1f}", f"{r['weights_mb']:.1f}",
                f"{r['file_mb']:.1f}" if r.get("file_mb") is not None else "",
                f"{r['peak_mem_mb']:.1f}" if r.get("peak_mem_mb") is not None else "", *ratios,
            ])  # fmt: skip
        where = f"{m.get('cpu', 'unknown CPU')}, {m.get('cores', '?')} cores"
        where += ", AMX withheld from every backend" if m.get("amx") == "withheld" else ""
        head = (f"`{meta['command']}` on {where}, {m.get('threads', '?')} threads "
                f"({meta.get('date', 'date unknown')}); {m.get('native_status', '')}; other processes "
                f"used {100 * float(m.get('other_cpu_load') or 0):.0f}% of the CPU while it ran")  # fmt: skip
    except (KeyError, TypeError, ValueError, ZeroDivisionError) as exc:
        raise BitmapsError(f"{paths[0]}: not a `bitmaps profile --json` file ({exc!r})") from None
    titles = ("model", "backend", "batch", "seq", "p50 ms", "p90 ms", "weights MB", "file MB",
              "peak MB", "binary vs ORT fp32", "binary vs torch fp32", "binary vs ORT int8")  # fmt: skip
    return head + ":\n\n" + markdown_table(titles, cells, "llrr" + "r" * 8)


def goal_bounds_table(paths: list[Path]) -> str:
    """goal_bounds.py's table, from its own list of files under the same root as ``paths``."""
    if not paths:
        raise BitmapsError("no benchmarks/results/export-targets*.json under the root")
    try:
        return _script("goal_bounds.py").render(paths[0].parents[2])
    except (KeyError, TypeError, ValueError, ZeroDivisionError) as exc:
        raise BitmapsError(f"goal_bounds.py: a result file does not fit ({exc!r})") from None


def gpu_check_report(paths: list[Path]) -> str:
    """``make gpu-check``'s report.md (benchmarks/gpu_check.py), as it was written on the GPU
    machine: its stage table and the benchmarks' tables, headings one level down."""
    if len(paths) != 1:
        raise BitmapsError(f"gpu-check: expected one report.md, found {len(paths)}")
    try:
        lines = paths[0].read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise BitmapsError(f"{paths[0]} is not readable: {exc}") from None
    title = re.fullmatch(
        r"# gpu-check \((?P<when>[^,]+), (?P<took>\d+ s)\)", lines[0] if lines else ""
    )
    if title is None:
        raise BitmapsError(f"{paths[0]}: not a gpu_check.py report (first line {lines[:1]})")
    body = [f"#### {line[3:]}" if line.startswith("## ") else line for line in lines[1:]]
    head = f"`make gpu-check` ({title['when']}, {title['took']} in all)"
    return head + ":\n" + "\n".join(body).rstrip()


TABLES: dict[str, Source] = {
    "ablation-recipe": Source("benchmarks/ablation/results/r300-*.json", ablation_table),
    "ablation-long": Source("benchmarks/ablation/results/elastic_attn_*2k.json", ablation_table),
    "spam": Source("benchmarks/results/spam-*.json", spam_table),
    "embeddings-accuracy": Source(
        "benchmarks/results/embeddings-accuracy*.json", _bench("bench_embeddings_accuracy.py")
    ),
    "profile-bert-base": Source("benchmarks/results/profile-bert-base.json", profile_table),
    "profile-bert-base-amx-withheld": Source(
        "benchmarks/results/profile-bert-base-amx-withheld.json", profile_table
    ),
    "ort-fusions": Source("benchmarks/results/ort-fusions.json", _bench("bench_ort_fusions.py")),
    "kernels-cpu": Source("benchmarks/results/kernels-cpu.json", _bench("bench_kernels.py")),
    "kernels-cuda": Source("benchmarks/results/kernels-cuda.json", _bench("bench_kernels.py")),
    "popcount-ceiling": Source(
        "benchmarks/results/popcount-ceiling.json", _bench("bench_popcount_ceiling.py", "report")
    ),
    "ort-custom-op": Source(
        "benchmarks/results/ort-custom-op.json", _bench("bench_ort_custom_op.py")
    ),
    "ort-float-ops": Source(
        "benchmarks/results/ort-float-ops.json", _bench("bench_ort_float_ops.py")
    ),
    "torch-float-ops": Source(
        "benchmarks/results/torch-float-ops.json", _bench("bench_torch_float_ops.py")
    ),
    "model-breakdown": Source(
        "benchmarks/results/model-breakdown.json", _bench("bench_model_breakdown.py")
    ),
    # the same benchmarks on an AVX2-only AMD EPYC (no AVX-512, no AMX; stop 29)
    "popcount-ceiling-epyc-avx2": Source(
        "benchmarks/results/popcount-ceiling-epyc-avx2.json",
        _bench("bench_popcount_ceiling.py", "report"),
    ),
    "model-breakdown-epyc-avx2": Source(
        "benchmarks/results/model-breakdown-epyc-avx2.json", _bench("bench_model_breakdown.py")
    ),
    "ort-thread-scaling-epyc-avx2": Source(
        "benchmarks/results/ort-thread-scaling-epyc-avx2.json",
        _bench("bench_ort_thread_scaling.py"),
    ),
    "profile-bert-base-epyc-avx2": Source(
        "benchmarks/results/profile-bert-base-stop29-epyc-avx2-after-run3.json", profile_table
    ),
    # the same benchmarks on an AVX2-only AMD EPYC again, after the nibble-split GEMM (stop 30)
    "popcount-ceiling-epyc-avx2-stop30": Source(
        "benchmarks/results/popcount-ceiling-epyc-avx2-stop30.json",
        _bench("bench_popcount_ceiling.py", "report"),
    ),
    "model-breakdown-epyc-avx2-stop30": Source(
        "benchmarks/results/model-breakdown-epyc-avx2-stop30.json",
        _bench("bench_model_breakdown.py"),
    ),
    "ort-thread-scaling-epyc-avx2-stop30": Source(
        "benchmarks/results/ort-thread-scaling-epyc-avx2-stop30.json",
        _bench("bench_ort_thread_scaling.py"),
    ),
    "profile-bert-base-epyc-avx2-stop30": Source(
        "benchmarks/results/profile-bert-base-stop30-final-epyc-avx2-run3.json", profile_table
    ),
    "torch-float-ops-epyc-avx2-stop30": Source(
        "benchmarks/results/torch-float-ops-epyc-avx2-stop30.json",
        _bench("bench_torch_float_ops.py"),
    ),
    "ort-library-ab-stop31-epyc-avx2": Source(
        "benchmarks/results/ort-library-ab-*stop31-epyc-avx2*.json",
        _bench("bench_ort_library_ab.py"),
    ),
    "profile-bert-base-epyc-avx2-stop31": Source(
        "benchmarks/results/profile-bert-base-stop31-epyc-avx2-run1.json", profile_table
    ),
    # stop 32 (the same kind of AVX2 EPYC): the GEMM's K loop beside the ceiling, the epilogue A/B
    "popcount-ceiling-epyc-avx2-stop32": Source(
        "benchmarks/results/popcount-ceiling-epyc-avx2-stop32.json",
        _bench("bench_popcount_ceiling.py", "report"),
    ),
    "model-breakdown-epyc-avx2-stop32": Source(
        "benchmarks/results/model-breakdown-epyc-avx2-stop32*.json",
        _bench("bench_model_breakdown.py"),
    ),
    "ort-library-ab-stop32-epyc-avx2": Source(
        "benchmarks/results/ort-library-ab-*stop32-epyc-avx2*.json",
        _bench("bench_ort_library_ab.py"),
    ),
    # stop 33 (the same kind of AVX2 EPYC): the GEMM's per-tile work, the FFN's bit epilogue
    "popcount-ceiling-epyc-avx2-stop33": Source(
        "benchmarks/results/popcount-ceiling-epyc-avx2-stop33.json",
        _bench("bench_popcount_ceiling.py", "report"),
    ),
    "ort-library-ab-stop33-epyc-avx2": Source(
        "benchmarks/results/ort-library-ab-stop33-epyc-avx2-*.json",
        _bench("bench_ort_library_ab.py"),
    ),
    "export-targets-epyc-avx2-stop33": Source(
        "benchmarks/results/export-targets-stop33-epyc-avx2-final.json",
        _bench("bench_export_targets.py"),
    ),
    "profile-bert-base-epyc-avx2-stop33": Source(
        "benchmarks/results/profile-bert-base-stop33-epyc-avx2-run4.json", profile_table
    ),
    "model-breakdown-epyc-avx2-stop33": Source(
        "benchmarks/results/model-breakdown-epyc-avx2-stop33.json",
        _bench("bench_model_breakdown.py"),
    ),
    # stop 34 (the same kind of AVX2 EPYC): would a fused add + LayerNorm pay; the node split again
    "add-layer-norm-fusion-epyc-avx2-stop34": Source(
        "benchmarks/results/add-layer-norm-fusion-epyc-avx2-stop34.json",
        _bench("bench_add_layer_norm_fusion.py"),
    ),
    "ort-thread-scaling-epyc-avx2-stop34": Source(
        "benchmarks/results/ort-thread-scaling-epyc-avx2-stop34.json",
        _bench("bench_ort_thread_scaling.py"),
    ),
    "attention-int8-accuracy-stop34": Source(
        "benchmarks/results/attention-int8-accuracy-*-stop34.json",
        _bench("bench_attention_int8_accuracy.py"),
    ),
    "attention-int8-speed-epyc-avx2-stop34": Source(
        "benchmarks/results/attention-int8-speed-epyc-avx2-stop34.json",
        _bench("bench_attention_int8_speed.py"),
    ),
    "profile-bert-base-epyc-avx2-stop34": Source(
        "benchmarks/results/profile-bert-base-stop34-epyc-avx2-run2.json", profile_table
    ),
    # stop 35 (the same kind of AVX2 EPYC): int8 attention shipped (opt-in) and measured
    "attention-int8-model-epyc-avx2-stop35": Source(
        "benchmarks/results/attention-int8-model-epyc-avx2-stop35.json",
        _bench("bench_attention_int8_model.py"),
    ),
    "attention-int8-speed-epyc-avx2-stop35": Source(
        "benchmarks/results/attention-int8-speed-epyc-avx2-stop35.json",
        _bench("bench_attention_int8_speed.py"),
    ),
    "attention-int8-accuracy-stop35": Source(
        "benchmarks/results/attention-int8-accuracy-*-stop35.json",
        _bench("bench_attention_int8_accuracy.py"),
    ),
    "profile-bert-base-epyc-avx2-stop35": Source(
        "benchmarks/results/profile-bert-base-stop35-epyc-avx2-float-run3.json", profile_table
    ),
    "export-targets-epyc-avx2-stop35": Source(
        "benchmarks/results/export-targets-stop35-epyc-avx2.json",
        _bench("bench_export_targets.py"),
    ),
    "profile-bert-base-int8-attention-epyc-avx2-stop35": Source(
        "benchmarks/results/profile-bert-base-stop35-epyc-avx2-int8-run1.json", profile_table
    ),
    # stop 37: an AMD Zen 1 EPYC (cpu family 23, model 1); the AVX2 K loop with folded loads
    "popcount-ceiling-epyc-zen1-stop37": Source(
        "benchmarks/results/popcount-ceiling-epyc-zen1-stop37.json",
        _bench("bench_popcount_ceiling.py", "report"),
    ),
    "avx2-kloop-epyc-zen1-stop37": Source(
        "benchmarks/results/avx2-kloop-epyc-zen1-stop37.json", _bench("bench_avx2_kloop.py")
    ),
    "ort-library-ab-epyc-zen1-stop37": Source(
        "benchmarks/results/ort-library-ab-folded-kloop-epyc-zen1-stop37-*.json",
        _bench("bench_ort_library_ab.py"),
    ),
    "profile-bert-base-epyc-zen1-stop37": Source(
        "benchmarks/results/profile-bert-base-stop37-epyc-zen1-float-run3.json", profile_table
    ),
    "profile-bert-base-int8-attention-epyc-zen1-stop37": Source(
        "benchmarks/results/profile-bert-base-stop37-epyc-zen1-int8-run3.json", profile_table
    ),
    # stop 38: the same Zen 1 EPYC; the remainder's share in ONNX Runtime, three runs
    "export-targets-epyc-zen1-stop38": Source(
        "benchmarks/results/export-targets-epyc-zen1-stop38-run*.json",
        _bench("bench_export_targets.py"),
    ),
    # stop 40: the same Zen 1 EPYC; the AVX2 K-pair loop (Avx2KLoop::kFolded)
    "popcount-ceiling-epyc-zen1-stop40": Source(
        "benchmarks/results/popcount-ceiling-epyc-zen1-stop40.json",
        _bench("bench_popcount_ceiling.py", "report"),
    ),
    "avx2-kloop-epyc-zen1-stop40": Source(
        "benchmarks/results/avx2-kloop-epyc-zen1-stop40.json", _bench("bench_avx2_kloop.py")
    ),
    "ort-library-ab-epyc-zen1-stop40": Source(
        "benchmarks/results/ort-library-ab-kpairs-epyc-zen1-stop40-*.json",
        _bench("bench_ort_library_ab.py"),
    ),
    "export-targets-epyc-zen1-stop40": Source(
        "benchmarks/results/export-targets-epyc-zen1-stop40-run*.json",
        _bench("bench_export_targets.py"),
    ),
    "export-targets-epyc-zen1-stop40-oldlib": Source(
        "benchmarks/results/export-targets-epyc-zen1-stop40-oldlib.json",
        _bench("bench_export_targets.py"),
    ),
    "profile-bert-base-epyc-zen1-stop40": Source(
        "benchmarks/results/profile-bert-base-stop40-epyc-zen1-float-run1.json", profile_table
    ),
    # stop 41: the same Zen 1 EPYC; the K-pair panel's lane order, 128-row AVX2 tiles
    "ort-library-ab-epyc-zen1-stop41": Source(
        "benchmarks/results/ort-library-ab-tiles-epyc-zen1-stop41-*.json",
        _bench("bench_ort_library_ab.py"),
    ),
    "ort-library-ab-wide-epyc-zen1-stop41": Source(
        "benchmarks/results/ort-library-ab-wide-epyc-zen1-stop41-*.json",
        _bench("bench_ort_library_ab.py"),
    ),
    "ort-library-ab-stop41-vs-stop40-epyc-zen1": Source(
        "benchmarks/results/ort-library-ab-stop41-vs-stop40-epyc-zen1-*.json",
        _bench("bench_ort_library_ab.py"),
    ),
    "export-targets-epyc-zen1-stop41": Source(
        "benchmarks/results/export-targets-epyc-zen1-stop41-run*.json",
        _bench("bench_export_targets.py"),
    ),
    "profile-bert-base-epyc-zen1-stop41": Source(
        "benchmarks/results/profile-bert-base-stop41-epyc-zen1-float-run1.json", profile_table
    ),
    # stop 42: the same Zen 1 EPYC; measurements of the stop-41 engine, the exporter's time
    "export-targets-epyc-zen1-stop42": Source(
        "benchmarks/results/export-targets-epyc-zen1-stop42-run*.json",
        _bench("bench_export_targets.py"),
    ),
    "profile-bert-base-epyc-zen1-stop42": Source(
        "benchmarks/results/profile-bert-base-stop42-epyc-zen1-float-run1.json", profile_table
    ),
    "export-time-epyc-zen1-stop42": Source(
        "benchmarks/results/export-time-epyc-zen1-stop42.json", _bench("bench_export_time.py")
    ),
    # stop 43: the same Zen 1 EPYC; profile's ONNX Runtime measuring process without torch
    "measure-startup-epyc-zen1-stop43": Source(
        "benchmarks/results/measure-startup-epyc-zen1-stop43.json",
        _bench("bench_measure_startup.py"),
    ),
    # stop 46: an AMD Zen 3 EPYC (cpu family 25, model 1) again; the folded K loop there too
    "popcount-ceiling-epyc-zen3-stop46": Source(
        "benchmarks/results/popcount-ceiling-epyc-zen3-stop46.json",
        _bench("bench_popcount_ceiling.py", "report"),
    ),
    "avx2-kloop-epyc-zen3-stop46": Source(
        "benchmarks/results/avx2-kloop-epyc-zen3-stop46-run*.json", _bench("bench_avx2_kloop.py")
    ),
    "ort-library-ab-epyc-zen3-stop46": Source(
        "benchmarks/results/ort-library-ab-folded-kloop-epyc-zen3-stop46-*.json",
        _bench("bench_ort_library_ab.py"),
    ),
    "ort-library-ab-stop36-vs-stop45-epyc-zen3": Source(
        "benchmarks/results/ort-library-ab-stop36-vs-head-epyc-zen3-stop46-t2.json",
        _bench("bench_ort_library_ab.py"),
    ),
    "export-targets-epyc-zen3-stop46": Source(
        "benchmarks/results/export-targets-epyc-zen3-stop46-*.json",
        _bench("bench_export_targets.py"),
    ),
    "profile-bert-base-epyc-zen3-stop46": Source(
        "benchmarks/results/profile-bert-base-stop46-epyc-zen3-float-run2.json", profile_table
    ),
    "profile-bert-base-int8-attention-epyc-zen3-stop46": Source(
        "benchmarks/results/profile-bert-base-stop46-epyc-zen3-int8-run1.json", profile_table
    ),
    "export-targets-epyc-avx2-stop34": Source(
        "benchmarks/results/export-targets-stop34-epyc-avx2.json",
        _bench("bench_export_targets.py"),
    ),
    "ort-library-ab-panel-split-epyc-avx2": Source(
        "benchmarks/results/ort-library-ab-panel-split-epyc-avx2.json",
        _bench("bench_ort_library_ab.py"),
    ),
    "ort-library-ab-nibble-split-epyc-avx2": Source(
        "benchmarks/results/ort-library-ab-nibble-split-epyc-avx2*.json",
        _bench("bench_ort_library_ab.py"),
    ),
    "export-targets": Source(
        "benchmarks/results/export-targets.json", _bench("bench_export_targets.py")
    ),
    "ort-thread-scaling": Source(
        "benchmarks/results/ort-thread-scaling.json", _bench("bench_ort_thread_scaling.py")
    ),
    "embeddings": Source("benchmarks/results/embeddings.json", _bench("bench_embeddings.py")),
    "bert-cuda": Source("benchmarks/results/bert-cuda.json", _bench("bench_bert_cuda.py")),
    "goal-bounds": Source(
        "benchmarks/results/export-targets*.json",
        goal_bounds_table,
    ),
    "gpu-check-h200": Source("benchmarks/results/gpu-check-h200/report.md", gpu_check_report),
    "gpu-check-h200-stop31": Source(
        "benchmarks/results/gpu-check-h200-stop31/report.md", gpu_check_report
    ),
}


def render_block(name: str, root: Path) -> str:
    """The text between NAME's markers: a generated-by line, then the table."""
    if name not in TABLES:
        raise BitmapsError(f"unknown table {name!r}; known: {', '.join(TABLES)}")
    source = TABLES[name]
    paths = sorted(root.glob(source.pattern))
    if not paths and "*" not in source.pattern:
        raise BitmapsError(f"{root / source.pattern} does not exist (table {name})")
    body = source.render(paths)
    return f"<!-- generated by `{COMMAND}` from {source.pattern}; do not edit by hand -->\n{body}\n"


def regenerate(text: str, root: Path) -> tuple[str, list[str]]:
    """``text`` with every marked block rendered anew, and the names of the blocks that changed."""
    out, changed, pos, begin = [], [], 0, None
    for m in MARKER.finditer(text):
        name, kind = m["name"], m["end"]
        if kind == "begin":
            if begin is not None:
                raise BitmapsError(f"make_results:{begin['name']} begin has no end before {name}")
            begin = m
            continue
        if begin is None or begin["name"] != name:
            raise BitmapsError(f"make_results:{name} end without its begin")
        old = text[begin.end() : m.start()]
        new = "\n" + render_block(name, root)
        if new != old:
            changed.append(name)
        out += [text[pos : begin.end()], new]
        pos, begin = m.start(), None
    if begin is not None:
        raise BitmapsError(f"make_results:{begin['name']} begin has no end")
    return "".join([*out, text[pos:]]), changed


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--check", action="store_true", help="exit 1 if RESULTS.md is out of date")
    p.add_argument("--results", type=Path, default=HERE / "RESULTS.md", help="the markdown file")
    p.add_argument("--root", type=Path, default=ROOT, help="where result-file paths start")
    args = p.parse_args(argv)
    try:
        try:
            text = args.results.read_text(encoding="utf-8")
        except OSError as exc:
            raise BitmapsError(f"cannot read {args.results}: {exc.strerror}") from None
        new, changed = regenerate(text, args.root)
    except BitmapsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.check:
        if changed:
            print(
                f"{args.results} is out of date ({', '.join(changed)}): run {COMMAND}",
                file=sys.stderr,
            )
            return 1
        print(f"{args.results} is up to date")
        return 0
    if new != text:
        with atomic_output(args.results) as tmp:
            Path(tmp).write_text(new, encoding="utf-8")
    print(f"{args.results}: {', '.join(changed) or 'nothing'} rewritten")
    return 0


if __name__ == "__main__":
    sys.exit(main())
