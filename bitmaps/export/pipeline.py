"""``bitmaps export`` and ``bitmaps export-baseline``: load, export, check, verify, then write.

Order matters: the output path is checked first (before minutes of work), the model is exported
in memory, then checked (onnx.checker with ``full_check``, node count, attributes, for FP16 the
float32 audit), then verified in ONNX Runtime against PyTorch (bitmaps/export/verify.py). Only a
model that passed everything is written, atomically (temp file + rename). Any refusal is a
:class:`~bitmaps.core.errors.BitmapsError`: one line, exit code 2, no file.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path

import onnx
from torch import nn

from bitmaps.core.atomic import atomic_output, check_writable
from bitmaps.core.config import ExportConfig
from bitmaps.core.errors import BitmapsError
from bitmaps.core.packed import PackedBinaryLinear
from bitmaps.data.assets import ASSET_MODELS
from bitmaps.export.onnx_export import ExportWrapper, finish_model, prepare_model, to_onnx
from bitmaps.export.onnx_function import (
    ATTRIBUTES,
    PLUGIN_NAMESPACE,
    PLUGIN_VERSION,
    binary_linear_nodes,
    node_attributes,
)
from bitmaps.export.onnx_graph import (
    float32_on_compute_path,
    fp32_parameter_bytes,
    packed_bytes,
)
from bitmaps.export.verify import (
    ExportVerificationError,
    VerificationReport,
    verification_batches,
    verify_onnx,
)
from bitmaps.train.models import SHAPE_NAMES, load_model

Log = Callable[[str], None]
MB = 1e6


@dataclasses.dataclass
class ExportSummary:
    path: Path
    binary: bool
    dtype: str
    binary_linear_nodes: int
    packed_bytes: int
    file_bytes: int
    fp32_baseline_bytes: int  # computed: parameter bytes of the FP32 architecture
    verification: VerificationReport

    def line(self) -> str:
        size = f"file {self.file_bytes / MB:.2f} MB"
        base = f"FP32 baseline {self.fp32_baseline_bytes / MB:.2f} MB (parameter bytes)"
        ratio = self.fp32_baseline_bytes / max(self.file_bytes, 1)
        if not self.binary:
            return f"wrote {self.path}: full-precision {self.dtype} baseline, {size} ({base})"
        return (
            f"wrote {self.path}: {self.binary_linear_nodes} bitmaps::BinaryLinear nodes, packed "
            f"weights {self.packed_bytes / MB:.2f} MB, {size} ({self.dtype}) vs {base}: "
            f"{ratio:.1f}x smaller"
        )


def _nothing(_: str) -> None:
    pass


def _load_student(spec: str | os.PathLike):  # noqa: ANN202

    text, path = str(spec), Path(spec)
    baseline_hint = (
        "`bitmaps export` takes a binarized student checkpoint (from `bitmaps train --stage "
        f"student`); export a full-precision model with `bitmaps export-baseline {text} OUT.onnx`"
    )
    if not path.exists():
        if text in (*ASSET_MODELS, *SHAPE_NAMES):
            raise BitmapsError(f"{text} is a full-precision model: {baseline_hint}")
        raise BitmapsError(f"student checkpoint {text} does not exist")
    if path.is_dir():
        raise BitmapsError(f"{text} is a model folder (full precision): {baseline_hint}")
    loaded = load_model(path)
    if not loaded.is_binary:
        raise BitmapsError(f"{text} is a full-precision checkpoint: {baseline_hint}")
    return loaded


def _check_structure(model: onnx.ModelProto, wrapper: ExportWrapper, cfg: ExportConfig) -> None:
    """Node count, attributes, no leftover float weights; the FP16 audit. Bugs, not user errors."""

    packed = {n: m for n, m in wrapper.model.named_modules() if isinstance(m, PackedBinaryLinear)}
    nodes = binary_linear_nodes(model)
    if sorted(n.name for n in nodes) != sorted(packed):
        raise ExportVerificationError(
            f"export produced {len(nodes)} bitmaps::BinaryLinear nodes for {len(packed)} binary "
            "layers; refusing to write"
        )
    floats = {t.name for t in model.graph.initializer if t.data_type in _FLOAT_TYPES}
    for node in nodes:
        attrs, m = node_attributes(node), packed[node.name]
        expected = {
            "in_features": m.in_features,
            "out_features": m.out_features,
            "plugin_version": PLUGIN_VERSION,
            "plugin_namespace": PLUGIN_NAMESPACE,
        }
        wrong = [k for k, v in expected.items() if attrs.get(k) != v]
        if sorted(attrs) != sorted(ATTRIBUTES) or wrong:
            raise ExportVerificationError(f"{node.name}: wrong attributes {attrs}")
        leftovers = [f for f in floats if f.removeprefix("model.").startswith(f"{node.name}.")]
        leftovers = [f for f in leftovers if f not in node.input]
        if leftovers:
            raise ExportVerificationError(f"{node.name}: float weights left: {leftovers}")
    if cfg.dtype == "fp16":
        found = float32_on_compute_path(model)
        if found:
            raise ExportVerificationError(
                f"the FP16 export has {len(found)} float32 tensor(s) on the compute path, "
                f"e.g. {found[0]}"
            )


_FLOAT_TYPES = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE)


def _export_checked(
    wrapper: ExportWrapper, cfg: ExportConfig, *, binary: bool, source: str, log: Log
) -> onnx.ModelProto:
    log(f"exporting {source} ({cfg.dtype}, opset {cfg.opset}, output {cfg.output}) ...")
    model = finish_model(
        to_onnx(wrapper, cfg.opset), binary=binary, dtype=cfg.dtype, output=cfg.output,
        source=Path(source).name,
    )  # fmt: skip
    try:
        onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise ExportVerificationError(f"onnx.checker rejects the export: {exc}") from None
    _check_structure(model, wrapper, cfg)
    return model


@dataclasses.dataclass
class ExportResult:
    """An exported, checked and verified model, in memory."""

    model: onnx.ModelProto
    wrapper: ExportWrapper  # the PyTorch model it was verified against (packed, eval, dtype)
    report: VerificationReport


def export_verified(
    model: nn.Module, cfg: ExportConfig, *, binary: bool, tokenizer: object | None = None,
    source: str = "model", log: Log = _nothing,
) -> ExportResult:  # fmt: skip
    """Export ``model`` (a ``*ForMaskedLM``; changed in place: packed, eval, dtype), check it and
    verify it in ONNX Runtime; :class:`ExportVerificationError` if anything disagrees.

    ``binary``: the model holds BinaryLinear layers (a student; verified on ``cfg.backends``);
    else a full-precision baseline (verified on plain onnxruntime). ``tokenizer`` adds real
    sentences to the random verification inputs.
    """
    wrapper = prepare_model(model, cfg.dtype, cfg.output)  # refuses a non-W1A1 student
    proto = _export_checked(wrapper, cfg, binary=binary, source=source, log=log)
    if binary and not binary_linear_nodes(proto):
        raise BitmapsError(f"{source} has no binary layers to export")
    if not binary and binary_linear_nodes(proto):
        raise BitmapsError(f"{source} is binarized; export it as a binary model")
    backends = cfg.backends if binary else ("function",)
    return ExportResult(proto, wrapper, _verify(proto, wrapper, tokenizer, cfg, backends, log))


def write_onnx(model: onnx.ModelProto, out: str | os.PathLike) -> int:
    """Write atomically (temp file + rename); returns the file size in bytes."""
    out = Path(out)
    with atomic_output(out) as tmp:
        onnx.save(model, str(tmp))
    return out.stat().st_size


def export_student(
    checkpoint: str | os.PathLike, out: str | os.PathLike, cfg: ExportConfig, log: Log = _nothing
) -> ExportSummary:
    """Export a binarized student checkpoint with ``bitmaps::BinaryLinear`` nodes (see module)."""
    out = check_writable(out)
    loaded = _load_student(checkpoint)
    config = loaded.model.config
    result = export_verified(
        loaded.model, cfg, binary=True, tokenizer=loaded.tokenizer, source=str(checkpoint), log=log
    )
    return ExportSummary(
        out, True, cfg.dtype, len(binary_linear_nodes(result.model)), packed_bytes(result.model),
        write_onnx(result.model, out), fp32_parameter_bytes(config), result.report,
    )  # fmt: skip


def export_baseline(
    spec: str | os.PathLike, out: str | os.PathLike, cfg: ExportConfig, log: Log = _nothing
) -> ExportSummary:
    """Export a full-precision model (checkpoint, folder, asset or ``bert-base``) unchanged."""

    out = check_writable(out)
    loaded = load_model(spec, require_tokenizer=False)
    if loaded.is_binary:
        raise BitmapsError(
            f"{spec} is a binarized student; export it with `bitmaps export {spec} OUT.onnx`"
        )
    config = loaded.model.config
    result = export_verified(
        loaded.model, cfg, binary=False, tokenizer=loaded.tokenizer, source=str(spec), log=log
    )
    return ExportSummary(
        out, False, cfg.dtype, 0, 0, write_onnx(result.model, out), fp32_parameter_bytes(config),
        result.report,
    )  # fmt: skip


def _verify(
    model: onnx.ModelProto, wrapper: ExportWrapper, tokenizer: object | None, cfg: ExportConfig,
    backends: tuple[str, ...], log: Log,
) -> VerificationReport:  # fmt: skip
    batches = verification_batches(wrapper.model.config.vocab_size, tokenizer)
    log(f"verifying in ONNX Runtime ({', '.join(backends)}) against PyTorch ...")
    report = verify_onnx(model, wrapper, batches, cfg.effective_tolerance(), backends)
    if not report.ok:
        raise ExportVerificationError(f"refusing to write the model: {report.failure()}")
    log(report.summary())
    return report
