"""What attention in int8 costs in accuracy: an emulation (stop 34, before any int8 kernel) and the
scheme bitmaps ships (``shipped``).

DESIGN.md keeps softmax and the two attention matmuls in float; on CPUs without AVX-512 that
leaves attention the largest part of the binary model after its linears (benchmarks/RESULTS.md
"Stop 34"). This scores the same checkpoints (``bitmaps eval``'s masked-LM or classification
metrics, the same held-out split and masks) with every attention of the model computed as an
integer kernel would compute it, in float32 arithmetic that rounds the operands exactly as the
kernel would:

- ``qk``: Q and K rounded to int8 per (batch, head, position) row, scale max|row| / 127; the
  scores are the integer dot products times both scales and the attention scale (exact: 64 *
  127^2 < 2^24), then the mask and a float softmax;
- ``pv``: exp(score - row max) (in (0, 1], 1 at the maximum) rounded to 0..127 (u7, what
  VPMADDUBSW can take without saturating its 16-bit pair sums), V rounded to int8 per (batch,
  head, column) over the keys; the integer products normalized by the sum of the rounded
  probabilities;
- ``qk+pv``: both. ``float``: the same function without rounding (checks the emulation's
  plumbing: it must reproduce the model's own scores);
- ``shipped``: the int8 scheme bitmaps now ships (stop 35: ``export --attention int8``,
  bitmaps/core/int8_attention.py, bit for bit what the kernels compute): ``qk+pv`` with V's
  scales over the attended keys, the levels from a polynomial exp, the output divided by the sum.

    .venv/bin/python benchmarks/bench_attention_int8_accuracy.py runs/demo/teacher.pt \\
        runs/demo/student.pt --data "$(bitmaps assets path sotu)"

Prints a markdown table (each variant's metric and its difference to ``float``); ``--out
FILE.json|csv|md`` also writes the rows (bench_results.py).
"""

from __future__ import annotations

import argparse
import contextlib
import sys

import torch
from bench_results import markdown_table, parse_with_outputs, run_meta, write_outputs

from bitmaps.train.attention import attention_function_everywhere, int8_attention_everywhere

VARIANTS = ("float", "qk", "pv", "qk+pv", "shipped")


def _round_rows(x: torch.Tensor, dim: int, levels: int = 127) -> tuple[torch.Tensor, torch.Tensor]:
    """x rounded to integers in [-levels, levels] with one scale per slice along ``dim``
    (max |x| / levels; a zero slice gets scale 1): (integers as float32, scales)."""
    scale = x.abs().amax(dim=dim, keepdim=True) / levels
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    return torch.round(x / scale).clamp(-levels, levels), scale


def int8_attention(quantize_qk: bool, quantize_pv: bool):  # noqa: ANN201 - the attention function
    """An ``attention_interface`` of transformers (BERT's eager signature) with Q K^T and/or P V
    rounded as an integer kernel would round them (module docstring)."""

    def attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):  # noqa: ANN001, ANN202, ARG001
        scaling = query.size(-1) ** -0.5 if scaling is None else scaling
        q, k, v = query.float(), key.float(), value.float()
        if quantize_qk:
            qi, sq = _round_rows(q, -1)
            ki, sk = _round_rows(k, -1)
            scores = (qi @ ki.transpose(2, 3)) * (sq * sk.transpose(2, 3)) * scaling
        else:
            scores = (q @ k.transpose(2, 3)) * scaling
        if attention_mask is not None and attention_mask.dtype == torch.bool:
            # the mask prepared for SDPA: True where a key is attended
            scores = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
        elif attention_mask is not None:
            scores = scores + attention_mask  # the eager path's additive mask
        if quantize_pv:
            p = torch.exp(scores - scores.amax(dim=-1, keepdim=True))  # (0, 1], 1 at the max
            pi = torch.round(p * 127)
            vi, sv = _round_rows(v, -2)  # one scale per column, over the keys
            total = pi.sum(dim=-1, keepdim=True)
            out = (pi @ vi) * sv / total
            weights = pi / total
        else:
            weights = torch.softmax(scores, dim=-1)
            out = weights @ v
        return out.to(query.dtype).transpose(1, 2).contiguous(), weights

    return attention


def attention_as(variant: str) -> contextlib.AbstractContextManager[None]:
    """Every attention looked up through transformers' AttentionInterface (BERT's, whatever its
    ``_attn_implementation``) runs ``variant`` inside the block; ``shipped``: the int8 scheme
    bitmaps ships (bitmaps/core/int8_attention.py, ``--attention int8``)."""
    if variant == "shipped":
        return int8_attention_everywhere()
    return attention_function_everywhere(int8_attention("qk" in variant, "pv" in variant))


def score(model: str, data: list[str], variant: str, max_sequences: int) -> dict[str, float]:
    """``bitmaps eval``'s metrics of ``model`` with attention as ``variant``: masked LM: top-1 and
    cross entropy; classifier: accuracy and macro-F1."""
    from bitmaps.core.config import DataConfig
    from bitmaps.train.classify import evaluate_classifier_on_data
    from bitmaps.train.evaluate import evaluate_on_text
    from bitmaps.train.models import model_task

    quiet = lambda m: None  # noqa: E731
    with attention_as(variant), torch.no_grad():
        if model_task(model) == "classify":
            r = evaluate_classifier_on_data(
                model, data, DataConfig(), max_examples=max_sequences, device="cpu",
                explicit=(), log=quiet,
            )  # fmt: skip
            return {"accuracy": float(r["accuracy"]), "macro-F1": float(r["macro_f1"])}
        r = evaluate_on_text(
            model,
            data,
            DataConfig(),
            max_sequences=max_sequences,
            device="cpu",
            log=quiet,
            explicit=(),
        )
        return {"top-1": float(r["accuracy"]), "cross entropy": float(r["cross_entropy"])}


def table(rows: list[dict]) -> str:
    body = [
        (r["model"], r["variant"], r["metric"], f"{r['value']:.4f}", f"{r['vs_float']:+.4f}")
        for r in rows
    ]
    return markdown_table(("model", "attention", "metric", "value", "− float"), body, "lllrr")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("models", nargs="+", help="checkpoints (masked LM or classifier)")
    p.add_argument("--data", action="append", required=True, help="text or labelled data")
    p.add_argument("--max-sequences", type=int, default=0, help="0: the whole held-out split")
    p.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated")
    args = parse_with_outputs(p, argv)
    variants = [v for v in args.variants.split(",") if v]
    if not variants or any(v not in VARIANTS for v in variants):
        p.error(f"--variants: choose from {', '.join(VARIANTS)}")
    if args.max_sequences < 0:
        p.error("--max-sequences must be >= 0")
    rows = []
    for model in args.models:
        base: dict[str, float] = {}
        for variant in ["float", *[v for v in variants if v != "float"]]:
            metrics = score(model, args.data, variant, args.max_sequences)
            base = base or metrics
            if variant not in variants:
                continue
            for metric, value in metrics.items():
                rows.append({"model": model, "variant": variant, "metric": metric,
                             "value": value, "vs_float": value - base[metric]})  # fmt: skip
    text = table(rows)
    print(text)
    write_outputs(args.out, rows, run_meta(), text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
