"""PyTorch → ONNX: the binarized student with ``bitmaps::BinaryLinear`` nodes, and the FP baseline.

Exporter: ``torch.onnx.export(..., dynamo=True)`` (torch.export + onnxscript's torchlib), with
``custom_translation_table={torch.ops.bitmaps.binary_linear.default: ...}`` on a model whose
BinaryLinear layers were swapped for PackedBinaryLinear (``pack_binary_linears_``). Why this one:

- it is the exporter torch 2.13 maintains and uses by default; the TorchScript exporter
  (``dynamo=False`` + ``register_custom_op_symbolic``) still runs in 2.13 but warns that it will
  be removed, so nothing here depends on it. It traces transformers 5.x BERT without patches;
- the torch op *is* the ONNX op (same inputs, same attributes), so each PackedBinaryLinear
  becomes exactly one ``bitmaps::BinaryLinear`` node whose W, w_scale and bias are the module's
  int32/float32 buffers; the latent FP32 weights are gone before tracing, so no float weight of
  a binarized layer can leak into the file;
- onnxscript's optimizer (constant folding, dead-code elimination, initializer de-duplication)
  only evaluates ops it knows: a node of domain ``bitmaps`` is never folded or inlined.

The emitted node needs an OpSchema (onnxscript builds nodes from schemas); we pass one built in
:mod:`bitmaps.export.onnx_function` without registering it globally. After export,
:func:`to_onnx` returns the exporter's ``onnx_ir`` model; the rewrite passes below work on it
(graph surgery with onnx_ir, no protobuf editing): :func:`name_binary_linears` names each node
after its module (e.g. ``bert.encoder.layer.0.attention.self.query``) and gives it its own
initializers ``<module>.packed_weight/.w_scale/.bias`` (the optimizer's de-duplication may have
merged, e.g., two all-zero biases); :func:`strip_node_metadata` drops the exporter's per-node
stack traces; :func:`add_function` adds the model-local function; :func:`annotate` writes the
``bitmaps.*`` metadata.

Inputs are ``input_ids`` and ``attention_mask`` (int64, ``[batch, sequence]``, both axes dynamic);
``token_type_ids`` is deliberately not an input: bitmaps trains, evaluates and profiles masked-LM
on single-segment packed text, where every token type is 0, which is what the model uses when the
input is absent (its ``token_type_ids`` buffer). Attention is exported in its eager form
(MatMul, Softmax, MatMul: plain ops every runtime has, kept in floating point by DESIGN.md), not
as the decomposed scaled-dot-product attention of the SDPA path.

``dtype="fp16"``: the model is converted with ``.half()`` before tracing, so every floating-point
tensor of the graph is float16, LayerNormalization and Softmax included (float16 inputs and
outputs; parity with PyTorch's own float16 run is checked by verify.py) — except each
BinaryLinear's ``w_scale`` and ``bias``, which the op's contract (DESIGN.md) fixes as float32
inputs read inside the op. ``onnx_graph.float32_on_compute_path`` audits this.
"""

from __future__ import annotations

import ast
import contextlib
import logging
import warnings
from collections.abc import Iterator

import onnx
import onnx_ir as ir
import torch
import transformers
from onnxscript.values import Op, Opset
from torch import nn

from bitmaps import __version__
from bitmaps.export.onnx_function import (
    DOMAIN,
    OP_TYPE,
    OP_VERSION,
    PLUGIN_NAMESPACE,
    PLUGIN_VERSION,
    binary_linear_schema,
)
from bitmaps.train.binary_linear import pack_binary_linears_

try:  # the dynamo exporter's table of torchlib functions (private: see _reused_torchlib_registry)
    from torch.onnx._internal.exporter import _registration
except ImportError:  # another torch: every export builds its own table, as torch does
    _registration = None

INPUT_NAMES = ("input_ids", "attention_mask")
OUTPUT_NAMES = {"logits": "logits", "hidden": "last_hidden_state"}
DTYPES = {"fp32": torch.float32, "fp16": torch.float16}
METADATA_PREFIX = "bitmaps."


# transformers 5 takes a 4-D float attention mask as the additive bias itself (masking_utils:
# "returned as-is"); 4.x turned any mask m into (1 - m) * min, so there the 2-D mask goes in.
_ADDITIVE_MASK_AS_IS = int(transformers.__version__.split(".")[0]) >= 5
# Which mask subgraph an export holds (part of the profile cache's key, so a file exported with
# the other one is exported again).
MASK_GRAPH = "additive-bias" if _ADDITIVE_MASK_AS_IS else "transformers"


class ExportWrapper(nn.Module):
    """``(input_ids, attention_mask) → logits`` or ``→ last_hidden_state`` of a ``*ForMaskedLM``."""

    def __init__(self, model: nn.Module, output: str) -> None:
        super().__init__()
        if output not in OUTPUT_NAMES:
            raise ValueError(f"output must be one of {', '.join(OUTPUT_NAMES)}, got {output!r}")
        self.model = model
        self.output = output

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        if _ADDITIVE_MASK_AS_IS:
            # The key-padding mask as the additive [batch, 1, seq, seq] bias the attention adds (0
            # or the dtype's lowest; every query row alike, as ONNX Runtime's MultiHeadAttention
            # wants it): a handful of ops in the graph, where transformers' own mask builder traces
            # into about 25 index ops (BERT-base in ONNX Runtime: the small ops 0.36 ms of node time
            # a call with those, 0.26 with these; benchmarks/RESULTS.md, stop 25).
            dtype = self.model.dtype
            seq = attention_mask.shape[1]
            keep = attention_mask[:, None, None, :].expand(-1, 1, seq, -1).to(dtype)
            attention_mask = (1.0 - keep) * torch.finfo(dtype).min
        if self.output == "hidden":
            base = self.model.base_model
            return base(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits


def prepare_model(model: nn.Module, dtype: str, output: str) -> ExportWrapper:
    """In place: pack BinaryLinear layers, eager attention, eval mode, dtype; then wrap.

    Raises :class:`~bitmaps.core.errors.BitmapsError` (from ``export_spec``) for a student that is not
    in its final W1A1 phase.
    """

    pack_binary_linears_(model)
    if hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation("eager")
    else:  # transformers 4.x
        model.config._attn_implementation = "eager"
    model.eval().to(DTYPES[dtype])  # PackedBinaryLinear keeps w_scale/bias in float32
    return ExportWrapper(model, output).eval()


def example_inputs(vocab_size: int, batch: int = 2, seq: int = 8) -> tuple[torch.Tensor, ...]:
    """Tracing inputs. Sizes > 1 and distinct, so torch.export keeps both axes symbolic."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab_size, (batch, seq), generator=g)
    mask = torch.ones(batch, seq, dtype=torch.int64)
    mask[0, seq - 2 :] = 0  # a padded row, so the mask path is traced with real zeros
    return ids, mask


def _translation_table() -> dict:

    emit = Op(Opset(DOMAIN, OP_VERSION), "BinaryLinear", binary_linear_schema())

    def binary_linear(
        x,
        w,
        w_scale,
        bias,
        in_features: int,
        act_threshold: float,
        act_scale: float,
        act_unsigned: int = 0,
    ):
        if bias is None:  # PackedBinaryLinear always passes one (zeros when the layer has none)
            raise ValueError("bitmaps::BinaryLinear needs a bias input")
        # act_unsigned is written only when set: a signed layer's node is exactly the op of
        # DESIGN.md v1 as older files have it (the attribute's absence means 0)
        extra = {"act_unsigned": 1} if int(act_unsigned) else {}
        return emit(
            x,
            w,
            w_scale,
            bias,
            in_features=int(in_features),
            out_features=int(w.shape[0]),
            act_threshold=float(act_threshold),
            act_scale=float(act_scale),
            plugin_version=PLUGIN_VERSION,
            plugin_namespace=PLUGIN_NAMESPACE,
            **extra,
        )

    return {torch.ops.bitmaps.binary_linear.default: binary_linear}


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Silence exporter warnings that are not ours to act on (torchvision missing, deprecations)."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "onnxscript")]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


# The exporter builds its table of torchlib functions afresh for every export (each function's
# IR and signature derived again): 1.2-1.4 s of each BERT-tiny export's 7-9 s on a Zen 1 core
# (benchmarks/bench_export_time.py). The table depends only on the opset, so one process builds
# it once per opset; each export gets its own copy of the table's lists, into which the exporter
# then registers our custom translations. Exports run one at a time (the class is patched).
_TORCHLIB_TABLES: dict[int, dict] = {}


@contextlib.contextmanager
def _reused_torchlib_registry() -> Iterator[None]:
    """Within this block, ``ONNXRegistry.from_torchlib`` returns a copy of the table this process
    built for that opset. Where torch's (private) registry is not where torch 2.13 has it, or has
    another form, nothing is changed and every export builds its own as before."""
    cls = getattr(_registration, "ONNXRegistry", None)
    built = getattr(cls, "__dict__", {}).get("from_torchlib")
    if not isinstance(built, classmethod) or not hasattr(cls(), "functions"):
        yield
        return

    def from_torchlib(registry_cls: type, opset_version: int | None = None):  # noqa: ANN202
        if opset_version is None:  # torch's default (its exporter always names one)
            opset_version = _registration._constants.TORCHLIB_OPSET
        if opset_version not in _TORCHLIB_TABLES:
            _TORCHLIB_TABLES[opset_version] = built.__func__(registry_cls, opset_version).functions
        registry = registry_cls()
        registry._opset_version = opset_version
        registry.functions = {k: list(v) for k, v in _TORCHLIB_TABLES[opset_version].items()}
        return registry

    cls.from_torchlib = classmethod(from_torchlib)
    try:
        yield
    finally:
        cls.from_torchlib = built


def to_onnx(wrapper: ExportWrapper, opset: int) -> ir.Model:
    """Trace and convert; dynamic ``batch`` and ``sequence`` axes, no bitmaps post-processing."""
    config = wrapper.model.config
    ids, mask = example_inputs(config.vocab_size)
    batch = torch.export.Dim("batch", min=1, max=4096)
    seq = torch.export.Dim("sequence", min=1, max=int(config.max_position_embeddings))
    with _quiet_exporter(), _reused_torchlib_registry(), torch.no_grad():
        program = torch.onnx.export(
            wrapper,
            (ids, mask),
            dynamo=True,
            opset_version=opset,
            input_names=list(INPUT_NAMES),
            output_names=[OUTPUT_NAMES[wrapper.output]],
            dynamic_shapes=({0: batch, 1: seq}, {0: batch, 1: seq}),
            custom_translation_table=_translation_table(),
            optimize=True,
            verbose=False,
        )
    return program.model


# --------------------------------------------------------------------------- rewrite passes (onnx_ir)


def is_binary_linear(node: ir.Node) -> bool:
    return node.domain == DOMAIN and node.op_type == OP_TYPE


def binary_linears(model: ir.Model) -> list[ir.Node]:
    """The ``bitmaps::BinaryLinear`` nodes of the main graph, in graph order."""
    return [n for n in model.graph if is_binary_linear(n)]


def _module_path(node: ir.Node) -> str | None:
    """The torch module a node came from (the exporter's ``name_scopes`` metadata)."""
    scopes = node.metadata_props.get("pkg.torch.onnx.name_scopes")
    if scopes:
        names = ast.literal_eval(scopes)
        if len(names) >= 2:
            return names[-2].removeprefix("model.")
    return None


def _private_initializer(graph: ir.Graph, node: ir.Node, index: int, name: str) -> None:
    """Input ``index`` of ``node`` becomes an initializer called ``name`` that only it reads."""
    value = node.inputs[index]
    if value is None or not value.is_initializer():
        raise ValueError(f"{node.name}: input {index} ({value}) is not an initializer")
    if len(value.uses()) == 1 and not value.is_graph_output():
        value.name = name  # ours alone: renamed in place (onnx_ir renames the initializer entry)
        return
    copy = ir.Value(name=name, type=value.type, shape=value.shape, const_value=value.const_value)
    graph.register_initializer(copy)
    node.replace_input_with(index, copy)


def retie_folded_transposes(model: ir.Model) -> int:
    """Undo the exporter's constant folding of a tied table's transpose: an initializer that only
    MatMuls read as their right operand and that holds exactly the transpose of a table some
    Gather reads (a tied MLM decoder; ``optimize=True`` folds ``Transpose(table)`` into a second
    float copy when the table is small, under about a million values) becomes
    ``Transpose(table)`` again. Without this the file holds the table twice, and the embeddings
    pass quantizes the lookups but not the folded copy, so the decoder of an int8, int4 or fp16
    export would read FP32 weights where the PyTorch model reads the quantized table. Returns how
    many were retied."""
    graph = model.graph
    tables: dict[str, ir.Value] = {}
    for node in graph:
        data = node.inputs[0] if node.op_type == "Gather" and node.domain == "" else None
        if data is not None and data.is_initializer() and data.const_value is not None:
            axis = node.attributes.get("axis")
            if (
                (axis is None or axis.as_int() == 0)
                and data.shape is not None
                and len(data.shape) == 2
            ):
                tables.setdefault(data.name, data)
    retied = 0
    for name, value in list(graph.initializers.items()):
        uses = list(value.uses())
        if (
            name in tables
            or value.const_value is None
            or value.shape is None
            or len(value.shape) != 2
            or value.is_graph_output()
            or not uses
            or any(u.node.op_type != "MatMul" or u.node.domain != "" or u.idx != 1 for u in uses)
        ):
            continue
        folded = value.const_value.numpy()
        for table in tables.values():
            if table.dtype != value.dtype or tuple(table.shape) != folded.shape[::-1]:
                continue
            if not (folded.T == table.const_value.numpy()).all():
                continue
            transpose = ir.node("Transpose", [table], {"perm": [1, 0]}, name=f"{name}/retied")
            graph.insert_before(uses[0].node, transpose)
            for use in uses:
                use.node.replace_input_with(use.idx, transpose.outputs[0])
            graph.initializers.pop(name)
            retied += 1
            break
    return retied


def name_binary_linears(model: ir.Model) -> None:
    """Name each BinaryLinear node after its module and give it private, named initializers."""
    graph = model.graph
    taken = {n.name for n in graph}
    for i, node in enumerate(binary_linears(model)):
        path = _module_path(node) or f"binary_linear_{i}"
        if path in taken and node.name != path:
            path = f"{path}_{i}"
        taken.add(path)
        node.name = path
        for index, suffix in ((1, "packed_weight"), (2, "w_scale"), (3, "bias")):
            _private_initializer(graph, node, index, f"{path}.{suffix}")
    unused = [name for name, v in graph.initializers.items() if not v.uses()
              and not v.is_graph_output()]  # fmt: skip
    for name in unused:
        graph.initializers.pop(name)


def strip_node_metadata(model: ir.Model) -> None:
    """The exporter's per-node stack traces: bytes and local paths, of no use in the file."""
    for node in model.graph:
        node.metadata_props.clear()


def add_function(model: ir.Model, function: onnx.FunctionProto, only: bool = True) -> None:
    """Make ``function`` the model's only function (``only``; the BinaryLinear function, replacing
    any), or add it beside the others (replacing one of the same name)."""
    model.graph.opset_imports.setdefault(DOMAIN, OP_VERSION)
    fn = ir.serde.deserialize_function(function)
    if only:
        model.functions.clear()
    model.functions[fn.identifier()] = fn


def opset_of(model: ir.Model) -> int:
    return model.graph.opset_imports[""]


def annotate(model: ir.Model, meta: dict[str, str]) -> None:
    """Producer and the ``bitmaps.*`` metadata_props (kind, target, dtype, version, ...)."""
    model.producer_name = "bitmaps"
    model.producer_version = __version__
    model.metadata_props.update({f"{METADATA_PREFIX}{k}": str(v) for k, v in meta.items()})


def model_metadata(model: onnx.ModelProto) -> dict[str, str]:
    """The ``bitmaps.*`` metadata of an exported model, without the prefix."""
    return {
        p.key.removeprefix(METADATA_PREFIX): p.value
        for p in model.metadata_props
        if p.key.startswith(METADATA_PREFIX)
    }
