"""Building and running the C++ experiments of benchmarks/ (add_layer_norm_fusion.cpp,
attention_int8_speed.cpp): each is compiled with the kernel sources of csrc/kernels it needs
(``$CXX``, default ``g++``, at -O3 as bitmaps._C and libbitmaps_ort.so are built; no torch, no ONNX
Runtime) and prints one JSON object per line."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

from bench_results import cpu_model, parse_with_outputs, run_meta, write_outputs

ROOT = Path(__file__).resolve().parent.parent


def build(source: Path, kernels: list[str], folder: str) -> Path:
    """``source`` and csrc/kernels/``kernels`` compiled into an executable in ``folder``, or
    SystemExit naming what failed."""
    exe = Path(folder) / source.stem
    cxx = os.environ.get("CXX", "g++")
    sources = [str(source)] + [str(ROOT / "csrc" / "kernels" / k) for k in kernels]
    cmd = [cxx, "-std=c++17", "-O3", "-pthread", f"-I{ROOT / 'csrc'}", "-o", str(exe), *sources]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"cannot compile {source.name} with {cxx}: {done.stderr.strip()[:400]}")
    return exe


def run_lines(exe: Path, *args: object) -> list[dict]:
    """The JSON objects ``exe`` prints, one per line, or SystemExit with its error output."""
    done = subprocess.run([str(exe), *map(str, args)], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{exe.name} failed: {done.stderr.strip()[:400]}")
    return [json.loads(line) for line in done.stdout.splitlines() if line.strip()]


def experiment_main(
    argv: list[str] | None,
    doc: str,
    measure: Callable[[int, int], list[dict]],
    table: Callable[[list[dict]], str],
    *,
    rounds: int,
    reps: int,
) -> int:
    """An experiment's command line: ``--rounds``, ``--reps`` (checked), ``--out``; measure, print
    the table under the CPU's name, write the files."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=rounds, help="rounds (median of their means)")
    p.add_argument("--reps", type=int, default=reps, help="calls per variant per round")
    args = parse_with_outputs(p, argv)
    if args.rounds < 1 or args.reps < 1:
        p.error("--rounds and --reps must be >= 1")
    rows = measure(args.rounds, args.reps)
    text = table(rows)
    print(f"CPU: {cpu_model()}\n")
    print(text)
    write_outputs(args.out, rows, run_meta(rounds=args.rounds, reps=args.reps), text)
    return 0
