"""``bitmaps profile --plot FILE.png``: latency vs batch per (model, backend, device, seq), and
weight bytes per model (stacked by part: encoder, embeddings, head), rendered with matplotlib's
Agg backend to memory first, so that a failure leaves no file; written atomically.
"""

from __future__ import annotations

import io
from typing import Any

from bitmaps.runtime.profile import ProfileResult
from bitmaps.runtime.report import MODEL_ORDER


def render_plot(result: ProfileResult) -> bytes:
    """PNG: p50 latency vs batch per (model, backend, device, seq); weight MB per model."""

    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    rows = result.rows
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 4.8), gridspec_kw={"width_ratios": [3, 2]})
    series: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        series.setdefault((r["model"], r["backend"], r["device"], r["seq"]), []).append(r)
    markers = {"fp32": "o", "fp16": "s", "int8": "D", "binary": "^"}
    lines = {"fp32": ":", "fp16": "--", "int8": "-.", "binary": "-"}
    colors = {"torch": "tab:blue", "onnxruntime": "tab:orange", "tensorrt": "tab:green"}
    for (model, backend, device, seq), rs in sorted(
        series.items(), key=lambda kv: (MODEL_ORDER.get(kv[0][0], 9), kv[0][1:])
    ):
        rs = sorted(rs, key=lambda r: r["batch"])
        ax.plot(
            [r["batch"] for r in rs],
            [r["latency_ms_p50"] for r in rs],
            marker=markers.get(model, "o"),
            linestyle=lines.get(model, "-"),
            color=colors.get(backend),
            alpha=1.0 if device == "cpu" else 0.6,
            label=f"{model} {backend} {device} seq {seq}",
        )
    batches = sorted({r["batch"] for r in rows})
    ax.set_xscale("log", base=2)
    ax.set_xticks(batches, [str(b) for b in batches])
    ax.set_xticks([], minor=True)
    ax.set_yscale("log")
    ax.set_xlabel("batch size")
    ax.set_ylabel("p50 latency per call (ms)")
    ax.set_title("latency vs batch")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    parts = result.meta.get("weights_by_part_mb") or {}
    models = sorted({r["model"] for r in rows}, key=lambda m: MODEL_ORDER.get(m, 9))
    if parts and all(m in parts for m in models):
        bottom = [0.0] * len(models)
        for part in ("encoder", "embeddings", "head"):
            values = [parts[m][part] for m in models]
            if any(values):
                bx.bar(models, values, bottom=bottom, label=part)
                bottom = [b + v for b, v in zip(bottom, values, strict=True)]
        for i, total in enumerate(bottom):
            bx.annotate(
                f"{total:.1f} MB (encoder {parts[models[i]]['encoder']:.1f})",
                (i, total),
                ha="center",
                va="bottom",
                fontsize=8,
            )
        bx.set_ylim(0, max(bottom) * 1.12)  # room for the labels
        bx.legend(fontsize=8, loc="upper right")
    else:
        bx.bar(models, [max(r["weights_mb"] for r in rows if r["model"] == m) for m in models])
    bx.set_ylabel("weight MB (10^6 bytes)")
    bx.set_title("weight bytes per model")
    fig.suptitle(f"bitmaps profile: {result.meta.get('source', '')}", fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()
