"""Building and running the C++ experiments of benchmarks/ (add_layer_norm_fusion.cpp,
attention_int8_speed.cpp): each is compiled with the kernel sources of csrc/kernels it needs
(``$CXX``, default ``g++``, at -O3 as bitmaps._C and libbitmaps_ort.so are built; no torch, no ONNX
Runtime) and prints one JSON object per line."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

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
