"""Reproduce the binarized-student ablation of benchmarks/RESULTS.md from the command line.

Every row of that section is one entry of :data:`RUNS`: a ``bitmaps train --stage student`` run
with a JSON config of this folder (plus, for the learning-rate pilot, ``--set`` overrides), then
``bitmaps eval STUDENT.pt --json`` on the whole held-out split of the State of the Union text. The
teacher rows are ``bitmaps eval`` of the ``bert-tiny`` asset (before fine-tuning) and of the
fine-tuned teacher checkpoint (trained with :data:`TEACHER_TRAIN` if it is missing).

The CPU is shared, so every job runs under ``nice -n 19`` with one thread (``OMP_NUM_THREADS=1``),
at most ``--jobs`` (default 2) at a time. Each run writes ``runs/ablation/NAME.pt``, ``.log``,
``.eval.json`` and ``.run.json``; a run whose ``run.json`` exists is not repeated (delete it, or
pass ``--force``), and a run that died part-way continues with ``--resume``. The table printed at
the end (also written to ``runs/ablation/table-GROUP.md``) is what RESULTS.md shows.

    python benchmarks/ablation/run_ablation.py --group pilot   # 200-step lr / λ_attn pilot
    python benchmarks/ablation/run_ablation.py --group main    # the ablation rows
    python benchmarks/ablation/run_ablation.py --group extra --jobs 1 --threads 2  # 3000 steps
    python benchmarks/ablation/run_ablation.py --only ste_full --dry-run
    python benchmarks/ablation/run_ablation.py --group recipe --jobs 1 --teacher T.pt  # 300 steps

The ``recipe`` group (issue 13) varies one ingredient of BiT's recipe or of the distillation at a
time against the 300-step ``elastic, logits + MLM`` row (batch 16: a row costs ~10 minutes on a
busy 2-core machine): two-set binarization, ReLU, centred
weights, each distillation term raw and per-layer normalized, attention scores vs probabilities,
the multi-step order. Run it with ``--jobs 1``: ``cpu_s`` (the training process's CPU time) is
exact only then.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import resource
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
OUT = ROOT / "runs" / "ablation"
TEACHER = "runs/ablation/teacher-bert-tiny.pt"
BITMAPS = [sys.executable, "-m", "bitmaps"]
JOB_PREFIX = ["nice", "-n", "19"]
JOB_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
TEACHER_TRAIN = (
    "train --stage teacher --teacher bert-tiny --data {data} -o {teacher} --steps 2000 "
    "--batch-size 32 --lr 3e-4 --eval-every 250 --save-every 250 --eval-sequences 512 "
    "--log-every 50"
)


@dataclasses.dataclass(frozen=True)
class Run:
    name: str
    config: str  # file in this folder
    group: str  # "pilot" | "main" | "extra"
    label: str  # what the row varies, for the table
    sets: tuple[str, ...] = ()  # --set overrides on top of the config


def _pilot(name: str, config: str, label: str, *sets: str) -> Run:
    return Run(name, config, "pilot", label, ("train.steps=200", "train.eval_every=0", *sets))


RUNS: tuple[Run, ...] = (
    # ---- pilot: 200 steps, clipped STE: first the attention term at lr 1e-3, then the lr
    _pilot(
        "pilot-attn-scores-1",
        "ste_full.json",
        "scores, λ_attn 1",
        "train.lr=1e-3",
        "distill.lambda_attn=1",
        "distill.attention_target=scores",
    ),
    _pilot(
        "pilot-attn-scores-0.1",
        "ste_full.json",
        "scores, λ_attn 0.1",
        "train.lr=1e-3",
        "distill.lambda_attn=0.1",
        "distill.attention_target=scores",
    ),
    _pilot(
        "pilot-attn-probs-100",
        "ste_full.json",
        "probs, λ_attn 100",
        "train.lr=1e-3",
        "distill.lambda_attn=100",
        "distill.attention_target=probs",
    ),
    _pilot("pilot-logits", "ste_logits.json", "logits + MLM only", "train.lr=1e-3"),
    _pilot("pilot-lr3e-4", "ste_full.json", "lr 3e-4", "train.lr=3e-4", "distill.lambda_attn=0.1"),
    _pilot("pilot-lr3e-3", "ste_full.json", "lr 3e-3", "train.lr=3e-3", "distill.lambda_attn=0.1"),
    _pilot("pilot-lr5e-3", "ste_full.json", "lr 5e-3", "train.lr=5e-3", "distill.lambda_attn=0.1"),
    _pilot("pilot-lr1e-2", "ste_full.json", "lr 1e-2", "train.lr=1e-2", "distill.lambda_attn=0.1"),
    # ---- main: equal budget within the table (steps, batch, lr in the configs)
    Run("ste_full", "ste_full.json", "main", "clipped STE, full distillation"),
    Run("approx_sign_full", "approx_sign_full.json", "main", "ApproxSign, full distillation"),
    Run("elastic_full", "elastic_full.json", "main", "elastic (BiT), full distillation"),
    Run("ste_logits", "ste_logits.json", "main", "clipped STE, logits + MLM only"),
    Run("elastic_logits", "elastic_logits.json", "main", "elastic (BiT), logits + MLM only"),
    Run(
        "elastic_full_multistep",
        "elastic_full_multistep.json",
        "main",
        "elastic, full distillation, BiT multi-step",
    ),
    # ---- extra: the best main row, trained three times as long (run alone: --jobs 1 --threads 2)
    Run(
        "elastic_logits_3k",
        "elastic_logits.json",
        "extra",
        "elastic (BiT), logits + MLM only, 3000 steps",
        ("train.steps=3000", "train.eval_every=500", "train.save_every=250"),
    ),
    # ---- long: the best 300-step recipe (logits + MLM + attention scores 0.1), 2000 steps
    # (run alone: --jobs 1 --threads 2)
    Run(
        "elastic_attn_2k",
        "elastic_logits.json",
        "long",
        "elastic (BiT), logits + MLM + attn scores 0.1, 2000 steps",
        (
            "train.steps=2000",
            "train.eval_every=500",
            "train.save_every=250",
            "distill.lambda_attn=0.1",
        ),
    ),
    # the same with the student's dropout off (the recipe rows: +0.011 at 300 steps, both seeds)
    Run(
        "elastic_attn_nodrop_2k",
        "elastic_logits.json",
        "long",
        "elastic (BiT), logits + MLM + attn scores 0.1, student dropout 0, 2000 steps",
        (
            "train.steps=2000",
            "train.eval_every=500",
            "train.save_every=250",
            "distill.lambda_attn=0.1",
            "train.dropout=0",
        ),
    ),
)


def _recipe(name: str, label: str, *sets: str, config: str = "elastic_logits.json") -> Run:
    base = ("train.steps=300", "train.batch_size=16", "train.eval_every=0", "train.save_every=100")
    return Run(name, config, "recipe", label, (*base, *sets))


RECIPE: tuple[Run, ...] = (
    _recipe("r300-logits", "elastic, logits + MLM (base)"),
    _recipe("r300-logits-seed1", "base, seed 1 (run-to-run spread)", "train.seed=1"),
    _recipe("r300-twoset", "base + ReLU + two-set (FFN output {0,1})", "binarize.activation=relu"),
    _recipe(
        "r300-twoset-gelu",
        "base + two-set (FFN output {0,1}), GELU kept",
        'binarize.unsigned_modules=["output"]',
    ),
    _recipe(
        "r300-full", "base + hidden 1 + attn scores 0.1 (raw Σ MSE)", config="elastic_full.json"
    ),
    _recipe(
        "r300-full-seed1",
        "base + hidden 1 + attn scores 0.1 (raw Σ MSE), seed 1",
        "train.seed=1",
        config="elastic_full.json",
    ),
    _recipe(
        "r300-hidden-norm",
        "base + hidden 1 (per-layer normalized)",
        "distill.lambda_hidden=1",
        "distill.mse_norm=layer",
    ),
    _recipe("r300-center", "base + centred weights", "binarize.center_weights=true"),
    _recipe(
        "r300-relu-signed",
        "base + ReLU, signed inputs",
        "binarize.activation=relu",
        "binarize.unsigned_modules=[]",
    ),
    _recipe("r300-hidden-raw", "base + hidden 1 (raw Σ MSE)", "distill.lambda_hidden=1"),
    _recipe(
        "r300-hidden-decay",
        "base + hidden 1 (raw Σ MSE), λ → 0 at step 150",
        "distill.lambda_hidden=1",
        "distill.mse_decay_steps=150",
    ),
    _recipe("r300-attn-raw", "base + attn scores 0.1 (raw Σ MSE)", "distill.lambda_attn=0.1"),
    _recipe(
        "r300-attn-nodrop",
        "base + attn scores 0.1, student dropout 0 (0.1 above)",
        "distill.lambda_attn=0.1",
        "train.dropout=0",
    ),
    _recipe(
        "r300-attn-nodrop-fp16emb",
        "base + attn scores 0.1, student dropout 0, fp16-exact embedding tables",
        "distill.lambda_attn=0.1",
        "train.dropout=0",
        "binarize.embeddings=fp16",
    ),
    _recipe(
        "r300-attn-nodrop-seed1",
        "base + attn scores 0.1, student dropout 0, seed 1",
        "distill.lambda_attn=0.1",
        "train.dropout=0",
        "train.seed=1",
    ),
    _recipe(
        "r300-attn-probs-norm",
        "base + attn probs 1 (per-layer normalized)",
        "distill.lambda_attn=1",
        "distill.attention_target=probs",
        "distill.mse_norm=layer",
    ),
    _recipe(
        "r300-attn-scores-norm",
        "base + attn scores 1 (per-layer normalized)",
        "distill.lambda_attn=1",
        "distill.mse_norm=layer",
    ),
    _recipe(
        "r300-multistep-teacher",
        "base, multi-step W1A32 → W1A1 at 150, FP teacher",
        "binarize.schedule=bit_multistep",
        "binarize.activation_start_step=150",
    ),
    _recipe(
        "r300-multistep-intermediate",
        "base, multi-step, W1A32 student teaches W1A1 (BiT)",
        "binarize.schedule=bit_multistep",
        "binarize.activation_start_step=150",
        "distill.multistep_teacher=intermediate",
        "distill.lambda_hidden=1",
        "distill.mse_norm=layer",
    ),
)
RUNS = RUNS + RECIPE


def sotu_path() -> str:
    out = subprocess.run(
        [*BITMAPS, "assets", "path", "sotu"], capture_output=True, text=True, check=True, cwd=ROOT
    )
    return out.stdout.strip()


def machine() -> dict[str, str]:
    model = "unknown"
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    import torch

    return {
        "cpu": model,
        "cores": str(os.cpu_count()),
        "threads_per_job": JOB_ENV["OMP_NUM_THREADS"],
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def train_args(run: Run, data: str, teacher: str) -> list[str]:
    args = [
        "train",
        "--stage",
        "student",
        "--teacher",
        teacher,
        "--data",
        data,
        "-o",
        f"runs/ablation/{run.name}.pt",
        "--config",
        f"benchmarks/ablation/{run.config}",
    ]
    for s in run.sets:
        args += ["--set", s]
    return args


def shown(args: list[str], data: str) -> str:
    """The command as a user types it, with the text folder as $SOTU."""
    text = shlex.join(["bitmaps", *args]).replace(data, "$SOTU")
    return f"OMP_NUM_THREADS={JOB_ENV['OMP_NUM_THREADS']} nice -n 19 " + text


def children_cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def call(args: list[str], log: Path | None = None) -> tuple[str, float]:
    env = {**os.environ, **JOB_ENV}
    t0 = time.perf_counter()
    if log is None:
        proc = subprocess.run(
            [*JOB_PREFIX, *BITMAPS, *args], cwd=ROOT, env=env, capture_output=True, text=True
        )
        err = proc.stderr
    else:
        with open(log, "a", encoding="utf-8") as f:
            f.write(f"$ {shlex.join(['bitmaps', *args])}\n")
            f.flush()
            proc = subprocess.run(
                [*JOB_PREFIX, *BITMAPS, *args],
                cwd=ROOT,
                env=env,
                stdout=subprocess.PIPE,
                stderr=f,
                text=True,
            )
        err = log.read_text(encoding="utf-8")[-2000:]
    if proc.returncode != 0:
        raise RuntimeError(f"bitmaps {args[0]} failed (exit {proc.returncode}):\n{err[-2000:]}")
    return proc.stdout, time.perf_counter() - t0


def evaluate(model: str, data: str, dest: Path) -> dict:
    if dest.exists():
        return json.loads(dest.read_text())
    stdout, wall = call(["eval", model, "--data", data, "--json"])
    result = {**json.loads(stdout), "eval_wall_s": wall}
    dest.write_text(json.dumps(result, indent=2))
    return result


def run_student(run: Run, data: str, teacher: str, force: bool) -> dict:
    record_path = OUT / f"{run.name}.run.json"
    if record_path.exists() and not force:
        return json.loads(record_path.read_text())
    args = train_args(run, data, teacher)
    ckpt = OUT / f"{run.name}.pt"
    log = OUT / f"{run.name}.log"
    if force:
        for p in (ckpt, log, OUT / f"{run.name}.eval.json"):
            p.unlink(missing_ok=True)
    resumed = ckpt.exists()
    print(
        f"[{time.strftime('%H:%M:%S')}] start {run.name}{' (resume)' if resumed else ''}",
        flush=True,
    )
    cpu0 = children_cpu_s()
    _, wall = call([*args, "--resume"], log)
    cpu = children_cpu_s() - cpu0
    ev = evaluate(str(ckpt.relative_to(ROOT)), data, OUT / f"{run.name}.eval.json")
    config = json.loads((HERE / run.config).read_text())
    record = {
        "name": run.name,
        "group": run.group,
        "label": run.label,
        "config": config,
        "sets": list(run.sets),
        "command": shown(args, data),
        "train_wall_s": wall,
        "train_cpu_s": cpu,
        "resumed": resumed,
        "eval": ev,
        "machine": machine(),
    }
    record_path.write_text(json.dumps(record, indent=2))
    print(
        f"[{time.strftime('%H:%M:%S')}] done {run.name}: acc {ev['accuracy']:.4f} "
        f"({wall / 60:.1f} min)",
        flush=True,
    )
    return record


def effective(record: dict, key: str, section: str = "train") -> object:
    """A config value after the run's --set overrides."""
    for s in record["sets"]:
        k, _, v = s.partition("=")
        if k == f"{section}.{key}":
            try:
                return json.loads(v)
            except json.JSONDecodeError:  # a bare string, as the CLI reads it
                return v
    return record["config"].get(section, {}).get(key)


def table(records: list[dict], teacher: dict, base: dict) -> str:
    t_acc = teacher["accuracy"]
    lines = [
        "| row | steps | batch | lr | λ mlm/kl/hid/attn | cross entropy | accuracy | MRR "
        "| retention | train wall (min) | s/step |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, ev in (
        ("teacher before fine-tuning (`bert-tiny` asset)", base),
        ("teacher, fine-tuned (FP32)", teacher),
    ):
        lines.append(
            f"| {name} | | | | | {ev['cross_entropy']:.3f} | {ev['accuracy']:.4f} | "
            f"{ev['mrr']:.4f} | {ev['accuracy'] / t_acc:.3f} | | |"
        )
    for r in records:
        ev, steps = r["eval"], effective(r, "steps")
        lam = "/".join(
            f"{effective(r, f'lambda_{k}', 'distill'):g}"
            for k in ("mlm", "logit", "hidden", "attn")
        )
        target = effective(r, "attention_target", "distill")
        if target == "probs" and not lam.endswith("/0"):
            lam += " (probs)"
        lines.append(
            f"| {r['label']} | {steps} | {effective(r, 'batch_size')} | {effective(r, 'lr'):g} | "
            f"{lam} | {ev['cross_entropy']:.3f} | {ev['accuracy']:.4f} | {ev['mrr']:.4f} | "
            f"{ev['accuracy'] / t_acc:.3f} | {r['train_wall_s'] / 60:.1f} | "
            f"{r['train_wall_s'] / steps:.2f} |"
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--group", choices=["pilot", "main", "extra", "recipe", "long", "all"], default="main"
    )
    p.add_argument("--only", nargs="*", help="run names (see RUNS)")
    p.add_argument("--jobs", type=int, default=2, help="training jobs at once")
    p.add_argument("--threads", type=int, default=1, help="CPU threads per training job")
    p.add_argument("--teacher", default=TEACHER)
    p.add_argument("--force", action="store_true", help="re-run even if a run.json exists")
    p.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    a = p.parse_args()
    JOB_ENV.update(OMP_NUM_THREADS=str(a.threads), MKL_NUM_THREADS=str(a.threads))
    runs = [
        r
        for r in RUNS
        if (a.only and r.name in a.only) or (not a.only and a.group in ("all", r.group))
    ]
    if a.only and len(runs) != len(a.only):
        sys.exit(f"unknown run name(s); known: {', '.join(r.name for r in RUNS)}")
    data = sotu_path()
    if a.dry_run:
        for r in runs:
            print(shown(train_args(r, data, a.teacher), data))
        return
    OUT.mkdir(parents=True, exist_ok=True)
    if not (ROOT / a.teacher).exists():
        call(
            TEACHER_TRAIN.format(data=data, teacher=a.teacher).split(),
            OUT / "teacher-bert-tiny.log",
        )
    base = evaluate("bert-tiny", data, OUT / "teacher-bert-tiny-base.eval.json")
    teacher = evaluate(a.teacher, data, OUT / "teacher-bert-tiny.eval.json")
    with ThreadPoolExecutor(max_workers=max(1, a.jobs)) as pool:
        records = list(pool.map(lambda r: run_student(r, data, a.teacher, a.force), runs))
    text = table(records, teacher, base)
    info = machine()
    text += (
        f"\n\nMachine: {info['cpu']}, {info['cores']} cores, {info['threads_per_job']} "
        f"thread per job under nice -n 19, torch {info['torch']}.\n"
    )
    (OUT / f"table-{a.only[0] if a.only else a.group}.md").write_text(text)
    print(text)
    for r in records:
        print(f"{r['name']}: {r['command']}")


if __name__ == "__main__":
    main()
