"""Dataclass configs: one per stage, validated on construction, JSON round-trip, versioned.

Library functions take one of these, not twenty keyword arguments; the CLI maps its options onto
them. ``from_dict`` rejects unknown keys and a newer ``version`` than this code understands, so a
checkpoint written by a later bitmaps fails with a clear message instead of silently misbehaving.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, ClassVar, TypeVar

from bitmaps.errors import ConfigError

C = TypeVar("C", bound="Config")


@dataclasses.dataclass
class Config:
    """Base class: subclasses set ``VERSION`` and validate in ``validate``."""

    VERSION: ClassVar[int] = 1

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise :class:`ConfigError` if a field is out of range."""

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["version"] = self.VERSION
        return d

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
    def from_json(cls: type[C], text: str) -> C:
        return cls.from_dict(json.loads(text))

    def replace(self: C, **changes: Any) -> C:
        return dataclasses.replace(self, **changes)


def _positive(name: str, value: float) -> None:
    if not value > 0:
        raise ConfigError(f"{name} must be > 0, got {value}")


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
        if self.max_eval_sequences < 0:
            raise ConfigError("max_eval_sequences must be >= 0")


@dataclasses.dataclass
class TrainConfig(Config):
    """The shared trainer: optimiser, schedule, logging, evaluation and checkpoint cadence."""

    stage: str = "teacher"  # "teacher": MLM fine-tune; "student": binarized distillation
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
    stop_after: int = 0  # testing aid: stop (as if killed) after this many steps in this process

    STAGES: ClassVar[tuple[str, ...]] = ("teacher", "student")
    SCHEDULES: ClassVar[tuple[str, ...]] = ("linear", "cosine", "constant")

    def validate(self) -> None:
        if self.stage not in self.STAGES:
            raise ConfigError(f"stage must be one of {', '.join(self.STAGES)}, got {self.stage!r}")
        if self.schedule not in self.SCHEDULES:
            raise ConfigError(
                f"schedule must be one of {', '.join(self.SCHEDULES)}, got {self.schedule!r}"
            )
        if self.amp not in ("auto", "off", "fp16", "bf16"):
            raise ConfigError(f"amp must be auto, off, fp16 or bf16, got {self.amp!r}")
        for name in ("steps", "batch_size", "log_every", "eval_sequences"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("eval_every", "save_every", "stop_after"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        _positive("lr", self.lr)
        if self.weight_decay < 0:
            raise ConfigError(f"weight_decay must be >= 0, got {self.weight_decay}")
        _fraction("warmup_ratio", self.warmup_ratio, open_top=True)
        if self.grad_clip < 0:
            raise ConfigError(f"grad_clip must be >= 0 (0 disables), got {self.grad_clip}")
        self.adam_betas = tuple(self.adam_betas)  # JSON gives a list
