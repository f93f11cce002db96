"""Per-call cost of ``bitmaps::MultiHeadAttention`` (libbitmaps_ort.so) against ONNX Runtime's own
``com.microsoft`` MultiHeadAttention, the attention node of the ``onnxruntime`` export target.

One attention block per shape (query = key = value length ``seq``, BERT's padding mask as
``attention_bias`` [batch, 1, seq, seq]), both ops in ONNX Runtime sessions, samples taken in turn
with idle threads not spinning (bitmaps.runtime.onnxruntime.measure_attention); medians.

    PYTHONPATH=. python benchmarks/bench_attention.py [--threads 1 2] [--repeats N] [--out r.json]
"""

from __future__ import annotations

import argparse
import sys

import onnxruntime as ort
from bench_results import check_outputs, markdown_table, run_meta, write_outputs

from bitmaps.runtime.onnxruntime import measure_attention, native_cpu_path, native_status

# (batch, seq, hidden, heads): BERT-base at 1 x 128 and 8 x 128, BERT-tiny, MiniLM-L6 (head size 32)
SHAPES = [(1, 128, 768, 12), (8, 128, 768, 12), (1, 128, 128, 2), (1, 128, 384, 12)]


def table(rows: list[dict]) -> str:
    """The markdown table of the rows (what is printed, and what make_results.py renders)."""
    head = ("threads", "batch x seq", "hidden / heads", "ORT MHA ms", "bitmaps ms", "speed-up",
            "max diff")  # fmt: skip
    cells = [
        [r["threads"] or "default", f"{r['batch']} x {r['seq']}", f"{r['hidden']} / {r['heads']}",
         f"{r['ort_ms']:.3f}", f"{r['bitmaps_ms']:.3f}", f"{r['speedup']:.2f}x",
         f"{r['max_abs_diff']:.1e}"]
        for r in rows
    ]  # fmt: skip
    return markdown_table(head, cells, "rrrrrrr")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument(
        "--out", action="append", default=[], help="write .json, .csv or .md (repeatable)"
    )
    args = parser.parse_args(argv)
    check_outputs(args.out)
    if native_status().startswith("model-local"):
        print(f"bench_attention: {native_status()}", file=sys.stderr)
        return 2
    rows = []
    for threads in args.threads:
        rows += measure_attention(SHAPES, repeats=args.repeats, threads=threads or None)
    text = table(rows)
    header = f"ONNX Runtime {ort.__version__}; {native_status()}; CPU path {native_cpu_path()}"
    print(header)
    print(text)
    write_outputs(args.out, rows, run_meta(native_status=header, onnxruntime=ort.__version__), text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
