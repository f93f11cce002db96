"""Whole-model size with each ``--embeddings`` choice: the BERT-base-shaped binary student.

Exports the binary student (BERT-base shapes, random weights, seed 0: ``bitmaps profile --shape
bert-base``'s model) once per choice through the real export pipeline (verified against PyTorch on
ONNX Runtime before it is written), and reports the ONNX file size and the initializer bytes by
part (embeddings + tied decoder table, encoder, head). The FP32-embeddings file is the baseline,
measured in the same run. Prints a markdown table; ``--out FILE.json|csv|md`` writes the rows.

    .venv/bin/python benchmarks/bench_embeddings.py [--output logits|hidden] [--modes ...]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import onnx
from bench_results import markdown_table, parse_with_outputs, run_meta, write_outputs

from bitmaps.core.config import ExportConfig
from bitmaps.export.pipeline import export_verified, write_onnx
from bitmaps.runtime.backends import ModelSource, load_mlm

MB = 1e6


def _part(name: str) -> str:
    if "embeddings" in name or "decoder.weight" in name:
        return "embeddings"
    return "encoder" if ".encoder." in name or "encoder.layer" in name else "head"


def parts(model: onnx.ModelProto) -> dict[str, int]:
    out = {"embeddings": 0, "encoder": 0, "head": 0}
    for t in model.graph.initializer:
        size = len(t.raw_data) or onnx.numpy_helper.to_array(t).nbytes
        out[_part(t.name)] += size
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--output", choices=["logits", "hidden"], default="logits")
    ap.add_argument("--modes", default="fp32,fp16,int8,int4")
    ap.add_argument("--group", type=int, default=64)
    args = parse_with_outputs(ap)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for mode in args.modes.split(","):
            cfg = ExportConfig(
                output=args.output, embeddings=mode, embedding_group=args.group,
                backends=("kernel",),
            )  # fmt: skip
            model = load_mlm(ModelSource(shape="bert-base"), "binary")
            result = export_verified(model, cfg, binary=True, source="bert-base")
            size = write_onnx(result.model, Path(tmp) / f"{mode}.onnx")
            p = parts(result.model)
            label = f"int4-g{args.group}" if mode == "int4" else mode
            rows.append({"embeddings": label, "file_mb": size / MB,
                         **{f"{k}_mb": v / MB for k, v in p.items()},
                         "max_error": max(r.output_error for r in result.report.results)})  # fmt: skip
            print(f"{label}: file {size / MB:.2f} MB", flush=True)
    print(f"\nBERT-base-shaped binary student, --output {args.output}\n")
    text = table(rows)
    print(text)
    write_outputs(args.out, rows, run_meta(output=args.output), text)


def table(rows: list[dict]) -> str:
    """The markdown table of the rows; the first row (fp32 embeddings) is the baseline."""
    base = rows[0]["file_mb"]
    head = ("embeddings", "file MB", "x smaller than fp32-emb file", "embeddings+tied table MB",
            "encoder MB", "head MB", "max error vs PyTorch")  # fmt: skip
    cells = [
        [r["embeddings"], f"{r['file_mb']:.2f}", f"{base / r['file_mb']:.2f}"]
        + [f"{r[k]:.2f}" for k in ("embeddings_mb", "encoder_mb", "head_mb")]
        + [f"{r['max_error']:.2e}"]
        for r in rows
    ]
    return markdown_table(head, cells)


if __name__ == "__main__":
    main()
