"""Building and running the C++ experiments of benchmarks/ (add_layer_norm_fusion.cpp,
attention_int8_speed.cpp, avx2_kloop.cpp): each is compiled at -O3 (``$CXX``, default ``g++``; no
torch, no ONNX Runtime) and linked with the objects of the csrc/kernels sources it needs, exactly
the objects libbitmaps_ort.so and the kernel harness link (``csrc/onnxruntime/build.py
--kernel-objects``: compiled once per compiler and flags, reused while fresh), and prints one JSON
object per line."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from bench_results import cpu_model, parse_with_outputs, run_meta, write_outputs

ROOT = Path(__file__).resolve().parent.parent


def kernel_objects(cxx: str, kernels: list[str]) -> list[Path]:
    """The objects of csrc/kernels/``kernels`` (source names) as ``build.py --kernel-objects``
    compiles them with ``cxx``, or SystemExit naming what failed."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "csrc" / "onnxruntime" / "build.py"), "--kernel-objects"],
        capture_output=True, text=True, env={**os.environ, "CXX": cxx},
    )  # fmt: skip
    if done.returncode != 0:
        raise SystemExit(f"cannot compile csrc/kernels with {cxx}: {done.stderr.strip()[:400]}")
    by_stem = {Path(line).stem: Path(line) for line in done.stdout.splitlines() if line}
    missing = [k for k in kernels if Path(k).stem not in by_stem]
    if missing:
        raise SystemExit(f"no object for csrc/kernels/{', '.join(missing)} from build.py")
    return [by_stem[Path(k).stem] for k in kernels]


def build(source: Path, kernels: list[str], folder: str) -> Path:
    """``source`` linked with the objects of csrc/kernels/``kernels`` into an executable in
    ``folder``, or SystemExit naming what failed."""
    exe = Path(folder) / source.stem
    cxx = os.environ.get("CXX", "g++")
    objects = [str(p) for p in kernel_objects(cxx, kernels)]
    cmd = [cxx, "-std=c++17", "-O3", "-pthread", f"-I{ROOT / 'csrc'}", "-o", str(exe), str(source)]
    done = subprocess.run([*cmd, *objects], capture_output=True, text=True)
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
