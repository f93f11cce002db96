"""Would the residual add + LayerNorm fused into the binary GEMM before it pay on this CPU?

Compiles benchmarks/add_layer_norm_fusion.cpp with the kernels of csrc/kernels (cxx_experiment.py:
``$CXX``, default ``g++``, at -O3; no torch, no ONNX Runtime) and runs it: BERT-base's attention
output (BinaryLinear 768 -> 768, 128 rows, prepacked weights) and its add + LayerNorm on all
cores of one spinning pool, as two parallel regions one after the other
(``separate``: what the onnxruntime target's BinaryLinear and SkipLayerNormalization nodes do)
and as one region in which each worker runs the GEMM of its own rows and then their add +
LayerNorm (``fused``: the GEMM's output still in that core's caches, no second region: the most a
fused epilogue could win), beside each part alone; every variant in turns, with the caches
``warm`` (the same buffers again) and ``cold`` (a 64 MB sweep before each call, as when the
model's other layers ran in between). Medians of ``--rounds`` means of ``--reps`` calls.

    .venv/bin/python benchmarks/bench_add_layer_norm_fusion.py [--rounds 7] [--reps 200]

Prints a markdown table (fused / separate below 1: the fusion is faster); ``--out FILE.json|csv|md``
also writes the rows (bench_results.py).
"""

from __future__ import annotations

import statistics
import sys
import tempfile
from pathlib import Path

from bench_results import markdown_table
from cxx_experiment import build, experiment_main, run_lines

SOURCE = Path(__file__).with_name("add_layer_norm_fusion.cpp")
KERNELS = [
    "cpu_binary_linear.cpp",
    "cpu_features.cpp",
    "cpu_kernels.cpp",
    "cpu_kernels_avx2.cpp",
    "cpu_kernels_avx512.cpp",
    "cpu_kernels_neon.cpp",
    "cpu_kernels_scalar.cpp",
    "cpu_layer_norm.cpp",
    "cpu_layer_norm_avx2.cpp",
    "cpu_layer_norm_avx512.cpp",
    "cpu_layer_norm_neon.cpp",
]
VARIANTS = ("separate", "fused", "gemm", "ln")


def measure(rounds: int, reps: int) -> list[dict]:
    """One row per cache state and variant: the median and fastest of the rounds' means."""
    with tempfile.TemporaryDirectory() as folder:
        lines = run_lines(build(SOURCE, KERNELS, folder), rounds, reps)
    samples: dict[tuple[str, str], list[float]] = {}
    workers = 0
    for r in lines:
        samples.setdefault((r["cache"], r["variant"]), []).append(r["us"])
        workers = r["workers"]
    rows = []
    for cache in ("warm", "cold"):
        separate = statistics.median(samples[(cache, "separate")])
        for v in VARIANTS:
            us = samples[(cache, v)]
            rows.append(
                {
                    "cache": cache,
                    "variant": v,
                    "workers": workers,
                    "median_us": statistics.median(us),
                    "min_us": min(us),
                    "vs_separate": statistics.median(us) / separate,
                }
            )
    return rows


def table(rows: list[dict]) -> str:
    body = [
        (
            r["cache"],
            r["variant"],
            r["workers"],
            f"{r['median_us']:.1f}",
            f"{r['min_us']:.1f}",
            f"{r['vs_separate']:.3f}",
        )
        for r in rows
    ]
    return markdown_table(
        ("caches", "variant", "threads", "median µs", "min µs", "/ separate"), body, "llrrrr"
    )


def main(argv: list[str] | None = None) -> int:
    return experiment_main(argv, __doc__, measure, table, rounds=7, reps=200)


if __name__ == "__main__":
    sys.exit(main())
