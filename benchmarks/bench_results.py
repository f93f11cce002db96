"""What a benchmark writes, and how benchmarks/make_results.py reads it back.

A result file holds the rows a benchmark measured and the run they came from::

    {"meta": {"command": "python benchmarks/bench_x.py ...", "date": "...",
              "machine": {"cpu": "...", "cores": N, "python": "...", "torch": "..."}, ...},
     "rows": [{...}, ...]}

``--out FILE`` (repeatable) on every benchmark picks the format by suffix: ``.json`` (the above:
what make_results.py turns into the tables of RESULTS.md), ``.csv`` (the rows), ``.md`` (the
printed table under one line naming the command and the machine). Files are written atomically.
Every markdown table of benchmarks/ is :func:`markdown_table`'s.

This module imports only the standard library and bitmaps.core (torch only inside
:func:`run_meta`): ``make gpu-check`` runs the GPU benchmarks with a bare CUDA torch python.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import platform
import shlex
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from bitmaps.core.atomic import atomic_output
from bitmaps.core.errors import BitmapsError

SUFFIXES = (".json", ".csv", ".md")


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[object]], align: str = "") -> str:
    """A GitHub markdown table (no trailing newline): every table the benchmarks print or write.

    Cells go through ``str``; a ``|`` inside one is escaped. ``align`` holds one letter per
    column, ``l`` (``---``) or ``r`` (``---:``); columns past its end are left-aligned.
    """
    header = [str(h) for h in header]
    if len(align) > len(header) or set(align) - {"l", "r"}:
        raise ValueError(f"align {align!r}: one of l/r per column, {len(header)} columns")
    rules = ["---:" if a == "r" else "---" for a in align.ljust(len(header), "l")]
    lines = [_markdown_line(header), "|" + "|".join(rules) + "|"]
    for row in rows:
        cells = [str(c) for c in row]
        if len(cells) != len(header):
            raise ValueError(f"row {cells} has {len(cells)} cells, the header {len(header)}")
        lines.append(_markdown_line(cells))
    return "\n".join(lines)


def _markdown_line(cells: list[str]) -> str:
    return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def run_meta(**extra: Any) -> dict[str, Any]:
    """The command line, the date and the machine of this run, plus ``extra``."""
    import torch

    script = Path(sys.argv[0])
    try:
        script = script.resolve().relative_to(Path.cwd())
    except ValueError:
        pass
    return {
        "command": shlex.join(["python", str(script), *sys.argv[1:]]),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": {
            "cpu": cpu_model(),
            "cores": os.cpu_count(),
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
            "python": platform.python_version(),
            "torch": torch.__version__,
        },
        **extra,
    }


def check_outputs(outs: list[str]) -> None:
    """Refuse an ``--out`` of an unknown kind before anything is measured."""
    for out in outs:
        if Path(out).suffix not in SUFFIXES:
            print(
                f"--out {out}: the suffix picks the format: {', '.join(SUFFIXES)}", file=sys.stderr
            )
            raise SystemExit(2)


def parse_with_outputs(
    parser: argparse.ArgumentParser, argv: list[str] | None = None
) -> argparse.Namespace:
    """``parser``'s arguments plus every benchmark's ``--out`` (repeatable; the suffix picks the
    format), parsed, each ``--out`` checked (check_outputs) before anything is measured."""
    parser.add_argument(
        "--out", action="append", default=[], help="write .json, .csv or .md (repeatable)"
    )
    args = parser.parse_args(argv)
    check_outputs(args.out)
    return args


def write_outputs(outs: list[str], rows: list[dict], meta: dict[str, Any], table: str) -> None:
    """Write ``rows`` to each of ``outs`` (by suffix); ``table`` is the markdown of the rows."""
    for out in outs:
        suffix = Path(out).suffix
        with atomic_output(out) as tmp:
            if suffix == ".json":
                text = json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n"
                Path(tmp).write_text(text, encoding="utf-8")
            elif suffix == ".csv":
                columns = list(dict.fromkeys(k for r in rows for k in r))
                with open(tmp, "w", newline="", encoding="utf-8") as fh:
                    writer = csv.DictWriter(fh, fieldnames=columns, restval="")
                    writer.writeheader()
                    writer.writerows(rows)
            else:
                Path(tmp).write_text(f"{describe(meta)}\n\n{table}\n", encoding="utf-8")
        print(f"wrote {out}", file=sys.stderr)


def publish_torch_run(outs: list[str], rows: list[dict], table: str) -> None:
    """Print and write the rows of a benchmark of bitmaps' torch ops: the native kernels' status
    and torch's threads go in the printout and the meta."""
    import torch

    from bitmaps.core import ops

    print(f"{ops.native_status()}; torch threads {torch.get_num_threads()}")
    print(table)
    meta = run_meta(native_status=ops.native_status(), threads=torch.get_num_threads())
    write_outputs(outs, rows, meta, table)


def describe(meta: dict[str, Any]) -> str:
    """One line: the command and the machine of a run."""
    m = meta.get("machine") or {}
    where = f"{m.get('cpu', 'unknown CPU')}, {m.get('cores', '?')} cores"
    if m.get("gpu"):
        where += f", GPU {m['gpu']}"
    if m.get("torch"):
        where += f", torch {m['torch']}"
    return f"`{meta.get('command', '?')}` on {where} ({meta.get('date', 'date unknown')})"


def load_results(path: str | Path) -> dict[str, Any]:
    """A JSON file written by ``--out FILE.json``: ``{"meta": {...}, "rows": [...]}``, checked."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BitmapsError(f"{path} does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BitmapsError(f"{path} is not a JSON result file: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("meta"), dict):
        raise BitmapsError(f"{path}: no 'meta' object (written by a benchmark's --out FILE.json?)")
    rows = data.get("rows")
    if not isinstance(rows, list) or not rows or not all(isinstance(r, dict) for r in rows):
        raise BitmapsError(f"{path}: 'rows' is not a non-empty list of objects")
    return data
