"""Export pass: embedding tables and the tied MLM decoder in FP16, INT8 or INT4 (``--embeddings``).

Runs on the traced model. Every ``Gather`` whose data is a 2-D float initializer (the word,
position and token-type tables) becomes a ``Gather`` on the quantized table plus a ``Gather`` on its
scales, then a dequantization of the looked-up rows only. Any other consumer of a table (the tied
decoder's ``Transpose`` → ``MatMul``) reads one dequantization of the whole table from the same
initializers: the file holds each table once. Tables, scales and arithmetic are those of
:mod:`bitmaps.core.embeddings`, so the graph equals :class:`~bitmaps.core.embeddings.QuantizedEmbedding`
bit for bit.

Standard ops only, so every runtime runs it:

- ``fp16``: the table in float16, ``Cast`` after the gather (a no-op in an FP16 export);
- ``int8``: ``DequantizeLinear`` with ``block_size`` = hidden (per-row scale) from opset 21; below
  21, ``Cast`` + ``Mul`` (identical values);
- ``int4``: the packed uint8 table; each byte becomes its two values (low nibble first, minus 8)
  by a ``Gather`` from a 256 x 2 table of them, then ``Mul`` by the group scales. (ONNX's INT4
  tensor type cannot be gathered: ``Gather`` does not take int4 in any opset.) The lookup replaced
  ``BitwiseAnd`` / ``BitShift`` / ``Concat`` / ``Cast`` / ``Sub``: the same values in 9 nodes
  instead of 14 per table, and ops that the ONNX-TensorRT parser lists (it has no bitwise ops;
  the tensorrt target casts the bytes to float32 before int32, the casts TensorRT's cast layer
  has — not run on TensorRT here).

ONNX Runtime constant-folds the whole-table dequantization of the decoder once at session start
(only present with ``--output logits``): the file stays small, the session then holds that table in
float. The ``onnxruntime`` target avoids that for int4 (float32 graphs): the decoder becomes ONNX
Runtime's ``com.microsoft.MatMulNBits`` on the stored table (kept ``[V, G, group/2]``, the layout and
zero point MatMulNBits reads), the lookups reshape their rows back. Its other int4 lookups are one
``com.microsoft.GatherBlockQuantized`` node each (gather + dequantize, zero point 8, the same
values; in a binary float32 model the target's pass then makes the three lookups, their Adds and
the LayerNorm one ``bitmaps::EmbedLayerNormalization``, bitmaps/export/targets.py): binary
BERT-base (``--output hidden``), 1 x 128, Intel Xeon, 2 threads: the three
lookups' node time 1.5 ms (14 + 2 nodes each, bitwise unpacking) -> 1.3 ms (table lookup) -> 0.36
ms (GatherBlockQuantized), ONNX Runtime's profiler. Binary BERT-base with logits,
1 × 128, Intel Xeon: peak memory 179.4 → 85.4 MB, latency 102 → 108 ms at 1 thread (the 30522-way
decoder dominates either way).
"""

from __future__ import annotations

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from bitmaps.core.embeddings import (
    EMBEDDING_MODES,
    INT4_OFFSET,
    embeddings_label,
    quantize_embeddings_,
    quantize_table,
)
from bitmaps.core.errors import BitmapsError
from bitmaps.export.onnx_function import MS_DOMAIN

_FLOATS = {TensorProto.FLOAT: np.float32, TensorProto.FLOAT16: np.float16}
PREFIX = "embeddings_q"
# How the quantized lookups are written (part of profile's export cache key: a cached file of an
# older graph is exported again)
GRAPH_VERSION = "int4-pair-table+trt-float-cast+ort-GatherBlockQuantized-default-bits"


def embedding_tables(model: onnx.ModelProto) -> list[str]:
    """Names of the 2-D float initializers that some ``Gather`` reads as its data."""
    inits = {t.name: t for t in model.graph.initializer}
    names = []
    for node in model.graph.node:
        if node.op_type != "Gather" or node.input[0] not in inits:
            continue
        t = inits[node.input[0]]
        axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
        if len(t.dims) == 2 and t.data_type in _FLOATS and axis == 0 and t.name not in names:
            names.append(t.name)
    return names


class _Builder:
    """Appends nodes and constants with unique names."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.model, self.nodes, self.count = model, [], 0
        self.constants: dict[tuple, str] = {}
        self.shapes: dict[str, list[int]] = {}  # the packed width of int4 rows

    def name(self, base: str) -> str:
        self.count += 1
        return f"{PREFIX}/{base}_{self.count}"

    def const(self, values: list | np.ndarray, dtype: type) -> str:
        arr = np.asarray(values, dtype=dtype)
        key = (tuple(arr.ravel().tolist()), arr.shape, np.dtype(dtype).str)
        if key not in self.constants:
            name = f"{PREFIX}/const_{len(self.constants)}"
            self.model.graph.initializer.append(numpy_helper.from_array(arr, name))
            self.constants[key] = name
        return self.constants[key]

    def op(self, op_type: str, inputs: list[str], out: str | None = None, **attrs: object) -> str:
        out = out or self.name(op_type.lower())
        self.nodes.append(
            helper.make_node(op_type, inputs, [out], name=self.name(op_type), **attrs)
        )
        return out


def _dequantize(
    b: _Builder, data: str, scale: str | None, out: str, mode: str, hidden: int, groups: int,
    elem: int, opset: int, target: str = "portable",
) -> None:  # fmt: skip
    """Nodes that turn rows of ``data`` (+ ``scale``) into float ``out [..., hidden]``."""
    if mode == "fp16":
        b.op("Cast", [data], out, to=elem)
    elif mode == "int8" and opset >= 21:
        b.op("DequantizeLinear", [data, scale], out, axis=-1, block_size=hidden)
    elif mode == "int8":
        b.op("Mul", [b.op("Cast", [data], to=elem), scale], out)
    else:  # int4: bytes → value pairs [..., B, 2] → [..., G, size] · scale[..., G, 1] → [..., G·size]
        # → [:hidden]. Gather takes int32/int64 indices only, hence the Cast; TensorRT casts uint8
        # to and from float32 and float16 only, so the tensorrt target goes uint8 → the graph's
        # float type (float16 in an FP16 export, which may hold no float32) → int32, exactly.
        pairs = b.const(int4_pairs(), _FLOATS[elem])
        source = b.op("Cast", [data], to=elem) if target == "tensorrt" else data
        index = b.op("Cast", [source], to=TensorProto.INT32)
        values = b.op("Gather", [pairs, index], axis=0)
        axes = b.const([-1], np.int64)
        lead = b.op("Shape", [data], end=-1)
        width = 2 * b.shapes[data][-1]  # G · size, the padded hidden size
        split = b.op("Concat", [lead, b.const([groups, width // groups], np.int64)], axis=0)
        scaled = b.op("Mul", [b.op("Reshape", [values, split]), b.op("Unsqueeze", [scale, axes])])
        merged = b.op("Concat", [lead, b.const([width], np.int64)], axis=0)
        flat = b.op("Reshape", [scaled, merged], None if width != hidden else out)
        if width != hidden:
            ends, zero = b.const([hidden], np.int64), b.const([0], np.int64)
            b.op("Slice", [flat, zero, ends, axes], out)


def int4_pairs() -> np.ndarray:
    """[256, 2]: the two values a packed int4 byte holds (low nibble first, ``INT4_OFFSET``
    taken off), the table the graph's int4 lookups read."""
    byte = np.arange(256)
    return np.stack((byte & 0x0F, byte >> 4), axis=-1) - INT4_OFFSET


def _decoder_matmuls(graph: onnx.GraphProto, table: str) -> tuple[onnx.NodeProto, list] | None:
    """The tied decoder's ``Transpose(table, perm [1, 0])`` and the MatMuls that read it as their
    right operand (its only consumers), or None when the graph has another shape."""
    for node in graph.node:
        if node.op_type != "Transpose" or list(node.input) != [table]:
            continue
        perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), None)
        users = [n for n in graph.node if node.output[0] in n.input]
        if (
            perm == [1, 0]
            and users
            and all(n.op_type == "MatMul" and list(n.input[1:]) == [node.output[0]] for n in users)
        ):
            return node, users
    return None


def _matmul_nbits(
    graph: onnx.GraphProto, decoder: tuple[onnx.NodeProto, list], data: str, scale: str,
    hidden: int, vocab: int, group: int,
) -> None:  # fmt: skip
    """Replace the tied decoder ``MatMul(h, Transpose(table))`` (``decoder``: what
    :func:`_decoder_matmuls` found) by ONNX Runtime's ``com.microsoft.MatMulNBits(h, data,
    scale)``, which reads the int4 table as it is stored (``data [V, G, group/2]``: the nibble
    order and zero point 8 of bitmaps.core.embeddings) and never expands it to float."""
    transpose, users = decoder
    for mm in users:
        fused = helper.make_node(
            "MatMulNBits", [mm.input[0], data, scale], list(mm.output), name=f"{mm.name}/nbits",
            domain=MS_DOMAIN, K=hidden, N=vocab, bits=4, block_size=group,
        )  # fmt: skip
        graph.node.insert(list(graph.node).index(mm), fused)
        graph.node.remove(mm)
    graph.node.remove(transpose)


def quantize_onnx_embeddings(
    model: onnx.ModelProto, mode: str, group: int = 64, target: str = "portable"
) -> list[str]:
    """In place: rewrite the embedding tables of ``model`` (see module docstring). Returns their
    names. ``fp32`` changes nothing; ``fp16`` on an FP16 export changes nothing either.

    ``target`` ``onnxruntime`` (float32 graphs), for int4 tables: one read by the tied
    decoder is stored as ``[V, G, group/2]`` and the decoder becomes ``MatMulNBits`` on it, so
    ONNX Runtime holds the decoder in 4 bits instead of constant-folding a float table; the
    lookups of any other (hidden a multiple of the group) are ONNX Runtime's
    ``com.microsoft.GatherBlockQuantized``, one node that gathers and dequantizes (zero point 8,
    low nibble first: the same values)."""
    if mode not in EMBEDDING_MODES:
        raise BitmapsError(f"embeddings must be one of {', '.join(EMBEDDING_MODES)}, got {mode!r}")
    names = embedding_tables(model)
    if mode == "fp32" or not names:
        return []
    graph = model.graph
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    inits = {t.name: t for t in graph.initializer}
    b = _Builder(model)
    rewritten = []
    for name in names:
        table = inits[name]
        elem = table.data_type
        if mode == "fp16" and elem == TensorProto.FLOAT16:
            continue
        weight = torch.from_numpy(numpy_helper.to_array(table).copy())
        data, scale = quantize_table(weight, mode, group)
        hidden = int(table.dims[1])
        qname, sname = f"{name}.{mode}", (None if scale is None else f"{name}.scale")
        nbits = target == "onnxruntime" and mode == "int4" and elem == TensorProto.FLOAT
        decoder = _decoder_matmuls(graph, name) if nbits else None
        blocks = decoder is not None
        stored = data.reshape(data.shape[0], scale.shape[1], -1) if blocks else data
        graph.initializer.append(numpy_helper.from_array(stored.numpy(), qname))
        b.shapes[qname] = list(data.shape)
        if blocks:
            _matmul_nbits(graph, decoder, qname, sname, hidden, int(table.dims[0]), group)
        if nbits and not any(o.domain == MS_DOMAIN for o in model.opset_import):
            model.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
        if scale is not None:
            graph.initializer.append(numpy_helper.from_array(scale.numpy(), sname))
        groups = 0 if scale is None else int(scale.shape[1])
        full = None
        new_nodes: list[onnx.NodeProto] = []
        for node in graph.node:
            if node.op_type == "Gather" and node.input[0] == name:
                b.nodes = []
                if nbits and not blocks and 2 * int(data.shape[1]) == hidden:
                    # no `bits` attribute: 4 is its default since ONNX Runtime 1.22 added it,
                    # and ONNX Runtime 1.21 and older reject the attribute (4 bits only there)
                    b.op("GatherBlockQuantized", [qname, node.input[1], sname], node.output[0],
                         domain=MS_DOMAIN, gather_axis=0, quantize_axis=1,
                         block_size=group)  # fmt: skip
                    new_nodes.extend(b.nodes)
                    continue
                rows = b.op("Gather", [qname, node.input[1]], axis=0)
                if blocks:  # [..., G, group/2] -> [..., G * group/2], the stored row layout
                    lead = b.op("Shape", [node.input[1]])
                    width = b.const([int(data.shape[1])], np.int64)
                    rows = b.op("Reshape", [rows, b.op("Concat", [lead, width], axis=0)])
                b.shapes[rows] = [-1] + list(data.shape[1:])
                srows = None if sname is None else b.op("Gather", [sname, node.input[1]], axis=0)
                _dequantize(b, rows, srows, node.output[0], mode, hidden, groups, elem, opset,
                            target)  # fmt: skip
                new_nodes.extend(b.nodes)
                continue
            if name in node.input:
                if full is None:
                    b.nodes, full = [], f"{name}.dequantized"
                    _dequantize(b, qname, sname, full, mode, hidden, groups, elem, opset, target)
                    new_nodes.extend(b.nodes)
                node.input[:] = [full if i == name else i for i in node.input]
            new_nodes.append(node)
        if any(o.name == name for o in graph.output):
            raise BitmapsError(f"embedding table {name} is a graph output; cannot quantize it")
        del graph.node[:]
        graph.node.extend(new_nodes)
        graph.initializer.remove(table)
        rewritten.append(name)
    _drop_value_info(model, rewritten)
    return rewritten


def _drop_value_info(model: onnx.ModelProto, names: list[str]) -> None:
    keep = [v for v in model.graph.value_info if v.name not in names]
    del model.graph.value_info[:]
    model.graph.value_info.extend(keep)


def embeddings_pass(
    model: onnx.ModelProto, torch_model: torch.nn.Module, mode: str, group: int = 64,
    target: str = "portable",
) -> list[str]:  # fmt: skip
    """The export pipeline's ``embeddings`` pass on the traced model (in place): the same tables in
    the graph and in the PyTorch module it is verified against (``quantize_embeddings_``).
    Records ``bitmaps.embeddings`` in the model's metadata. Returns the tables rewritten."""
    names = quantize_onnx_embeddings(model, mode, group, target)
    if names:
        quantize_embeddings_(torch_model, mode, group)
    props = {p.key: p.value for p in model.metadata_props}
    props["bitmaps.embeddings"] = embeddings_label(mode, group)
    helper.set_model_props(model, props)
    return names
