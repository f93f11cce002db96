"""How the CPU xnor_gemm scales from 1 to N threads on BERT-base shapes, small M included.

For each thread count and shape: ``bitmaps.ops.xnor_gemm`` on packed operands (int32 out), the
fastest of 7 samples of ~20 ms of calls (bitmaps/runtime/timing.py), as binary MAC/s. Separates the
kernel's per-thread rate from the cost of splitting a ~0.1 ms call across threads.

    PYTHONPATH=. python benchmarks/bench_gemm_scaling.py [--threads 1 2] [--out FILE.json]
"""

from __future__ import annotations

import argparse

import torch
from bench_results import markdown_table, parse_with_outputs, run_meta, write_outputs

from bitmaps.core import ops
from bitmaps.runtime.timing import calls_per_sample, cpu_timer, time_calls

SHAPES = ((128, 768, 768), (128, 3072, 768), (512, 768, 768), (1024, 768, 768))
SAMPLES = {"warmup": 0, "repeats": 7, "min_time": 0.0, "max_time": 30.0}


def measure(threads: int, m: int, k: int, n: int) -> dict:
    torch.set_num_threads(threads)
    x, w = ops.pack_signs(torch.randn(m, k)), ops.pack_signs(torch.randn(n, k))
    calls = calls_per_sample(lambda c: cpu_timer(lambda _i: ops.xnor_gemm(x, w, k), c), 20.0)
    best_ms = min(time_calls(cpu_timer(lambda _i: ops.xnor_gemm(x, w, k), calls), SAMPLES))
    return {"threads": threads, "m": m, "k": k, "n": n, "us_per_call": best_ms * 1e3,
            "gmacs": m * k * n / (best_ms * 1e-3) / 1e9}  # fmt: skip


def table(rows: list[dict]) -> str:
    head = ("threads", "M", "K", "N", "G binary MAC/s", "us per call")
    cells = [[r["threads"], r["m"], r["k"], r["n"], f"{r['gmacs']:.0f}", f"{r['us_per_call']:.1f}"]
             for r in rows]  # fmt: skip
    return markdown_table(head, cells, "rrrrrr")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    a = parse_with_outputs(p)
    rows = [measure(th, *shape) for th in a.threads for shape in SHAPES]
    text = table(rows)
    print(ops.native_status())
    print(text)
    write_outputs(a.out, rows, run_meta(native=ops.native_status()), text)


if __name__ == "__main__":
    main()
