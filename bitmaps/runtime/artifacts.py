"""The files ``bitmaps profile`` runs: ONNX exports and TensorRT engines, cached in a work folder.

Each file's name carries a key: a hash of what it was made from (the shape and seed, or each
source file's path, size and modification time), the model, dtype, output, opset, and the bitmaps,
torch and (for engines) TensorRT versions. A file whose key matches is reused, so the second run of
``make demo`` skips every export; a retrained checkpoint gets a new key and a new file. Exports
go through bitmaps.export.pipeline (checked and verified in ONNX Runtime before they are
written, atomically).

``--shape bert-base`` binary: ``export_student`` takes a student *checkpoint*, which carries a
tokenizer that a bare shape does not have, so that one export goes through ``export_verified`` +
``write_onnx`` on the in-memory student instead.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import onnx
import torch

from bitmaps import __version__
from bitmaps.core.config import EngineBuildConfig, ExportConfig
from bitmaps.data.assets import ASSET_MODELS, resolve_model
from bitmaps.export import pipeline
from bitmaps.export.onnx_graph import initializer_bytes
from bitmaps.runtime.backends import ModelSource, load_mlm
from bitmaps.runtime.onnxruntime import save_kernel_model
from bitmaps.runtime.tensorrt import build_engine, import_tensorrt

Log = Callable[[str], None]


@dataclasses.dataclass(frozen=True)
class Artifact:
    path: Path
    weights_bytes: int  # bytes of the model's initializers (what the runtime holds as weights)
    file_bytes: int


def _identity(spec: str) -> dict[str, object]:
    """What a model spec stands for, for cache keys: files by path, size and mtime."""
    path = Path(spec)
    if not path.exists():
        if spec not in ASSET_MODELS:
            return {"name": spec}
        path = resolve_model(spec)
    files = sorted(path.rglob("*")) if path.is_dir() else [path]
    return {
        "path": str(path.resolve()),
        "files": [
            (
                str(f.relative_to(path)) if path.is_dir() else f.name,
                f.stat().st_size,
                f.stat().st_mtime_ns,
            )
            for f in files
            if f.is_file()
        ],
    }


def cache_key(source: ModelSource, model: str, **extra: object) -> str:
    what = (
        {"shape": source.shape, "seed": source.seed}
        if source.shape
        else {"spec": _identity(source.spec(model))}
    )
    payload = {
        "source": what,
        "model": model,
        "bitmaps": __version__,
        "torch": torch.__version__,
        **extra,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def _stem(source: ModelSource, model: str) -> str:
    name = source.shape or Path(source.spec(model)).name.split(".")[0]
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)


def _initializer_bytes(path: Path) -> int:

    return initializer_bytes(onnx.load(str(path)))


def onnx_artifact(
    source: ModelSource, model: str, dtype: str, output: str, workdir: Path, log: Log
) -> Artifact:
    """The ONNX export of ``model`` (fp32/fp16 baseline or binary student), from cache or made."""
    cfg = ExportConfig(dtype=dtype, output=output, backends=("kernel",))
    key = cache_key(source, model, dtype=dtype, output=output, opset=cfg.opset)
    path = workdir / f"{_stem(source, model)}-{model}-{dtype}-{output}-{key[:12]}.onnx"
    if path.is_file():
        log(f"reusing {path}")
    else:
        _export(source, model, path, cfg, log)
    return Artifact(path, _initializer_bytes(path), path.stat().st_size)


def _export(source: ModelSource, model: str, path: Path, cfg: ExportConfig, log: Log) -> None:

    if model != "binary":
        torch.manual_seed(source.seed)  # a shape's random weights: the same as the torch rows'
        summary = pipeline.export_baseline(source.spec(model), path, cfg, log=log)
    elif not source.shape:
        summary = pipeline.export_student(source.spec(model), path, cfg, log=log)
    else:
        result = pipeline.export_verified(
            load_mlm(source, "binary"), cfg, binary=True, source=source.shape, log=log
        )
        pipeline.write_onnx(result.model, path)
        log(f"wrote {path}")
        return
    log(summary.line())


def kernel_artifact(onnx: Artifact, log: Log) -> Artifact:
    """``onnx`` rewritten for the kernel session (``kernel_model``), saved beside it.

    The worker opens this file by path (``kernel_session(..., prepared=True)``); weights and
    file size stay those of the exported model, which is what a user ships.
    """

    path = onnx.path.with_suffix(".kernel.onnx")
    if not path.is_file():
        save_kernel_model(onnx.path, path)
        log(f"wrote {path} (for ONNX Runtime with the bitmaps kernel)")
    return dataclasses.replace(onnx, path=path)


def engine_artifact(
    onnx: Artifact, fp16: bool, shapes: list[tuple[int, int]], workdir: Path, log: Log
) -> Artifact:
    """A TensorRT engine for ``onnx`` whose profile covers ``shapes``, from cache or built."""

    trt = import_tensorrt()
    lo = (min(b for b, _ in shapes), min(s for _, s in shapes))
    hi = (max(b for b, _ in shapes), max(s for _, s in shapes))
    cfg = EngineBuildConfig(
        fp16=fp16,
        min_shape=f"{lo[0]}x{lo[1]}",
        opt_shape=f"{hi[0]}x{hi[1]}",
        max_shape=f"{hi[0]}x{hi[1]}",
    )
    device = torch.cuda.get_device_name()
    key = hashlib.sha256(
        json.dumps([onnx.path.name, cfg.to_dict(), str(trt.__version__), device]).encode()
    ).hexdigest()
    path = workdir / f"{onnx.path.stem}-{key[:12]}.engine"
    if path.is_file():
        log(f"reusing {path}")
    else:
        report = build_engine(onnx.path, path, cfg, echo=log)
        log(f"built {path} ({report.plugin_layers}/{report.binary_linear_nodes} on the plugin)")
    return Artifact(path, onnx.weights_bytes, path.stat().st_size)
