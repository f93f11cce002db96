"""How long the exporter's trace takes (``bitmaps.export.onnx_export.to_onnx``), with the torchlib
table built once per process and copied per export (what bitmaps does) against built afresh for
every export (what ``torch.onnx.export`` does alone).

BERT-tiny from the bundled assets, as its FP32 baseline and as its W1A1 binarization (the elastic
quantizer: what ``bitmaps profile`` exports). One untimed export first (imports, the first table);
then, per round, each model exported once each way, the ways alternating, so load from other
processes hits both alike. Medians of the rounds. Each pair of files must be byte-identical (the
benchmark fails otherwise): the reuse changes only how long the export takes.

    .venv/bin/python benchmarks/bench_export_time.py [--rounds 4] [--out results.json]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import statistics
import sys
import time

import onnx_ir as ir
from bench_results import markdown_table, parse_with_outputs, run_meta, write_outputs

from bitmaps.core.config import BinarizeConfig, ExportConfig
from bitmaps.export import onnx_export
from bitmaps.export.pipeline import pack
from bitmaps.train.binary_linear import binarize_
from bitmaps.train.models import load_model

WAYS = ("afresh", "reused")


def _wrappers() -> dict[str, object]:
    loaded = load_model("bert-tiny")
    student = copy.deepcopy(loaded.model)
    binarize_(student, BinarizeConfig())
    cfg = ExportConfig()
    return {"bert-tiny fp32": pack(loaded.model, cfg), "bert-tiny binary": pack(student, cfg)}


def _export(wrapper: object, way: str, opset: int) -> tuple[float, bytes]:
    reuse = onnx_export._reused_torchlib_registry
    if way == "afresh":
        onnx_export._reused_torchlib_registry = contextlib.nullcontext
    try:
        start = time.perf_counter()
        model = onnx_export.to_onnx(wrapper, opset)
        seconds = time.perf_counter() - start
    finally:
        onnx_export._reused_torchlib_registry = reuse
    return seconds, ir.to_proto(model).SerializeToString()


def table(rows: list[dict]) -> str:
    return markdown_table(
        ("model", "table built afresh: s", "table reused: s", "speed-up", "files identical"),
        [
            (
                r["model"],
                f"{r['afresh_s']:.2f}",
                f"{r['reused_s']:.2f}",
                f"{r['afresh_s'] / r['reused_s']:.2f}x",
                "yes" if r["identical"] else "NO",
            )
            for r in rows
        ],
        "lrrrl",
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=4)
    args = parse_with_outputs(p, argv)
    if args.rounds < 1:
        p.error("--rounds must be >= 1")
    opset = ExportConfig().opset
    wrappers = _wrappers()
    _export(next(iter(wrappers.values())), "reused", opset)  # imports and the first table
    rows = []
    for name, wrapper in wrappers.items():
        times: dict[str, list[float]] = {w: [] for w in WAYS}
        files: dict[str, set[bytes]] = {w: set() for w in WAYS}
        for r in range(args.rounds):
            for way in WAYS if r % 2 == 0 else WAYS[::-1]:
                seconds, data = _export(wrapper, way, opset)
                times[way].append(seconds)
                files[way].add(data)
        identical = len(files["afresh"] | files["reused"]) == 1
        rows.append({
            "model": name, "rounds": args.rounds, "identical": identical,
            **{f"{w}_s": statistics.median(times[w]) for w in WAYS},
            **{f"{w}_all_s": times[w] for w in WAYS},
        })  # fmt: skip
    text = table(rows)
    print(text)
    write_outputs(args.out, rows, run_meta(), text)
    return 0 if all(r["identical"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
