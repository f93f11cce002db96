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
from bitmaps.core.atomic import atomic_output
from bitmaps.core.config import EngineBuildConfig, ExportConfig
from bitmaps.core.embeddings import STUDENT_EMBEDDING_GROUP, STUDENT_EMBEDDINGS
from bitmaps.data.assets import ASSET_MODELS, resolve_model
from bitmaps.export import pipeline
from bitmaps.export.embeddings import GRAPH_VERSION as EMBEDDING_GRAPH
from bitmaps.export.embeddings import PREFIX as EMBEDDING_CONSTANTS
from bitmaps.export.onnx_export import MASK_GRAPH, model_metadata
from bitmaps.export.onnx_graph import initializer_bytes
from bitmaps.export.targets import BINARY_FLOAT_OPS, WEIGHT_LAYOUTS
from bitmaps.runtime.backends import SHAPE_BINARIZE, ModelSource, load_mlm
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
        {"shape": source.shape, "seed": source.seed, "binarize": dataclasses.asdict(SHAPE_BINARIZE)}
        if source.shape
        else {"spec": _identity(source.spec(model))}
    )
    payload = {
        "source": what,
        "model": model,
        "bitmaps": __version__,
        "torch": torch.__version__,
        "mask_graph": MASK_GRAPH,
        **extra,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def _stem(source: ModelSource, model: str) -> str:
    name = source.shape or Path(source.spec(model)).name.split(".")[0]
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)


def _initializer_bytes(path: Path) -> int:

    return initializer_bytes(onnx.load(str(path)))


def _reusable(
    path: Path, expected: dict[str, str], log: Log, ops: tuple[str, ...] = ()
) -> onnx.ModelProto | None:
    """The cached export at ``path`` where it is one: a file that parses, whose ``bitmaps.*``
    metadata holds ``expected`` and whose graph has one of ``ops`` (when given); else None
    (logged when a file is there), so that it is made again. A work folder's files can be
    truncated by a full disk or replaced by hand (what is not checked: which checkpoint a
    well-formed export of the same kind was made from; its name carries that key)."""
    if not path.is_file():
        return None
    try:
        model = onnx.load(str(path))
    except Exception as exc:  # noqa: BLE001 -- protobuf's DecodeError and onnx's own errors
        log(f"{path} does not parse ({type(exc).__name__}): making it again")
        return None
    meta = model_metadata(model)
    wrong = sorted(k for k, v in expected.items() if meta.get(k) != v)
    if ops and not any(n.op_type in ops for n in model.graph.node):
        wrong.append(f"no {' or '.join(ops)} node")
    if wrong:
        log(f"{path} is not the export its name says ({', '.join(wrong)}): making it again")
        return None
    log(f"reusing {path}")
    return model


def onnx_artifact(
    source: ModelSource, model: str, dtype: str, output: str, workdir: Path, log: Log,
    target: str = "portable", attention: str = "float",
) -> Artifact:  # fmt: skip
    """The ONNX export of ``model`` (fp32/fp16 baseline or binary student) for ``target`` (the
    runtime it is for, bitmaps/export/targets.py), from cache or made. The student's embeddings
    as ``bitmaps export`` ships them; the baselines' unchanged. ``attention`` "int8": a binary
    fp32 student's onnxruntime export with ``--attention int8`` (ignored otherwise)."""
    emb = STUDENT_EMBEDDINGS if model == "binary" else "fp32"
    int8 = attention == "int8" and model == "binary" and target == "onnxruntime" and dtype == "fp32"
    cfg = ExportConfig(
        dtype=dtype, output=output, backends=("kernel",), embeddings=emb,
        embedding_group=STUDENT_EMBEDDING_GROUP, target=target,
        attention="int8" if int8 else "float",
    )  # fmt: skip
    key = cache_key(
        source, model, dtype=dtype, output=output, opset=cfg.opset, embeddings=emb,
        group=cfg.embedding_group, target=target,
        **({"weights": WEIGHT_LAYOUTS[target], "float_ops": BINARY_FLOAT_OPS[target],
            "embedding_graph": EMBEDDING_GRAPH} if model == "binary" else {}),
        **({"attention": "int8"} if int8 else {}),
    )  # fmt: skip
    name = f"{_stem(source, model)}-{model}-{dtype}-{output}-{target}-{key[:12]}.onnx"
    path = workdir / name
    kind = "binary" if model == "binary" else "baseline"
    expected = {"kind": kind, "dtype": dtype, "output": output, "target": target}
    cached = _reusable(path, {**expected, "attention": cfg.attention}, log)
    if cached is None:
        _export(source, model, path, cfg, log)
        return Artifact(path, _initializer_bytes(path), path.stat().st_size)
    return Artifact(path, initializer_bytes(cached), path.stat().st_size)


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


def onnx_weights_by_part(path: Path) -> dict[str, int]:
    """Initializer bytes of an ONNX file by part, read from the graph: ``embeddings`` (tables a
    ``Gather`` reads, directly or through one dequantizing node), ``head`` (initializers read only
    by nodes downstream of the encoder's last LayerNorm: with a ``logits`` output, the head
    transform has the graph's last LayerNorm and the encoder the one before), ``encoder`` (the
    rest). Not by initializer names: the exporter merges equal initializers (fresh LayerNorms)."""
    graph = onnx.load(str(path)).graph
    inits = {t.name: t for t in graph.initializer}
    producers = {o: n for n in graph.node for o in n.output}
    tables: set[str] = set()
    for node in graph.node:
        if node.op_type in ("Gather", "GatherBlockQuantized"):
            src = producers.get(node.input[0])
            feeds = [node.input[0], *(src.input if src is not None else ())]
            tables.update(i for i in feeds if i in inits)
            tables.update(i for i in node.input[2:] if i in inits)  # scales of a quantized gather
    norms = [n for n in graph.node if n.op_type == "LayerNormalization"]
    has_head = [o.name for o in graph.output] == ["logits"] and len(norms) >= 2
    after = set(norms[-2].output) if has_head else set()  # then everything it feeds
    head_nodes = set()
    for i, node in enumerate(graph.node):  # graph order is topological (ONNX requires it)
        if any(x in after for x in node.input):
            head_nodes.add(i)
            after.update(node.output)
    users: dict[str, set[int]] = {}
    for i, node in enumerate(graph.node):
        for x in node.input:
            users.setdefault(x, set()).add(i)
    parts = {"encoder": 0, "embeddings": 0, "head": 0}
    for name, t in inits.items():
        size = len(t.raw_data) if t.HasField("raw_data") else onnx.numpy_helper.to_array(t).nbytes
        used = users.get(name, set())
        part = (
            "embeddings" if name in tables or name.startswith(f"{EMBEDDING_CONSTANTS}/")
            else "head" if used and used <= head_nodes
            else "encoder"
        )  # fmt: skip
        parts[part] += size
    return {**parts, "total": sum(parts.values())}


# What quantize_dynamic's QInt8 graphs compute with (MatMul → DynamicQuantizeLinear + MatMulInteger,
# or the fused DynamicQuantizeMatMul)
INT8_OPS = ("MatMulInteger", "DynamicQuantizeMatMul", "DynamicQuantizeLinear")


def int8_artifact(fp32: Artifact, log: Log) -> Artifact:
    """ONNX Runtime's dynamic INT8 quantization (``quantize_dynamic``, QInt8 weights, its default
    op types) of the FP32 baseline export: what a CPU user picks instead of a 1-bit model."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    path = fp32.path.with_name(fp32.path.stem.replace("-fp32-fp32-", "-int8-fp32-") + "-int8.onnx")
    # the metadata of its source, and quantize_dynamic's ops (an FP32 file under this name is not
    # it)
    cached = _reusable(path, {"kind": "baseline", "dtype": "fp32"}, log, INT8_OPS)
    if cached is not None:
        return Artifact(path, initializer_bytes(cached), path.stat().st_size)
    with atomic_output(path) as tmp:
        quantize_dynamic(str(fp32.path), str(tmp), weight_type=QuantType.QInt8)
    log(f"wrote {path} (quantize_dynamic of {fp32.path.name})")
    return Artifact(path, _initializer_bytes(path), path.stat().st_size)


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


def floor_onnx(path: Path) -> Path:
    """Write the one-op ONNX model of a floor job (bitmaps.runtime.measure.FLOOR: input_ids cast
    to float) to ``path``."""
    ids = onnx.helper.make_tensor_value_info(
        "input_ids", onnx.TensorProto.INT64, ["batch", "sequence"]
    )
    out = onnx.helper.make_tensor_value_info("out", onnx.TensorProto.FLOAT, ["batch", "sequence"])
    node = onnx.helper.make_node("Cast", ["input_ids"], ["out"], to=onnx.TensorProto.FLOAT)
    graph = onnx.helper.make_graph([node], "floor", [ids], [out])
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, path)
    return path
