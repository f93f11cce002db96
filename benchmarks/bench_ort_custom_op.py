"""Per-call cost of ``bitmaps::BinaryLinear`` inside ONNX Runtime through the Python custom op.

For BERT-base shapes (K x N in 768x768, 768x3072, 3072x768) and X of ``--tokens`` rows, the same op
is timed three ways in one run, samples taken in turn (bitmaps.runtime.onnxruntime):

- ``direct``: ``torch.ops.bitmaps.binary_linear`` called from Python (the baseline);
- ``ort``: a one-node model in an onnxruntime session, the node run by onnxruntime-extensions'
  PyOp bridge calling the same torch op, outputs returned as arrays (our hook);
- ``ort (default hook)``: the same with extensions' own hook, which returns ``tolist()``.

``overhead`` = ort − direct: copying inputs into fresh numpy arrays, the GIL round trip, copying
the output back, and ONNX Runtime's per-run cost.

    PYTHONPATH=. python benchmarks/bench_ort_custom_op.py [--tokens 128 1024] [--out r.md]
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import torch

from bitmaps.core import ops
from bitmaps.core.atomic import atomic_output
from bitmaps.runtime.onnxruntime import measure_custom_op_overhead

SHAPES = [(768, 768), (768, 3072), (3072, 768)]
COLUMNS = ("tokens", "k", "n", "direct_ms", "ort_ms", "ort_default_hook_ms", "overhead_ms")


def _markdown(rows: list[dict]) -> str:
    head = "| tokens | K | N | direct ms | ORT + PyOp ms | overhead ms | ORT, default hook ms |"
    lines = [head, "|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(
            f"| {r['tokens']} | {r['k']} | {r['n']} | {r['direct_ms']:.3f} | {r['ort_ms']:.3f} | "
            f"{r['overhead_ms']:.3f} ({r['overhead_ms'] / r['direct_ms']:+.0%}) | "
            f"{r['ort_default_hook_ms']:.3f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, nargs="+", default=[128, 1024])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--out", action="append", default=[], help="write .md or .csv")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    for tokens in args.tokens:
        rows += measure_custom_op_overhead(SHAPES, tokens, repeats=args.repeats)
    table = _markdown(rows)
    header = f"{ops.native_status()}; torch threads {torch.get_num_threads()}"
    print(header)
    print(table)
    for out in args.out:
        with atomic_output(out) as tmp:
            if Path(out).suffix == ".csv":
                with open(tmp, "w", newline="") as f:
                    writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
                    writer.writeheader()
                    writer.writerows(rows)
            else:
                Path(tmp).write_text(f"{header}\n\n{table}\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
