"""Where the binary BERT-base encoder spends its time on CPU: the binary linears vs the rest.

Times the binary BERT-base encoder (``bitmaps profile``'s torch binary model, batch x seq tokens,
with its CPU inference fusions), then the same model with every binary linear call
(``bitmaps::binary_linear_prepacked``, which the packed layers, the stacked Q, K, V and the fused
encoder loop all call, and ``bitmaps::binary_ffn_prepacked``, the two FFN layers as one call) only
allocating its output, alternately,
``--repeats`` times each, and this CPU's popcount ceiling with as many threads (the fastest
binary loop of bench_popcount_ceiling.py), so the linears' binary MAC/s is quoted as a share of it.
The difference is what the 72 binary layers (48 calls, Q, K, V stacked) cost inside the model; the
rest (attention's two matmuls and softmax, GELU, LayerNorm, embeddings) stays in
floating point by design and bounds the speed-up over FP32 (Amdahl).

    PYTHONPATH=. python benchmarks/bench_model_breakdown.py [--batch 1] [--seq 128] [--threads 2]
        [--out FILE.json|csv|md]
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys

import torch
from bench_results import markdown_table, parse_with_outputs, publish_torch_run

from bitmaps.core import ops
from bitmaps.core.packed import PackedBinaryLinear
from bitmaps.runtime.backends import ModelSource, inference_module, load_mlm
from bitmaps.runtime.timing import cpu_timer, time_calls


def _median_ms(module: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor, calls: int) -> float:
    """Median of ``calls`` timed calls after 3 untimed ones."""
    timing = {"warmup": 3, "repeats": calls, "min_time": 0.0, "max_time": math.inf}
    with torch.inference_mode():
        times = time_calls(cpu_timer(lambda i: module(input_ids=ids, attention_mask=mask)), timing)
    return statistics.median(times)


def table(rows: list[dict]) -> str:
    """One line per round, then the medians (what is printed, and what make_results.py renders)."""
    head = ("round", "binary model ms", "without the binary linears ms", "binary linears ms",
            "share")  # fmt: skip
    full = statistics.median(r["binary_ms"] for r in rows)
    stubbed = statistics.median(r["without_linears_ms"] for r in rows)
    lines = [(r["round"], r["binary_ms"], r["without_linears_ms"]) for r in rows]
    cells = [
        [name, f"{a:.2f}", f"{b:.2f}", f"{a - b:.2f}", f"{(a - b) / a:.0%}"]
        for name, a, b in [*lines, ("median", full, stubbed)]
    ]
    text = markdown_table(head, cells, "r" * len(head))
    ceiling = rows[0].get("ceiling_gmacs")
    macs = rows[0].get("binary_macs")
    if ceiling and macs:
        rate = macs / ((full - stubbed) * 1e-3) / 1e9
        text += (
            f"\n\nThe binary linears: {macs / 1e9:.2f} G binary MACs per call in "
            f"{full - stubbed:.2f} ms = {rate:.0f} G binary MAC/s, **{rate / ceiling:.0%}** of "
            f"this CPU's popcount ceiling measured in the same run ({ceiling:.0f} G binary "
            f"MAC/s: the fastest binary loop of bench_popcount_ceiling.py, every thread)."
        )
    return text


def popcount_ceiling_gmacs(threads: int) -> float | None:
    """The peak binary MAC/s of ``threads`` threads, G/s: the fastest binary loop of
    bench_popcount_ceiling.py this CPU runs (VPOPCNTQ on zmm or ymm, else the AVX2 nibble lookup or
    scalar POPCNT); None without a C compiler."""
    import tempfile

    import bench_popcount_ceiling as pc

    with tempfile.TemporaryDirectory() as folder:
        try:
            dll = pc.compile_loops(folder)
        except SystemExit as exc:
            print(f"no popcount ceiling: {exc}", file=sys.stderr)
            return None
        rates = [
            pc.peak_rate(getattr(dll, name), macs, threads, 200, 500.0)
            for name, (macs, what) in pc.LOOPS.items()
            if what.startswith("binary")
        ]
    best = max((r for r in rates if r), default=None)
    return best / 1e9 if best else None


def peak_of(samples: list[float | None]) -> float | None:
    """The ceiling from several samples of popcount_ceiling_gmacs taken at different moments of a
    run: a peak, so the largest (a burst of load from another tenant lowers one sample only)."""
    return max((c for c in samples if c), default=None)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--threads", type=int, default=0, help="0: torch's default")
    p.add_argument("--repeats", type=int, default=5, help="alternating rounds")
    p.add_argument("--calls", type=int, default=15, help="timed calls per round (median)")
    args = parse_with_outputs(p, argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if not ops.native_available():
        print(f"needs bitmaps._C: {ops.native_status()}", file=sys.stderr)
        return 2
    mlm = load_mlm(ModelSource(shape="bert-base"), "binary")
    module = inference_module(mlm, "binary", "hidden", "cpu")
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, module.config.vocab_size, (args.batch, args.seq), generator=g)
    mask = torch.ones_like(ids)

    def empty_output(x: torch.Tensor, panels: torch.Tensor, w_scale: torch.Tensor, *_):  # noqa: ANN002, ANN202
        return x.new_empty((*x.shape[:-1], w_scale.shape[0]))

    def empty_ffn_output(x: torch.Tensor, *args):  # noqa: ANN002, ANN202
        return x.new_empty((*x.shape[:-1], args[10].shape[0]))  # args[10]: next_w_scale

    real_ops = (ops.binary_linear_prepacked, ops.binary_ffn_prepacked)
    # a peak, sampled at both ends of the timing, the larger kept (see bench_export_targets.py)
    ceilings = [popcount_ceiling_gmacs(torch.get_num_threads())]
    full, stubbed = [], []
    for _ in range(args.repeats):
        full.append(_median_ms(module, ids, mask, args.calls))
        ops.binary_linear_prepacked, ops.binary_ffn_prepacked = empty_output, empty_ffn_output
        try:
            stubbed.append(_median_ms(module, ids, mask, args.calls))
        finally:
            ops.binary_linear_prepacked, ops.binary_ffn_prepacked = real_ops

    tokens = args.batch * args.seq
    macs = sum(
        tokens * m.in_features * m.out_features
        for m in module.modules()
        if isinstance(m, PackedBinaryLinear)
    )
    ceilings.append(popcount_ceiling_gmacs(torch.get_num_threads()))
    ceiling = peak_of(ceilings)
    rows = [
        {
            "round": i,
            "binary_ms": a,
            "without_linears_ms": b,
            "batch": args.batch,
            "seq": args.seq,
            "binary_macs": macs,
            "ceiling_gmacs": ceiling,
        }  # fmt: skip
        for i, (a, b) in enumerate(zip(full, stubbed, strict=True), 1)
    ]
    publish_torch_run(args.out, rows, table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
