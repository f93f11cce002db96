"""Can issue 12's last two goals hold at once on a CPU? A bound from the CPU's own measured peaks.

Issue 12 asks, for binary BERT-base at batch 1 x 128 in ONNX Runtime, that the binary nodes run at
>= 70 % of the popcount ceiling C and that the rest of the model (the remainder) take <= 20 % of
node time. The second is remainder <= binary / 4; with the binary nodes at exactly 70 % (faster
ones only shrink the allowance) that is a budget of B / (0.7 C) / 4 ms for the remainder, where B
is the model's 10.87 G binary multiply-accumulates. The remainder holds at least the attention's
A = 2 x 12 layers x 12 heads x 128 x 128 x 64 = 302 M float multiply-accumulates (Q K^T and P V),
which take A / F at the FP32 FMA peak F of the same cores, plus the rest that the profiler
measured beside the attention (add + LayerNorm, the embeddings).

So the two goals can hold together only if the attention runs at a share of F of at least
(A / F) / (budget - rest): over 100 % means never, on that CPU, whatever the kernels do. Without
any rest at all the condition is C / F <= B / (4 x 0.7 x A) = 12.9, so on a CPU whose popcount
ceiling is more than 12.9 times its FMA peak the goals exclude each other outright (the issue
names one at 21x). The same bound for ``--attention int8`` (opt-in; it rounds Q, K, V and the
probabilities, so its outputs differ from DESIGN.md's float attention) uses the CPU's best
measured int8 multiply-accumulate peak instead of F.

Every input is a committed result file: the peaks from ``bench_popcount_ceiling.py``, and the
ceiling of the same run, the binary node time, the attention node time and the remainder from
``bench_export_targets.py`` (medians over the runs given; the ``onnxruntime`` row, and its
``onnxruntime, int8 attention`` row where the file has one). make_results.py renders the table into
RESULTS.md; run alone it prints it:

    .venv/bin/python benchmarks/goal_bounds.py
"""

from __future__ import annotations

import dataclasses
import re
import statistics
import sys
from pathlib import Path

from bench_results import load_results, markdown_table

ROOT = Path(__file__).resolve().parent.parent
RESULTS = "benchmarks/results"

# BERT-base at batch 1 x 128: the attention's float multiply-accumulates (Q K^T and P V)
LAYERS, HEADS, SEQ, HEAD_DIM = 12, 12, 128, 64
ATTENTION_MACS = 2 * LAYERS * HEADS * SEQ * SEQ * HEAD_DIM
NODES_SHARE, REMAINDER_SHARE = 0.70, 0.20  # issue 12's two goals
ATTENTION_OPS = ("PackedMultiHeadAttention", "MultiHeadAttention")


@dataclasses.dataclass(frozen=True)
class Cpu:
    label: str
    popcount: str  # bench_popcount_ceiling.py's file
    exports: tuple[str, ...]  # bench_export_targets.py's files (medians over them)


CPUS = (
    Cpu(
        "Intel Xeon (AVX-512, AMX), stop 27",
        "popcount-ceiling.json",
        ("export-targets.json",),
    ),
    Cpu(
        "AMD Zen 1 EPYC (AVX2), stop 42",
        "popcount-ceiling-epyc-zen1-stop40.json",
        tuple(f"export-targets-epyc-zen1-stop42-run{i}.json" for i in (1, 2, 3)),
    ),
    Cpu(
        "AMD Zen 3 EPYC (AVX2), stop 46",
        "popcount-ceiling-epyc-zen3-stop46.json",
        tuple(f"export-targets-epyc-zen3-stop46-run{i}.json" for i in (1, 2, 3)),
    ),
)


def _peak(rows: list[dict], prefix: str) -> float | None:
    """The best measured peak among the popcount file's loops whose name starts with prefix."""
    found = [r["gmacs"] for r in rows if r.get("kind") == "peak" and r["loop"].startswith(prefix)]
    found = [g for g in found if g]
    return max(found) if found else None


def _op_ms(top: str, names: tuple[str, ...]) -> float:
    """The milliseconds of the first of names in a row's "largest remainder ops" text."""
    for name in names:
        m = re.search(rf"(?:^|, ){re.escape(name)} ([0-9.]+)", top)
        if m:
            return float(m[1])
    raise ValueError(f"no {' or '.join(names)} among the remainder's ops: {top!r}")


def _target(rows: list[dict], target: str) -> dict | None:
    return next((r for r in rows if r["target"] == target and r["batch"] == 1), None)


def needed_share(floor_ms: float, budget_ms: float, rest_ms: float) -> float:
    """The share of its peak the attention must reach (inf where the rest alone fills the budget)."""
    room = budget_ms - rest_ms
    return floor_ms / room if room > 0 else float("inf")


def bound(cpu: Cpu, root: Path = ROOT) -> dict:
    """One CPU's row: its peaks, the budget, and the attention share each goal pair needs."""
    peaks = load_results(root / RESULTS / cpu.popcount)["rows"]
    fma = _peak(peaks, "fp32:")
    int8 = _peak(peaks, "int8:")
    float_rows, int8_rows = [], []
    for name in cpu.exports:
        rows = load_results(root / RESULTS / name)["rows"]
        float_rows.append(_target(rows, "onnxruntime"))
        int8_rows.append(_target(rows, "onnxruntime, int8 attention"))
    if any(r is None for r in float_rows) or fma is None:
        raise ValueError(f"{cpu.label}: a file lacks the onnxruntime row or the FP32 peak")

    def med(rows: list[dict], fn) -> float:
        return statistics.median(fn(r) for r in rows)

    ceiling = med(float_rows, lambda r: r["ceiling_gmacs"])
    macs = float_rows[0]["binary_macs"]
    binary_ms = macs / (NODES_SHARE * ceiling * 1e9) * 1e3
    budget_ms = binary_ms * REMAINDER_SHARE / (1 - REMAINDER_SHARE)
    rest_ms = med(
        float_rows, lambda r: r["remainder_ms"] - _op_ms(r["remainder_top_ms"], ATTENTION_OPS)
    )
    attention_fma_ms = ATTENTION_MACS / (fma * 1e9) * 1e3
    row = {
        "cpu": cpu.label,
        "ceiling_gmacs": ceiling,
        "fma_gmacs": fma,
        "int8_gmacs": int8,
        "binary_at_goal_ms": binary_ms,
        "remainder_budget_ms": budget_ms,
        "attention_at_fma_ms": attention_fma_ms,
        "rest_ms": rest_ms,
        "float_needs": needed_share(attention_fma_ms, budget_ms, rest_ms),
        "float_needs_without_rest": needed_share(attention_fma_ms, budget_ms, 0.0),
        "float_attention_now": med(
            float_rows, lambda r: attention_fma_ms / _op_ms(r["remainder_top_ms"], ATTENTION_OPS)
        ),
        "nodes_share_now": med(
            float_rows, lambda r: macs / (r["binary_linear_ms"] * 1e-3) / 1e9 / r["ceiling_gmacs"]
        ),
        "remainder_share_now": med(float_rows, lambda r: r["remainder_share"]),
        "int8_needs": None,
    }
    if int8 and all(r is not None for r in int8_rows):
        attention_int8_ms = ATTENTION_MACS / (int8 * 1e9) * 1e3
        rest8 = med(
            int8_rows, lambda r: r["remainder_ms"] - _op_ms(r["remainder_top_ms"], ATTENTION_OPS)
        )
        row["int8_needs"] = needed_share(attention_int8_ms, budget_ms, rest8)
        row["int8_attention_now"] = med(
            int8_rows, lambda r: attention_int8_ms / _op_ms(r["remainder_top_ms"], ATTENTION_OPS)
        )
    return row


def _share(x: float | None) -> str:
    if x is None:
        return "not measured"
    return "never (the rest alone fills the budget)" if x == float("inf") else f"{x:.0%}"


def table(rows: list[dict]) -> str:
    head = ("CPU", "ceiling C", "FMA peak F", "C / F", "binary nodes at 70 %", "remainder budget",
            "attention at F", "rest measured", "attention needs (of F)",
            "… with no rest", "now: nodes, remainder", "int8 attention needs (of int8 peak)")  # fmt: skip
    cells = [
        [
            r["cpu"],
            f"{r['ceiling_gmacs']:.0f} G",
            f"{r['fma_gmacs']:.0f} G",
            f"{r['ceiling_gmacs'] / r['fma_gmacs']:.1f}×",
            f"{r['binary_at_goal_ms']:.2f} ms",
            f"{r['remainder_budget_ms']:.2f} ms",
            f"{r['attention_at_fma_ms']:.2f} ms",
            f"{r['rest_ms']:.2f} ms",
            _share(r["float_needs"]) + f" (ours: {r['float_attention_now']:.0%})",
            _share(r["float_needs_without_rest"]),
            f"{r['nodes_share_now']:.0%}, {r['remainder_share_now']:.0%}",
            _share(r["int8_needs"])
            + (f" (ours: {r['int8_attention_now']:.0%})" if r.get("int8_attention_now") else ""),
        ]
        for r in rows
    ]
    limit = 1 / (4 * NODES_SHARE) * 10.87e9 / ATTENTION_MACS
    return (
        markdown_table(head, cells, "lrrrrrrrrrrr")
        + f"\n\nAttention: {ATTENTION_MACS / 1e6:.0f} M float multiply-accumulates at 1 × 128. "
        f"With no rest at all the two goals exclude each other wherever C / F > {limit:.1f}. "
        "\"now\": the binary nodes' share of the ceiling and the remainder's share of node time "
        "measured in the same files (medians)."
    )


def render(root: Path = ROOT) -> str:
    """The table of every CPU in CPUS, under the files it was computed from."""
    files = ", ".join(f"`{c.popcount}` + {len(c.exports)} × `{c.exports[0]}`…" for c in CPUS)
    return f"Computed by `python benchmarks/goal_bounds.py` from {files}:\n\n" + table(
        [bound(c, root) for c in CPUS]
    )


def main() -> int:
    print(render())
    return 0


if __name__ == "__main__":
    sys.exit(main())
