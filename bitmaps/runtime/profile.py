"""``bitmaps profile``: latency and memory of binary vs FP32 and FP16, per backend, plus accuracy.

:func:`run_profile` validates everything first (backends, models and their sources, shapes
against the model's ``max_position_embeddings``, output paths, ``--data``), so bad input fails
before any work and leaves no file (checks: bitmaps/runtime/plan.py). Then it scores accuracy
when ``--data`` is given, makes the files the backends need (bitmaps/runtime/artifacts.py),
measures each (model, backend, device) in a fresh process (bitmaps/runtime/measure.py has the
method), and returns a :class:`ProfileResult`: rows in DESIGN.md's schema plus run metadata.
Report, JSON and plot are bitmaps/runtime/report.py.

Accuracy (``--data``): masked-LM cross entropy, accuracy and MRR of each model's torch module
with its MLM head, in the model's dtype, on the held-out split of the teacher's tokenization
with the data pipeline's fixed masks (``eval_batches``), so every model is scored on the same
masked positions; the split, sequence length and masks are those the student was trained with
(``LoadedModel.trained_data``), and the binary student's embedding tables are stored as its
export stores them. A model's numbers are repeated on each of its backend rows; the exports those
backends run were verified against the same torch module when they were written.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

import bitmaps
from bitmaps.core.atomic import atomic_output
from bitmaps.core.config import DataConfig, ProfileConfig
from bitmaps.core.devices import torch_device
from bitmaps.core.embeddings import (
    STUDENT_EMBEDDING_GROUP,
    STUDENT_EMBEDDINGS,
    quantize_embeddings_,
)
from bitmaps.core.errors import BitmapsError
from bitmaps.core.ops import native_status
from bitmaps.core.ort import function_session
from bitmaps.core.progress import ProgressReporter
from bitmaps.data.assets import cache_root
from bitmaps.data.corpus import build_corpus, eval_batches
from bitmaps.data.labelled import build_labelled, classify_batches, read_labelled
from bitmaps.metrics.classify import ConfusionCounts, evaluate_classifier
from bitmaps.metrics.evaluate import evaluate_model
from bitmaps.metrics.mlm import MLMSums
from bitmaps.runtime import amx
from bitmaps.runtime import backends as B
from bitmaps.runtime.artifacts import (
    engine_artifact,
    floor_onnx,
    int8_artifact,
    onnx_artifact,
    onnx_weights_by_part,
)
from bitmaps.runtime.measure import FLOOR, RESULT_PREFIX
from bitmaps.runtime.plan import (
    ProfileJob,
    Target,
    check_outputs,
    check_shapes,
    command_line,
    default_threads,
    model_config,
    plan,
)
from bitmaps.train.attention import attention_precision
from bitmaps.train.binary_linear import pack_binary_linears_
from bitmaps.train.models import load_model

Log = Callable[[str], None]
ROW_KEYS = (
    "model",
    "backend",
    "device",
    "batch",
    "seq",
    "latency_ms_p50",
    "latency_ms_p90",
    "latency_ms_p99",
    "throughput_seq_s",
    "weights_mb",
    "file_mb",
    "peak_mem_mb",
)

# the export target of the ONNX Runtime rows' float32 graphs (bitmaps/export/targets.py)
ORT_TARGET = "onnxruntime"
ACCURACY_KEYS = ("cross_entropy", "accuracy", "mrr", "macro_f1")  # macro_f1: classifiers


@dataclasses.dataclass
class ProfileResult:
    rows: list[dict[str, Any]]
    meta: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {"meta": self.meta, "rows": self.rows}


def _worker_job(job: ProfileJob, t: Target, artifact: Any, vocab: int, workdir: Path) -> dict:
    cfg = job.config
    return {
        "backend": t.backend,
        "device": t.device,
        "model": t.model,
        "output": cfg.output,
        "source": job.source.to_dict(),
        "artifact": str(artifact.path) if artifact else None,
        "session": "kernel" if t.model == "binary" else "function",
        "shapes": [[b, s] for b in cfg.batches for s in cfg.seqs],
        "vocab_size": vocab,
        "seed": cfg.seed,
        "threads": cfg.threads or default_threads(),
        "amx": cfg.amx,
        "attention": cfg.attention,
        "workdir": str(workdir),
        "timing": {
            k: getattr(cfg, k)
            for k in ("warmup", "warmup_time", "repeats", "min_time", "max_time", "rotations")
        },
    }


def run_worker(worker_job: dict[str, Any], on_result: Callable[[dict], None]) -> None:
    """Run bitmaps.runtime.measure in a fresh interpreter; ``on_result`` gets each line."""

    env = dict(os.environ)
    root = str(Path(bitmaps.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    env["OMP_NUM_THREADS"] = str(worker_job["threads"])
    with tempfile.TemporaryDirectory(prefix="bitmaps-profile-") as tmp:
        job_file, err_file = Path(tmp) / "job.json", Path(tmp) / "stderr.txt"
        job_file.write_text(json.dumps(worker_job))
        with open(err_file, "w") as err:
            # --amx withhold: the filter goes in before the worker imports ONNX Runtime
            launcher = ["-m", "bitmaps.runtime.amx"] if worker_job.get("amx") == "withhold" else []
            proc = subprocess.Popen(
                [sys.executable, *launcher, "-m", "bitmaps.runtime.measure", str(job_file)],
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
                env=env,
            )
            assert proc.stdout is not None
            error = None
            try:
                for line in proc.stdout:
                    if line.startswith(RESULT_PREFIX):
                        result = json.loads(line[len(RESULT_PREFIX) :])
                        if "error" in result:
                            error = result["error"]
                        else:
                            on_result(result)
                code = proc.wait()
            finally:
                # interrupted (Ctrl-C, SIGTERM) or failed here: the worker goes too, rather than
                # measure on alone for minutes with its parent gone
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
        if error is not None:
            raise BitmapsError(error)
        if code != 0:
            tail = err_file.read_text(errors="replace").strip().splitlines()[-20:]
            if code == 2 and tail and tail[-1].startswith("bitmaps: "):  # the AMX launcher's line
                raise BitmapsError(tail[-1].removeprefix("bitmaps: "))
            where = f"{worker_job['model']} on {worker_job['backend']} ({worker_job['device']})"
            raise RuntimeError(f"measuring {where} failed (exit {code}):\n" + "\n".join(tail))


def _artifacts(job: ProfileJob, targets: list[Target], workdir: Path, log: Log) -> dict:

    made: dict[tuple[str, str], Any] = {}

    def onnx(model: str, dtype: str, target: str) -> Any:
        if (model, dtype, target) not in made:
            # onnx_artifact applies the attention to the binary model's onnxruntime export only
            made[model, dtype, target] = onnx_artifact(
                job.source, model, dtype, job.config.output, workdir, log, target,
                job.config.attention,
            )  # fmt: skip
        return made[model, dtype, target]

    shapes = [(b, s) for b in job.config.batches for s in job.config.seqs]
    out: dict[Target, Any] = {}
    for t in targets:
        # ONNX Runtime rows: float32 graphs are exported for ONNX Runtime (its fused
        # MultiHeadAttention), binary and baselines alike; TensorRT rows: the tensorrt target
        if t.backend == "onnxruntime" and t.model in ("binary", "fp32"):
            out[t] = onnx(t.model, "fp32", ORT_TARGET)
        elif t.backend == "onnxruntime" and t.model == "int8":
            out[t] = int8_artifact(onnx("fp32", "fp32", ORT_TARGET), log)
        elif t.backend == "onnxruntime":
            out[t] = onnx(t.model, t.model, "portable")
        elif t.backend == "tensorrt":
            fp16 = t.model != "fp32"
            out[t] = engine_artifact(
                onnx(t.model, "fp16" if fp16 else "fp32", "tensorrt"), fp16, shapes, workdir, log
            )
    return out


def _int8_session(job: ProfileJob, workdir: Path, log: Log) -> Any:
    """An ONNX Runtime session on the int8 model's ONNX file (with its head: MLM or classifier),
    opened like every other ONNX Runtime session of bitmaps."""
    fp32 = onnx_artifact(job.source, "fp32", "fp32", "logits", workdir, log, ORT_TARGET)
    path = int8_artifact(fp32, log).path
    return function_session(path, job.config.threads or default_threads())


def _int8_scores(job: ProfileJob, workdir: Path, batches: Any, log: Log) -> dict[str, float]:
    """The int8 model's masked-LM scores: its ONNX file (with the MLM head) in ONNX Runtime."""
    session = _int8_session(job, workdir, log)
    sums = MLMSums()
    for batch in batches:
        feed = {k: batch[k].numpy() for k in ("input_ids", "attention_mask")}
        logits = torch.from_numpy(session.run(None, feed)[0])
        picked = batch["labels"] != -100
        sums.add(logits[picked], batch["labels"][picked])
    return sums.metrics()


def _accuracy(job: ProfileJob, models: list[str], workdir: Path, log: Log) -> tuple[dict, dict]:
    """Per model: cross entropy, accuracy, MRR on the held-out split (see module docstring)."""

    loaded = {m: load_model(job.source.spec(m)) for m in models}
    for x in loaded.values():
        x.trained_head("scoring --data")
    tokenizers = {info["sha256"] for info in (x.tokenizer_info for x in loaded.values()) if info}
    if len(tokenizers) > 1:
        raise BitmapsError(
            "teacher and student tokenizers differ: they cannot be scored on the same masked tokens"
        )
    first = next(iter(loaded.values()))
    # the held-out split (and masks) of the student's training, where its checkpoint says them
    data_cfg = loaded.get("binary", first).trained_data(DataConfig(), log=log)
    if first.task == "classify":
        return _classify_accuracy(job, loaded, data_cfg, workdir, log)
    corpus = build_corpus(job.data, first.tokenizer, data_cfg, log=log)
    heldout = corpus.heldout
    if job.config.eval_sequences:
        heldout = heldout[: job.config.eval_sequences]
    device = torch_device(job.config.device).type
    scores = {}
    for m, x in loaded.items():
        batches = eval_batches(heldout, first.tokenizer, data_cfg, batch_size=32)
        log(f"scoring {m} on {len(heldout)} held-out sequences ...")
        if m == "int8":
            scores[m] = _int8_scores(job, workdir, batches, log)
            continue
        model = x.model
        if m == "binary":
            pack_binary_linears_(model)
            quantize_embeddings_(model, STUDENT_EMBEDDINGS, STUDENT_EMBEDDING_GROUP)
        model = model.to(B.float_dtype(m, device))
        with attention_precision(job.config.attention if m == "binary" else "float"):
            scores[m] = evaluate_model(model, batches, device=device)
    meta = {
        "data": [str(p) for p in job.data],
        "sequences": len(heldout),
        "masked_tokens": int(next(iter(scores.values())).get("masked_tokens", 0)),
        "data_config": data_cfg.to_dict(),
        "how": f"torch on {device}, MLM head, each model in its own dtype, fixed eval masks; "
        "the same numbers on every backend row of a model",
    }
    return scores, meta


def _classify_accuracy(
    job: ProfileJob, loaded: dict, data_cfg: DataConfig, workdir: Path, log: Log
) -> tuple:
    """Classifiers: held-out accuracy and macro-F1 (labelled data, split as for training)."""
    first = next(iter(loaded.values()))
    labels = first.labels or ()
    data = read_labelled(job.data, labels=labels)
    split = build_labelled(data, first.tokenizer, data_cfg).heldout
    device = torch_device(job.config.device).type
    n = min(job.config.eval_sequences or len(split), len(split))
    scores = {}
    for m, x in loaded.items():
        log(f"scoring {m} on {n} held-out documents ...")
        batches = classify_batches(split, batch_size=32, max_examples=n)
        if m == "int8":
            counts = ConfusionCounts(len(labels))
            session = _int8_session(job, workdir, log)
            for batch in batches:
                feed = {k: batch[k].numpy() for k in ("input_ids", "attention_mask")}
                counts.add(torch.from_numpy(session.run(None, feed)[0]), batch["labels"])
            r = counts.metrics(labels)
            scores[m] = {"accuracy": r["accuracy"], "macro_f1": r["macro_f1"]}
            continue
        model = x.model
        if m == "binary":  # as its export stores it (onnx_artifact): int4 embedding tables
            pack_binary_linears_(model)
            quantize_embeddings_(model, STUDENT_EMBEDDINGS, STUDENT_EMBEDDING_GROUP)
        model = model.to(device=device, dtype=B.float_dtype(m, device))
        with attention_precision(job.config.attention if m == "binary" else "float"):
            r = evaluate_classifier(model, batches, len(labels), label_names=labels)
        scores[m] = {"accuracy": r["accuracy"], "macro_f1": r["macro_f1"]}
    meta = {
        "data": [str(p) for p in job.data],
        "documents": n,
        "labels": list(labels),
        "seq_len": data_cfg.seq_len,
        "data_config": data_cfg.to_dict(),
        "how": f"torch on {device}, classifier logits, each model in its own dtype; accuracy and "
        "macro-F1 on the held-out documents",
    }
    return scores, meta


def _amx_state(setting: str) -> str:
    """What the measuring processes had: withheld (--amx withhold), available or absent."""
    if setting == "withhold":
        return "withheld"
    return "available" if amx.cpu_has_amx() else "absent"


def _machine(threads: int) -> dict[str, Any]:

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {"python": platform.python_version(), "torch": torch.__version__}
    for name in ("onnxruntime", "transformers", "tensorrt"):
        try:
            versions[name] = __import__(name).__version__
        except ImportError:
            versions[name] = None
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "threads": threads,
        "gpu": gpu,
        "platform": platform.platform(),
        "versions": versions,
        "native_status": native_status(),
        "cpu_fp16_math": B.cpu_has_fp16_math(),
    }


def _scheduling() -> str:
    """This process's scheduling policy (inherited by the workers), e.g. under ``chrt -f 10``."""
    names = {
        getattr(os, n, None): n
        for n in ("SCHED_OTHER", "SCHED_FIFO", "SCHED_RR", "SCHED_BATCH", "SCHED_IDLE")
    }
    try:
        policy = os.sched_getscheduler(0)
        priority = os.sched_getparam(0).sched_priority
    except (AttributeError, OSError):
        return "unknown"
    return f"{names.get(policy, policy)} priority {priority}, nice {os.nice(0)}"


def _load_average() -> float | None:
    """The 1-minute load average (informative: it counts the profiler's own threads too)."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def _cpu_seconds() -> tuple[float, float, float] | None:
    """(wall, CPU seconds busy on the whole machine, CPU seconds of this process and its waited-for
    workers); None where /proc/stat is missing. Busy counts steal time: a hypervisor running
    someone else on our core skews timings as much as a local process does."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except (OSError, IndexError):
        return None
    ticks = [int(v) for v in fields[:8]]  # user nice system idle iowait irq softirq steal
    busy = sum(ticks) - ticks[3] - ticks[4]
    own = os.times()
    own_s = own.user + own.system + own.children_user + own.children_system
    return time.monotonic(), busy / os.sysconf("SC_CLK_TCK"), own_s


def _other_cpu_load(before: tuple | None, after: tuple | None, cores: int) -> float | None:
    """Fraction of the machine's CPU that work other than this profile used between two samples
    of :func:`_cpu_seconds` (what skews CPU timings; the load average would count us too)."""
    if before is None or after is None or after[0] <= before[0]:
        return None
    other = (after[1] - before[1]) - (after[2] - before[2])
    return round(max(0.0, other) / ((after[0] - before[0]) * cores), 3)


def _validate(job: ProfileJob) -> tuple[list[Target], list[dict], list[str], Any, Path]:
    """Every check that needs no measuring; returns targets, skipped, models, config, workdir."""
    check_outputs(job)
    if job.config.amx == "withhold":
        amx.check_supported()
    targets, skipped = plan(job)
    models = sorted({t.model for t in targets}, key=ProfileConfig.MODELS.index)
    hf_config = model_config(job, set(models))
    check_shapes(job.config, hf_config)

    workdir = Path(job.workdir) if job.workdir else cache_root() / "profile"
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=workdir):  # a folder that takes no files (/proc)
            pass
    except OSError as exc:
        which = "--workdir" if job.workdir else "the work folder (give another with --workdir)"
        raise BitmapsError(f"cannot use {which} {workdir}: {exc.strerror or exc}") from None
    return targets, skipped, models, hf_config, workdir


def _measure_all(
    job: ProfileJob, targets: list[Target], artifacts: dict, vocab: int, workdir: Path
) -> tuple[list[tuple[Target, dict]], dict[Target, dict]]:
    """One worker per target, under a progress bar; (target, result) per shape, and load infos."""

    cfg = job.config
    raw: list[tuple[Target, dict]] = []
    loaded: dict[Target, dict] = {}
    total = len(targets) * len(cfg.batches) * len(cfg.seqs)
    with ProgressReporter(total, "profile", log_every=1) as progress:
        for t in targets:

            def on_result(r: dict, t: Target = t) -> None:
                if "loaded" in r:
                    loaded[t] = r["loaded"]
                    return
                raw.append((t, r))
                progress.update(
                    1,
                    now=f"{t.model} {t.backend} {t.device} {r['batch']}x{r['seq']}",
                    p50_ms=r["latency_ms_p50"],
                )

            run_worker(_worker_job(job, t, artifacts.get(t), vocab, workdir), on_result)
    return raw, loaded


def _floors(job: ProfileJob, targets: list[Target], vocab: int, workdir: Path) -> dict[str, float]:
    """The peak MB of a one-op model without weights per CPU backend, measured as the models'
    peaks are (bitmaps/runtime/measure.py, FLOOR): the runtime's own share of every peak."""
    floors: dict[str, float] = {}
    shape = min(
        ((b, s) for b in job.config.batches for s in job.config.seqs), key=lambda x: x[0] * x[1]
    )
    for backend in sorted({t.backend for t in targets if t.device == "cpu"}):
        if backend not in ("onnxruntime", "torch"):
            continue
        t = Target(backend, "cpu", FLOOR)
        worker = _worker_job(job, t, None, vocab, workdir)
        worker["shapes"], worker["session"] = [list(shape)], "function"
        if backend == "onnxruntime":  # written whole or not at all: workdirs may be shared
            with atomic_output(workdir / "floor.onnx") as tmp:
                floor_onnx(tmp)
            worker["artifact"] = str(workdir / "floor.onnx")
        shapes: list[dict] = []
        run_worker(worker, shapes.append)
        floors[backend] = next(r for r in shapes if "batch" in r)["peak_mem_bytes"] / B.MB
    return floors


def _row(t: Target, r: dict, info: dict, artifact: Any, scores: dict) -> dict[str, Any]:
    weights = artifact.weights_bytes if artifact else info["weights"]["total"]
    file_bytes = artifact.file_bytes if artifact else info["file_bytes"]
    row = {
        "model": t.model,
        "backend": t.backend,
        "device": t.device,
        "batch": r["batch"],
        "seq": r["seq"],
        **{k: r[k] for k in ROW_KEYS[5:9]},
        "weights_mb": weights / B.MB,
        "file_mb": file_bytes / B.MB,
        "peak_mem_mb": r["peak_mem_bytes"] / B.MB,
    }
    row.update({k: v for k, v in scores.get(t.model, {}).items() if k in ACCURACY_KEYS})
    return row


def _weights_by_part(
    job: ProfileJob, models: list[str], loaded: dict[Target, dict], artifacts: dict
) -> dict:
    """MB by part per model: from the torch CPU workers, else counted here on a CPU module."""
    weights: dict[str, dict[str, float]] = {}
    for t, info in loaded.items():
        if "weights" in info and t.device == "cpu":
            weights.setdefault(t.model, {k: v / B.MB for k, v in info["weights"].items()})
    for m in models:
        if m == "int8":  # an ONNX Runtime file only: its initializers
            art = next((a for t, a in artifacts.items() if t.model == "int8"), None)
            if art is not None:
                weights[m] = {k: v / B.MB for k, v in onnx_weights_by_part(art.path).items()}
            continue
        if m not in weights:
            module = B.inference_module(B.load_mlm(job.source, m), m, job.config.output, "cpu")
            weights[m] = {k: v / B.MB for k, v in B.weight_breakdown(module).items()}
            del module
    return weights


def run_profile(job: ProfileJob, log: Log = print) -> ProfileResult:
    """Validate, score accuracy (``--data``), make the files, measure; see the module docstring."""
    cfg = job.config
    targets, skipped, models, hf_config, workdir = _validate(job)
    for s in skipped:
        log(f"skipped {s['backend']} {s['model']} ({s['device']}): {s['reason']}")
    # Accuracy first: a problem with the text surfaces before minutes of measuring.
    scores, accuracy_meta = _accuracy(job, models, workdir, log) if job.data else ({}, None)
    artifacts = _artifacts(job, targets, workdir, log)
    load_before, cpu_before = _load_average(), _cpu_seconds()
    raw, loaded = _measure_all(job, targets, artifacts, int(hf_config.vocab_size), workdir)
    floors = _floors(job, targets, int(hf_config.vocab_size), workdir)
    load_after, cpu_after = _load_average(), _cpu_seconds()
    rows = [_row(t, r, loaded.get(t, {}), artifacts.get(t), scores) for t, r in raw]
    runs = [
        {k: row[k] for k in ROW_KEYS[:5]}
        | {k: r[k] for k in ("calls", "timed_s", "method", "peak_method")}
        for row, (_, r) in zip(rows, raw, strict=True)
    ]
    machine = _machine(cfg.threads or default_threads())
    machine["load_average_1min"] = [load_before, load_after]
    machine["other_cpu_load"] = _other_cpu_load(cpu_before, cpu_after, machine["cores"] or 1)
    machine["omp_wait_policy"] = os.environ.get("OMP_WAIT_POLICY")
    machine["scheduling"] = _scheduling()
    machine["amx"] = _amx_state(cfg.amx)
    meta = {
        "format": "bitmaps-profile",
        "version": 1,
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": command_line(job),
        "source": job.source.describe(),
        "shape": job.source.shape,
        "output": cfg.output,
        "machine": machine,
        "config": cfg.to_dict(),
        "skipped": skipped,
        "paths": [
            {
                "backend": t.backend,
                "device": t.device,
                "model": t.model,
                "path": B.path_description(t.backend, t.device, t.model, cfg.attention),
                "file": str(artifacts[t].path) if t in artifacts else None,
            }
            for t in targets
        ],
        "weights_by_part_mb": _weights_by_part(job, models, loaded, artifacts),
        "peak_floor_mb": floors,
        "accuracy": accuracy_meta,
        "runs": runs,
        "units": "latency: ms per call on one batch; throughput: batch / p50; MB: 10^6 bytes",
    }
    return ProfileResult(rows, meta)
