"""Per-call cost of ``bitmaps::BinaryLinear`` inside ONNX Runtime through the native custom op.

For BERT-base shapes (K x N in 768x768, 768x3072, 3072x768) and X of ``--tokens`` rows, timed four
ways in one run, samples taken in turn (bitmaps.runtime.onnxruntime.measure_custom_op_overhead):

- ``torch``: ``torch.ops.bitmaps.binary_linear`` called from Python, weights laid out per call;
- ``torch prepacked``: ``binary_linear_prepacked`` (the packed module's path: panels built once);
- ``ORT native``: a one-node model in an onnxruntime session with libbitmaps_ort.so registered
  (weights laid out once, at session creation);
- ``ORT FP32``: MatMul + Add of the same shape in plain onnxruntime (the baseline).

``overhead`` = ORT native − torch prepacked: what a session run adds around the same kernel.

    PYTHONPATH=. python benchmarks/bench_ort_custom_op.py [--tokens 128 1024] [--threads N] [--out r.json]
"""

from __future__ import annotations

import argparse
import sys

import onnxruntime as ort
import torch
from bench_results import markdown_table, parse_with_outputs, run_meta, write_outputs

from bitmaps.core import ops
from bitmaps.runtime.onnxruntime import measure_custom_op_overhead, native_status

SHAPES = [(768, 768), (768, 3072), (3072, 768)]


def table(rows: list[dict]) -> str:
    """The markdown table of the rows (what is printed, and what make_results.py renders)."""
    head = ("tokens", "K", "N", "torch ms", "torch prepacked ms", "ORT native ms", "overhead ms",
            "ORT FP32 ms", "FP32 / native")  # fmt: skip
    cells = [
        [r["tokens"], r["k"], r["n"]]
        + [f"{r[k]:.3f}" for k in ("direct_ms", "prepacked_ms", "ort_ms")]
        + [f"{r['overhead_ms']:+.3f}", f"{r['ort_fp32_ms']:.3f}", f"{r['fp32_ratio']:.1f}x"]
        for r in rows
    ]
    return markdown_table(head, cells, "r" * len(head))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, nargs="+", default=[128, 1024])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument(
        "--threads", type=int, default=0, help="torch and ONNX Runtime threads (0: their defaults)"
    )
    args = parse_with_outputs(parser, argv)
    rows = []
    for tokens in args.tokens:
        rows += measure_custom_op_overhead(
            SHAPES, tokens, repeats=args.repeats, threads=args.threads or None
        )
    text = table(rows)
    header = (
        f"{ops.native_status()}; ONNX Runtime {ort.__version__}: {native_status()}; "
        f"torch threads {torch.get_num_threads()}, ORT threads {args.threads or 'default'}"
    )
    print(header)
    print(text)
    meta = run_meta(native_status=header, onnxruntime=ort.__version__)
    write_outputs(args.out, rows, meta, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
