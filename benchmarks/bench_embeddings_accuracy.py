"""Accuracy of a masked-LM student with each ``--embeddings`` choice, on the same held-out masks.

Runs ``bitmaps eval STUDENT --data TEXT --embeddings MODE --json`` for every mode (fp32, fp16,
int8, int4 with groups of 64 and 32): the embedding tables and the tied decoder quantized exactly as
``bitmaps export --embeddings MODE`` stores them, everything else unchanged, the whole held-out
split with the evaluation's fixed masks. One row per mode with the difference to fp32; ``--out
FILE.json`` for make_results.py.

    PYTHONPATH=. python benchmarks/bench_embeddings_accuracy.py STUDENT.pt --data $SOTU \
        --out benchmarks/results/embeddings-accuracy.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from bench_results import markdown_table, parse_with_outputs, run_meta, write_outputs

ROOT = Path(__file__).resolve().parent.parent
MODES = (("fp32", 64), ("fp16", 64), ("int8", 64), ("int4", 64), ("int4", 32))


def evaluate(student: str, data: str, mode: str, group: int, threads: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    args = [sys.executable, "-m", "bitmaps", "eval", student, "--data", data, "--json",
            "--embeddings", mode, "--embedding-group", str(group)]  # fmt: skip
    out = subprocess.run(args, capture_output=True, text=True, cwd=ROOT, env=env)
    if out.returncode != 0:
        sys.exit(f"bitmaps eval --embeddings {mode} failed: {out.stderr.strip()[-500:]}")
    return json.loads(out.stdout)


def table(rows: list[dict]) -> str:
    head = ("embeddings", "cross entropy", "top-1 accuracy", "MRR", "accuracy − fp32", "goal")
    cells = [
        [
            r["embeddings"],
            f"{r['cross_entropy']:.4f}",
            f"{r['accuracy']:.4f}",
            f"{r['mrr']:.4f}",
            f"{r['accuracy_delta']:+.4f}",
            r["goal"],
        ]
        for r in rows
    ]
    return markdown_table(head, cells, "lrrrrl")


GOALS = {"fp32": "", "fp16": "equal to 4 decimals", "int8": "within 0.005", "int4": "within 0.01"}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("student", help="a masked-LM student checkpoint")
    p.add_argument("--data", required=True, help="the text it was trained on (held-out split)")
    p.add_argument("--threads", type=int, default=2)
    a = parse_with_outputs(p)
    rows = []
    for mode, group in MODES:
        ev = evaluate(a.student, a.data, mode, group, a.threads)
        name = f"int4-g{group}" if mode == "int4" else mode
        rows.append({"embeddings": name, **{k: ev[k] for k in ("cross_entropy", "accuracy", "mrr")},
                     "sequences": ev.get("sequences"), "masked_tokens": ev.get("masked_tokens"),
                     "goal": GOALS[mode]})  # fmt: skip
        print(f"{name}: accuracy {ev['accuracy']:.4f}", file=sys.stderr)
    for r in rows:
        r["accuracy_delta"] = r["accuracy"] - rows[0]["accuracy"]
    text = table(rows)
    print(text)
    meta = run_meta(student=a.student, data=a.data.replace(str(Path.home()), "~"))
    meta["command"] = meta["command"].replace(a.data, "$SOTU")
    write_outputs(a.out, rows, meta, text)


if __name__ == "__main__":
    main()
