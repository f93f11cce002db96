"""Per-call cost of bitmaps' float torch ops against what PyTorch runs for the same step, on CPU:
``bitmaps::packed_attention`` (Q, K, V side by side, the stacked projection's output) vs
``scaled_dot_product_attention`` on the same Q, K, V views, and ``bitmaps::skip_layer_norm`` vs
``layer_norm(x + skip)``, and ``bitmaps::embed_layer_norm`` vs transformers' ``BertEmbeddings`` on
the same int4 tables (word, token type, position: three lookups, two adds, LayerNorm): the ops
``bitmaps.runtime.fusion.fuse_for_cpu_inference_`` gives a binary BERT on the CPU (``bitmaps
profile``'s torch rows). Last, the whole binary encoder (``bitmaps profile --shape``'s torch
model, 1 x 128) with its embeddings run by transformers' code vs by ``embed_layer_norm``, in turns.

Attention: query = key = value length ``seq``, BERT's padding mask as an additive bias
[batch, 1, 1, seq] (the last quarter of the second row's keys masked). Samples of the two ops of a
pair taken in turn (bitmaps/runtime/timing.py), medians of ``--repeats``.

    PYTHONPATH=. python benchmarks/bench_torch_float_ops.py [--threads 2] [--repeats 30] [--out r.json]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys

import torch
from bench_results import markdown_table, parse_with_outputs, publish_torch_run

from bitmaps.core import ops
from bitmaps.runtime.timing import cpu_timer, time_alternating

# (batch, seq, hidden, heads): BERT-base at 1 x 128 and 8 x 128, BERT-tiny, MiniLM-L6
ATTENTION = [(1, 128, 768, 12), (8, 128, 768, 12), (1, 128, 128, 2), (1, 128, 384, 12)]
# (batch, seq, hidden)
NORMS = [(1, 128, 768), (8, 128, 768), (1, 128, 128)]
# (batch, seq, hidden, vocabulary): BERT-base and BERT-tiny's embeddings, int4 in groups of 64
EMBEDDINGS = [(1, 128, 768, 30522), (8, 128, 768, 30522), (1, 128, 128, 30522)]


def table(rows: list[dict]) -> str:
    """The markdown table of the rows (what is printed, and what make_results.py renders)."""
    head = ("op", "shape", "torch ms", "bitmaps ms", "torch / bitmaps", "max |diff|")
    cells = [
        [r["op"], r["shape"], f"{r['torch_ms']:.3f}", f"{r['bitmaps_ms']:.3f}",
         f"{r['torch_ms'] / r['bitmaps_ms']:.2f}x", f"{r['max_abs_diff']:.1e}"]
        for r in rows
    ]  # fmt: skip
    return markdown_table(head, cells)


def _pair(name: str, shape: str, theirs, ours, repeats: int, calls: int) -> dict:  # noqa: ANN001
    diff = float((theirs() - ours()).abs().max())
    for fn in (theirs, ours, theirs, ours):
        fn()
    samples = time_alternating([cpu_timer(lambda i, f=f: f(), calls) for f in (theirs, ours)],
                               repeats)  # fmt: skip
    torch_ms, bitmaps_ms = (statistics.median(s) for s in samples)
    return {"op": name, "shape": shape, "torch_ms": torch_ms, "bitmaps_ms": bitmaps_ms,
            "max_abs_diff": diff}  # fmt: skip


def attention_row(batch: int, seq: int, hidden: int, heads: int, repeats: int) -> dict:
    g = torch.Generator().manual_seed(0)
    qkv = torch.randn(batch, seq, 3 * hidden, generator=g)
    bias = torch.zeros(batch, 1, 1, seq)
    if batch > 1:
        bias[1, ..., seq - seq // 4 :] = torch.finfo(torch.float32).min
    scale = (hidden // heads) ** -0.5
    q, k, v = (t.view(batch, seq, heads, -1).transpose(1, 2) for t in qkv.split(hidden, -1))

    def theirs() -> torch.Tensor:
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=scale)
        return out.transpose(1, 2).reshape(batch, seq, hidden)

    def ours() -> torch.Tensor:
        return ops.packed_attention(qkv, bias, heads, scale)

    return _pair("attention (SDPA vs packed_attention)", f"{batch}x{seq}x{hidden}, {heads} heads",
                 theirs, ours, repeats, calls=5)  # fmt: skip


def norm_row(batch: int, seq: int, hidden: int, repeats: int) -> dict:
    g = torch.Generator().manual_seed(0)
    x, skip = (
        torch.randn(batch, seq, hidden, generator=g),
        torch.randn(batch, seq, hidden, generator=g),
    )
    gamma, beta = torch.rand(hidden, generator=g) + 0.5, torch.randn(hidden, generator=g)

    def theirs() -> torch.Tensor:
        return torch.nn.functional.layer_norm(x + skip, (hidden,), gamma, beta, 1e-12)

    def ours() -> torch.Tensor:
        return ops.skip_layer_norm(x, skip, gamma, beta, 1e-12)

    return _pair("add + LayerNorm (torch vs skip_layer_norm)", f"{batch}x{seq}x{hidden}",
                 theirs, ours, repeats, calls=20)  # fmt: skip


def embeddings_row(batch: int, seq: int, hidden: int, vocab: int, repeats: int) -> dict:
    from transformers import BertConfig
    from transformers.models.bert.modeling_bert import BertEmbeddings

    from bitmaps.core.embeddings import quantize_embeddings_
    from bitmaps.runtime.fusion import fuse_embed_layer_norm_

    torch.manual_seed(0)
    config = BertConfig(vocab_size=vocab, hidden_size=hidden, max_position_embeddings=512)
    holder = torch.nn.Module()
    holder.embeddings = BertEmbeddings(config).eval()
    quantize_embeddings_(holder, "int4", 64)
    theirs_module = holder.embeddings
    ours_module = copy.deepcopy(theirs_module)
    fuse_embed_layer_norm_(ours_module)
    ids = torch.randint(0, vocab, (batch, seq), generator=torch.Generator().manual_seed(0))

    return _pair("int4 embeddings + LayerNorm (BertEmbeddings vs embed_layer_norm)",
                 f"{batch}x{seq}x{hidden}", lambda: theirs_module(input_ids=ids),
                 lambda: ours_module(input_ids=ids), repeats, calls=20)  # fmt: skip


def encoder_row(shape: str, repeats: int) -> dict:
    from transformers.models.bert import modeling_bert as mb

    from bitmaps.runtime.backends import ModelSource, inference_module, load_mlm

    fused = inference_module(
        load_mlm(ModelSource(shape=shape), "binary"), "binary", "hidden", "cpu"
    )
    plain = copy.deepcopy(fused)
    plain.embeddings.__class__ = mb.BertEmbeddings  # transformers' forward
    ids = torch.randint(1000, 30000, (1, 128), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    return _pair(f"binary {shape} encoder (transformers embeddings vs embed_layer_norm)", "1x128",
                 lambda: plain(input_ids=ids, attention_mask=mask).last_hidden_state,
                 lambda: fused(input_ids=ids, attention_mask=mask).last_hidden_state,
                 repeats, calls=5)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--repeats", type=int, default=30, help="samples of each op (median)")
    args = parse_with_outputs(p, argv)
    if not ops.native_available():
        print(f"needs bitmaps._C: {ops.native_status()}", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    with torch.inference_mode():
        rows = [attention_row(*shape, args.repeats) for shape in ATTENTION]
        rows += [norm_row(*shape, args.repeats) for shape in NORMS]
        rows += [embeddings_row(*shape, args.repeats) for shape in EMBEDDINGS]
        rows += [encoder_row(shape, args.repeats) for shape in ("bert-tiny", "bert-base")]
    publish_torch_run(args.out, rows, table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
