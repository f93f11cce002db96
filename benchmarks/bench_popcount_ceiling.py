"""The popcount ceiling of this CPU: how much faster than FP32 can an XNOR-popcount GEMM be at most?

Compiles benchmarks/popcount_ceiling.c (register-only asm loops, no torch) with the C compiler
(``$CC``, default ``cc``), runs it on every core at once through ctypes (which releases the GIL)
and measures:

- the peak binary multiply-accumulate rate: XOR + VPOPCNTQ + ADD on 512- and 256-bit vectors,
  one MAC per bit;
- the peak FP32 multiply-accumulate rate: VFMADD on 512- and 256-bit vectors, one MAC per lane;
- the peak INT8 multiply-accumulate rate, the ceiling of the INT8 GEMM a CPU user picks instead:
  VPDPBUSD (AVX512-VNNI, 64 MACs per 512-bit op) and TDPBSSD on the AMX tile unit (16 x 16 x 64
  MACs per op) where the CPU has them;
- in the same run, torch.matmul FP32, bitmaps' xnor_gemm and ONNX Runtime's INT8 GEMM
  (``MatMulInteger``, uint8 x int8: the GEMM of ``quantize_dynamic`` models, which a CPU user
  would pick instead of a 1-bit model) on BERT-base shapes (M = 1024).

The ceiling is peak binary MAC/s over the measured FP32 GEMM MAC/s (and over the FP32 FMA peak):
the speed-up an XNOR GEMM would reach at 100 % of the popcount peak. The INT8 rows say the same
against INT8: on a CPU whose ONNX Runtime runs INT8 GEMMs on AMX (Intel Xeon since Sapphire
Rapids), a binary multiply-accumulate at the popcount peak is not much cheaper than an INT8 one.
Loops run many short bursts (``--burst-us``) and keep each thread's fastest, so preemption by
other processes on a shared machine does not lower the peaks; GEMMs report the best and the median
of ``--repeats`` samples.
The loops time themselves inside the C code (``clock_gettime`` around the asm loop, so a burst's
time holds no Python or ctypes call); the GEMMs are timed with bitmaps/runtime/timing.py.

    PYTHONPATH=. python benchmarks/bench_popcount_ceiling.py [--threads N] [--out ceiling.json]

``--out FILE.json`` holds ``{"meta", "rows"}``: one row per loop (``kind: "peak"``, ``gmacs``, None
when the CPU lacks its instructions) and per GEMM (``kind: "gemm"``).
"""

from __future__ import annotations

import argparse
import ctypes
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch
from bench_results import cpu_model, markdown_table, parse_with_outputs, run_meta, write_outputs

from bitmaps.core import ops
from bitmaps.runtime.timing import cpu_timer, time_alternating

SOURCE = Path(__file__).with_name("popcount_ceiling.c")
KLOOP = "xnor_gemm's AVX2 K loop, 4 x 16 block, operands in L1 (K = 768)"
# stop 37's Zen 1 form (4 x 16 block, loads folded); its files still carry it, the GEMM no longer
KLOOP_FOLDED = "the same K loop, weight loads folded into its logic ops (Zen 1 / Zen+ form)"
KLOOP_PAIRS = "xnor_gemm's AVX2 K-pair loop, 2 x 16 block, loads folded (Zen 1 / Zen+ form)"
CHAINS = 12  # vector ops per loop iteration (see popcount_ceiling.c)
LOOPS = {  # function -> (MACs per vector op, what it is)
    "xor_popcnt_zmm": (512, "binary: vpxorq+vpopcntq+vpaddq zmm"),
    "xor_popcnt_ymm": (256, "binary: vpxorq+vpopcntq+vpaddq ymm"),
    "fma_f32_zmm": (16, "fp32: vfmadd231ps zmm"),
    "fma_f32_ymm": (8, "fp32: vfmadd231ps ymm"),
    "vnni_int8_zmm": (64, "int8: vpdpbusd zmm (AVX512-VNNI)"),
    "amx_int8": (16 * 16 * 64, "int8: tdpbssd (AMX tiles)"),
    # CPUs without AVX-512 (AVX2 only: older Xeons, AMD before Zen 4)
    "xor_lut_ymm": (256, "binary: vpxor+2 vpshufb nibble lookup ymm (AVX2)"),
    "xor_split_lut_ymm": (256, "binary: 2 vpxor+2 vpshufb on nibble-split operands ymm (AVX2)"),
    "xor_popcnt_r64": (64, "binary: xor+popcnt+add r64 (scalar)"),
    "fma_f32_ymm_avx2": (8, "fp32: vfmadd231ps ymm (AVX2 + FMA)"),
    "int8_avx2_ymm": (32, "int8: vpmaddubsw+vpmaddwd+vpaddd ymm (AVX2)"),
    # not a ceiling (no "binary:" name): the AVX2 GEMM's K loop on its operands in L1
    "gemm_kloop_avx2": (512, KLOOP),
    "gemm_kloop_avx2_pairs": (512, KLOOP_PAIRS),
}
SHAPES = ((768, 768), (768, 3072), (3072, 768))


def compile_loops(folder: str) -> ctypes.CDLL:
    lib = Path(folder) / "popcount_ceiling.so"
    cc = os.environ.get("CC", "cc")
    cmd = [cc, "-O2", "-shared", "-fPIC", "-o", str(lib), str(SOURCE)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"cannot compile {SOURCE.name} with {cc}: {done.stderr.strip()[:400]}")
    dll = ctypes.CDLL(str(lib))
    for name in LOOPS:
        getattr(dll, name).restype = ctypes.c_double
        getattr(dll, name).argtypes = [ctypes.c_int64]
    return dll


def peak_rate(fn, macs_per_op: int, threads: int, bursts: int, burst_us: float) -> float | None:
    """MAC/s of all threads together, each at its fastest burst; None if the CPU lacks the ops."""
    if fn(1000) < 0:
        return None
    per_iter = min(fn(100_000) for _ in range(5)) / 100_000
    iters = max(1000, int(burst_us * 1e-6 / per_iter))
    best = [float("inf")] * threads

    def worker(i: int) -> None:
        for _ in range(bursts):
            best[i] = min(best[i], fn(iters))

    pool = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return sum(iters * CHAINS * macs_per_op / b for b in best)


def sustained_rate(fn, macs_per_op: int, threads: int, seconds: float = 0.2) -> float | None:
    """MAC/s of all threads running the loop at the same time for about ``seconds``, total work
    over the wall time of the slowest: what the threads deliver together. On a machine whose
    cores share a physical core or a host, this is below :func:`peak_rate`'s sum of each
    thread's fastest burst; None if the CPU lacks the ops."""
    if fn(1000) < 0:
        return None
    per_iter = min(fn(100_000) for _ in range(3)) / 100_000
    iters = max(1000, int(seconds / per_iter))
    pool = [threading.Thread(target=fn, args=(iters,)) for _ in range(threads)]
    start = time.perf_counter()
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return threads * iters * CHAINS * macs_per_op / (time.perf_counter() - start)


def gemm_rates_for_shape(m: int, k: int, n: int, repeats: int) -> list[dict]:
    """torch.matmul FP32 and xnor_gemm MAC/s for one shape, sampled alternately."""
    x, w = torch.randn(m, k), torch.randn(n, k)
    a, b = ops.pack_signs(x), ops.pack_signs(w)
    fns = {"matmul fp32": lambda: torch.matmul(x, w.t())}
    if ops.native_available():
        fns["xnor_gemm"] = lambda: ops.xnor_gemm(a, b, k)
    int8 = int8_matmul(m, k, n, torch.get_num_threads())
    if int8 is not None:
        fns[INT8_OP] = int8
    for fn in fns.values():
        fn(), fn()
    samples = time_alternating([cpu_timer(lambda i, fn=fn: fn()) for fn in fns.values()], repeats)
    return [
        {
            "kind": "gemm",
            "op": name,
            "M": m,
            "K": k,
            "N": n,
            "best_gmacs": m * n * k / min(ms) / 1e6,
            "median_gmacs": m * n * k / statistics.median(ms) / 1e6,
        }
        for name, ms in zip(fns, samples, strict=True)
    ]


INT8_OP = "onnxruntime int8 (MatMulInteger)"


def int8_matmul(m: int, k: int, n: int, threads: int):  # noqa: ANN201 - a callable or None
    """One call of ONNX Runtime's ``MatMulInteger`` (uint8 A [m, k] x constant int8 W [k, n] ->
    int32), in a session of ``threads`` intra-op threads that do not spin between calls (they
    alternate with torch's); None without onnxruntime."""
    try:
        import numpy as np
        import onnxruntime as ort
        from onnx import TensorProto, helper, numpy_helper
    except ImportError:
        return None
    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.integers(-127, 128, (k, n), dtype=np.int8), "W")
    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["A", "W"], ["Y"])], "int8_gemm",
        [helper.make_tensor_value_info("A", TensorProto.UINT8, [m, k])],
        [helper.make_tensor_value_info("Y", TensorProto.INT32, [m, n])], [weight],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(
        model.SerializeToString(), so, providers=["CPUExecutionProvider"]
    )
    feed = {"A": rng.integers(0, 256, (m, k), dtype=np.uint8)}
    return lambda: session.run(None, feed)


def gemm_rates(threads: int, repeats: int) -> list[dict]:
    """torch.matmul FP32 and xnor_gemm MAC/s on BERT-base shapes at M = 1024 (best, median)."""
    torch.set_num_threads(threads)
    return [row for k, n in SHAPES for row in gemm_rates_for_shape(1024, k, n, repeats)]


def report(rows: list[dict]) -> str:
    """The two tables and the ceiling lines (what is printed, and what make_results.py renders)."""
    peaks = {r["loop"]: r["gmacs"] for r in rows if r["kind"] == "peak"}
    sustained = [r for r in rows if r["kind"] == "sustained"]
    gemms = [r for r in rows if r["kind"] == "gemm"]
    loops = [
        [n, "not available (no such unit, or its use refused)" if v is None else f"{v:.0f}"]
        for n, v in peaks.items()
    ] + [[r["loop"], f"{r['gmacs']:.0f}"] for r in sustained]
    binary = max((v for n, v in peaks.items() if n.startswith("binary") and v), default=None)
    fp32 = max((v for n, v in peaks.items() if n.startswith("fp32") and v), default=None)
    int8_peak = max((v for n, v in peaks.items() if n.startswith("int8") and v), default=None)
    cells = []
    for g in gemms:
        peak = {"xnor_gemm": binary, "matmul fp32": fp32, INT8_OP: int8_peak}.get(g["op"])
        share = f"{100 * g['best_gmacs'] / peak:.0f} %" if peak else "-"
        rates = [f"{g['best_gmacs']:.1f}", f"{g['median_gmacs']:.1f}"]
        cells.append([g["op"], g["K"], g["N"], *rates, share])
    head = ("GEMM (M=1024)", "K", "N", "best GMAC/s", "median GMAC/s", "% of peak")
    lines = [markdown_table(("loop", "peak GMAC/s"), loops), "", markdown_table(head, cells)]
    matmul_best = max(g["best_gmacs"] for g in gemms if g["op"] == "matmul fp32")
    if binary:
        lines += [
            "",
            f"ceiling vs FP32 FMA peak: {binary / fp32:.1f}x" if fp32 else "",
            f"ceiling vs measured torch.matmul FP32 (best shape, best sample): "
            f"{binary / matmul_best:.1f}x",
        ]
    if binary and int8_peak:
        lines.append(
            f"popcount ceiling vs INT8 peak of the same cores (per multiply-accumulate): "
            f"{binary / int8_peak:.2f}x"
        )
    kloop = peaks.get(KLOOP)
    if kloop and binary:
        lines.append(
            f"xnor_gemm's AVX2 K loop (operands from L1, 8 broadcasts + 4 loads per K word) vs the "
            f"ceiling: {100 * kloop / binary:.0f} %"
        )
    folded = peaks.get(KLOOP_FOLDED)
    if folded and binary:  # files of stops 37-39
        lines.append(
            f"the K loop with its weight loads folded (8 broadcasts + 16 folded loads per K word) "
            f"vs the ceiling: {100 * folded / binary:.0f} %"
        )
    pairs = peaks.get(KLOOP_PAIRS)
    if pairs and binary:  # files from stop 40 on
        lines.append(
            f"the K-pair loop (per K pair and row: 2 quadword broadcasts, 8 folded loads) vs the "
            f"ceiling: {100 * pairs / binary:.0f} %"
        )
    int8 = [g for g in gemms if g["op"] == INT8_OP]
    if binary and int8:
        best = max(g["best_gmacs"] for g in int8)
        xnor = [g["best_gmacs"] for g in gemms if g["op"] == "xnor_gemm"]
        lines += [
            f"ceiling vs measured ONNX Runtime INT8 GEMM (best shape, best sample: {best:.0f} "
            f"G int8 MAC/s): {binary / best:.1f}x"
            + (f"; xnor_gemm (best shape) vs it: {max(xnor) / best:.1f}x" if xnor else ""),
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="threads (default: all)")
    p.add_argument("--bursts", type=int, default=400, help="bursts per thread (fastest kept)")
    p.add_argument("--burst-us", type=float, default=500.0, help="length of one burst")
    p.add_argument("--repeats", type=int, default=15, help="GEMM samples")
    args = parse_with_outputs(p, argv)
    with tempfile.TemporaryDirectory() as folder:
        dll = compile_loops(folder)
        peaks = {
            name: peak_rate(getattr(dll, name), macs, args.threads, args.bursts, args.burst_us)
            for name, (macs, _) in LOOPS.items()
        }
        sustained = sustained_rate(dll.xor_popcnt_zmm, LOOPS["xor_popcnt_zmm"][0], args.threads)
    rows = [
        {"kind": "peak", "loop": LOOPS[name][1], "gmacs": rate / 1e9 if rate else None}
        for name, rate in peaks.items()
    ]
    if sustained:
        loop = LOOPS["xor_popcnt_zmm"][1] + ", all threads at once (sustained)"
        rows.append({"kind": "sustained", "loop": loop, "gmacs": sustained / 1e9})
    rows += gemm_rates(args.threads, args.repeats)
    text = report(rows)
    print(f"threads: {args.threads}; CPU: {cpu_model()}\n")
    print(text)
    write_outputs(args.out, rows, run_meta(threads=args.threads), text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
