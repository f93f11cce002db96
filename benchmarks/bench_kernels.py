"""Kernel benchmarks: the bitmaps ops against the dense baseline measured in the same run.

BERT-base shapes (K x N in 768x768, 768x3072, 3072x768):

- CPU, M in {128, 1024}: ``xnor_gemm`` vs ``torch.matmul`` FP32 (target >= 15x) and
  ``binary_linear`` end to end (binarize + pack + GEMM + scales + bias, per-row activation scale)
  vs ``torch.nn.functional.linear`` FP32 (target >= 10x); both sides on the same threads
  (``--threads``, default: every core).
- GPU (only where CUDA and the CUDA kernels of bitmaps._C are present), M in {128, 1024, 8192,
  32768}: ``binary_linear`` FP16 vs ``F.linear`` FP16 (cuBLAS); targets (issue 15) >= 2x at
  M >= 8192 on the FFN shapes, >= 1x at M = 128; binary TOPS achieved. Each row names the GEMM
  kernel that actually ran (from the profiler; BITMAPS_CUDA_GEMM_PATH forces a path) and the
  memory-bound ceiling of the speed-up: cuBLAS's time over the time binary_linear needs at the
  device's HBM bandwidth just to read X (fp16) and W (bits) and write Y (fp16). The bandwidth
  comes from ``--hbm-tbps`` or, for known devices, from the table below (published figures).

Timing: a kernel and its baseline are sampled alternately (baseline sample, kernel sample, ...), so
load from other processes hits both alike; a sample is the mean of enough calls to last
``--sample-ms``; the table shows medians over ``--repeats`` samples. Rates count 2 ops per
multiply-accumulate on both sides (binary: XNOR + popcount-add; dense: multiply + add).

    PYTHONPATH=. python benchmarks/bench_kernels.py [--device cpu|cuda|all] [--out r.json --out r.md]

(``PYTHONPATH=.`` unless bitmaps is installed, e.g. by ``make install``.)
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from collections.abc import Callable

import torch
import torch.nn.functional as F
from bench_results import markdown_table, parse_with_outputs, run_meta, write_outputs

from bitmaps.core import ops
from bitmaps.runtime.timing import calls_per_sample, cpu_timer, time_alternating
from bitmaps.runtime.timing_cuda import cuda_event_timer

SHAPES = ((768, 768), (768, 3072), (3072, 768))  # (K, N) of BERT-base's linears
CPU_M = (128, 1024)
GPU_M = (128, 1024, 8192, 32768)
# Published HBM bandwidth, TB/s, by a substring of torch.cuda.get_device_name() (first match).
HBM_TBPS = (("H200", 4.8), ("H100 PCIe", 2.0), ("H100", 3.35), ("A100-SXM4-80GB", 2.039),
            ("A100", 1.555), ("L40S", 0.864), ("L4", 0.3), ("A10", 0.6), ("Orin", 0.205))  # fmt: skip


def time_pair(
    device: str,
    baseline: Callable[[], object],
    kernel: Callable[[], object],
    repeats: int,
    sample_ms: float,
) -> tuple[list[float], list[float]]:
    """Alternating samples (ms per call) of two callables: the wall clock on ``cpu``, CUDA events
    on ``cuda``; each sample is the mean of enough calls to last about ``sample_ms``."""
    make = cuda_event_timer if device == "cuda" else cpu_timer
    timers = []
    for fn in (baseline, kernel):
        calls = calls_per_sample(lambda n, fn=fn: make(lambda i: fn(), n), sample_ms, warmup=3)
        timers.append(make(lambda i, fn=fn: fn(), calls))
    base, kern = time_alternating(timers, repeats)
    return base, kern


def _row(device, op, baseline, m, k, n, dtype, threads, path, base_ms, kern_ms, target) -> dict:
    t_base, t_kern = statistics.median(base_ms) / 1e3, statistics.median(kern_ms) / 1e3
    speedup = t_base / t_kern
    ops_count = 2.0 * m * n * k
    return {
        "device": device,
        "op": op,
        "baseline": baseline,
        "M": m,
        "K": k,
        "N": n,
        "dtype": dtype,
        "threads": threads,
        "path": path,
        "kernel_ms": round(t_kern * 1e3, 4),
        "baseline_ms": round(t_base * 1e3, 4),
        "speedup": round(speedup, 2),
        "kernel_gops": round(ops_count / t_kern / 1e9, 1),
        "kernel_tops": round(ops_count / t_kern / 1e12, 3),
        "baseline_gflops": round(ops_count / t_base / 1e9, 1),
        "target": f">= {target}x" if target else "",
        "meets": ("yes" if speedup >= target else "NO") if target else "",
    }


def bench_cpu_shape(args: argparse.Namespace, m: int, k: int, n: int, path: str) -> list[dict]:
    """xnor_gemm vs matmul and binary_linear vs F.linear, FP32, for one shape."""
    w, x = torch.randn(n, k), torch.randn(m, k)
    w_packed, a = ops.pack_signs(w), ops.pack_signs(x)
    w_scale, bias = torch.rand(n) + 0.1, torch.randn(n)
    base, kern = time_pair(
        "cpu",
        lambda: torch.matmul(x, w.t()),
        lambda: ops.xnor_gemm(a, w_packed, k),
        args.repeats,
        args.sample_ms,
    )
    gemm = _row("cpu", "xnor_gemm", "matmul fp32", m, k, n, "int32", args.threads, path,
                base, kern, 15.0)  # fmt: skip
    base, kern = time_pair(
        "cpu",
        lambda: F.linear(x, w, bias),
        lambda: ops.binary_linear(x, w_packed, w_scale, bias, k, 0.0, 0.0),
        args.repeats,
        args.sample_ms,
    )
    linear = _row("cpu", "binary_linear", "F.linear fp32", m, k, n, "float32", args.threads, path,
                  base, kern, 10.0)  # fmt: skip
    return [gemm, linear]


def bench_cpu(args: argparse.Namespace) -> list[dict]:
    torch.set_num_threads(args.threads)
    path = ops.cpu_path() or "reference"
    rows = []
    for k, n in SHAPES:
        for m in args.cpu_m:
            rows += bench_cpu_shape(args, m, k, n, path)
            print(f"  cpu M={m} K={k} N={n}: done", file=sys.stderr)
    return rows


def gpu_skip_reason() -> str | None:
    """Why the GPU section cannot run here, or None when it can."""
    if not torch.cuda.is_available():
        return "no CUDA device visible to torch"
    if not ops.native_available():
        return f"bitmaps._C not built ({ops.native_status()})"
    from bitmaps import _C

    if not getattr(_C, "with_cuda", False):
        return "bitmaps._C was built without CUDA kernels (rebuild where nvcc and CUDA torch exist)"
    return None


def hbm_tbps(args: argparse.Namespace, name: str) -> float | None:
    if args.hbm_tbps:
        return args.hbm_tbps
    return next((tbps for key, tbps in HBM_TBPS if key in name), None)


def gemm_kernel_that_ran(fn: Callable[[], object]) -> str:
    """The name of the XNOR-GEMM kernel one call of fn launches (torch.profiler)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    names = [e.name for e in prof.events() if "xnor_gemm" in e.name]
    if not names:
        return "?"
    name = names[0][names[0].find("xnor_gemm") :]
    return name.split("(")[0].replace("bitmaps::cuda::detail::", "")[:60]


def bench_gpu_shape(args: argparse.Namespace, m: int, k: int, n: int, name: str) -> dict:
    """binary_linear vs F.linear, FP16 on the GPU, for one shape."""
    dev = torch.device("cuda")
    w16, x = torch.randn(n, k, device=dev).half(), torch.randn(m, k, device=dev).half()
    w_packed = ops.pack_signs(w16)
    w_scale, bias = torch.rand(n, device=dev) + 0.1, torch.randn(n, device=dev)
    bias16 = bias.half()

    def kernel() -> object:
        return ops.binary_linear(x, w_packed, w_scale, bias, k, 0.0, 0.0)

    base, kern = time_pair(
        "cuda", lambda: F.linear(x, w16, bias16), kernel, args.repeats, args.sample_ms
    )
    target = 2.0 if (m >= 8192 and k != n) else (1.0 if m == 128 else 0.0)
    row = _row("cuda", "binary_linear", "F.linear fp16 (cuBLAS)", m, k, n, "float16", 0, name,
               base, kern, target)  # fmt: skip
    row["gemm_kernel"] = gemm_kernel_that_ran(kernel)
    tbps = hbm_tbps(args, name)
    if tbps:
        floor_s = (2 * m * k + 2 * m * n + 4 * n * ((k + 31) // 32) + 8 * n) / (tbps * 1e12)
        row["ceiling"] = round(statistics.median(base) / 1e3 / floor_s, 2)
        row["of_ceiling"] = f"{row['speedup'] / row['ceiling']:.0%}"
    return row


def bench_gpu(args: argparse.Namespace) -> list[dict]:
    name = torch.cuda.get_device_name()
    rows = []
    for k, n in SHAPES:
        for m in args.gpu_m:
            rows.append(bench_gpu_shape(args, m, k, n, name))
            print(f"  cuda M={m} K={k} N={n}: done", file=sys.stderr)
    return rows


def table(rows: list[dict]) -> str:
    """The markdown table of the rows (what is printed, and what make_results.py renders)."""
    head = ("device", "op", "M", "K", "N", "dtype", "kernel_ms", "baseline", "baseline_ms",
            "speedup", "kernel_tops", "baseline_gflops", "target", "meets")  # fmt: skip
    if any(r.get("gemm_kernel") for r in rows):
        head += ("ceiling", "of_ceiling", "gemm_kernel")
    return markdown_table(head, ([r.get(c, "") for c in head] for r in rows))


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(","))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=("cpu", "cuda", "all"), default="all")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="CPU threads, both sides")
    p.add_argument("--repeats", type=int, default=21, help="samples per measurement (median)")
    p.add_argument("--sample-ms", type=float, default=20.0, help="length of one sample")
    p.add_argument("--cpu-path", default="auto", help="force a CPU path: avx512, avx2, scalar")
    p.add_argument("--cpu-m", type=_ints, default=CPU_M, help="comma-separated M values (CPU)")
    p.add_argument("--gpu-m", type=_ints, default=GPU_M, help="comma-separated M values (GPU)")
    p.add_argument("--hbm-tbps", type=float, default=None, help="GPU memory bandwidth, TB/s")
    return parse_with_outputs(p, argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    print(f"bitmaps kernels: {ops.native_status()}; torch {torch.__version__}", file=sys.stderr)
    rows: list[dict] = []
    if args.device in ("cpu", "all"):
        if ops.native_available():
            with ops.forced_cpu_path(args.cpu_path):
                rows += bench_cpu(args)
        else:
            print("CPU section skipped: bitmaps._C not built", file=sys.stderr)
    if args.device in ("cuda", "all"):
        reason = gpu_skip_reason()
        if reason is None:
            rows += bench_gpu(args)
        elif args.device == "cuda":
            print(f"GPU section cannot run: {reason}", file=sys.stderr)
            return 2
        else:
            print(f"GPU section skipped: {reason}", file=sys.stderr)
    text = table(rows)
    print(text)
    write_outputs(args.out, rows, run_meta(native_status=ops.native_status()), text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
