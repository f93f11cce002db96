"""How long ``bitmaps profile``'s ONNX Runtime measuring process takes from start to finish, as it
is (it imports no torch) against the same process with torch imported first (what it carried
before stop 43, when its inputs and its timer module came from torch).

One ONNX Runtime job on a trivial model (``input_ids + attention_mask``, two shapes, a few timed
calls), so that the time is the process's own: interpreter, imports, session, the job's protocol.
Per round both ways, in alternating order; medians of the rounds. Both run under ``python -X
importtime``, which lists every module a process imports: the benchmark fails unless the lean way
imported no torch and the other did, and unless every run reported all its shapes.

    .venv/bin/python benchmarks/bench_measure_startup.py [--rounds 5] [--out results.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import onnx
from bench_results import markdown_table, parse_with_outputs, run_meta, write_outputs
from onnx import TensorProto, helper

import bitmaps
from bitmaps.runtime.measure import RESULT_PREFIX

SHAPES = [[1, 8], [2, 16]]
WAYS = {
    "as it is (no torch)": "import runpy",
    "torch imported first": "import runpy, torch",
}


def _job(folder: Path) -> Path:
    """A trivial model and an ONNX Runtime job for it, as `bitmaps profile` writes one."""
    ids, mask = (
        helper.make_tensor_value_info(n, TensorProto.INT64, ["b", "s"])
        for n in ("input_ids", "attention_mask")
    )
    out = helper.make_tensor_value_info("y", TensorProto.INT64, ["b", "s"])
    node = helper.make_node("Add", ["input_ids", "attention_mask"], ["y"])
    graph = helper.make_graph([node], "g", [ids, mask], [out])
    model = folder / "add.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(model))
    job = {"backend": "onnxruntime", "device": "cpu", "model": "fp32", "artifact": str(model),
           "session": "function", "shapes": SHAPES, "vocab_size": 300, "seed": 0, "threads": 1,
           "timing": {"warmup": 1, "repeats": 5, "min_time": 0.0, "max_time": 5.0,
                      "rotations": 2}}  # fmt: skip
    path = folder / "job.json"
    path.write_text(json.dumps(job))
    return path


def _run(way: str, job: Path, env: dict) -> tuple[float, bool]:
    """(seconds from start to exit, whether torch was imported) of one measuring process."""
    code = f"{WAYS[way]}; runpy.run_module('bitmaps.runtime.measure', run_name='__main__')"
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", code, str(job)],
        capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip
    seconds = time.perf_counter() - start
    if proc.returncode != 0 or proc.stdout.count(RESULT_PREFIX) != 1 + len(SHAPES):
        raise SystemExit(f"{way}: the measuring process failed:\n{proc.stderr[-2000:]}")
    imported = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines()}
    return seconds, "torch" in imported


def table(rows: list[dict]) -> str:
    lean = next(r for r in rows if not r["torch_imported"])["median_s"]
    return markdown_table(
        ("measuring process", "median s", "min s", "max s", "rounds", "torch imported", "vs lean"),
        [
            (
                r["way"],
                f"{r['median_s']:.2f}",
                f"{min(r['all_s']):.2f}",
                f"{max(r['all_s']):.2f}",
                len(r["all_s"]),
                "yes" if r["torch_imported"] else "no",
                f"{r['median_s'] / lean:.1f}x",
            )
            for r in rows
        ],
        "lrrrrlr",
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=5)
    args = parse_with_outputs(p, argv)
    if args.rounds < 1:
        p.error("--rounds must be >= 1")
    root = str(Path(bitmaps.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (root, os.environ.get(
        "PYTHONPATH"))))}  # fmt: skip
    times: dict[str, list[float]] = {w: [] for w in WAYS}
    torch_seen: dict[str, set[bool]] = {w: set() for w in WAYS}
    with tempfile.TemporaryDirectory(prefix="bench-measure-") as tmp:
        job = _job(Path(tmp))
        for r in range(args.rounds):
            for way in list(WAYS) if r % 2 == 0 else list(WAYS)[::-1]:
                seconds, torch_imported = _run(way, job, env)
                times[way].append(seconds)
                torch_seen[way].add(torch_imported)
    rows = [
        {"way": w, "median_s": statistics.median(times[w]), "all_s": times[w],
         "torch_imported": torch_seen[w] == {True}}
        for w in WAYS
    ]  # fmt: skip
    text = table(rows)
    print(text)
    write_outputs(args.out, rows, run_meta(), text)
    lean, heavy = torch_seen["as it is (no torch)"], torch_seen["torch imported first"]
    return 0 if lean == {False} and heavy == {True} else 1


if __name__ == "__main__":
    sys.exit(main())
