"""The shared trainer: masked-LM fine-tuning of a teacher and distillation of a binarized student.

One loop serves both stages; what differs is the model being trained and the *objective*, a callable
``objective(model, batch) -> (loss, parts)`` (:class:`MaskedLMObjective` for the teacher,
``bitmaps.train.distill.DistillationObjective`` for the student). The loop owns AdamW with warm-up and
decay, gradient clipping, mixed precision on GPU, DistributedDataParallel under ``torchrun``, periodic
held-out evaluation, and checkpoints that resume exactly: weights, optimizer, scheduler, every rank's
RNG state and the data position are saved together, atomically, in the output checkpoint.

``TrainConfig.task`` picks the data and the model wrapper: ``"mlm"`` (packed text, masked LM) or
``"classify"`` (labelled documents, ``BertForSequenceClassification``; bitmaps/train/classify.py).
The loop itself is the same for both.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bitmaps.core import distributed as D
from bitmaps.core.atomic import ANY, OutputChanged, check_not_input, check_writable, file_identity
from bitmaps.core.checkpoint import load_checkpoint, save_checkpoint, tensors_digest
from bitmaps.core.config import BinarizeConfig, Config, DataConfig, DistillConfig, TrainConfig
from bitmaps.core.errors import BitmapsError, one_line
from bitmaps.core.progress import ProgressReporter
from bitmaps.data.corpus import TrainStream, build_corpus, eval_batches
from bitmaps.data.labelled import LabelledData
from bitmaps.metrics.classify import SequenceClassifierModel
from bitmaps.metrics.evaluate import evaluate_mlm
from bitmaps.metrics.mlm import MaskedLMModel, batch_inputs
from bitmaps.train.binary_linear import binarize_, round_embeddings_
from bitmaps.train.classify import (
    ClassificationObjective,
    TaskData,
    classify_data,
    read_task_labels,
)
from bitmaps.train.distill import DistillationObjective
from bitmaps.train.models import LoadedModel, load_classifier, load_model, state_dict_problem

# Fields that may change between a run and its resumption (cadence, not the computation).
_RESUMABLE_CHANGES = ("eval_every", "save_every", "log_every", "stop_after", "eval_sequences")

Objective = Callable[[nn.Module, dict[str, torch.Tensor]], tuple[torch.Tensor, dict[str, float]]]


class MaskedLMObjective:
    """Cross entropy of the true token at the masked positions (the teacher stage)."""

    def __call__(
        self, model: nn.Module, batch: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, float]]:
        out = model(**batch_inputs(batch))
        if out.targets.numel() == 0:  # no masked token in this batch: nothing to learn from
            loss = out.logits.sum() * 0.0
        else:
            loss = nn.functional.cross_entropy(out.logits.float(), out.targets)
        return loss, {"mlm": float(loss.detach())}


@dataclasses.dataclass
class TrainJob:
    """Everything one ``bitmaps train`` run needs."""

    train: TrainConfig
    data: DataConfig
    data_paths: list[str]
    output: Path
    model: str  # teacher stage: the model to fine-tune; student stage: the (fine-tuned) teacher
    binarize: Config | None = None  # BinarizeConfig, student stage (None: the defaults)
    distill: Config | None = None  # DistillConfig, student stage (None: the defaults)
    resume: bool = False
    overwrite: bool = False
    device: str = "auto"


@dataclasses.dataclass
class TrainResult:
    output: Path
    step: int
    complete: bool
    metrics: dict[str, float]
    history: list[dict[str, Any]]
    wall_s: float
    main_process: bool = True  # False on the other ranks of a torchrun (they print no summary)


def lr_lambda(cfg: TrainConfig) -> Callable[[int], float]:
    """Linear warm-up to the peak, then linear / cosine decay to zero (or constant)."""
    warmup = int(cfg.warmup_ratio * cfg.steps)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if cfg.schedule == "constant":
            return 1.0
        progress = (step - warmup) / max(1, cfg.steps - warmup)
        if cfg.schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
        return max(0.0, 1.0 - progress)

    return factor


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW; no weight decay on biases, LayerNorm weights and other 1-D parameters."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.adam_betas, eps=cfg.adam_eps)


def _autocast_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    if device.type != "cuda" or cfg.amp == "off":
        return None
    if cfg.amp == "fp16":
        return torch.float16
    if cfg.amp == "bf16" or torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """Mixed precision on GPU; a no-op on CPU (``dtype`` None)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def _rng_state(env: D.DistEnv) -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if env.device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(env.device)
    return state


def _set_rng_state(env: D.DistEnv, state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and env.device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], env.device)


def _state_problem(state: dict[str, Any]) -> str | None:
    """What makes a checkpoint's ``train_state`` unusable (wrong types), or None."""
    world_size = state.get("world_size")
    if not isinstance(world_size, int) or isinstance(world_size, bool) or world_size < 1:
        return f"its world size is {world_size!r}"
    step = state.get("step")
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        return f"its step is {step!r}"
    for key in ("optimizer", "scheduler", "stream", "train_config", "data_config"):
        if not isinstance(state.get(key), dict):
            return f"its {key.replace('_', ' ')} is not a dict"
    if not isinstance(state.get("scaler", {}), dict):
        return "its scaler state is not a dict"
    history = state.get("history", [])
    if not isinstance(history, list) or not all(isinstance(h, dict) for h in history):
        return "its history is not a list of records"
    rng = state.get("rng")
    if not (
        isinstance(rng, list)
        and len(rng) == state.get("world_size")
        and all(isinstance(r, dict) and isinstance(r.get("torch"), torch.Tensor) for r in rng)
    ):
        return "its random-number states are not one per process"
    return None


@contextlib.contextmanager
def _restoring(output: Path, what: str):  # noqa: ANN202
    """Errors of torch's ``load_state_dict`` calls on a resumed checkpoint as one user error."""
    try:
        yield
    except (KeyError, TypeError, ValueError, AttributeError, IndexError, RuntimeError) as exc:
        detail = state_dict_problem(exc) if isinstance(exc, RuntimeError) else one_line(exc)
        raise BitmapsError(
            f"cannot resume {output}: {what} ({detail}); write to a new output, or pass "
            "--overwrite to start afresh"
        ) from None


def _check_resumable(
    job: TrainJob, state: dict[str, Any], env: D.DistEnv, fingerprint: str, source_digest: str
) -> None:
    problem = _state_problem(state)
    if problem:
        raise BitmapsError(
            f"cannot resume {job.output}: its training state is corrupt ({problem}); write to a "
            "new output, or pass --overwrite to start afresh"
        )

    def comparable(d: dict[str, Any] | None) -> dict[str, Any]:
        return {k: v for k, v in (d or {}).items() if k not in _RESUMABLE_CHANGES}

    wanted = {
        "train_config": job.train.to_dict(),
        "data_config": job.data.to_dict(),
        "binarize": job.binarize.to_dict() if job.binarize else None,
        "distill": job.distill.to_dict() if job.distill else None,
    }
    for key, value in wanted.items():
        saved = state.get(key)
        if key == "train_config":
            value, saved = comparable(value), comparable(saved)
            saved.setdefault("task", "mlm")  # written before the task field existed
            saved.setdefault("dropout", None)  # written before the dropout field existed
            if saved and "adam_betas" in saved:
                saved["adam_betas"] = tuple(saved["adam_betas"])
        if saved != value:
            raise BitmapsError(
                f"cannot resume {job.output}: its {key.replace('_', ' ')} differs from this run's; "
                "use the same options, or write to a new output"
            )
    if state.get("world_size") != env.world_size:
        raise BitmapsError(
            f"cannot resume {job.output}: it was trained with {state.get('world_size')} process(es), "
            f"this run has {env.world_size}; the data order depends on it"
        )
    if state.get("data_fingerprint") != fingerprint:
        raise BitmapsError(
            f"cannot resume {job.output}: the training text, the tokenizer or how bitmaps reads "
            "them changed since it was written; write to a new output, or pass --overwrite to "
            "train it afresh"
        )
    saved = state.get("source_digest")  # absent in states written before it was recorded
    if saved is not None and saved != source_digest:
        what = "teacher" if job.train.stage == "student" else "model"
        raise BitmapsError(
            f"cannot resume {job.output}: it was trained from another {what} than {job.model} "
            f"(the weights differ); resume with the {what} it started from, or write to a new "
            "output"
        )


def _prepare_models(
    job: TrainJob, log: Callable[[str], None], labelled: LabelledData | None = None
) -> tuple[LoadedModel, nn.Module]:
    """The model to train (teacher, or a binarized copy of it) and the loaded source model."""
    if labelled is not None and job.train.stage == "teacher":
        source = load_classifier(job.model, labelled.labels)
    else:
        source = load_model(job.model)
    if job.train.task == "classify" and source.task != "classify":
        raise BitmapsError(
            f"{job.model} is a masked-LM model; --task classify --stage student needs the "
            "fine-tuned classifier teacher (from --task classify --stage teacher)"
        )
    if job.train.task == "mlm" and source.task != "mlm":
        raise BitmapsError(f"{job.model} is a classifier; use --task classify")
    if job.train.stage == "teacher":
        if source.is_binary:
            raise BitmapsError(
                f"{job.model} is a binarized student; --stage teacher needs a full-precision model"
            )
        return source, set_dropout_(source.model, job.train.dropout)
    if source.is_binary:
        raise BitmapsError(
            f"{job.model} is a binarized student; --stage student needs the full-precision teacher"
        )

    student = copy.deepcopy(source.model)
    replaced = binarize_(student, job.binarize)
    log(f"binarized {len(replaced)} linear layers of {type(student).__name__} for the student")
    return source, set_dropout_(student, job.train.dropout)


def set_dropout_(model: nn.Module, p: float | None) -> nn.Module:
    """Every dropout of ``model`` (hidden, attention probabilities, classifier) set to ``p``, in
    place, and recorded in its Hugging Face config so a saved model says what it was trained with;
    ``None`` keeps the model's own. The teacher of a student run is another object, untouched."""
    if p is None:
        return model
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = p
    config = getattr(model, "config", None)
    for name in ("hidden_dropout_prob", "attention_probs_dropout_prob", "classifier_dropout"):
        if config is not None and hasattr(config, name):
            setattr(config, name, p)
    return model


def _wrapper(job: TrainJob) -> type[MaskedLMModel]:
    return SequenceClassifierModel if job.train.task == "classify" else MaskedLMModel


def _make_objective(job: TrainJob, source: LoadedModel, env: D.DistEnv) -> Objective:
    if job.train.stage == "teacher":
        return ClassificationObjective() if job.train.task == "classify" else MaskedLMObjective()

    teacher = _wrapper(job)(source.model).to(env.device)
    return DistillationObjective(teacher, job.distill, binarize=job.binarize)


def _mlm_data(
    job, env, tokenizer, amp_dtype, log, TrainStream, build_corpus, eval_batches
) -> TaskData:  # noqa: N803
    """Packed text, masked on the fly; held-out cross entropy, accuracy and MRR."""
    cfg = job.train
    # Rank 0 builds (and caches) the corpus first; the others then load it from the cache.
    corpus = None
    if env.is_main:
        corpus = build_corpus(job.data_paths, tokenizer, job.data, log=log)
    D.barrier(env)
    if not env.is_main:
        corpus = build_corpus(job.data_paths, tokenizer, job.data, log=lambda _m: None)
    stream = TrainStream(
        corpus.train,
        tokenizer,
        job.data,
        batch_size=cfg.batch_size,
        seed=cfg.seed,
        rank=env.rank,
        world_size=env.world_size,
    )

    def evaluate(wrapped: nn.Module) -> dict[str, float]:
        batches = eval_batches(
            corpus.heldout,
            tokenizer,
            job.data,
            batch_size=cfg.batch_size,
            max_sequences=cfg.eval_sequences,
            rank=env.rank,
            world_size=env.world_size,
        )
        return evaluate_mlm(wrapped, batches, env, amp_dtype=amp_dtype)

    def describe(m: dict[str, Any]) -> str:
        return (
            f"cross entropy {m['cross_entropy']:.4f}  accuracy {m['accuracy']:.4f}  "
            f"MRR {m['mrr']:.4f}  ({m['masked_tokens']} masked tokens)"
        )

    return TaskData(f"{corpus.key}", corpus.stats.to_dict(), stream, evaluate, describe)


_DIVERGED_ADVICE = "lower --lr, or check the data and the distillation settings"


def _checked_job(job: TrainJob) -> TrainJob:
    """``job`` with a student's unset binarize / distill settings at their defaults. Settings that
    contradict each other, or that this job would silently ignore, are refused (the CLI refuses
    them too, as options; this is the library's own check)."""
    if job.data.heldout_fraction == 0:
        raise BitmapsError(
            "data.heldout_fraction 0 leaves training no held-out text to score during and after "
            "the run: keep it above 0 (the default is 0.1)"
        )
    if job.train.stage == "teacher" and (job.binarize is not None or job.distill is not None):
        raise BitmapsError(
            "binarize / distill settings apply to the student stage only: leave them None for a "
            "teacher"
        )
    if job.train.stage == "student":
        for name, kind in (("binarize", BinarizeConfig), ("distill", DistillConfig)):
            value = getattr(job, name)
            if value is not None and not isinstance(value, kind):
                raise BitmapsError(
                    f"TrainJob.{name} must be a {kind.__name__} or None, got {type(value).__name__}"
                )
        job = dataclasses.replace(
            job, binarize=job.binarize or BinarizeConfig(), distill=job.distill or DistillConfig()
        )
        if job.binarize.schedule != "bit_multistep" and job.distill.multistep_teacher != "teacher":
            raise BitmapsError(
                "distill.multistep_teacher applies to binarize.schedule bit_multistep; this "
                f"schedule is {job.binarize.schedule}: leave it out"
            )
        start = job.binarize.activation_start_step
        if job.binarize.schedule == "bit_multistep" and start >= job.train.steps:
            raise BitmapsError(
                f"binarize.activation_start_step {start} is not below train.steps "
                f"{job.train.steps}: the activations would never be binarized in training; "
                "lower it or train longer"
            )
    if job.resume and job.overwrite:
        raise BitmapsError(
            "resume continues the output, overwrite replaces it: set one of them, not both"
        )
    changed = job.data.changed_fields(DataConfig.MLM_ONLY) if job.train.task == "classify" else []
    if changed:
        raise BitmapsError(
            f"data.{changed[0]} applies to masked-LM text; a classifier's documents are its "
            "labelled rows, unmasked: leave it at its default"
        )
    return job


def run_training(job: TrainJob, log: Callable[[str], None] = print) -> TrainResult:
    """Train per ``job``; returns when done, or when ``train.stop_after`` steps ran in this process."""

    t_start = time.perf_counter()
    job = _checked_job(job)
    check_writable(job.output)
    check_not_input(job.output, job.model, "model it trains from (--teacher)")
    if job.output.exists() and not (job.resume or job.overwrite):
        raise BitmapsError(
            f"{job.output} exists; pass --resume to continue that run or --overwrite to replace it"
        )
    env = D.setup_distributed(job.device)
    main_log = log if env.is_main else (lambda _msg: None)
    try:
        return _run(job, env, main_log, t_start, TrainStream, build_corpus, eval_batches)
    finally:
        D.teardown(env)


def _run(job, env, log, t_start, TrainStream, build_corpus, eval_batches) -> TrainResult:  # noqa: N803
    cfg = job.train
    # the output as this run found it (absent, or the checkpoint it resumes), then as it last
    # wrote it: each save refuses a file another process put there meanwhile
    output_seen = [file_identity(job.output)]
    if cfg.amp in ("fp16", "bf16") and env.device.type != "cuda":
        raise BitmapsError(
            f"--amp {cfg.amp} is mixed precision on a CUDA GPU; this run is on the "
            f"{env.device.type}: leave --amp out (or --amp off), or train with --device cuda"
        )
    torch.manual_seed(cfg.seed)
    labelled = read_task_labels(job.data_paths) if cfg.task == "classify" else None
    source, model = _prepare_models(job, log, labelled)
    # the weights the run starts from (the teacher of a student run), before any step changes
    # them: a resumed run must start from the same
    source_digest = tensors_digest(source.model.state_dict())
    if labelled is not None and source.labels != labelled.labels:
        raise BitmapsError(
            f"{job.model} classifies {', '.join(source.labels or ())}; the data has labels "
            f"{', '.join(labelled.labels)}"
        )
    tokenizer = source.tokenizer
    amp_dtype = _autocast_dtype(cfg, env.device)
    if labelled is not None:
        data = classify_data(
            labelled,
            tokenizer,
            job.data,
            env,
            batch_size=cfg.batch_size,
            seed=cfg.seed,
            eval_examples=cfg.eval_sequences,
            amp_dtype=amp_dtype,
            log=log,
        )
    else:
        data = _mlm_data(
            job, env, tokenizer, amp_dtype, log, TrainStream, build_corpus, eval_batches
        )
    fingerprint = data.fingerprint

    resume_state = None
    if job.resume and job.output.exists():
        ckpt = load_checkpoint(job.output)
        resume_state = ckpt.get("train_state")
        if resume_state is None:
            raise BitmapsError(f"cannot resume {job.output}: it holds no training state")
        _check_resumable(job, resume_state, env, fingerprint, source_digest)
        if ckpt["meta"].get("complete"):
            log(f"{job.output} is already complete (step {resume_state['step']}); nothing to do")
            history = list(resume_state.get("history", []))
            return TrainResult(
                job.output,
                resume_state["step"],
                True,
                ckpt["meta"].get("metrics", {}),
                history,
                time.perf_counter() - t_start,
                env.is_main,
            )
        with _restoring(job.output, "its weights are not this model's (another --teacher?)"):
            model.load_state_dict(ckpt["state_dict"], strict=True)
        log(f"resuming {job.output} at step {resume_state['step']}/{cfg.steps}")
    elif job.resume:
        log(f"{job.output} does not exist yet: starting a new run")

    wrapped = _wrapper(job)(model).to(env.device)
    objective = _make_objective(job, source, env)
    train_module: nn.Module = wrapped
    if env.distributed:
        train_module = nn.parallel.DistributedDataParallel(
            wrapped,
            device_ids=[env.local_rank] if env.device.type == "cuda" else None,
            find_unused_parameters=cfg.stage == "student",
        )
    optimizer = make_optimizer(wrapped, cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg))
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    stream = data.stream

    step, history = 0, []
    if resume_state is not None:
        with _restoring(job.output, "its training state is corrupt"):
            optimizer.load_state_dict(resume_state["optimizer"])
            scheduler.load_state_dict(resume_state["scheduler"])
            scaler.load_state_dict(resume_state.get("scaler", {}) or scaler.state_dict())
            stream.load_state_dict(resume_state["stream"])
            _set_rng_state(env, resume_state["rng"][env.rank])
        step, history = resume_state["step"], list(resume_state.get("history", []))
    on_step = getattr(objective, "on_step", None)
    fp16_tables = job.binarize is not None and job.binarize.embeddings == "fp16"

    def evaluate(at_step: int) -> dict[str, float]:
        metrics = data.evaluate(wrapped)
        history.append({"step": at_step, **metrics})
        log(f"held-out @ step {at_step}: {data.describe(metrics)}")
        return metrics

    def check_weights(at_step: int) -> None:
        # the loss is checked before each step, the weights it leaves only here, before every
        # save and the last evaluation (a last step's update is never seen by a loss)
        if not all(bool(torch.isfinite(p).all()) for p in wrapped.parameters()):
            raise BitmapsError(
                f"training diverged by step {at_step} (the weights hold NaN or infinite values); "
                f"{_DIVERGED_ADVICE}"
            )

    def save(at_step: int, complete: bool, metrics: dict[str, float] | None) -> None:
        check_weights(at_step)
        rng = D.all_gather_objects(env, _rng_state(env))
        changed = (
            f"{job.output} was written by something else while this run went on (another "
            "run with the same output?); it was left as it is: give this run another output, "
            "or --overwrite to replace whatever is there"
        )
        problem = None
        if env.is_main:
            state = {
                "step": at_step,
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(),
                "stream": stream.state_dict(),
                "rng": rng,
                "world_size": env.world_size,
                "data_fingerprint": fingerprint,
                "source_digest": source_digest,
                "train_config": cfg.to_dict(),
                "data_config": job.data.to_dict(),
                "binarize": job.binarize.to_dict() if job.binarize else None,
                "distill": job.distill.to_dict() if job.distill else None,
                "history": history,
            }
            meta = {
                "stage": cfg.stage,
                "step": at_step,
                "steps": cfg.steps,
                "complete": complete,
                "source_model": str(job.model),
                "metrics": metrics or {},
                "data": data.stats,
                "data_config": job.data.to_dict(),  # eval and profile score its held-out split
                "task": cfg.task,
            }
            if labelled is not None:
                meta["labels"] = list(labelled.labels)
            try:
                # published only if the output is still what this run saw (absent: created only
                # where nothing is): two runs started at once on one output cannot both write it
                save_checkpoint(
                    job.output,
                    model=model,
                    tokenizer=source.tokenizer_info,
                    binarize=job.binarize.to_dict() if job.binarize else None,
                    meta=meta,
                    train_state=state,
                    expect=ANY if job.overwrite else output_seen[0],
                )
            except OutputChanged:
                problem = changed
        problem = D.broadcast_object(env, problem)  # every process raises, none waits alone
        if problem is not None:
            raise BitmapsError(problem)
        D.barrier(env)
        output_seen[0] = file_identity(job.output)  # as the main process wrote it

    if step == 0 and cfg.eval_every > 0:
        evaluate(0)
    metrics: dict[str, float] = history[-1] if history else {}
    ran_here, stopped = 0, False
    tokens_seen, t_loop = 0, time.perf_counter()
    wrapped.train()
    with ProgressReporter(
        cfg.steps,
        f"train ({cfg.stage})",
        completed=step,
        log_every=cfg.log_every,
        enabled=env.is_main,
    ) as progress:
        while step < cfg.steps:
            if on_step is not None:
                on_step(step, wrapped.model)
            batch = {k: v.to(env.device, non_blocking=True) for k, v in next(stream).items()}
            with autocast(env.device, amp_dtype):
                loss, parts = objective(train_module, batch)
            if not torch.isfinite(loss):
                raise BitmapsError(
                    f"training diverged at step {step} (loss {float(loss.detach())}); "
                    f"{_DIVERGED_ADVICE}"
                )
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if cfg.grad_clip > 0:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(wrapped.parameters(), cfg.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            if fp16_tables:
                round_embeddings_(wrapped)
            step += 1
            ran_here += 1
            tokens_seen += int(batch["attention_mask"].sum()) * env.world_size
            elapsed = time.perf_counter() - t_loop
            progress.update(
                1,
                loss=float(loss.detach()),
                **parts,
                lr=scheduler.get_last_lr()[0],
                tok_s=tokens_seen / max(elapsed, 1e-9),
            )
            last = step == cfg.steps
            if cfg.eval_every and (step % cfg.eval_every == 0) and not last:
                wrapped.eval()
                metrics = evaluate(step)
                wrapped.train()
            if cfg.save_every and step % cfg.save_every == 0 and not last:
                save(step, False, metrics)
            if cfg.stop_after and ran_here >= cfg.stop_after and not last:
                stopped = True
                break

    wrapped.eval()
    if not stopped:
        check_weights(step)
        metrics = evaluate(step)
        save(step, True, metrics)
        log(f"wrote {job.output} (step {step}, {time.perf_counter() - t_start:.1f} s)")
    else:
        log(f"stopped after {ran_here} step(s) at step {step} (--stop-after); resume with --resume")
    return TrainResult(
        job.output, step, not stopped, metrics, history, time.perf_counter() - t_start, env.is_main
    )
