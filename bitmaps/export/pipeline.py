"""``bitmaps export`` and ``bitmaps export-baseline``: a short pipeline of passes, read top to bottom.

    check the output path → load → pack → trace → rewrite → embeddings → target → check → verify
    → write

The output path is checked first (before minutes of work). The model is packed (BinaryLinear →
PackedBinaryLinear, eager attention, dtype), traced by ``torch.onnx.export(dynamo=True)`` into an
``onnx_ir`` model, rewritten (node names, private initializers, no stack traces), given the
embeddings pass and its target's passes (bitmaps/export/targets.py: the model-local function,
fused attention for ONNX Runtime, TensorRT-only ops), annotated (``bitmaps.*`` metadata_props:
kind, target, dtype, bitmaps version, ...), then checked (onnx.checker with ``full_check``, node
count, attributes, the FP16 audit, the target's own rules) and verified in ONNX Runtime against
PyTorch (bitmaps/export/verify.py). Only a model that passed everything is written, atomically
(temp file + rename). Any refusal is a :class:`~bitmaps.core.errors.BitmapsError`: one line, exit
code 2, no file.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path

import onnx
import onnx_ir as ir
from torch import nn

from bitmaps import __version__
from bitmaps.core.atomic import atomic_output, check_not_input, check_writable
from bitmaps.core.config import ExportConfig
from bitmaps.core.errors import BitmapsError
from bitmaps.core.packed import PackedBinaryLinear
from bitmaps.data.assets import ASSET_MODELS
from bitmaps.export import targets
from bitmaps.export.embeddings import embeddings_pass
from bitmaps.export.onnx_export import (
    ExportWrapper,
    annotate,
    binary_linears,
    name_binary_linears,
    prepare_model,
    retie_folded_transposes,
    strip_node_metadata,
    to_onnx,
)
from bitmaps.export.onnx_function import (
    ATTRIBUTE_DEFAULTS,
    ATTRIBUTES,
    PLUGIN_NAMESPACE,
    PLUGIN_VERSION,
    binary_ffn_nodes,
    binary_layer_nodes,
    binary_linear_nodes,
    node_attributes,
    node_layers,
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
from bitmaps.train.attention import attention_precision
from bitmaps.train.models import SHAPE_NAMES, load_model

Log = Callable[[str], None]
MB = 1e6


@dataclasses.dataclass
class ExportSummary:
    path: Path
    binary: bool
    dtype: str
    binary_layers: int  # held by its bitmaps::BinaryLinear / BinaryFeedForward nodes
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
            f"wrote {self.path}: {self.binary_layers} binary layers (bitmaps::BinaryLinear / "
            f"BinaryFeedForward nodes), packed "
            f"weights {self.packed_bytes / MB:.2f} MB, {size} ({self.dtype}) vs {base}: "
            f"{ratio:.1f}x smaller"
        )


def _nothing(_: str) -> None:
    pass


@dataclasses.dataclass
class ExportResult:
    """An exported, checked and verified model, in memory."""

    model: onnx.ModelProto
    wrapper: ExportWrapper  # the PyTorch model it was verified against (packed, eval, dtype)
    report: VerificationReport


# --------------------------------------------------------------------------- the two commands


def export_student(
    checkpoint: str | os.PathLike, out: str | os.PathLike, cfg: ExportConfig, log: Log = _nothing
) -> ExportSummary:
    """Export a binarized student checkpoint with ``bitmaps::BinaryLinear`` nodes (see module)."""
    out = check_writable(out)
    check_not_input(out, checkpoint, "checkpoint to export")
    loaded = load_student(checkpoint)
    result = export_verified(
        loaded.model, cfg, binary=True, tokenizer=loaded.tokenizer, source=str(checkpoint), log=log
    )
    return ExportSummary(
        out, True, cfg.dtype, sum(len(node_layers(n)) for n in binary_layer_nodes(result.model)),
        packed_bytes(result.model),
        write_onnx(result.model, out), fp32_parameter_bytes(loaded.model.config), result.report,
    )  # fmt: skip


def export_baseline(
    spec: str | os.PathLike, out: str | os.PathLike, cfg: ExportConfig, log: Log = _nothing
) -> ExportSummary:
    """Export a full-precision model (checkpoint, folder, asset or ``bert-base``) unchanged."""
    if cfg.attention != "float":
        raise BitmapsError(
            f"attention {cfg.attention} is for binary students; a baseline keeps ONNX Runtime's "
            "float attention"
        )
    out = check_writable(out)
    check_not_input(out, spec, "model to export")
    loaded = load_baseline(spec)
    if cfg.output == "logits":
        loaded.trained_head("exporting its logits (--output hidden exports the encoder alone)")
    result = export_verified(
        loaded.model, cfg, binary=False, tokenizer=loaded.tokenizer, source=str(spec), log=log
    )
    return ExportSummary(
        out, False, cfg.dtype, 0, 0, write_onnx(result.model, out),
        fp32_parameter_bytes(loaded.model.config), result.report,
    )  # fmt: skip


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
    wrapper = pack(model, cfg)
    traced = trace(wrapper, cfg, source, log)
    rewrite(traced, binary=binary, source=source)
    traced = embeddings(traced, wrapper, cfg)
    target(traced, cfg, wrapper, binary=binary)
    positions = int(wrapper.model.config.max_position_embeddings)
    annotate(traced, metadata(traced, cfg, binary=binary, source=source, max_sequence=positions))
    proto = check(traced, wrapper, cfg)
    report = verify(proto, wrapper, tokenizer, cfg, binary=binary, log=log)
    return ExportResult(proto, wrapper, report)


# --------------------------------------------------------------------------- load


def load_student(spec: str | os.PathLike):  # noqa: ANN201
    """A binarized student checkpoint; a full-precision model is refused with a pointer."""
    text, path = str(spec), Path(spec)
    baseline_hint = (
        "`bitmaps export` takes a binarized student checkpoint (from `bitmaps train --stage "
        f"student`); export a full-precision model with `bitmaps export-baseline {text} OUT.onnx`"
    )
    if not text.strip():
        raise BitmapsError("no student checkpoint given (an empty path)")
    if not path.exists():
        if text in (*ASSET_MODELS, *SHAPE_NAMES):
            raise BitmapsError(f"{text} is a full-precision model: {baseline_hint}")
        raise BitmapsError(f"student checkpoint {text} does not exist")
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise BitmapsError(
                f"{text} is a folder, not a student checkpoint (a file from `bitmaps train "
                "--stage student`)"
            )
        raise BitmapsError(f"{text} is a model folder (full precision): {baseline_hint}")
    loaded = load_model(path)
    if not loaded.is_binary:
        raise BitmapsError(f"{text} is a full-precision checkpoint: {baseline_hint}")
    return loaded


def load_baseline(spec: str | os.PathLike):  # noqa: ANN201
    """A full-precision model (checkpoint, folder, asset or shape); a student is refused."""
    loaded = load_model(spec, require_tokenizer=False)
    if loaded.is_binary:
        raise BitmapsError(
            f"{spec} is a binarized student; export it with `bitmaps export {spec} OUT.onnx`"
        )
    return loaded


# --------------------------------------------------------------------------- pack, trace, rewrite


def pack(model: nn.Module, cfg: ExportConfig) -> ExportWrapper:
    """BinaryLinear → PackedBinaryLinear, eager attention, eval, dtype; refuses a non-W1A1 student."""
    return prepare_model(model, cfg.dtype, cfg.output)


def trace(wrapper: ExportWrapper, cfg: ExportConfig, source: str, log: Log) -> ir.Model:
    log(
        f"exporting {source} ({cfg.dtype}, opset {cfg.opset}, output {cfg.output}, "
        f"target {cfg.target}) ..."
    )
    return to_onnx(wrapper, cfg.opset)


def rewrite(model: ir.Model, *, binary: bool, source: str) -> None:
    """Name BinaryLinear nodes after their modules, private initializers, a tied table's folded
    transpose retied, no stack traces."""
    found = bool(binary_linears(model))
    if binary and not found:
        raise BitmapsError(f"{source} has no binary layers to export")
    if not binary and found:
        raise BitmapsError(f"{source} is binarized; export it as a binary model")
    name_binary_linears(model)
    retie_folded_transposes(model)
    strip_node_metadata(model)


def embeddings(model: ir.Model, wrapper: ExportWrapper, cfg: ExportConfig) -> ir.Model:
    """The embeddings pass (``--embeddings``, bitmaps/export/embeddings.py): the embedding tables
    and the tied decoder in FP16/INT8/INT4, in the graph and in the PyTorch model it is verified
    against. Before the target's passes, so the target's rules see its ops. That pass edits a
    ModelProto, hence the round trip."""
    if cfg.embeddings == "fp32":
        return model
    proto = ir.to_proto(model)
    # the target's forms: onnxruntime's contrib ops (MatMulNBits, GatherBlockQuantized), tensorrt's
    # casts
    embeddings_pass(proto, wrapper.model, cfg.embeddings, cfg.embedding_group, cfg.target)
    return ir.from_proto(proto)


# --------------------------------------------------------------------------- target


def target(model: ir.Model, cfg: ExportConfig, wrapper: ExportWrapper, *, binary: bool) -> None:
    """The target's passes (bitmaps/export/targets.py). A baseline gets no BinaryLinear function."""
    heads = int(wrapper.model.config.num_attention_heads)
    if binary:
        targets.PASSES[cfg.target](model, heads)
    elif cfg.target == "onnxruntime":
        targets.fuse_attention(model, heads)
    if cfg.attention == "int8" and not targets.int8_attention(model):
        raise BitmapsError(
            "attention int8 applies to a binary student's bitmaps attention nodes; this model has "
            "none (a baseline keeps ONNX Runtime's com.microsoft attention)"
        )


def metadata(
    model: ir.Model, cfg: ExportConfig, *, binary: bool, source: str, max_sequence: int
) -> dict[str, str]:
    """The ``bitmaps.*`` metadata; ``max_sequence``: the model's position table, the longest
    sequence it takes (`bitmaps build-engine` checks its shapes against it)."""
    return {
        "kind": "binary" if binary else "baseline",
        "target": cfg.target,
        "dtype": cfg.dtype,
        "output": cfg.output,
        "opset": str(cfg.opset),
        "version": __version__,
        "source": Path(source).name,
        "binary_linear_nodes": str(len(binary_linears(model))),
        "attention": cfg.attention,
        "max_sequence": str(max_sequence),
    }


# --------------------------------------------------------------------------- check


_FLOAT_TYPES = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE)


def check(model: ir.Model, wrapper: ExportWrapper, cfg: ExportConfig) -> onnx.ModelProto:
    """onnx.checker, structure, the FP16 audit, the target's rules; returns the ModelProto."""
    _check_target(model, wrapper, cfg)
    proto = ir.to_proto(model)
    proto.ir_version = oldest_ir_version(proto)
    try:
        onnx.checker.check_model(proto, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise ExportVerificationError(f"onnx.checker rejects the export: {exc}") from None
    _check_structure(proto, wrapper, cfg)
    return proto


def oldest_ir_version(proto: onnx.ModelProto) -> int:
    """The oldest IR version that holds ``proto``'s default-domain opset (9 for opsets up to 20),
    so that older runtimes load the file too (ONNX Runtime 1.17 reads IR 9 at most); never
    newer than what it has. The exports use nothing of IR 10 (int4 tables are stored as uint8)."""
    opset = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    oldest = onnx.helper.find_min_ir_version_for([onnx.helper.make_opsetid("", opset)])
    return min(proto.ir_version, oldest)


def _check_target(model: ir.Model, wrapper: ExportWrapper, cfg: ExportConfig) -> None:
    if cfg.target == "tensorrt":
        outside = targets.ops_outside_tensorrt(model)
        if outside:
            raise BitmapsError(
                f"the tensorrt target cannot hold {', '.join(outside)}: the ONNX-TensorRT parser "
                "does not support it"
            )
    if cfg.target == "onnxruntime":
        layers = int(wrapper.model.config.num_hidden_layers)
        fused = len(targets.multi_head_attention_nodes(model))
        if fused != layers:
            raise ExportVerificationError(
                f"the onnxruntime target fused {fused} of {layers} attention blocks; "
                "refusing to write"
            )


def _check_structure(model: onnx.ModelProto, wrapper: ExportWrapper, cfg: ExportConfig) -> None:
    """Node count, attributes, no leftover float weights; the FP16 audit. Bugs, not user errors."""

    packed = {n: m for n, m in wrapper.model.named_modules() if isinstance(m, PackedBinaryLinear)}
    nodes, ffns = binary_linear_nodes(model), binary_ffn_nodes(model)
    # stacked Q, K, V: three layers; a BinaryFeedForward node: two
    layers = [layer for n in (*nodes, *ffns) for layer in node_layers(n)]
    if sorted(layers) != sorted(packed):
        raise ExportVerificationError(
            f"export produced bitmaps::BinaryLinear nodes for {len(layers)} layers, the model has "
            f"{len(packed)} binary layers; refusing to write"
        )
    floats = {t.name for t in model.graph.initializer if t.data_type in _FLOAT_TYPES}
    for node in nodes:
        parts = [packed[layer] for layer in node_layers(node)]
        attrs, m = node_attributes(node), parts[0]
        same = ("in_features", "act_threshold", "act_scale", "act_unsigned")
        if any(getattr(p, a) != getattr(m, a) for p in parts for a in same):
            raise ExportVerificationError(f"{node.name}: stacks layers that binarize differently")
        expected = {
            "in_features": m.in_features,
            "out_features": sum(p.out_features for p in parts),
            "plugin_version": PLUGIN_VERSION,
            "plugin_namespace": PLUGIN_NAMESPACE,
        }
        if m.act_unsigned:
            expected["act_unsigned"] = 1
        names = [a for a in ATTRIBUTES if a in expected or a not in ATTRIBUTE_DEFAULTS]
        if cfg.target == "onnxruntime" and "activation" in attrs:  # a fused Gelu (fuse_gelu)
            expected["activation"] = 1
            names.append("activation")
        wrong = [k for k, v in expected.items() if attrs.get(k) != v]
        if sorted(attrs) != sorted(names) or wrong:
            raise ExportVerificationError(f"{node.name}: wrong attributes {attrs}")
        leftovers = [f for f in floats for layer in node_layers(node)
                     if f.removeprefix("model.").startswith(f"{layer}.")]  # fmt: skip
        leftovers = [f for f in leftovers if f not in node.input]
        if leftovers:
            raise ExportVerificationError(f"{node.name}: float weights left: {leftovers}")
    for node in ffns:
        _check_ffn_node(node, packed, floats)
    if cfg.dtype == "fp16":
        found = float32_on_compute_path(model)
        if found:
            raise ExportVerificationError(
                f"the FP16 export has {len(found)} float32 tensor(s) on the compute path, "
                f"e.g. {found[0]}"
            )


def _check_ffn_node(node: onnx.NodeProto, packed: dict, floats: set[str]) -> None:
    """A BinaryFeedForward node's attributes against its two layers; no float weights left."""
    first, second = (packed[layer] for layer in node_layers(node))
    attrs = node_attributes(node)
    expected = {
        "in_features": first.in_features,
        "hidden_features": first.out_features,
        "out_features": second.out_features,
        "act_threshold": first.act_threshold,
        "act_scale": first.act_scale,
        "act_unsigned": first.act_unsigned,
        "activation": attrs.get("activation") if attrs.get("activation") in (0, 1) else -1,
        "hidden_act_threshold": second.act_threshold,
        "hidden_act_scale": second.act_scale,
        "hidden_act_unsigned": second.act_unsigned,
    }
    wrong = [k for k, v in expected.items() if attrs.get(k) != v]
    if sorted(attrs) != sorted(expected) or wrong or second.in_features != first.out_features:
        raise ExportVerificationError(f"{node.name}: wrong attributes {attrs}")
    leftovers = [f for f in floats for layer in node_layers(node)
                 if f.removeprefix("model.").startswith(f"{layer}.") and f not in node.input]  # fmt: skip
    if leftovers:
        raise ExportVerificationError(f"{node.name}: float weights left: {leftovers}")


# --------------------------------------------------------------------------- verify, write


def verify(
    model: onnx.ModelProto, wrapper: ExportWrapper, tokenizer: object | None, cfg: ExportConfig,
    *, binary: bool, log: Log,
) -> VerificationReport:  # fmt: skip
    """ONNX Runtime against PyTorch (bitmaps/export/verify.py); refuses on any drift."""
    backends = cfg.backends if binary else ("function",)
    batches = verification_batches(wrapper.model.config.vocab_size, tokenizer)
    log(f"verifying in ONNX Runtime ({', '.join(backends)}) against PyTorch ...")
    with attention_precision(cfg.attention):  # int8: PyTorch's attention in the same scheme
        report = verify_onnx(model, wrapper, batches, cfg.effective_tolerance(), backends)
    if not report.ok:
        raise ExportVerificationError(f"refusing to write the model: {report.failure()}")
    log(report.summary())
    return report


def write_onnx(model: onnx.ModelProto, out: str | os.PathLike) -> int:
    """Write atomically (temp file + rename); returns the file size in bytes."""
    out = Path(out)
    with atomic_output(out) as tmp:
        onnx.save(model, str(tmp))
    return out.stat().st_size
