"""Per-call cost of libbitmaps_ort.so's float ops against what ONNX Runtime runs for the same step:
``bitmaps::MultiHeadAttention`` vs ``com.microsoft`` MultiHeadAttention, and
``bitmaps::SkipLayerNormalization`` vs Add + LayerNormalization (the nodes the ``onnxruntime``
export target gives a binary model around its BinaryLinear nodes), and GELU in the BinaryLinear
epilogue (``activation = 1``) vs a Gelu node after it (each measured as the difference to the
BinaryLinear node alone, so its row's ms is the GELU's own cost).

Attention: query = key = value length ``seq``, BERT's padding mask as ``attention_bias``
[batch, 1, seq, seq]. Both ops of a pair in ONNX Runtime sessions, samples taken in turn with idle
threads not spinning (bitmaps.runtime.onnxruntime.measure_attention / measure_skip_layer_norm);
medians.

    PYTHONPATH=. python benchmarks/bench_ort_float_ops.py [--threads 1 2] [--repeats N] [--out r.json]
"""

from __future__ import annotations

import argparse
import sys

import onnxruntime as ort
from bench_results import markdown_table, parse_with_outputs, run_meta, write_outputs

from bitmaps.runtime.onnxruntime import (
    measure_attention,
    measure_gelu_epilogue,
    measure_skip_layer_norm,
    native_cpu_path,
    native_status,
)

# (batch, seq, hidden, heads): BERT-base at 1 x 128 and 8 x 128, BERT-tiny, MiniLM-L6 (head size 32)
ATTENTION = [(1, 128, 768, 12), (8, 128, 768, 12), (1, 128, 128, 2), (1, 128, 384, 12)]
# (batch, seq, hidden)
NORMS = [(1, 128, 768), (8, 128, 768), (1, 128, 128)]
# (tokens, K, N): BERT-base's FFN intermediate at 1 x 128 and 8 x 128
GELUS = [(128, 768, 3072), (1024, 768, 3072)]


def table(rows: list[dict]) -> str:
    """The markdown table of the rows (what is printed, and what make_results.py renders)."""
    head = ("op", "threads", "batch x seq", "hidden", "ONNX Runtime ms", "bitmaps ms", "speed-up",
            "max diff")  # fmt: skip
    cells = [
        [r["op"], r["threads"] or "default",
         f"{r['batch']} x {r['seq']}" if "batch" in r else f"{r['tokens']} tokens",
         f"{r['hidden']} / {r['heads']} heads" if "heads" in r else r.get("hidden", r.get("n")),
         f"{r['ort_ms']:.3f}", f"{r['bitmaps_ms']:.3f}", f"{r['speedup']:.2f}x",
         f"{r['max_abs_diff']:.1e}"]
        for r in rows
    ]  # fmt: skip
    return markdown_table(head, cells, "lrrrrrrr")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=15)
    args = parse_with_outputs(parser, argv)
    if native_status().startswith("model-local"):
        print(f"bench_ort_float_ops: {native_status()}", file=sys.stderr)
        return 2
    rows = []
    for threads in args.threads:
        t = threads or None
        rows += [
            {"op": "attention", **r}
            for r in measure_attention(ATTENTION, repeats=args.repeats, threads=t)
        ]
        rows += [
            {"op": "add + layer norm", **r}
            for r in measure_skip_layer_norm(NORMS, repeats=args.repeats, threads=t)
        ]
        rows += [
            {"op": "gelu (epilogue vs node)", **r}
            for r in measure_gelu_epilogue(GELUS, repeats=args.repeats, threads=t)
        ]
    text = table(rows)
    header = f"ONNX Runtime {ort.__version__}; {native_status()}; CPU path {native_cpu_path()}"
    print(header)
    print(text)
    write_outputs(args.out, rows, run_meta(native_status=header, onnxruntime=ort.__version__), text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
