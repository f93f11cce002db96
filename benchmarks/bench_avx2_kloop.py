"""Which form of the AVX2 GEMM's K loop is faster on this CPU? Weight vectors in registers (4 rows,
one K word at a time) against the K-pair form (2 rows, two K words at a time, weight loads folded
into the logic ops; csrc/kernels/cpu_features.h, ``Avx2KLoop``).

Compiles benchmarks/avx2_kloop.cpp with the GEMM kernels of csrc/kernels (cxx_experiment.py:
``$CXX``, default ``g++``, at -O3; no torch, no ONNX Runtime; x86 with AVX2 only) and runs
``xnor_gemm_tile`` on one thread over BERT-base's binary linears at 1 x 128 tokens, the two forms
in turns, each call on the next of 12 copies of the weights. Both forms must give the same bits
(checked on every shape). The form bitmaps picks on this CPU is named under the table: a row whose
``registers / folded`` is above 1 on a CPU that picks ``registers`` says the choice is wrong there.
Medians of ``--rounds`` means of ``--reps`` calls.

    .venv/bin/python benchmarks/bench_avx2_kloop.py [--rounds 7] [--reps 50]

Prints a markdown table; ``--out FILE.json|csv|md`` also writes the rows (bench_results.py).
"""

from __future__ import annotations

import platform
import statistics
import sys
import tempfile
from pathlib import Path

from bench_results import markdown_table
from cxx_experiment import build, experiment_main, run_lines

SOURCE = Path(__file__).with_name("avx2_kloop.cpp")
KERNELS = [
    "cpu_kernels.cpp",
    "cpu_kernels_avx2.cpp",
    "cpu_kernels_avx512.cpp",
    "cpu_kernels_neon.cpp",
    "cpu_kernels_scalar.cpp",
    "cpu_features.cpp",
]
M = 128


def measure(rounds: int, reps: int) -> list[dict]:
    """One row per shape: both forms' median and fastest µs, their ratio, GMAC/s, the check."""
    if platform.machine() not in ("x86_64", "AMD64"):
        raise SystemExit(f"{SOURCE.name} is x86 code (AVX2); this machine is {platform.machine()}")
    with tempfile.TemporaryDirectory() as folder:
        lines = run_lines(build(SOURCE, KERNELS, folder), rounds, reps)
    check = next(r for r in lines if r.get("check"))
    if not check["same_bits"]:
        raise SystemExit("the two K loops gave different outputs: a kernel bug, not a timing")
    samples: dict[str, dict[str, list[float]]] = {}
    for r in lines:
        if "shape" in r:
            samples.setdefault(r["shape"], {}).setdefault(r["kloop"], []).append(r["us"])
    rows = []
    for shape, forms in samples.items():
        k, n = (int(v) for v in shape.split(",")[0].split(" x "))
        reg, fold = statistics.median(forms["registers"]), statistics.median(forms["folded"])
        rows.append(
            {
                "shape": shape,
                "registers_us": reg,
                "folded_us": fold,
                "registers_min_us": min(forms["registers"]),
                "folded_min_us": min(forms["folded"]),
                "registers_over_folded": reg / fold,
                "folded_gmacs": M * k * n / fold / 1e3,
                "cpu_kloop": check["cpu_kloop"],
            }
        )
    return rows


def table(rows: list[dict]) -> str:
    body = [
        (
            f"{M} x {r['shape']}",
            f"{r['registers_us']:.1f}",
            f"{r['folded_us']:.1f}",
            f"{r['registers_over_folded']:.3f}",
            f"{r['folded_gmacs']:.0f}",
        )
        for r in rows
    ]
    head = ("M x K x N, 1 thread", "registers µs", "folded µs", "registers / folded",
            "folded G MAC/s")  # fmt: skip
    text = markdown_table(head, body, "lrrrr")
    if rows:
        text += (
            f"\n\nBoth forms gave the same bits on every shape. bitmaps runs "
            f"`{rows[0]['cpu_kloop']}` on this CPU (cpu_features.h, avx2_kloop_of_cpu)."
        )
    return text


def main(argv: list[str] | None = None) -> int:
    return experiment_main(argv, __doc__, measure, table, rounds=7, reps=50)


if __name__ == "__main__":
    sys.exit(main())
