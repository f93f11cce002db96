"""How fast would attention be in int8 on this CPU? A prototype AVX2 head kernel against bitmaps'
float kernel.

Compiles benchmarks/attention_int8_speed.cpp with the attention kernels of csrc/kernels
(cxx_experiment.py: ``$CXX``, default ``g++``, at -O3; no torch, no ONNX Runtime; x86 only) and
runs it on one thread: BERT-base's attention (12 heads of 64, 128 positions, Q K V side by side,
a zero key-padding bias) by the float kernel the onnxruntime target runs and by a prototype that
rounds Q, K (int8 per row), the probabilities (u7) and V (int8 per column) as
bench_attention_int8_accuracy.py emulates, the two in turns. The prototype's output is checked
against a scalar version of the same integer scheme (it must agree to float rounding); its
difference to the float kernel's output is the rounding's size. Since stop 35 also the int8 kernel
bitmaps ships (``int8 (bitmaps)``: csrc/kernels/cpu_attention_int8.cpp, any shape, the scheme of
cpu_attention.h), in the same turns. Medians of ``--rounds`` means of ``--reps`` calls.

    .venv/bin/python benchmarks/bench_attention_int8_speed.py [--rounds 7] [--reps 50]

Prints a markdown table (float / int8 above 1: the prototype is faster); ``--out FILE.json|csv|md``
also writes the rows (bench_results.py).
"""

from __future__ import annotations

import platform
import statistics
import sys
import tempfile
from pathlib import Path

from bench_results import markdown_table
from cxx_experiment import build, experiment_main, run_lines

SOURCE = Path(__file__).with_name("attention_int8_speed.cpp")
KERNELS = [
    "cpu_attention.cpp",
    "cpu_attention_avx2.cpp",
    "cpu_attention_avx512.cpp",
    "cpu_attention_int8.cpp",
    "cpu_attention_neon.cpp",
    "cpu_features.cpp",
]


def measure(rounds: int, reps: int) -> list[dict]:
    """One row per kernel (median and fastest of the rounds' means), the check in each row."""
    if platform.machine() not in ("x86_64", "AMD64"):
        raise SystemExit(f"{SOURCE.name} is x86 code (AVX2); this machine is {platform.machine()}")
    with tempfile.TemporaryDirectory() as folder:
        lines = run_lines(build(SOURCE, KERNELS, folder), rounds, reps)
    check = next(r for r in lines if r.get("check"))
    samples: dict[str, list[float]] = {}
    for r in lines:
        if "kernel" in r:
            samples.setdefault(r["kernel"], []).append(r["us"])
    float_us = statistics.median(next(us for k, us in samples.items() if k.startswith("float")))
    rows = []
    for kernel, us in samples.items():
        rows.append(
            {
                "kernel": kernel,
                "median_us": statistics.median(us),
                "min_us": min(us),
                "speedup_vs_float": float_us / statistics.median(us),
                "max_abs_vs_scalar": check["max_abs_vs_scalar"],
                "max_abs_vs_float": check["max_abs_vs_float"],
                "max_abs_float": check["max_abs_float"],
                "shipped_max_abs_vs_scalar": check["shipped_max_abs_vs_scalar"],
            }
        )
    return rows


def table(rows: list[dict]) -> str:
    body = [
        (
            r["kernel"],
            f"{r['median_us']:.1f}",
            f"{r['min_us']:.1f}",
            f"{r['speedup_vs_float']:.2f}×",
        )
        for r in rows
    ]
    head = ("12 heads, 128 positions, 1 thread", "median µs", "min µs", "float / this")
    text = markdown_table(head, body, "lrrr")
    if rows:
        r = rows[0]
        text += (
            f"\n\nThe prototype's output against the scalar version of the same integer scheme: max "
            f"|diff| {r['max_abs_vs_scalar']:.2g}; against the float kernel: {r['max_abs_vs_float']:.3g}"
            f" (outputs up to {r['max_abs_float']:.3g})."
        )
        if "shipped_max_abs_vs_scalar" in r:  # files from stop 35 on
            text += (
                " The shipped kernel (`int8 (bitmaps)`: any shape, cpu_attention.h's scheme: "
                "levels by a polynomial, V over the attended keys, a division by the sum) against "
                f"the prototype's scalar scheme: max |diff| {r['shipped_max_abs_vs_scalar']:.2g}."
            )
    return text


def main(argv: list[str] | None = None) -> int:
    return experiment_main(argv, __doc__, measure, table, rounds=7, reps=50)


if __name__ == "__main__":
    sys.exit(main())
