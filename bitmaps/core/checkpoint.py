"""The ``ckpt.pt`` format: one ``torch.save`` of plain data, loadable with ``weights_only=True``.

A checkpoint is a dict (nothing pickled but tensors, strings, numbers, lists and dicts)::

    format        "bitmaps-checkpoint"
    version       1
    model_config  JSON text of the Hugging Face config (BertConfig.to_json_string)
    model_class   e.g. "BertForMaskedLM"
    tokenizer     {"name": str, "sha256": str, "files": {filename: text}}: the tokenizer travels inside
    binarize      BinarizeConfig as a dict; {} for a full-precision model
    state_dict    the weights (latent FP32 weights for a binarized student)
    meta          {"stage", "step", "complete", "bitmaps_version", "teacher", "metrics", ...}
    train_state   only while resumable: optimizer, scheduler, RNG states, data position, configs

Writes are atomic (temp file + rename), so a crash mid-save never corrupts the previous checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from bitmaps import __version__
from bitmaps.core.atomic import atomic_output
from bitmaps.core.errors import BitmapsError

FORMAT = "bitmaps-checkpoint"
VERSION = 1
REQUIRED_KEYS = ("format", "version", "model_config", "model_class", "tokenizer", "state_dict")


def tokenizer_record(name: str, files: dict[str, str]) -> dict[str, Any]:
    """The ``tokenizer`` entry: the tokenizer's text files plus a content hash used as a cache key."""
    digest = hashlib.sha256()
    for fname in sorted(files):
        digest.update(fname.encode())
        digest.update(files[fname].encode())
    return {"name": name, "sha256": digest.hexdigest(), "files": dict(files)}


def save_checkpoint(
    path: str | os.PathLike,
    *,
    model: torch.nn.Module,
    tokenizer: dict[str, Any],
    binarize: dict[str, Any] | None = None,
    meta: dict[str, Any] | None = None,
    train_state: dict[str, Any] | None = None,
) -> Path:
    """Write a checkpoint atomically. ``model`` is a Hugging Face ``*ForMaskedLM``."""
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "model_config": model.config.to_json_string(use_diff=False),
        "model_class": type(model).__name__,
        "tokenizer": tokenizer,
        "binarize": dict(binarize or {}),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "meta": {"bitmaps_version": __version__, **(meta or {})},
    }
    if train_state is not None:
        payload["train_state"] = train_state
    with atomic_output(path) as tmp:
        torch.save(payload, tmp)
    return Path(path)


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load and validate a checkpoint; any problem is a one-line :class:`BitmapsError`."""
    path = Path(path)
    if not path.exists():
        raise BitmapsError(f"checkpoint {path} does not exist")
    if path.is_dir():
        raise BitmapsError(f"{path} is a folder, not a checkpoint file")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "GLOBAL" in str(exc):  # the weights-only unpickler met a class or function reference
            raise BitmapsError(
                f"{path} holds pickled objects that could run code; bitmaps only loads plain "
                "checkpoints written by `bitmaps train`"
            ) from None
        raise BitmapsError(f"{path} is not a readable checkpoint (truncated or corrupt?)") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as exc:
        raise BitmapsError(
            f"{path} is not a readable checkpoint (truncated or corrupt?): {_first_line(exc)}"
        ) from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise BitmapsError(
            f"{path} is not a bitmaps checkpoint (no format '{FORMAT}'); "
            "pass a file written by `bitmaps train`, or a Hugging Face model folder"
        )
    version = ckpt.get("version")
    if not isinstance(version, int) or version > VERSION:
        raise BitmapsError(
            f"{path} has checkpoint version {version}, newer than this bitmaps reads "
            f"({VERSION}); upgrade bitmaps"
        )
    missing = [k for k in REQUIRED_KEYS if k not in ckpt]
    if missing:
        raise BitmapsError(
            f"{path} is an incomplete bitmaps checkpoint: missing {', '.join(missing)}"
        )
    try:
        json.loads(ckpt["model_config"])
    except (TypeError, json.JSONDecodeError):
        raise BitmapsError(f"{path} has a corrupt model config") from None
    ckpt.setdefault("meta", {})
    ckpt.setdefault("binarize", {})
    return ckpt


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
