"""Where the binary BERT-base encoder spends its time on CPU: the binary linears vs the rest.

Times the binary BERT-base encoder (``bitmaps profile``'s torch binary model, batch x seq tokens),
then the same model with every ``PackedBinaryLinear`` only allocating its output, alternately,
``--repeats`` times each. The difference is what the 72 binary linears cost inside the model; the
rest (attention's two matmuls and softmax, GELU, LayerNorm, embeddings) stays in
floating point by design and bounds the speed-up over FP32 (Amdahl).

    PYTHONPATH=. python benchmarks/bench_model_breakdown.py [--batch 1] [--seq 128] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from bitmaps.core import ops
from bitmaps.core.packed import PackedBinaryLinear
from bitmaps.runtime.backends import ModelSource, inference_module, load_mlm


def _median_ms(module: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor, calls: int) -> float:
    times = []
    with torch.inference_mode():
        for _ in range(3):
            module(input_ids=ids, attention_mask=mask)
        for _ in range(calls):
            start = time.perf_counter()
            module(input_ids=ids, attention_mask=mask)
            times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--threads", type=int, default=0, help="0: torch's default")
    p.add_argument("--repeats", type=int, default=5, help="alternating rounds")
    p.add_argument("--calls", type=int, default=15, help="timed calls per round (median)")
    args = p.parse_args(argv)
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

    def empty_output(self: PackedBinaryLinear, x: torch.Tensor) -> torch.Tensor:
        return x.new_empty((*x.shape[:-1], self.out_features))

    real_forward = PackedBinaryLinear.forward
    full, stubbed = [], []
    for _ in range(args.repeats):
        full.append(_median_ms(module, ids, mask, args.calls))
        PackedBinaryLinear.forward = empty_output
        try:
            stubbed.append(_median_ms(module, ids, mask, args.calls))
        finally:
            PackedBinaryLinear.forward = real_forward

    print(f"{ops.native_status()}; torch threads {torch.get_num_threads()}")
    print("| round | binary model ms | without the binary linears ms | binary linears ms | share |")
    print("|---:|---:|---:|---:|---:|")
    for i, (a, b) in enumerate(zip(full, stubbed, strict=True), 1):
        print(f"| {i} | {a:.2f} | {b:.2f} | {a - b:.2f} | {(a - b) / a:.0%} |")
    a, b = statistics.median(full), statistics.median(stubbed)
    print(f"| median | {a:.2f} | {b:.2f} | {a - b:.2f} | {(a - b) / a:.0%} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
