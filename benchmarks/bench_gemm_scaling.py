"""How the CPU xnor_gemm scales from 1 to N threads on BERT-base shapes, small M included.

For each thread count and shape: ``bitmaps.ops.xnor_gemm`` on packed operands (int32 out), the
fastest of 7 samples of many calls, as binary MAC/s. Separates the kernel's per-thread rate from
the cost of splitting a ~0.1 ms call across threads.

    PYTHONPATH=. python benchmarks/bench_gemm_scaling.py [--threads 1 2]
"""

from __future__ import annotations

import argparse
import time

import torch

from bitmaps.core import ops

SHAPES = ((128, 768, 768), (128, 3072, 768), (512, 768, 768), (1024, 768, 768))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    a = p.parse_args()
    print(f"{ops.native_status()}")
    print("| threads | M | K | N | G binary MAC/s | us per call |")
    print("|---:|---:|---:|---:|---:|---:|")
    for th in a.threads:
        torch.set_num_threads(th)
        for m, k, n in SHAPES:
            x, w = ops.pack_signs(torch.randn(m, k)), ops.pack_signs(torch.randn(n, k))
            for _ in range(20):
                ops.xnor_gemm(x, w, k)
            reps, best = max(5, int(2e7 / (m * n))), float("inf")
            for _ in range(7):
                t0 = time.perf_counter()
                for _ in range(reps):
                    ops.xnor_gemm(x, w, k)
                best = min(best, (time.perf_counter() - t0) / reps)
            print(f"| {th} | {m} | {k} | {n} | {m * k * n / best / 1e9:.0f} | {best * 1e6:.1f} |")


if __name__ == "__main__":
    main()
