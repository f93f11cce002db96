"""Dataclass configs: one per stage, validated on construction, JSON round-trip, versioned.

Library functions take one of these, not twenty keyword arguments; the CLI maps its options onto
them. ``from_dict`` rejects unknown keys, a value of the wrong type (each field's annotation is the
type: int, float, bool, str, tuples of them, ``| None``) and a newer ``version`` than this code
understands, so a checkpoint written by a later bitmaps fails with a clear message instead of
silently misbehaving. :meth:`Config.parse_field` reads a field from text (``--set
SECTION.FIELD=VALUE``) as that type.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from typing import Any, ClassVar, TypeVar

from bitmaps.core import jsontext
from bitmaps.core.errors import ConfigError

C = TypeVar("C", bound="Config")
_FIELD_TYPES: dict[type, dict[str, Any]] = {}


@dataclasses.dataclass
class Config:
    """Base class: subclasses set ``VERSION`` and validate in ``validate``."""

    VERSION: ClassVar[int] = 1

    def __post_init__(self) -> None:
        for name, tp in self.field_types().items():  # types first: validate compares numbers
            setattr(self, name, _typed(name, tp, getattr(self, name)))
        self.validate()

    def validate(self) -> None:
        """Raise :class:`ConfigError` if a field is out of range."""

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["version"] = self.VERSION
        return d

    def changed_fields(self, names: tuple[str, ...]) -> list[str]:
        """Those of ``names`` whose values differ from the dataclass defaults."""
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        return [name for name in names if getattr(self, name) != defaults[name]]

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls: type[C], d: dict[str, Any]) -> C:
        d = dict(d)
        version = d.pop("version", cls.VERSION)
        if not isinstance(version, int) or version > cls.VERSION:
            raise ConfigError(
                f"{cls.__name__} version {version} is newer than this bitmaps understands "
                f"({cls.VERSION}); upgrade bitmaps"
            )
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ConfigError(f"{cls.__name__}: unknown field(s) {', '.join(unknown)}")
        return cls(**d)

    @classmethod
    def field_types(cls) -> dict[str, Any]:
        """Field name → its type (the annotation, evaluated)."""
        if cls not in _FIELD_TYPES:
            hints = typing.get_type_hints(cls)
            _FIELD_TYPES[cls] = {f.name: hints[f.name] for f in dataclasses.fields(cls)}
        return _FIELD_TYPES[cls]

    @classmethod
    def check_field(cls, name: str, value: Any, where: str = "") -> Any:
        """A JSON value for field ``name``, type-checked (ranges are checked on construction)."""
        hints = cls.field_types()
        if name not in hints:
            raise ConfigError(
                f"{where or cls.__name__}: unknown field {name!r} (fields: {', '.join(hints)})"
            )
        return _typed(f"{where}.{name}" if where else name, hints[name], value)

    @classmethod
    def parse_field(cls, name: str, text: str) -> Any:
        """``text`` as the value of field ``name``: numbers, ``true``/``false``, ``none`` where the
        field may be None, and tuples as comma-separated items or a JSON list."""
        hints = cls.field_types()
        if name not in hints:
            raise ConfigError(f"unknown field {name!r} (fields: {', '.join(hints)})")
        return _typed(name, hints[name], _from_text(hints[name], text.strip()))

    @classmethod
    def from_json(cls: type[C], text: str) -> C:
        return cls.from_dict(jsontext.loads(text))

    def replace(self: C, **changes: Any) -> C:
        return dataclasses.replace(self, **changes)


def _optional(tp: Any) -> tuple[Any, bool]:
    """(the type without ``None``, whether ``None`` is allowed)."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0], len(args) < len(typing.get_args(tp))
    return tp, False


def _items(tp: Any) -> list[Any] | None:
    """The item types of a tuple type (``tuple[int, ...]``: one per item, any length); else None."""
    if typing.get_origin(tp) is not tuple:
        return None
    return list(typing.get_args(tp))


def number_text(text: str, tp: type = int) -> int | float | None:
    """``text`` typed by a user as an ``int`` or ``float`` (``tp``), or None where it is not one.
    Python's own readers take ``0_1`` as 1: an underscore is refused, not read."""
    if "_" in text:
        return None
    try:
        return tp(text)
    except ValueError:
        return None


def _from_text(tp: Any, text: str) -> Any:
    """Text (from the command line) → the JSON-like value :func:`_typed` checks."""
    tp, nullable = _optional(tp)
    if nullable and text.lower() in ("none", "null"):
        return None
    if tp is bool:
        words = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}
        return words.get(text.lower(), text)
    if tp in (int, float):
        number = number_text(text, tp)
        return text if number is None else number
    items = _items(tp)
    if items is not None:
        if text.startswith("["):
            try:
                return jsontext.loads(text)
            except jsontext.JsonTextError:
                return text
        parts = [p.strip() for p in text.split(",")] if text else []
        if "" in parts:  # "0.9,,0.99": an item left out is a mistake, not an item to drop
            return text
        if items[-1] is ...:
            return [_from_text(items[0], p) for p in parts]
        return [_from_text(items[i], p) if i < len(items) else p for i, p in enumerate(parts)]
    return text


def _typed(name: str, tp: Any, value: Any) -> Any:
    """``value`` checked against type ``tp`` (ints are accepted for floats, lists for tuples)."""
    tp, nullable = _optional(tp)
    if value is None and nullable:
        return None
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{name} must be true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{name} must be an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            try:
                number = float(value)
            except OverflowError:  # an integer past float's range
                raise ConfigError(f"{name} must be a finite number, got an integer too large "
                                  "for one") from None  # fmt: skip
            if not math.isfinite(number):
                raise ConfigError(f"{name} must be a finite number, got {value!r}")
            return number
        raise ConfigError(f"{name} must be a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{name} must be a string, got {value!r}")
    items = _items(tp)
    if items is not None:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{name} must be a list, got {value!r}")
        if items[-1] is ...:
            return tuple(_typed(f"{name} entry", items[0], v) for v in value)
        if len(value) != len(items):
            raise ConfigError(f"{name} must have {len(items)} entries, got {value!r}")
        return tuple(_typed(f"{name} entry", t, v) for t, v in zip(items, value, strict=True))
    return value


def _positive(name: str, value: float) -> None:
    if not value > 0:
        raise ConfigError(f"{name} must be > 0, got {value}")


# Upper bounds of the counts a user sets: far above any sensible run, and below what the libraries
# the values reach accept (torch.set_num_threads and torch.manual_seed take C integers, NumPy
# arrays a bounded size), so an absurd value is one ConfigError instead of an overflow inside them.
SEED_MAX = 2**32 - 1
BATCH_MAX = 65536
SEQ_MAX = 65536  # positions: far beyond any BERT's max_position_embeddings
THREADS_MAX = 4096
COUNT_MAX = 10**9  # steps, calls, sequences, intervals
# Bounds of the float settings whose absurd values overflow float32 in the first steps (a NaN
# checkpoint, or a traceback from inside the optimiser): far outside any useful run.
LR_MAX = 1.0
TEMPERATURE_RANGE = (1e-2, 1e3)  # the distillation softmax's: logits / T and a T^2 factor
LAMBDA_MAX = 1e6  # each distillation loss weight


def _count(name: str, value: int, lo: int, hi: int = COUNT_MAX) -> None:
    if value < lo:
        raise ConfigError(f"{name} must be >= {lo}, got {value}")
    if value > hi:
        raise ConfigError(f"{name} must be <= {hi}, got {value}")


def _fraction(name: str, value: float, *, open_top: bool = False) -> None:
    ok = 0.0 <= value < 1.0 if open_top else 0.0 <= value <= 1.0
    if not ok:
        raise ConfigError(f"{name} must be in [0, 1{')' if open_top else ']'}, got {value}")


@dataclasses.dataclass
class DataConfig(Config):
    """Text → packed 128-token sequences → held-out split → on-the-fly masking."""

    seq_len: int = 128
    heldout_fraction: float = 0.1  # of documents, chosen by a hash of the document id
    split_seed: int = 0
    mask_prob: float = 0.15
    mask_replace_prob: float = 0.8  # of masked positions: → [MASK]
    mask_random_prob: float = 0.1  # of masked positions: → random token (rest kept)
    eval_mask_seed: int = 1234  # fixed, so two models are compared on the same masks
    max_eval_sequences: int = 0  # 0: the whole held-out split
    per_line: bool = False  # True: every non-blank line of a file is a document (else: a file)

    # What only masked-LM text reads: a classifier's documents are its labelled rows, unmasked.
    MLM_ONLY = ("mask_prob", "mask_replace_prob", "mask_random_prob", "eval_mask_seed",
                "max_eval_sequences", "per_line")  # fmt: skip

    def split_description(self) -> str:
        """The settings that choose a held-out split, for a log line."""
        return (
            f"held-out fraction {self.heldout_fraction}, split seed {self.split_seed}, "
            f"{self.seq_len} tokens a sequence"
        )

    def validate(self) -> None:
        if not 8 <= self.seq_len <= 512:
            raise ConfigError(f"seq_len must be in [8, 512], got {self.seq_len}")
        _fraction("heldout_fraction", self.heldout_fraction, open_top=True)
        _fraction("mask_prob", self.mask_prob)
        _positive("mask_prob", self.mask_prob)
        _fraction("mask_replace_prob", self.mask_replace_prob)
        _fraction("mask_random_prob", self.mask_random_prob)
        if self.mask_replace_prob + self.mask_random_prob > 1.0:
            raise ConfigError("mask_replace_prob + mask_random_prob must be <= 1")
        _count("max_eval_sequences", self.max_eval_sequences, 0)
        for name in ("split_seed", "eval_mask_seed"):
            _count(name, getattr(self, name), 0, SEED_MAX)


@dataclasses.dataclass
class TrainConfig(Config):
    """The shared trainer: optimiser, schedule, logging, evaluation and checkpoint cadence."""

    stage: str = "teacher"  # "teacher": MLM fine-tune; "student": binarized distillation
    # "mlm": masked LM on text; "classify": sequence classification on labelled data
    task: str = "mlm"
    steps: int = 1000
    batch_size: int = 32
    lr: float = 1e-4
    weight_decay: float = 0.01
    warmup_ratio: float = 0.06
    schedule: str = "linear"  # "linear" | "cosine" | "constant" (after warm-up)
    grad_clip: float = 1.0
    adam_betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-6
    seed: int = 0
    eval_every: int = 200  # 0: only at the end
    eval_sequences: int = 256  # held-out sequences used by the periodic evaluation
    save_every: int = 200  # 0: only at the end
    log_every: int = 10
    amp: str = "auto"  # "auto": bf16/fp16 autocast on CUDA, off on CPU; "off"; "fp16"; "bf16"
    # dropout of the model being trained (hidden, attention, classifier); None: the model's own
    dropout: float | None = None
    stop_after: int = 0  # testing aid: stop (as if killed) after this many steps in this process

    STAGES: ClassVar[tuple[str, ...]] = ("teacher", "student")
    TASKS: ClassVar[tuple[str, ...]] = ("mlm", "classify")
    SCHEDULES: ClassVar[tuple[str, ...]] = ("linear", "cosine", "constant")

    def validate(self) -> None:
        if self.stage not in self.STAGES:
            raise ConfigError(f"stage must be one of {', '.join(self.STAGES)}, got {self.stage!r}")
        if self.task not in self.TASKS:
            raise ConfigError(f"task must be one of {', '.join(self.TASKS)}, got {self.task!r}")
        if self.schedule not in self.SCHEDULES:
            raise ConfigError(
                f"schedule must be one of {', '.join(self.SCHEDULES)}, got {self.schedule!r}"
            )
        if self.amp not in ("auto", "off", "fp16", "bf16"):
            raise ConfigError(f"amp must be auto, off, fp16 or bf16, got {self.amp!r}")
        for name in ("steps", "log_every", "eval_sequences"):
            _count(name, getattr(self, name), 1)
        _count("batch_size", self.batch_size, 1, BATCH_MAX)
        for name in ("eval_every", "save_every", "stop_after"):
            _count(name, getattr(self, name), 0)
        _positive("lr", self.lr)
        if self.lr > LR_MAX:
            raise ConfigError(
                f"lr must be <= {LR_MAX:g} (AdamW's steps diverge above it), got {self.lr}"
            )
        if self.weight_decay < 0:
            raise ConfigError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if self.lr * self.weight_decay >= 1:  # AdamW scales the weights by 1 - lr * weight_decay
            raise ConfigError(
                f"lr x weight_decay must be < 1 (each step scales the weights by 1 - lr x "
                f"weight_decay), got {self.lr:g} x {self.weight_decay:g}"
            )
        _fraction("warmup_ratio", self.warmup_ratio, open_top=True)
        if self.dropout is not None:
            _fraction("dropout", self.dropout, open_top=True)
        if self.grad_clip < 0:
            raise ConfigError(f"grad_clip must be >= 0 (0 disables), got {self.grad_clip}")
        self.adam_betas = tuple(self.adam_betas)  # JSON gives a list
        for beta in self.adam_betas:
            _fraction("adam_betas entry", beta, open_top=True)
        _positive("adam_eps", self.adam_eps)
        _count("seed", self.seed, 0, SEED_MAX)


def _one_of(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")


@dataclasses.dataclass
class BinarizeConfig(Config):
    """Which encoder linears become BinaryLinear, with which quantizers, on which schedule.

    Stored in the student checkpoint: ``binarize_(fresh_model, BinarizeConfig.from_dict(d))``
    rebuilds the module structure its state_dict loads into (bitmaps/train/binary_linear.py).

    BiT's recipe (Liu et al. 2022): ``activation="relu"`` replaces the FFN's intermediate
    activation of the student (GELU in BERT) by ReLU; ``unsigned_modules`` take {0, 1}
    activations (two-set binarization, the op's ``act_unsigned``) — ``None`` means the FFN output
    dense when the activation is ReLU (its input is then non-negative), none otherwise;
    ``center_weights`` binarizes sign(W − row mean); ``activation_quantizer="elastic"`` (the
    default since version 3) learns the activation scale and threshold: the deployed op then has a
    fixed ``act_scale`` (no per-row mean |x| at run time) and an FFN's two binary layers run as one
    node (``bitmaps::BinaryFeedForward``), and the ablation (benchmarks/RESULTS.md) found it as
    accurate as the clipped STE or better. Version 1 dicts (written before these fields) load as
    what they computed: GELU, no unsigned inputs, uncentred weights; version 1 and 2 dicts without
    an ``activation_quantizer`` load with the default of their time, "ste".
    """

    VERSION: ClassVar[int] = 3

    weight_quantizer: str = "scaled_sign"  # α_n·sign(W_n), α_n = mean |W_n|
    activation_quantizer: str = "elastic"  # "elastic" (BiT: learned α, β) | "ste" | "approx_sign"
    clip: float = 1.0  # gradient window of the activation STE / ApproxSign
    weight_clip: float = 1.0  # gradient window of the weight STE
    modules: tuple[str, ...] = (
        "query",
        "key",
        "value",
        "attention_output",
        "intermediate",
        "output",
    )
    schedule: str = "w1a1"  # "w1a1": both from step 0; "bit_multistep": weights first (BiT)
    activation_start_step: int = 0  # bit_multistep: first step with binary activations
    activation: str = "gelu"  # the student's FFN activation: "gelu" (the teacher's) | "relu"
    unsigned_modules: tuple[str, ...] | None = None  # {0, 1} inputs; None: ("output",) if relu
    center_weights: bool = False  # sign(W − mean_k W) per output row (BiT)
    # the student's embedding tables: "fp32", or "fp16": rounded to float16 values at the start and
    # after every optimizer step, so `export --embeddings fp16` stores exactly the trained tables
    embeddings: str = "fp32"

    EMBEDDINGS: ClassVar[tuple[str, ...]] = ("fp32", "fp16")
    ACTIVATIONS: ClassVar[tuple[str, ...]] = ("gelu", "relu")
    WEIGHT_QUANTIZERS: ClassVar[tuple[str, ...]] = ("scaled_sign",)
    ACTIVATION_QUANTIZERS: ClassVar[tuple[str, ...]] = ("ste", "approx_sign", "elastic")
    MODULES: ClassVar[tuple[str, ...]] = (
        "query",
        "key",
        "value",
        "attention_output",
        "intermediate",
        "output",
    )
    BINARIZE_SCHEDULES: ClassVar[tuple[str, ...]] = ("w1a1", "bit_multistep")

    def validate(self) -> None:
        _one_of("weight_quantizer", self.weight_quantizer, self.WEIGHT_QUANTIZERS)
        _one_of("activation_quantizer", self.activation_quantizer, self.ACTIVATION_QUANTIZERS)
        _positive("clip", self.clip)
        _positive("weight_clip", self.weight_clip)
        self.modules = tuple(self.modules)  # JSON gives a list
        if not self.modules:
            raise ConfigError("modules must name at least one of " + ", ".join(self.MODULES))
        for m in self.modules:
            _one_of("modules entry", m, self.MODULES)
        if len(set(self.modules)) != len(self.modules):
            raise ConfigError(f"modules has duplicates: {', '.join(self.modules)}")
        _one_of("schedule", self.schedule, self.BINARIZE_SCHEDULES)
        if self.schedule == "bit_multistep" and self.activation_start_step < 1:
            raise ConfigError(
                "schedule bit_multistep needs activation_start_step >= 1, "
                f"got {self.activation_start_step}"
            )
        if self.schedule == "w1a1" and self.activation_start_step != 0:
            raise ConfigError("activation_start_step only applies to schedule bit_multistep")
        _one_of("activation", self.activation, self.ACTIVATIONS)
        _one_of("embeddings", self.embeddings, self.EMBEDDINGS)
        if not isinstance(self.center_weights, bool):
            raise ConfigError(f"center_weights must be true or false, got {self.center_weights!r}")
        if self.unsigned_modules is not None:
            self.unsigned_modules = tuple(self.unsigned_modules)
            for m in self.unsigned_modules:
                if m not in self.modules:
                    raise ConfigError(
                        f"unsigned_modules entry {m!r} is not binarized (modules: "
                        f"{', '.join(self.modules)})"
                    )

    def unsigned_inputs(self) -> tuple[str, ...]:
        """The modules whose inputs are binarized to {0, 1}, with the default resolved."""
        if self.unsigned_modules is not None:
            return self.unsigned_modules
        return ("output",) if self.activation == "relu" and "output" in self.modules else ()

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BinarizeConfig:
        d = dict(d)
        version = d.get("version", cls.VERSION)
        if version == 1:  # before two-set binarization: what it computed
            d.setdefault("unsigned_modules", ())
        if isinstance(version, int) and version < 3:  # before elastic became the default
            d.setdefault("activation_quantizer", "ste")
        return super().from_dict(d)


@dataclasses.dataclass
class DistillConfig(Config):
    """Distillation loss of the student stage (bitmaps/train/distill.py)::

    loss = λ_mlm·CE + λ_logit·T²·KL(p_t^T ‖ p_s^T) + λ_hidden·Σ MSE(hidden) + λ_attn·Σ MSE(attn)

    ``mse_norm="layer"``: each layer's MSE is divided by the teacher's mean square at that layer
    (a relative error, ~1 for an unrelated student, whatever the layer's scale) and the terms are
    averaged over layers instead of summed, so λ_hidden and λ_attn weigh against the KL alone.
    ``hidden_layers="last"``: only the last hidden state (the MLM head's input) is matched.
    ``mse_decay_steps`` > 0: λ_hidden and λ_attn fall linearly to 0 at that step.
    """

    lambda_mlm: float = 1.0
    lambda_logit: float = 1.0
    temperature: float = 1.0
    lambda_hidden: float = 1.0
    lambda_attn: float = 1.0
    attention_target: str = "scores"  # "scores": pre-softmax q·k/√d (TinyBERT); "probs"
    layer_mapping: str = "uniform"  # student layer j ↔ teacher j·T/S ("uniform"), T−S+j, or j
    mse_norm: str = "none"  # "none": Σ raw MSE; "layer": mean over layers of MSE / mean(t²)
    hidden_layers: str = "all"  # "all": embeddings and every layer; "last": the last layer only
    # binarize schedule bit_multistep: who teaches the W1A1 phase — "teacher" (the FP teacher
    # throughout) or "intermediate" (BiT's multi-distillation: the W1A32 student as it stands when
    # activations are binarized, frozen)
    multistep_teacher: str = "teacher"
    # > 0: λ_hidden and λ_attn decay linearly to 0 at this step (the MSE terms guide the start
    # only; TinyBERT's intermediate-then-prediction order in one run); 0: constant
    mse_decay_steps: int = 0

    ATTENTION_TARGETS: ClassVar[tuple[str, ...]] = ("scores", "probs")
    LAYER_MAPPINGS: ClassVar[tuple[str, ...]] = ("uniform", "top", "bottom")
    MSE_NORMS: ClassVar[tuple[str, ...]] = ("none", "layer")
    HIDDEN_LAYERS: ClassVar[tuple[str, ...]] = ("all", "last")
    MULTISTEP_TEACHERS: ClassVar[tuple[str, ...]] = ("teacher", "intermediate")

    def validate(self) -> None:
        lambdas = ("lambda_mlm", "lambda_logit", "lambda_hidden", "lambda_attn")
        for name in lambdas:
            if not getattr(self, name) >= 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not any(getattr(self, name) > 0 for name in lambdas):
            raise ConfigError("at least one of " + ", ".join(lambdas) + " must be > 0")
        if not TEMPERATURE_RANGE[0] <= self.temperature <= TEMPERATURE_RANGE[1]:
            raise ConfigError(
                "temperature must be in [{:g}, {:g}], got {}".format(
                    *TEMPERATURE_RANGE, self.temperature
                )
            )
        for name in lambdas:
            if getattr(self, name) > LAMBDA_MAX:
                raise ConfigError(f"{name} must be <= {LAMBDA_MAX:g}, got {getattr(self, name)}")
        _one_of("attention_target", self.attention_target, self.ATTENTION_TARGETS)
        _one_of("layer_mapping", self.layer_mapping, self.LAYER_MAPPINGS)
        _one_of("mse_norm", self.mse_norm, self.MSE_NORMS)
        _one_of("hidden_layers", self.hidden_layers, self.HIDDEN_LAYERS)
        _one_of("multistep_teacher", self.multistep_teacher, self.MULTISTEP_TEACHERS)
        if not isinstance(self.mse_decay_steps, int) or self.mse_decay_steps < 0:
            raise ConfigError(
                f"mse_decay_steps must be an integer >= 0, got {self.mse_decay_steps}"
            )
        # a setting of a loss term that is off would be silently ignored: refused
        mse = "lambda_hidden and lambda_attn"
        for term, names in (
            ("lambda_logit", ("temperature",)),
            ("lambda_attn", ("attention_target",)),
            ("lambda_hidden", ("hidden_layers",)),
            (mse, ("mse_decay_steps", "mse_norm", "layer_mapping")),
        ):
            off = all(getattr(self, t) == 0 for t in term.split(" and "))
            changed = self.changed_fields(names) if off else []
            if changed:
                raise ConfigError(
                    f"{changed[0]} shapes a loss term that is off ({term} 0): it would be "
                    "ignored; leave it at its default or turn the term on"
                )


# The sections of `bitmaps train --config FILE` / `--set SECTION.FIELD=VALUE`.
SECTIONS: dict[str, type[Config]] = {
    "train": TrainConfig,
    "data": DataConfig,
    "binarize": BinarizeConfig,
    "distill": DistillConfig,
}


def parse_batch_seq(text: str) -> tuple[int, int]:
    """``"8x128"`` → ``(8, 128)``: batch x sequence of an optimization-profile shape."""
    parts = str(text).lower().split("x")
    if len(parts) != 2 or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
        raise ConfigError(f"shape must be BATCHxSEQ of positive integers, e.g. 8x128; got {text!r}")
    batch, seq = int(parts[0]), int(parts[1])
    if batch > BATCH_MAX or seq > SEQ_MAX:  # TensorRT takes 32-bit dimensions
        raise ConfigError(f"shape {text!r}: batch must be <= {BATCH_MAX} and sequence <= {SEQ_MAX}")
    return batch, seq


@dataclasses.dataclass
class EngineBuildConfig(Config):
    """``bitmaps build-engine``: TensorRT precision, optimization profile, workspace, caches.

    Shapes are ``BATCHxSEQ`` for the (batch, sequence) axes of every model input; TensorRT tunes
    for ``opt_shape`` and accepts anything between ``min_shape`` and ``max_shape``.
    """

    fp16: bool = False
    plugin: str | None = None  # path of libbitmaps_trt_plugin.so; None: search the usual places
    min_shape: str = "1x8"
    opt_shape: str = "8x128"
    max_shape: str = "32x128"
    workspace_mb: int = 1024
    timing_cache: str | None = None

    def validate(self) -> None:
        lo, opt, hi = (parse_batch_seq(s) for s in (self.min_shape, self.opt_shape, self.max_shape))
        if not all(a <= b <= c for a, b, c in zip(lo, opt, hi, strict=True)):
            raise ConfigError(
                f"need min <= opt <= max per axis; got min {self.min_shape}, opt {self.opt_shape}, "
                f"max {self.max_shape}"
            )
        _positive("workspace_mb", self.workspace_mb)
        if self.workspace_mb > 2**20:  # 1 TiB: more than any GPU; bytes must fit an int64
            raise ConfigError(f"workspace_mb must be <= {2**20} (1 TiB), got {self.workspace_mb}")


@dataclasses.dataclass
class ExportConfig(Config):
    """``bitmaps export`` / ``export-baseline`` (bitmaps/export/): what to write, how to verify it.

    ``tolerance`` 0 means the dtype's default (1e-4 for fp32, 2e-2 for fp16), documented with the
    error measure in bitmaps/export/verify.py. ``backends``: the ONNX Runtime paths a binary
    export is verified on ("function": plain onnxruntime; "kernel": our op as a custom op).
    ``target``: the runtime the file is for (bitmaps/export/targets.py): "portable" (standard ops
    and the model-local function; any runtime), "onnxruntime" (its fused contrib ops around
    BinaryLinear), "tensorrt" (only ops the ONNX-TensorRT parser accepts); recorded in the file's
    metadata_props as ``bitmaps.target``.
    """

    dtype: str = "fp32"  # "fp32" | "fp16"
    opset: int = 20  # ONNX opset of the default domain (18 or newer: BitwiseAnd, Gelu at 20)
    output: str = "logits"  # "logits" (MLM head) | "hidden" (last hidden state)
    tolerance: float = 0.0
    backends: tuple[str, ...] = ("function", "kernel")
    embeddings: str = (
        "fp32"  # word/position/type tables + tied decoder (bitmaps/core/embeddings.py)
    )
    embedding_group: int = 64  # int4 embeddings: scale group size along the hidden axis
    target: str = "portable"  # "portable" | "onnxruntime" | "tensorrt"
    # "int8": the onnxruntime target's attention nodes in the int8 scheme (opt-in, binary fp32
    # students; csrc/kernels/cpu_attention.h, bitmaps/core/int8_attention.py)
    attention: str = "float"

    ATTENTIONS: ClassVar[tuple[str, ...]] = ("float", "int8")
    DTYPES: ClassVar[tuple[str, ...]] = ("fp32", "fp16")
    TARGETS: ClassVar[tuple[str, ...]] = ("portable", "onnxruntime", "tensorrt")
    EMBEDDINGS: ClassVar[tuple[str, ...]] = ("fp32", "fp16", "int8", "int4")
    EMBEDDING_GROUPS: ClassVar[tuple[int, ...]] = (32, 64)
    OUTPUTS: ClassVar[tuple[str, ...]] = ("logits", "hidden")
    BACKENDS: ClassVar[tuple[str, ...]] = ("function", "kernel")
    OPSETS: ClassVar[tuple[int, int]] = (18, 23)
    DEFAULT_TOLERANCE: ClassVar[dict[str, float]] = {"fp32": 1e-4, "fp16": 2e-2}

    def validate(self) -> None:
        _one_of("dtype", self.dtype, self.DTYPES)
        _one_of("output", self.output, self.OUTPUTS)
        _one_of("target", self.target, self.TARGETS)
        _one_of("embeddings", self.embeddings, self.EMBEDDINGS)
        _one_of("attention", self.attention, self.ATTENTIONS)
        if self.attention == "int8" and (self.target != "onnxruntime" or self.dtype != "fp32"):
            raise ConfigError(
                "attention int8 needs --target onnxruntime and --dtype fp32 (the int8 scheme is "
                f"libbitmaps_ort.so's attention op), got target {self.target}, dtype {self.dtype}"
            )
        if self.embedding_group not in self.EMBEDDING_GROUPS:
            raise ConfigError(f"embedding_group must be 32 or 64, got {self.embedding_group}")
        lo, hi = self.OPSETS
        if not isinstance(self.opset, int) or not lo <= self.opset <= hi:
            raise ConfigError(f"opset must be an integer in [{lo}, {hi}], got {self.opset}")
        if not 0.0 <= self.tolerance < 1.0:
            raise ConfigError(f"tolerance must be in [0, 1) (0: the default), got {self.tolerance}")
        self.backends = tuple(self.backends)  # JSON gives a list
        if not self.backends:
            raise ConfigError("backends must name at least one of " + ", ".join(self.BACKENDS))
        for b in self.backends:
            _one_of("backends entry", b, self.BACKENDS)

    def effective_tolerance(self) -> float:
        return self.tolerance or self.DEFAULT_TOLERANCE[self.dtype]


@dataclasses.dataclass
class ProfileConfig(Config):
    """``bitmaps profile`` (bitmaps/runtime/profile.py): what to measure, and for how long.

    ``backends`` ("all": those installed here), ``models`` (empty: every model each backend runs
    well; torch fp16 on a CPU without FP16 arithmetic only when named), ``batches`` x ``seqs``.
    One measurement: untimed warm-up calls (at least ``warmup`` of them and ``warmup_time``
    seconds: on a shared machine the first second after a large model is loaded is often slower,
    as the kernel settles its memory), then timed calls until at least ``repeats`` calls
    and ``min_time`` seconds, or until ``max_time`` seconds (and at least 3 calls); the inputs
    rotate over ``rotations`` pre-generated batches. ``threads`` 0: every core of this process.
    """

    backends: tuple[str, ...] = ("all",)
    models: tuple[str, ...] = ()
    batches: tuple[int, ...] = (1, 8)
    seqs: tuple[int, ...] = (128,)
    output: str = "hidden"  # "hidden": encoder (last hidden state); "logits": with the MLM head
    device: str = "auto"  # "auto": every device a backend runs on here; "cpu"; "cuda"
    repeats: int = 20
    min_time: float = 2.0
    max_time: float = 30.0
    warmup: int = 3
    warmup_time: float = 1.0
    rotations: int = 4
    threads: int = 0
    seed: int = 0  # random weights of --shape models and the input token ids
    eval_sequences: int = 0  # --data: held-out sequences scored (0: all)
    amx: str = "allow"  # "withhold": the measuring processes get no AMX (bitmaps/runtime/amx.py)
    # "int8": the binary model's attention in the int8 scheme (ONNX Runtime rows: `export
    # --attention int8`; torch CPU rows: packed_attention(int8=True); accuracy scored so)
    attention: str = "float"

    BACKENDS: ClassVar[tuple[str, ...]] = ("torch", "onnxruntime", "tensorrt")
    MODELS: ClassVar[tuple[str, ...]] = ("fp32", "fp16", "int8", "binary")
    OUTPUTS: ClassVar[tuple[str, ...]] = ("hidden", "logits")
    DEVICES: ClassVar[tuple[str, ...]] = ("auto", "cpu", "cuda")
    AMX: ClassVar[tuple[str, ...]] = ("allow", "withhold")

    def validate(self) -> None:
        self.backends, self.models = tuple(self.backends), tuple(self.models)
        self.batches, self.seqs = tuple(self.batches), tuple(self.seqs)
        if not self.backends:
            raise ConfigError("name at least one backend: " + ", ".join((*self.BACKENDS, "all")))
        for b in self.backends:
            _one_of("backend", b, (*self.BACKENDS, "all"))
        for m in self.models:
            _one_of("model", m, self.MODELS)
        _one_of("output", self.output, self.OUTPUTS)
        _one_of("device", self.device, self.DEVICES)
        _one_of("amx", self.amx, self.AMX)
        _one_of("attention", self.attention, ExportConfig.ATTENTIONS)
        for name, values in (("batch size", self.batches), ("sequence length", self.seqs)):
            if not values:
                raise ConfigError(f"give at least one {name}")
            bad = [v for v in values if not isinstance(v, int) or v < 1]
            if bad:
                raise ConfigError(f"{name} must be >= 1, got {bad[0]}")
            for v in values:
                _count(name, v, 1, BATCH_MAX)
        _count("repeats", self.repeats, 1)
        _count("rotations", self.rotations, 1, 1024)
        _count("warmup", self.warmup, 0, 100_000)  # warm-up calls have no time limit
        _count("threads", self.threads, 0, THREADS_MAX)
        _count("seed", self.seed, 0, SEED_MAX)
        _count("eval_sequences", self.eval_sequences, 0)
        if self.warmup_time < 0:
            raise ConfigError(f"warmup_time must be >= 0, got {self.warmup_time}")
        if self.min_time < 0 or not self.max_time > 0 or self.max_time < self.min_time:
            raise ConfigError(
                f"need 0 <= min_time <= max_time and max_time > 0, got min_time {self.min_time}, "
                f"max_time {self.max_time}"
            )
