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
import os
import pickle
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from bitmaps import __version__
from bitmaps.core import jsontext
from bitmaps.core.atomic import ANY, atomic_output
from bitmaps.core.errors import BitmapsError, one_line

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


def tensors_digest(tensors: Mapping[str, torch.Tensor]) -> str:
    """sha256 of named tensors (names in sorted order, dtypes, shapes, bytes): what a resumed run
    checks the weights it starts from against (bitmaps.train.trainer), and what a cache file's
    tensors are checked against at load (bitmaps.data.corpus)."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())  # a view: no copy of the bytes
    return h.hexdigest()


def save_checkpoint(
    path: str | os.PathLike,
    *,
    model: torch.nn.Module,
    tokenizer: dict[str, Any],
    binarize: dict[str, Any] | None = None,
    meta: dict[str, Any] | None = None,
    train_state: dict[str, Any] | None = None,
    expect: object = ANY,
) -> Path:
    """Write a checkpoint atomically. ``model`` is a Hugging Face ``*ForMaskedLM``. ``expect``:
    what the output must still be when it is replaced (bitmaps.core.atomic.atomic_output)."""
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
    with atomic_output(path, expect=expect) as tmp:
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
        with warnings.catch_warnings():  # torch warns of pickle protocols before it refuses them
            warnings.simplefilter("ignore")
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
            f"{path} is not a readable checkpoint (truncated or corrupt?): {one_line(exc)}"
        ) from None
    except Exception as exc:  # noqa: BLE001 -- torch's legacy unpickler on arbitrary bytes
        # (a text file, random bytes) fails with whatever the bytes happen to trigger
        # (KeyError, IndexError, ...): all of them mean the same to the user.
        raise BitmapsError(
            f"{path} is not a readable checkpoint (not a file `bitmaps train` wrote?): "
            f"{type(exc).__name__}"
        ) from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise BitmapsError(
            f"{path} is not a bitmaps checkpoint (no format '{FORMAT}'); "
            "pass a file written by `bitmaps train`, or a Hugging Face model folder"
        )
    version = ckpt.get("version")
    if isinstance(version, int) and not isinstance(version, bool) and version > VERSION:
        raise BitmapsError(
            f"{path} has checkpoint version {version}, newer than this bitmaps reads "
            f"({VERSION}); upgrade bitmaps"
        )
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise BitmapsError(
            f"{path} has checkpoint version {version!r}, which no bitmaps writes (corrupt?); "
            "pass a file written by `bitmaps train`"
        )
    missing = [k for k in REQUIRED_KEYS if k not in ckpt]
    if missing:
        raise BitmapsError(
            f"{path} is an incomplete bitmaps checkpoint: missing {', '.join(missing)}"
        )
    ckpt.setdefault("meta", {})
    ckpt.setdefault("binarize", {})
    problem = _field_problem(ckpt)
    if problem:
        raise BitmapsError(
            f"{path} is a corrupt bitmaps checkpoint: {problem}; pass a file written by "
            "`bitmaps train`"
        )
    return ckpt


def _field_problem(ckpt: dict[str, Any]) -> str | None:
    """What is wrong with a checkpoint's fields (types, the config's JSON, the weights), or None."""
    try:
        config = jsontext.loads(ckpt["model_config"])
    except (TypeError, jsontext.JsonTextError):
        return "its model_config is not JSON text"
    if not isinstance(config, dict):
        return "its model_config is not a JSON object"
    if not isinstance(ckpt["model_class"], str):
        return "its model_class is not a name"
    tokenizer = ckpt["tokenizer"]
    files = tokenizer.get("files") if isinstance(tokenizer, dict) else None
    if not (
        isinstance(files, dict)
        and files
        and all(isinstance(k, str) and isinstance(v, str) for k, v in files.items())
        and isinstance(tokenizer.get("name", ""), str)
    ):
        return "its tokenizer is not a record of named text files"
    for key in ("binarize", "meta"):
        if not isinstance(ckpt[key], dict):
            return f"its {key} is not a dict"
    if "train_state" in ckpt and not isinstance(ckpt["train_state"], dict):
        return "its train_state is not a dict"
    state = ckpt["state_dict"]
    if not isinstance(state, dict) or not state:
        return "its state_dict is not a non-empty dict of tensors"
    for name, tensor in state.items():
        if not isinstance(name, str) or not isinstance(tensor, torch.Tensor):
            return f"its state_dict entry {name!r} is not a named tensor"
    bad = non_finite_weight(state)
    if bad is not None:
        return f"{bad} (did the training diverge? an earlier checkpoint may be sound)"
    return None


def non_finite_weight(state: dict[str, torch.Tensor]) -> str | None:
    """ "weight NAME holds NaN or infinite values" for the first such float tensor, else None (a
    checkpoint's weights and a model folder's are checked alike)."""
    for name, tensor in state.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            return f"weight {name} holds NaN or infinite values"
    return None
