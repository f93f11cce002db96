"""Spam vs ham (SpamAssassin, mail bodies): a full-precision teacher and its binary student.

For one teacher model (``bert-tiny``, ``minilm-l6`` or a Hugging Face folder) this runs, as a user
would:

    bitmaps train --task classify --stage teacher --teacher MODEL -o DIR/teacher.pt ...
    bitmaps train --task classify --stage student --teacher DIR/teacher.pt -o DIR/student.pt ...
    bitmaps eval DIR/teacher.pt --data $SPAM --json      (the whole held-out split)
    bitmaps eval DIR/student.pt --data $SPAM --json

and writes one row (accuracy, macro-F1, confusion matrices, retention = student accuracy / teacher
accuracy, wall and CPU seconds of each stage, every command) with ``--out FILE.json`` for
``make_results.py``. Stages whose output exists are resumed or skipped (``--resume``), so an
interrupted run continues. Jobs run under ``nice -n 19`` with ``--threads`` threads.

    PYTHONPATH=. python benchmarks/bench_spam.py --teacher minilm-l6 \
        --out benchmarks/results/spam-minilm-l6.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import subprocess
import sys
import time
from pathlib import Path

from bench_results import markdown_table, parse_with_outputs, run_meta, write_outputs

ROOT = Path(__file__).resolve().parent.parent
BITMAPS = [sys.executable, "-m", "bitmaps"]


def _cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _run(args: list[str], threads: int, log: Path, stdout: Path | None = None) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    t0, c0 = time.perf_counter(), _cpu_s()
    with open(log, "a", encoding="utf-8") as fh:
        fh.write(f"$ bitmaps {shlex.join(args)}\n")
        fh.flush()
        out = open(stdout, "w", encoding="utf-8") if stdout else fh  # noqa: SIM115
        try:
            code = subprocess.run(
                ["nice", "-n", "19", *BITMAPS, *args], cwd=ROOT, env=env, stdout=out, stderr=fh
            ).returncode
        finally:
            if stdout:
                out.close()
    if code != 0:
        sys.exit(f"bitmaps {args[0]} failed (exit {code}); see {log}")
    return {"wall_s": time.perf_counter() - t0, "cpu_s": _cpu_s() - c0}


def _eval(ckpt: Path, data: str, seq: int, threads: int, log: Path) -> dict:
    """``bitmaps eval --json`` on the whole held-out split, with the training's seq_len."""
    out = ckpt.with_suffix(".eval.json")
    args = ["eval", str(ckpt), "--data", data, "--set", f"data.seq_len={seq}", "--json"]
    _run(args, threads, log, stdout=out)
    return json.loads(out.read_text(encoding="utf-8"))


def spam_path() -> str:
    out = subprocess.run(
        [*BITMAPS, "assets", "path", "spam-assassin"], capture_output=True, text=True, cwd=ROOT
    )
    if out.returncode != 0:
        sys.exit("the spam-assassin asset is missing: run `bitmaps assets fetch` first")
    return out.stdout.strip()


def table(rows: list[dict]) -> str:
    head = ("teacher", "seq", "teacher steps", "student steps", "teacher acc", "teacher F1",
            "student acc", "student F1", "retention", "student confusion [[hh, hs], [sh, ss]]",
            "train wall (min, teacher + student)")  # fmt: skip
    cells = [
        [
            r["teacher_model"],
            r["seq_len"],
            r["teacher_steps"],
            r["student_steps"],
            f"{r['teacher']['accuracy']:.4f}",
            f"{r['teacher']['macro_f1']:.4f}",
            f"{r['student']['accuracy']:.4f}",
            f"{r['student']['macro_f1']:.4f}",
            f"{r['retention']:.3f}",
            json.dumps(r["student"]["confusion_matrix"]),
            f"{r['teacher_train']['wall_s'] / 60:.1f} + {r['student_train']['wall_s'] / 60:.1f}",
        ]
        for r in rows
    ]
    return markdown_table(head, cells, "lrrrrrrrrlr")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--teacher", default="bert-tiny", help="bert-tiny, minilm-l6 or a folder")
    p.add_argument("--teacher-steps", type=int, default=400)
    p.add_argument("--student-steps", type=int, default=600)
    p.add_argument("--seq", type=int, default=128, help="tokens per message")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--dir", default=None, help="checkpoints and logs [runs/spam/TEACHER]")
    a = parse_with_outputs(p)
    name = Path(a.teacher).name
    folder = ROOT / (a.dir or f"runs/spam/{name}")
    folder.mkdir(parents=True, exist_ok=True)
    log = folder / "run.log"
    data = spam_path()
    common = ["--task", "classify", "--data", data, "--set", f"data.seq_len={a.seq}",
              "--batch-size", str(a.batch_size), "--eval-every", "0", "--save-every", "50",
              "--resume"]  # fmt: skip
    teacher, student = folder / "teacher.pt", folder / "student.pt"
    t_args = ["train", "--stage", "teacher", "--teacher", a.teacher, "-o", str(teacher),
              "--steps", str(a.teacher_steps), "--lr", "5e-4", *common]  # fmt: skip
    s_args = ["train", "--stage", "student", "--teacher", str(teacher), "-o", str(student),
              "--steps", str(a.student_steps), "--lr", "3e-3", "--act-quantizer", "elastic",
              "--set", "distill.lambda_attn=0", *common]  # fmt: skip
    t_train = _run(t_args, a.threads, log)
    s_train = _run(s_args, a.threads, log)
    t_eval = _eval(teacher, data, a.seq, a.threads, log)
    s_eval = _eval(student, data, a.seq, a.threads, log)
    shown = [
        shlex.join(["bitmaps", *x]).replace(data, "$SPAM").replace(f"{ROOT}/", "")
        for x in (t_args, s_args)
    ]
    row = {
        "teacher_model": a.teacher,
        "seq_len": a.seq,
        "teacher_steps": a.teacher_steps,
        "student_steps": a.student_steps,
        "teacher": {k: t_eval[k] for k in ("accuracy", "macro_f1", "confusion_matrix")},
        "student": {k: s_eval[k] for k in ("accuracy", "macro_f1", "confusion_matrix")},
        "majority_accuracy": s_eval.get("majority_accuracy"),
        "retention": s_eval["accuracy"] / t_eval["accuracy"],
        "teacher_train": t_train,
        "student_train": s_train,
        "commands": shown,
        "threads": a.threads,
    }
    text = table([row])
    print(text)
    write_outputs(a.out, [row], run_meta(), text)


if __name__ == "__main__":
    main()
