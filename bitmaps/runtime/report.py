"""What ``bitmaps profile`` shows and writes: terminal tables, speed-ups, JSON, the plot.

JSON (``--json FILE``)::

    {"meta": {...}, "rows": [{"model", "backend", "device", "batch", "seq", "latency_ms_p50",
     "latency_ms_p90", "latency_ms_p99", "throughput_seq_s", "weights_mb", "file_mb",
     "peak_mem_mb" [, "cross_entropy", "accuracy", "mrr"]}, ...]}

``rows`` is DESIGN.md's list of rows, exactly its keys; everything else about the run (machine,
versions, kernel path, date, the command, method, which code path produced each row, weight bytes
by part, what was skipped and why) is in ``meta``. :func:`load` also reads a bare list of rows.
``--show FILE`` re-prints the tables from such a file without measuring anything.

Columns (MB = 10^6 bytes):

- ``latency_ms_p50/p90/p99``: one forward call on one batch of ``batch`` x ``seq`` tokens
  (bitmaps/runtime/measure.py: warm-up, adaptive repeats, rotated inputs, CUDA events on GPU).
  With the default ``--repeats 20`` p99 is close to the slowest call; ask for more to resolve it.
- ``throughput_seq_s``: ``batch / p50``.
- ``weights_mb``: bytes of the weights the backend holds for the profiled model — torch: every
  parameter and buffer of the module at its stored dtype (packed int32 signs: 4 bytes per 32
  weights; FP32 embeddings in full; on the CPU also the GEMM's prepacked panels, a second copy of
  the binary weights, counted since stop 49); ONNX Runtime / TensorRT: the initializers of the
  ONNX file (the onnxruntime target stores the panels themselves: one copy).
  ``meta.weights_by_part_mb`` splits it into ``encoder`` (the transformer layers: what is
  binarized), ``embeddings`` and ``head`` (``--output logits`` only).
- ``file_mb``: what would be shipped — the ONNX file, the engine, or for torch the size of
  ``torch.save(module.state_dict())``.
- ``peak_mem_mb``: peak runtime memory above the process's memory before the model was loaded:
  RSS on CPU (weights resident + activations + runtime workspaces), CUDA allocations on GPU.
  ``meta.peak_floor_mb`` gives, per CPU backend, the same peak for a one-op model without weights:
  the runtime's own share (its session, arena, threads) that every row of that backend includes.

Speed-ups are ratios of p50 latencies measured in the same run: binary vs fp32 and vs fp16 on
each backend, and the best binary row vs the best FP32 row of any backend, per device and shape.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from bitmaps.core import jsontext
from bitmaps.core.atomic import atomic_output
from bitmaps.core.errors import BitmapsError, one_line
from bitmaps.runtime.profile import ACCURACY_KEYS, ROW_KEYS, ProfileResult

SHOW_MAX_BYTES = 64 << 20  # a profile of thousands of rows is a few MB
MODEL_ORDER = {"fp32": 0, "fp16": 1, "int8": 2, "binary": 3}
BASELINES = ("fp32", "fp16", "int8")  # every speed-up of binary is against each of these
GOAL = {"device": "cpu", "batch": 1, "seq": 128, "speedup": 4.0, "aim": 8.0, "smaller": 7.0}


def save(
    result: ProfileResult, json_path: str | Path | None = None, plot_path: str | Path | None = None,
    png: bytes | None = None,
) -> None:  # fmt: skip
    """``--json`` (the result) and ``--plot`` (``png``, plot.render_plot's) as given, each
    atomically, and both written before either is renamed into place: a full disk under the
    second leaves neither, not one of them."""
    if plot_path is not None and png is None:
        raise ValueError("a plot path needs the rendered png")
    with contextlib.ExitStack() as outputs:
        if json_path is not None:
            tmp = outputs.enter_context(atomic_output(json_path))
            tmp.write_text(json.dumps(result.to_json(), indent=2) + "\n", encoding="utf-8")
        if plot_path is not None:
            outputs.enter_context(atomic_output(plot_path)).write_bytes(png)


def load(path: str | Path) -> ProfileResult:
    """A JSON file written by ``--json`` (or a bare list of rows), checked row by row."""
    path = Path(path)
    if path.exists() and not path.is_file():
        raise BitmapsError(f"{path} is not a file (give a JSON file written by `--json`)")
    if path.is_file() and path.stat().st_size > SHOW_MAX_BYTES:
        raise BitmapsError(
            f"{path} is {path.stat().st_size / 2**20:.0f} MB: larger than any profile JSON file "
            f"(the limit is {SHOW_MAX_BYTES >> 20} MB)"
        )
    try:
        data = jsontext.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BitmapsError(f"{path} does not exist") from None
    except (OSError, ValueError) as exc:  # UnicodeDecodeError and JsonTextError included
        raise BitmapsError(f"{path} is not a bitmaps profile JSON file: {exc}") from None
    rows, meta = (data, {}) if isinstance(data, list) else (None, {})
    if isinstance(data, dict):
        rows, meta = data.get("rows"), data.get("meta") or {}
    if not isinstance(rows, list) or not rows:
        raise BitmapsError(f"{path} holds no profile rows (written by `bitmaps profile --json`?)")
    if not isinstance(meta, dict):
        raise BitmapsError(f"{path}: its meta is not a JSON object")
    # a file without them (a bare list of rows) is read as rows; one that names them must be ours
    if meta.get("format", "bitmaps-profile") != "bitmaps-profile":
        raise BitmapsError(
            f"{path}: its meta.format is {meta['format']!r}, not 'bitmaps-profile' (written by "
            "`bitmaps profile --json`?)"
        )
    version = meta.get("version", 1)
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise BitmapsError(f"{path}: its meta.version is {version!r}, which no bitmaps writes")
    if version > 1:
        raise BitmapsError(
            f"{path} has profile format version {version}, newer than this bitmaps reads (1); "
            "upgrade bitmaps"
        )
    for i, row in enumerate(rows):
        missing = [k for k in ROW_KEYS if not isinstance(row, dict) or k not in row]
        if missing:
            raise BitmapsError(f"{path}: row {i} lacks {', '.join(missing)}")
        problem = _row_problem(row)
        if problem:
            raise BitmapsError(f"{path}: row {i} {problem} (written by `bitmaps profile --json`?)")
    return ProfileResult(rows, meta)


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _row_problem(row: dict[str, Any]) -> str | None:
    """What in a loaded row the tables and plots cannot use, or None. Sizes may be null or NaN
    (not measured); latencies must be positive numbers."""
    for key in ("model", "backend", "device"):
        if not isinstance(row[key], str):
            return f"has a {key} that is not a name: {row[key]!r}"
    for key in ("batch", "seq"):
        if not isinstance(row[key], int) or isinstance(row[key], bool) or row[key] < 1:
            return f"has {key} {row[key]!r}, not a count >= 1"
    for key in ("latency_ms_p50", "latency_ms_p90", "latency_ms_p99", "throughput_seq_s"):
        if not _number(row[key]) or not math.isfinite(row[key]) or row[key] <= 0:
            return f"has {key} {row[key]!r}, not a positive number"
    if not row["latency_ms_p50"] <= row["latency_ms_p90"] <= row["latency_ms_p99"]:
        return "has latency percentiles out of order (p50 <= p90 <= p99 fails)"
    for key in ("weights_mb", "file_mb", "peak_mem_mb", *ACCURACY_KEYS):
        value = row.get(key)
        if value is not None and not (_number(value) and (math.isnan(value) or value >= 0)):
            return f"has {key} {value!r}, not a number >= 0"
    return None


def _ms(v: float) -> str:
    return f"{v:.0f}" if v >= 100 else f"{v:.1f}" if v >= 10 else f"{v:.2f}"


def _mb(v: float | None) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return f"{v:.1f}" if v >= 1 else f"{v:.3f}"


def sorted_rows(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(
        rows,
        key=lambda r: (
            r["device"],
            r["batch"],
            r["seq"],
            r["backend"],
            MODEL_ORDER.get(r["model"], 9),
        ),
    )


def main_table(result: ProfileResult) -> Table:
    rows = sorted_rows(result.rows)
    shown = [k for k in ACCURACY_KEYS if any(k in r for r in rows)]  # MLM or classifier scores
    table = Table(title="bitmaps profile", title_justify="left")
    for name in ("model", "backend", "device", "batch", "seq"):
        table.add_column(name)
    for name in ("p50 ms", "p90 ms", "p99 ms", "seq/s", "weights MB", "file MB", "peak MB"):
        table.add_column(name, justify="right")
    titles = {"cross_entropy": "cross entropy", "accuracy": "accuracy", "mrr": "MRR",
              "macro_f1": "macro-F1"}  # fmt: skip
    for k in shown:
        table.add_column(titles[k], justify="right")
    for r in rows:
        cells = [
            r["model"],
            r["backend"],
            r["device"],
            str(r["batch"]),
            str(r["seq"]),
            _ms(r["latency_ms_p50"]),
            _ms(r["latency_ms_p90"]),
            _ms(r["latency_ms_p99"]),
            f"{r['throughput_seq_s']:.1f}",
            _mb(r["weights_mb"]),
            _mb(r["file_mb"]),
            _mb(r["peak_mem_mb"]),
        ]
        cells += [f"{r[k]:.4f}" if k in r else "" for k in shown]
        table.add_row(*cells)
    return table


def speedups(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (backend, device, batch, seq) with a binary row: p50 of each baseline / binary. The
    int8 baseline runs on onnxruntime only, so ``vs_int8`` (on every binary row of the shape) is
    against ONNX Runtime's INT8 row of the same device and shape."""
    index = {(r["model"], r["backend"], r["device"], r["batch"], r["seq"]): r for r in rows}
    out = []
    for (model, *where), r in sorted(index.items(), key=lambda kv: kv[0][1:]):
        if model != "binary":
            continue
        ratio = {}
        for base in BASELINES:
            b = index.get((base, *where))
            if base == "int8":
                b = index.get((base, "onnxruntime", *where[1:]))
            ratio[base] = b["latency_ms_p50"] / r["latency_ms_p50"] if b else None
        out.append(
            {
                "backend": where[0],
                "device": where[1],
                "batch": where[2],
                "seq": where[3],
                "binary_ms": r["latency_ms_p50"],
                "vs_fp32": ratio["fp32"],
                "vs_fp16": ratio["fp16"],
                "vs_int8": ratio["int8"],
            }
        )
    return out


def best_vs_best(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (device, batch, seq): the fastest binary row against the fastest FP32 row."""
    out = []
    shapes = sorted({(r["device"], r["batch"], r["seq"]) for r in rows})
    for device, batch, seq in shapes:
        here = [r for r in rows if (r["device"], r["batch"], r["seq"]) == (device, batch, seq)]
        best = {}
        for model in (*BASELINES, "binary"):
            cands = [r for r in here if r["model"] == model]
            best[model] = min(cands, key=lambda r: r["latency_ms_p50"]) if cands else None
        if best["binary"] and best["fp32"]:
            out.append(
                {
                    "device": device,
                    "batch": batch,
                    "seq": seq,
                    "binary": best["binary"],
                    "fp32": best["fp32"],
                    "fp16": best["fp16"],
                    "int8": best["int8"],
                    "speedup": best["fp32"]["latency_ms_p50"] / best["binary"]["latency_ms_p50"],
                }
            )
    return out


def _x(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.2f}x"


def speedup_table(rows: list[dict[str, Any]]) -> Table:
    table = Table(title="speed-up of binary (p50 latency ratio, same run)", title_justify="left")
    for name in ("backend", "device", "batch", "seq"):
        table.add_column(name)
    for name in ("binary p50 ms", "vs fp32", "vs fp16", "vs int8 (ORT)"):
        table.add_column(name, justify="right")
    for s in speedups(rows):
        table.add_row(
            s["backend"],
            s["device"],
            str(s["batch"]),
            str(s["seq"]),
            _ms(s["binary_ms"]),
            _x(s["vs_fp32"]),
            _x(s["vs_fp16"]),
            _x(s["vs_int8"]),
        )
    return table


def weights_lines(result: ProfileResult) -> list[str]:
    """Weight bytes by part (encoder = what is binarized); [Nx] = fp32's bytes / this model's."""
    parts = result.meta.get("weights_by_part_mb") or {}
    if "fp32" not in parts:
        return []
    base, lines = parts["fp32"], []
    scope = "embeddings + encoder"
    if result.meta.get("output", "hidden") == "logits":
        scope += " + MLM head"
    for model in (*BASELINES, "binary"):
        if model not in parts:
            continue
        p = parts[model]
        lines.append(
            f"  {model:6s}  encoder {p['encoder']:7.1f} MB [{base['encoder'] / p['encoder']:4.1f}x]"
            f"   whole model as profiled ({scope}) {p['total']:6.1f} MB "
            f"[{base['total'] / p['total']:3.1f}x]   embeddings {p['embeddings']:.1f} MB"
            + (f", head {p['head']:.1f} MB" if p["head"] else "")
        )
    return lines


def goal_lines(result: ProfileResult) -> list[str]:
    """Best binary vs best FP32 per shape; the project's goals where this run measured them."""
    lines, goals = [], []
    bert_base = result.meta.get("shape") == "bert-base"
    for b in best_vs_best(result.rows):
        line = (
            f"  {b['device']}, batch {b['batch']}, seq {b['seq']}: best binary "
            f"{_ms(b['binary']['latency_ms_p50'])} ms ({b['binary']['backend']}) vs best fp32 "
            f"{_ms(b['fp32']['latency_ms_p50'])} ms ({b['fp32']['backend']}): {b['speedup']:.2f}x"
        )
        if b["fp16"]:
            line += f"; best fp16 {_ms(b['fp16']['latency_ms_p50'])} ms ({b['fp16']['backend']})"
        if b["int8"]:
            int8 = b["int8"]["latency_ms_p50"]
            line += (
                f"; int8 {_ms(int8)} ms (onnxruntime): binary "
                f"{int8 / b['binary']['latency_ms_p50']:.2f}x faster"
            )
        lines.append(line)
        if bert_base and (b["device"], b["batch"], b["seq"]) == (
            GOAL["device"],
            GOAL["batch"],
            GOAL["seq"],
        ):
            met = "met" if b["speedup"] >= GOAL["speedup"] else "NOT met"
            goals.append(
                f"  goal: binary BERT-base encoder on CPU, batch 1, seq 128, >= "
                f"{GOAL['speedup']:.0f}x faster than the best FP32 backend (aim "
                f"{GOAL['aim']:.0f}x): {met} ({b['speedup']:.2f}x)"
            )
    parts = result.meta.get("weights_by_part_mb") or {}
    if bert_base and {"fp32", "binary"} <= set(parts):
        enc = parts["fp32"]["encoder"] / parts["binary"]["encoder"]
        whole = parts["fp32"]["total"] / parts["binary"]["total"]
        met = "met" if enc >= GOAL["smaller"] else "NOT met"
        goals.append(
            f"  goal: binary encoder >= {GOAL['smaller']:.0f}x smaller in weight bytes than FP32: "
            f"{met} ({enc:.1f}x for the encoder layers; {whole:.1f}x for the whole encoder model "
            "as profiled, embeddings included)"
        )
    return lines + goals


# Share of the machine's CPU taken by other work while measuring above which timings are flagged.
OTHER_LOAD_WARNING = 0.10


def _other_work(m: dict) -> str | None:
    """What other work ran during the measurement, when it was enough to skew CPU timings."""
    other = m.get("other_cpu_load")
    if other is not None:
        if other <= OTHER_LOAD_WARNING:
            return None
        return f"other processes used {other:.0%} of the machine's CPU time"
    # JSON files written before other_cpu_load was recorded: the old load-average rule
    busy = [x for x in m.get("load_average_1min") or [] if x is not None]
    if busy and m.get("cores") and max(busy) > 0.5 * m["cores"]:
        return (
            f"1-minute load average {' -> '.join(f'{x:.1f}' for x in busy)} on {m['cores']} cores"
        )
    return None


def checked_rendering(
    result: ProfileResult, path: str | Path, render_plot: Callable[[ProfileResult], bytes] | None
) -> bytes | None:
    """Render ``result``'s tables (to nowhere) and, with ``render_plot``, its plot, before anything
    is printed or written: a file whose rows pass :func:`load` but whose ``meta`` is not what
    ``--json`` writes is then one BitmapsError, not a traceback after half the tables."""
    try:
        print_report(result, Console(file=io.StringIO(), width=200))
        return render_plot(result) if render_plot is not None else None
    except (AttributeError, IndexError, KeyError, TypeError, ValueError, ZeroDivisionError) as exc:
        raise BitmapsError(
            f"{path} is not a bitmaps profile JSON file: its meta does not fit the report "
            f"({type(exc).__name__}: {one_line(exc, limit=120)})"
        ) from None


def print_report(result: ProfileResult, console: Console | None = None) -> None:
    """Tables and summary lines on stdout (wide enough for every column when not a terminal)."""
    if console is None:
        console = Console()
        if not console.is_terminal:
            console = Console(width=200)
    meta = result.meta
    console.print(main_table(result))
    if speedups(result.rows):
        console.print(speedup_table(result.rows))
    for title, lines in (
        ("binary vs the best backend of each model (p50):", goal_lines(result)),
        ("weight bytes (parameters + buffers as stored; MB = 10^6 bytes):", weights_lines(result)),
    ):
        if lines:
            console.print(title, highlight=False)
            for line in lines:
                console.print(line, highlight=False, markup=False)
    paths = meta.get("paths") or []
    if paths:
        console.print("code path of each row:", highlight=False)
        seen = set()
        for p in paths:
            key = (p["backend"], p["device"], p["model"])
            if key not in seen:
                seen.add(key)
                console.print(
                    f"  {p['model']} / {p['backend']} ({p['device']}): {p['path']}",
                    highlight=False,
                    markup=False,
                )
    for s in meta.get("skipped") or []:
        console.print(
            f"skipped {s['backend']} {s['model']} ({s['device']}): {s['reason']}",
            highlight=False,
            markup=False,
        )
    m = meta.get("machine") or {}
    if m:
        console.print(
            f"machine: {m.get('cpu')}, {m.get('cores')} cores, {m.get('threads')} threads"
            + (f", GPU {m['gpu']}" if m.get("gpu") else "")
            + (
                ", AMX withheld from every backend (--amx withhold)"
                if m.get("amx") == "withheld"
                else ""
            )
            + f"; {m.get('native_status')}",
            highlight=False,
            markup=False,
        )
    floors = meta.get("peak_floor_mb") or {}
    if floors:
        console.print(
            "peak MB includes each runtime's own memory; a one-op model without weights, measured "
            "the same way in this run: "
            + ", ".join(f"{b} {mb:.1f} MB" for b, mb in sorted(floors.items())),
            highlight=False,
            markup=False,
        )
    load = _other_work(m)
    if load:
        if str(m.get("scheduling", "")).startswith(("SCHED_FIFO", "SCHED_RR")):
            text = (
                f"note: other work ran during the measurement ({load}); this run had real-time "
                f"priority ({m['scheduling']}), so that work could not preempt it (it still "
                "shared caches and memory bandwidth)"
            )
        else:
            text = (
                f"warning: the machine was busy while measuring ({load}): CPU timings are "
                "skewed by the other work; re-run on a quiet machine"
            )
        console.print(text, highlight=False, markup=False)
    if meta.get("command"):
        console.print(f"{meta.get('date', '')}: {meta['command']}", highlight=False, markup=False)
