"""What ``bitmaps profile`` will measure, checked before any work is done.

:func:`plan` turns a :class:`ProfileJob` into (backend, device, model) targets and the list of
what was skipped and why (``--backend all`` skips what is not installed here; a backend named
explicitly that cannot run is an error). The ``check_*`` functions refuse, with one line, what
would fail later: models without a source (``--model`` without ``--teacher`` when fp32 is asked),
a sequence longer than the model's ``max_position_embeddings``, unwritable outputs, a plot that
is not a PNG. :func:`command_line` spells out the command that repeats a run.
"""

from __future__ import annotations

import dataclasses
import os
import shlex
from pathlib import Path
from typing import Any

from transformers import BertConfig

from bitmaps.core.atomic import check_writable
from bitmaps.core.config import ProfileConfig, number_text
from bitmaps.core.errors import BitmapsError
from bitmaps.runtime import backends as B
from bitmaps.train.models import load_model


@dataclasses.dataclass(frozen=True)
class Target:
    backend: str
    device: str
    model: str


@dataclasses.dataclass
class ProfileJob:
    config: ProfileConfig
    source: B.ModelSource
    data: list[str] = dataclasses.field(default_factory=list)
    workdir: Path | None = None
    json_path: Path | None = None
    plot_path: Path | None = None


def _items(text: str, name: str) -> list[str]:
    """The comma-separated items of an option's value; an empty one (``"1,,2"``, ``""``, ``","``)
    is a mistake, not an item to drop (the whole option would otherwise fall back to its
    default)."""
    items = [p.strip() for p in str(text).split(",")]
    if "" in items:
        raise BitmapsError(
            f"{name} has an empty item in {text!r}: give names or numbers separated by commas"
        )
    return items


def parse_int_list(text: str, name: str) -> tuple[int, ...]:
    """``"1,8"`` → ``(1, 8)``; anything else is a one-line error naming the option."""
    values = [number_text(p) for p in _items(text, name)]
    if None in values:
        raise BitmapsError(f"{name} must be integers separated by commas, got {text!r}")
    return tuple(dict.fromkeys(values))  # each once, in the order given (as --backend)


def parse_names(text: str | None, name: str) -> tuple[str, ...]:
    """``"onnxruntime,torch"`` → the names, each once; None (the option not given) → ()."""
    return () if text is None else tuple(dict.fromkeys(_items(text, name)))


def default_threads() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


# --------------------------------------------------------------------------- planning


def check_sources(job: ProfileJob, models: tuple[str, ...]) -> None:
    s = job.source
    if s.shape and (s.teacher or s.student):
        raise BitmapsError("give either --shape or --model/--teacher, not both")
    if s.shape and job.data:
        raise BitmapsError(
            f"--data needs trained models (--model STUDENT --teacher TEACHER); --shape {s.shape} "
            "has random weights and no tokenizer"
        )
    if s.shape:
        return
    fp = [m for m in models if m != "binary"]
    if fp and not s.teacher:
        raise BitmapsError(
            f"{'/'.join(fp)} come from the teacher: give --teacher TEACHER (or profile only the "
            "student with --models binary)"
        )
    if "binary" in models and not s.student:
        raise BitmapsError(
            "the binary model is the student: give --model STUDENT.pt (or profile only the "
            "teacher with --models fp32,fp16)"
        )


def plan(job: ProfileJob) -> tuple[list[Target], list[dict[str, str]]]:
    """The (backend, device, model) targets to measure, and what was skipped and why."""
    cfg = job.config
    named_models = bool(cfg.models)
    models = cfg.models or ProfileConfig.MODELS
    check_sources(job, models)
    if "all" in cfg.backends and len(cfg.backends) > 1:  # "tensorrt,all" skipped tensorrt quietly
        raise BitmapsError(
            f"--backend {','.join(cfg.backends)}: all already names every backend; give all "
            "alone, or a list without it"
        )
    wanted = ProfileConfig.BACKENDS if "all" in cfg.backends else tuple(dict.fromkeys(cfg.backends))
    explicit = "all" not in cfg.backends
    if cfg.device == "cuda" and not B.torch.cuda.is_available():
        raise BitmapsError("--device cuda: torch sees no CUDA GPU on this machine")
    targets, skipped = [], []
    for backend in wanted:
        problem = B.backend_problem(backend)
        found = B.devices(backend, cfg.device) if problem is None else []
        if problem is None and not found:
            problem = f"{backend} runs on {'/'.join(B.BACKEND_DEVICES[backend])}, not {cfg.device}"
        if problem:
            if explicit:
                raise BitmapsError(problem)
            skipped.append({"backend": backend, "model": "*", "device": "*", "reason": problem})
            continue
        for device in found:
            for model in models:
                why = B.model_problem(backend, device, model, named_models)
                if why:
                    skipped.append(
                        {"backend": backend, "model": model, "device": device, "reason": why}
                    )
                else:
                    targets.append(Target(backend, device, model))
    if not targets:
        raise BitmapsError("nothing to profile: " + "; ".join(s["reason"] for s in skipped))
    return targets, skipped


def model_config(job: ProfileJob, models: set[str]) -> Any:
    """The (shared) model config; checks teacher and student agree where it matters."""

    if job.source.shape:
        return BertConfig()
    wanted = (["fp32"] if models - {"binary"} else []) + (["binary"] if "binary" in models else [])
    configs = {m: load_model(job.source.spec(m), require_tokenizer=False) for m in wanted}
    for m, loaded in configs.items():
        if loaded.is_binary != (m == "binary"):
            what = "a binarized student" if m == "binary" else "a full-precision model"
            flag = "--model" if m == "binary" else "--teacher"
            raise BitmapsError(f"{flag} {job.source.spec(m)} is not {what}")
    cfgs = [c.model.config for c in configs.values()]
    if len({c.vocab_size for c in cfgs}) > 1:
        raise BitmapsError(
            "teacher and student have different vocabularies; profile a student "
            "with the teacher it was distilled from"
        )
    return min(cfgs, key=lambda c: c.max_position_embeddings)


def check_shapes(cfg: ProfileConfig, model_config: Any) -> None:
    limit = int(model_config.max_position_embeddings)
    too_long = [s for s in cfg.seqs if s > limit]
    if too_long:
        raise BitmapsError(
            f"sequence length {too_long[0]} is longer than the model's maximum "
            f"({limit} positions, max_position_embeddings)"
        )


def check_outputs(job: ProfileJob) -> None:

    if job.json_path is not None:
        check_writable(job.json_path)
    if job.plot_path is not None:
        check_writable(job.plot_path)
        check_plot_name(job.plot_path)


def check_plot_name(path: str | Path) -> None:
    """``--plot`` writes a PNG: its file name must say so."""
    if Path(path).suffix.lower() != ".png":
        raise BitmapsError(
            f"--plot writes a PNG: give a file name ending in .png, not {Path(path).name}"
        )


# --------------------------------------------------------------------------- measuring
def command_line(job: ProfileJob) -> str:
    """The ``bitmaps profile`` command that repeats this run (every option spelled out)."""
    c, s = job.config, job.source
    args = ["bitmaps", "profile"]
    args += ["--shape", s.shape] if s.shape else []
    args += ["--model", s.student] if s.student else []
    args += ["--teacher", s.teacher] if s.teacher else []
    args += ["--backend", ",".join(c.backends)]
    args += ["--models", ",".join(c.models)] if c.models else []
    args += ["--batch", ",".join(map(str, c.batches)), "--seq", ",".join(map(str, c.seqs))]
    args += ["--output", c.output, "--device", c.device]
    args += ["--amx", c.amx] if c.amx != "allow" else []
    for p in job.data:
        args += ["--data", str(p)]
    for opt in ("repeats", "min_time", "max_time", "warmup", "threads", "seed", "eval_sequences"):
        args += ["--" + opt.replace("_", "-"), str(getattr(c, opt))]
    args += ["--json", str(job.json_path)] if job.json_path else []
    args += ["--plot", str(job.plot_path)] if job.plot_path else []
    return shlex.join(args)
