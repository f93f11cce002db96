"""Where a CUDA ``binary_linear`` call's time goes: the activation pack alone, the XNOR GEMM alone
(int32 counts out), the whole fused op (fp16 out), cuBLAS FP16 ``F.linear`` on the same shape, and
an empty launch (the eager floor). Eager calls back to back, CUDA events around 50 of them, median
of 7; at small M every figure is near the launch floor, so read those against it.

    python benchmarks/bench_cuda_parts.py [--out FILE.json|.md|.csv ...]
"""

from __future__ import annotations

import argparse
import statistics
import sys

import torch
import torch.nn.functional as F
from bench_results import markdown_table, parse_with_outputs, run_meta, write_outputs

from bitmaps.core import ops
from bitmaps.runtime.timing_cuda import cuda_event_timer

SHAPES = ((128, 768, 768), (128, 768, 3072), (8192, 768, 3072), (8192, 3072, 768))
PARTS = ("pack", "gemm_i32", "binary_linear", "cublas_fp16", "empty_launch")


def per_call_us(fn, calls: int = 50, repeats: int = 7) -> float:  # noqa: ANN001 - a callable
    for _ in range(5):
        fn()
    timer = cuda_event_timer(lambda _i: fn(), calls)
    return statistics.median(timer(r) for r in range(repeats)) * 1e3


def measure(m: int, k: int, n: int) -> dict:
    x = torch.randn(m, k, device="cuda", dtype=torch.half)
    w = ops.reference_pack_signs(torch.randn(n, k, device="cuda"))
    scale, bias = torch.rand(n, device="cuda"), torch.randn(n, device="cuda")
    xp, dense = ops.pack_signs(x), torch.randn(n, k, device="cuda", dtype=torch.half)
    calls = {
        "pack": lambda: ops.pack_signs(x),
        "gemm_i32": lambda: ops.xnor_gemm(xp, w, k),
        "binary_linear": lambda: ops.binary_linear(x, w, scale, bias, k, 0.0, 0.0),
        "cublas_fp16": lambda: F.linear(x, dense),
        "empty_launch": lambda: torch.empty(1, device="cuda").zero_(),
    }
    return {"m": m, "k": k, "n": n, **{part: per_call_us(fn) for part, fn in calls.items()}}


def table(rows: list[dict]) -> str:
    head = ("M", "K", "N", *(f"{p} us" for p in PARTS), "binary_linear vs cuBLAS")
    cells = [
        [
            r["m"],
            r["k"],
            r["n"],
            *(f"{r[p]:.1f}" for p in PARTS),
            f"{r['cublas_fp16'] / r['binary_linear']:.2f}x",
        ]  # fmt: skip
        for r in rows
    ]
    return markdown_table(head, cells)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    args = parse_with_outputs(p, argv)
    if not torch.cuda.is_available():
        print("bench_cuda_parts: needs a CUDA GPU visible to torch", file=sys.stderr)
        return 2
    if not torch._C._dispatch_has_kernel_for_dispatch_key("bitmaps::binary_linear", "CUDA"):
        print("bench_cuda_parts: bitmaps._C has no CUDA kernels (build with CUDA)", file=sys.stderr)
        return 2
    torch.manual_seed(0)
    rows = [measure(*shape) for shape in SHAPES]
    text = table(rows)
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, eager, us per call\n")
    print(text)
    write_outputs(args.out, rows, run_meta(how="eager, CUDA events, median of 7 x 50 calls"), text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
