"""Int8 attention in the whole binary BERT-base, A/B in one process (``export --attention int8``).

The binary BERT-base-shaped student of ``bitmaps profile --shape`` (random weights, the elastic
quantizer; the onnxruntime target, encoder only) is exported twice through the real pipeline,
``--attention float`` and ``--attention int8`` (each verified against PyTorch), then both files run
on libbitmaps_ort.so, one session each, in turns (``--rounds`` samples of ``--calls`` calls; idle
threads not spinning, so that neither pool takes the other's cores), at each ``--batch`` x ``--seq``
(128) tokens and ``--threads``. Then the middle layer's attention node alone, with the inputs it got in
the full model. ``bitmaps profile`` measures each model in its own process; on this shared machine
its run-to-run noise (5-20 %) is larger than what attention can win, hence this side-by-side.

    .venv/bin/python benchmarks/bench_attention_int8_model.py [--threads 1,2] [--rounds 15]

Prints a markdown table (ratio = float / int8: above 1, int8 attention is faster) with each
model's share of time in attention; ``--out FILE.json|csv|md`` also writes the rows.
"""

from __future__ import annotations

import argparse
import statistics
import sys

import numpy as np
import onnx
from bench_export_targets import _student
from bench_ort_thread_scaling import _alone, _inputs_seen
from bench_results import markdown_table, parse_with_outputs, run_meta, write_outputs

from bitmaps import get_library_path
from bitmaps.core.config import ExportConfig
from bitmaps.core.embeddings import STUDENT_EMBEDDING_GROUP, STUDENT_EMBEDDINGS
from bitmaps.core.ort import inference_session, library_missing, session_options
from bitmaps.export.pipeline import export_verified
from bitmaps.runtime.timing import cpu_timer, time_alternating

ATTENTIONS = ("float", "int8")
ATTENTION_OPS = ("PackedMultiHeadAttention", "MultiHeadAttention")


def export(attention: str) -> onnx.ModelProto:
    """The student exported with ``attention`` (verified on the native op)."""
    cfg = ExportConfig(
        output="hidden", target="onnxruntime", backends=("kernel",), attention=attention,
        embeddings=STUDENT_EMBEDDINGS, embedding_group=STUDENT_EMBEDDING_GROUP,
    )  # fmt: skip
    return export_verified(_student(), cfg, binary=True).model


def _session(model: onnx.ModelProto, threads: int):  # noqa: ANN202
    so = session_options(threads)
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.register_custom_ops_library(get_library_path())
    return inference_session(model, so)


def _in_turns(models: list[onnx.ModelProto], feeds: list[dict], threads: int, rounds: int,
              calls: int) -> list[float]:  # fmt: skip
    """Median ms per call of each model's session, sampled in turns."""
    sessions = [_session(m, threads) for m in models]
    timers = [
        cpu_timer(lambda i, s=s, f=f: s.run(None, f), calls)
        for s, f in zip(sessions, feeds, strict=True)
    ]
    return [statistics.median(t) for t in time_alternating(timers, rounds)]


def _attention_alone(model: onnx.ModelProto, feed: dict) -> tuple[onnx.ModelProto, dict]:
    """The middle layer's attention node alone and the inputs it received in the full model."""
    nodes = [n for n in model.graph.node if n.domain == "bitmaps" and n.op_type in ATTENTION_OPS]
    node = nodes[len(nodes) // 2]
    return _alone(model, node, _inputs_seen(model, [node], feed))


def measure(
    batches: list[int], threads: list[int], rounds: int, calls: int, seq: int = 128
) -> list[dict]:
    models = [export(a) for a in ATTENTIONS]
    rng = np.random.default_rng(0)
    rows = []
    for batch in batches:
        ids = rng.integers(100, 200, size=(batch, seq), dtype=np.int64)
        feed = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
        outs = [_session(m, 0).run(None, feed)[0] for m in models]
        scale = float(np.abs(outs[0]).max())
        alone = [_attention_alone(m, feed) for m in models]
        for t in threads:
            whole = _in_turns(models, [feed, feed], t, rounds, calls)
            node = _in_turns([a[0] for a in alone], [a[1] for a in alone], t, rounds, 4 * calls)
            layers = sum(n.op_type in ATTENTION_OPS for n in models[0].graph.node)
            for what, (f, i) in (("model", whole), ("attention node", node)):
                rows.append({
                    "what": what, "batch": batch, "seq": seq, "threads": t,
                    "float_ms": f, "int8_ms": i, "ratio": f / i,
                    # the attention nodes' share of the model (node time x layers / model time)
                    "attention_share_float": node[0] * layers / whole[0] if what == "model" else None,
                    "attention_share_int8": node[1] * layers / whole[1] if what == "model" else None,
                    "max_output_difference": float(np.abs(outs[0] - outs[1]).max()) / scale,
                })  # fmt: skip
    return rows


def table(rows: list[dict]) -> str:
    def share(r: dict, k: str) -> str:
        return "" if r[k] is None else f"{100 * r[k]:.0f} %"

    body = [
        (r["what"], f"{r['batch']} × {r['seq']}", str(r["threads"]), f"{r['float_ms']:.2f}",
         f"{r['int8_ms']:.2f}", f"{r['ratio']:.3f}", share(r, "attention_share_float"),
         share(r, "attention_share_int8"))
        for r in rows
    ]  # fmt: skip
    head = ("binary BERT-base (onnxruntime target)", "tokens", "threads", "float ms", "int8 ms",
            "float / int8", "attention share, float", "… int8")  # fmt: skip
    return markdown_table(head, body, "llrrrrrr")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", default="1,8", help="comma-separated batch sizes")
    p.add_argument("--seq", type=int, default=128, help="tokens per sequence")
    p.add_argument("--threads", default="1,2", help="comma-separated intra-op thread counts")
    p.add_argument("--rounds", type=int, default=15, help="samples of each model, in turns")
    p.add_argument("--calls", type=int, default=4, help="model calls per sample")
    args = parse_with_outputs(p, argv)
    problem = library_missing()
    if problem is not None:
        raise SystemExit(f"needs libbitmaps_ort.so: {problem}")
    batches = [int(x) for x in args.batch.split(",") if x]
    threads = [int(x) for x in args.threads.split(",") if x]
    if not batches or min(batches) < 1 or not threads or min(threads) < 1 or args.rounds < 1:
        p.error("--batch and --threads need positive integers, --rounds >= 1")
    if args.seq < 1:
        p.error("--seq needs a positive integer")
    rows = measure(batches, threads, args.rounds, args.calls, args.seq)
    text = table(rows)
    diff = max(r["max_output_difference"] for r in rows)
    text += (f"\n\nThe two models' outputs differ by at most {diff:.3g} of the largest output: "
             "random weights, where one flipped activation bit cascades through the layers; what "
             "int8 attention costs a trained model is measured by `bitmaps eval --attention int8` "
             "and bench_attention_int8_accuracy.py.")  # fmt: skip
    print(text)
    write_outputs(args.out, rows, run_meta(), text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
