"""Binary BERT-base end to end on the GPU: PyTorch CUDA, FP16, CUDA graphs, against FP16 BERT-base.

The model is a BERT-base encoder written out here (embeddings + LayerNorm, 12 layers of
Q/K/V/attention-output/intermediate/output linears, scaled-dot-product attention, GELU, residual
LayerNorms; optionally the tied masked-LM decoder), so the benchmark needs neither transformers nor
a download. The binary model is the same module with the 6 x 12 encoder linears replaced by
:class:`bitmaps.core.packed.PackedBinaryLinear` (packed random weights, per-row activation scale),
exactly the layers bitmaps binarizes (DESIGN.md "What is binarized"); everything else stays FP16
in both. Both run as one captured CUDA graph per (batch, seq), so launch overhead does not count.

Timing: CUDA events around graph replays, the two models alternated sample by sample; medians.

    PYTHONPATH=. python benchmarks/bench_bert_cuda.py [--batch 1,8,32] [--seq 128] [--out r.json --out r.md]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from bench_results import markdown_table, parse_with_outputs, run_meta, write_outputs
from torch import nn

from bitmaps.core import ops
from bitmaps.core.packed import BinaryLinearSpec, PackedBinaryLinear
from bitmaps.runtime.timing import time_alternating
from bitmaps.runtime.timing_cuda import cuda_event_timer

HIDDEN, LAYERS, HEADS, FFN, VOCAB, MAX_POS = 768, 12, 12, 3072, 30522, 512


class Layer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.query, self.key, self.value = (nn.Linear(HIDDEN, HIDDEN) for _ in range(3))
        self.attn_out = nn.Linear(HIDDEN, HIDDEN)
        self.intermediate, self.output = nn.Linear(HIDDEN, FFN), nn.Linear(FFN, HIDDEN)
        self.ln1, self.ln2 = nn.LayerNorm(HIDDEN, eps=1e-12), nn.LayerNorm(HIDDEN, eps=1e-12)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        b, s, _ = h.shape

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(b, s, HEADS, HIDDEN // HEADS).transpose(1, 2)

        q, k, v = heads(self.query(h)), heads(self.key(h)), heads(self.value(h))
        ctx = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, s, HIDDEN)
        h = self.ln1(h + self.attn_out(ctx))
        return self.ln2(h + self.output(F.gelu(self.intermediate(h))))


class Bert(nn.Module):
    """BERT-base encoder (+ the tied MLM decoder with ``head=True``)."""

    def __init__(self, head: bool) -> None:
        super().__init__()
        self.words = nn.Embedding(VOCAB, HIDDEN)
        self.positions = nn.Embedding(MAX_POS, HIDDEN)
        self.types = nn.Embedding(2, HIDDEN)
        self.ln = nn.LayerNorm(HIDDEN, eps=1e-12)
        self.layers = nn.ModuleList(Layer() for _ in range(LAYERS))
        self.head = head

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(ids.shape[1], device=ids.device)
        h = self.ln(self.words(ids) + self.positions(pos) + self.types.weight[0])
        for layer in self.layers:
            h = layer(h)
        return F.linear(h, self.words.weight) if self.head else h


def binarize(model: Bert) -> Bert:
    """The 6 linears of every layer → PackedBinaryLinear (random signs, scales like a student's)."""
    for layer in model.layers:
        for name in ("query", "key", "value", "attn_out", "intermediate", "output"):
            lin: nn.Linear = getattr(layer, name)
            w = lin.weight.detach().float()
            spec = BinaryLinearSpec(
                packed_weight=ops.reference_pack_signs(w),
                w_scale=w.abs().mean(1),
                bias=lin.bias.detach().float(),
                in_features=lin.in_features,
                out_features=lin.out_features,
                act_threshold=0.0,
                act_scale=0.0,
            )
            setattr(layer, name, PackedBinaryLinear(spec))
    return model


def graphed(model: nn.Module, ids: torch.Tensor):  # noqa: ANN201 - a replay callable
    """Capture one forward on static ``ids``; returns replay()."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side), torch.no_grad():
        for _ in range(3):  # warm-up outside the capture (cuBLAS handles, allocator)
            model(ids)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph), torch.no_grad():
        model(ids)
    return graph.replay


def time_pair(a, b, repeats: int, replays: int) -> tuple[float, float]:  # noqa: ANN001
    """Median ms per call of two callables, CUDA events around ``replays`` calls, alternated."""
    timers = [cuda_event_timer(lambda i, fn=fn: fn(), replays) for fn in (a, b)]
    ta, tb = time_alternating(timers, repeats)
    return statistics.median(ta), statistics.median(tb)


def table(rows: list[dict]) -> str:
    """The markdown table of the rows (what is printed, and what make_results.py renders)."""
    head = ("model part", "batch x seq", "FP16 ms", "binary ms", "speed-up", "target")
    cells = [
        [
            r["part"],
            f"{r['batch']} x {r['seq']}",
            f"{r['fp16_ms']:.3f}",
            f"{r['binary_ms']:.3f}",
            f"{r['fp16_ms'] / r['binary_ms']:.2f}x",
            r["target"],
        ]  # fmt: skip
        for r in rows
    ]
    return markdown_table(head, cells)


def kernel_shares(
    model: nn.Module, ids: torch.Tensor, forwards: int = 5, top: int = 8
) -> list[dict]:
    """Where ``model``'s CUDA time goes, by kernel: torch.profiler over ``forwards`` eager
    forwards (no graph, so each kernel is seen), the ``top`` kernels by total time."""
    from torch.profiler import ProfilerActivity, profile

    with torch.no_grad():
        for _ in range(3):
            model(ids)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(forwards):
                model(ids)
            torch.cuda.synchronize()
    events = [e for e in prof.key_averages() if e.device_time_total > 0]
    total = sum(e.device_time_total for e in events)
    events.sort(key=lambda e: e.device_time_total, reverse=True)
    return [
        {
            "kernel": e.key[:60],
            "calls_per_forward": e.count / forwards,
            "us_per_call": e.device_time_total / e.count,
            "share": e.device_time_total / total,
        }
        for e in events[:top]
    ]


def kernels_table(batch: int, rows: list[dict]) -> str:
    head = (f"kernel (binary encoder, {batch} x 128, eager)", "calls/forward", "us/call", "share")
    cells = [[f"`{r['kernel']}`", f"{r['calls_per_forward']:.0f}", f"{r['us_per_call']:.1f}",
              f"{100 * r['share']:.1f} %"] for r in rows]  # fmt: skip
    return markdown_table(head, cells)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", default="1,8,32")
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--replays", type=int, default=20)
    p.add_argument(
        "--kernels",
        metavar="FILE.md",
        help="also profile the binary encoder per kernel (torch.profiler) at each batch into FILE",
    )
    args = parse_with_outputs(p, argv)
    if not torch.cuda.is_available():
        print("bench_bert_cuda: needs a CUDA GPU visible to torch", file=sys.stderr)
        return 2
    if not torch._C._dispatch_has_kernel_for_dispatch_key("bitmaps::binary_linear", "CUDA"):
        print("bench_bert_cuda: bitmaps._C has no CUDA kernels (build with CUDA)", file=sys.stderr)
        return 2
    torch.manual_seed(0)
    rows, profiles = [], []
    for head in (False, True):
        fp16 = Bert(head).cuda().half().eval()
        binary = binarize(Bert(head)).cuda().half().eval()
        part = "encoder + MLM decoder" if head else "encoder"
        for batch in (int(v) for v in args.batch.split(",")):
            ids = torch.randint(0, VOCAB, (batch, args.seq), device="cuda")
            t_fp16, t_bin = time_pair(
                graphed(fp16, ids), graphed(binary, ids), args.repeats, args.replays
            )
            target = ">= 1.3x (aim 2x)" if (batch == 32 and not head) else ""
            rows.append({"part": part, "batch": batch, "seq": args.seq, "fp16_ms": t_fp16,
                         "binary_ms": t_bin, "target": target})  # fmt: skip
            print(f"  {part}, batch {batch}: {t_fp16 / t_bin:.2f}x", file=sys.stderr, flush=True)
        if args.kernels and not head:
            for batch in (int(v) for v in args.batch.split(",")):
                ids = torch.randint(0, VOCAB, (batch, args.seq), device="cuda")
                profiles.append(kernels_table(batch, kernel_shares(binary, ids)))
        del fp16, binary
        torch.cuda.empty_cache()
    if args.kernels:
        Path(args.kernels).write_text("\n\n".join(profiles) + "\n")
    text = table(rows)
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, CUDA graphs, fp16\n")
    print(text)
    write_outputs(args.out, rows, run_meta(how="CUDA graphs, fp16"), text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
