"""Export targets: the passes that fit a traced, rewritten model to the runtime that will run it.

``bitmaps export --target``:

- ``portable`` — standard ONNX ops, plus the model-local function ``bitmaps::BinaryLinear`` with
  BitwiseAnd unpacking (bitmaps/export/onnx_function.py). Any ONNX runtime with model-local
  functions and opset 18+ runs it, with or without bitmaps.
- ``onnxruntime`` — the portable model with each attention block (Q·Kᵀ, scale, mask, Softmax, ·V,
  and the head reshapes and transposes around them) replaced by one MultiHeadAttention node fed
  by the separate Q, K and V projections, the mask as ``attention_bias``. In a binary float32
  model the node is ``bitmaps::MultiHeadAttention`` (libbitmaps_ort.so's attention kernel, with a
  model-local function of standard ops for ONNX Runtime without the library; about 1.6-2x
  faster than ONNX Runtime's own per block, ``benchmarks/bench_ort_float_ops.py``); in the float
  baselines and float16 binary models it is ONNX Runtime's ``com.microsoft`` MultiHeadAttention
  (the baselines stay what a user of plain ONNX Runtime gets). A binary float32 model also gets
  each residual Add + LayerNormalization as one ``bitmaps::SkipLayerNormalization``
  (:func:`fuse_skip_layer_norms`), its int4 word, token-type and position lookups with their two
  Adds and the LayerNorm after them as one ``bitmaps::EmbedLayerNormalization``
  (:func:`fuse_embed_layer_norms`), and where a layer's Q, K and V binarize their input alike, the
  three BinaryLinear nodes become one with the weights stacked, read in place by
  ``bitmaps::PackedMultiHeadAttention`` (:func:`stack_qkv`). Only what ONNX Runtime does not do
  itself: its session-level optimizer already fuses Add + LayerNormalization into
  SkipLayerNormalization and keeps Gelu as one kernel (checked with
  ``SessionOptions.optimized_model_filepath`` on onnxruntime 1.32, CPU EP: with the BinaryLinear
  nodes on our kernel it fuses SkipLayerNormalization but not attention). The
  BinaryLinear weights are stored in the CPU GEMM's panel layout (:func:`lay_out_panels`) and the
  function reads both layouts; a Gelu after a BinaryLinear becomes its ``activation = 1``
  (:func:`fuse_gelu`). Runs in ONNX Runtime only (CPU EP: float32 and float16).
- ``tensorrt`` — only ops the ONNX-TensorRT parser accepts (:data:`TENSORRT_OPS`); the
  BinaryLinear nodes carry ``plugin_version``/``plugin_namespace``, so the parser maps them onto
  the bitmaps plugin. The fallback function unpacks the weights with integer Div/Mod instead of
  BitwiseAnd. Parser versions differ in what they try first: onnx-tensorrt 10.1
  (``ModelImporter.cpp``, ``parseNode``) imports a model-local function before trying a plugin;
  later parsers import a node that has a ``plugin_namespace`` attribute as a plugin whenever that
  plugin is registered, and fall back to the function otherwise.
"""

from __future__ import annotations

import math

import numpy as np
import onnx_ir as ir
import torch
from onnx_ir.passes.common import RemoveUnusedNodesPass

from bitmaps.core.config import ExportConfig
from bitmaps.core.errors import BitmapsError
from bitmaps.core.ops import reference_prepack_weights
from bitmaps.export.onnx_export import add_function, is_binary_linear, opset_of
from bitmaps.export.onnx_function import (
    ATTENTION_INT8,
    ATTENTION_OP_TYPE,
    BINARY_FFN_ATTRIBUTES,
    BINARY_FFN_OP_TYPE,
    DOMAIN,
    EMBED_LAYER_NORM_OP_TYPE,
    FEEDS,
    MS_DOMAIN,
    PACKED_ATTENTION_OP_TYPE,
    SKIP_LAYER_NORM_OP_TYPE,
    STACKED,
    binary_ffn_function,
    binary_linear_function,
    embed_layer_norm_function,
    multi_head_attention_function,
    packed_multi_head_attention_function,
    skip_layer_norm_function,
)

TARGETS = ExportConfig.TARGETS
# How each target stores the BinaryLinear weights (part of the profile cache's key: a cached file
# of an older layout is exported again)
WEIGHT_LAYOUTS = {"portable": "rows", "onnxruntime": "panels", "tensorrt": "rows"}
# The float ops each target gives a binary float32 model around its BinaryLinear nodes (also part
# of that cache key)
BINARY_FLOAT_OPS = {
    "portable": "standard",
    "onnxruntime": "bitmaps::PackedMultiHeadAttention(stacked QKV)+MultiHeadAttention"
    "+SkipLayerNormalization+BinaryLinear(gelu)+EmbedLayerNormalization+BinaryFeedForward",
    "tensorrt": "standard",
}
# Operators marked "Y" in onnx-tensorrt's docs/operators.md, ONNX-TensorRT 10.1 GA
# (github.com/onnx/onnx-tensorrt, commit 96e7811). BitwiseAnd, BitShift and the other bitwise ops
# are "N" there.
TENSORRT_OPS = frozenset(
    """Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh AveragePool BatchNormalization
    Cast CastLike Ceil Celu Clip Concat Constant ConstantOfShape Conv ConvTranspose Cos Cosh CumSum
    DeformConv DepthToSpace DequantizeLinear Div Dropout Einsum Elu Equal Erf Exp Expand EyeLike
    Flatten Floor Gather GatherElements GatherND Gelu Gemm GlobalAveragePool GlobalLpPool
    GlobalMaxPool Greater GreaterOrEqual GridSample GroupNormalization GRU HardSigmoid HardSwish
    Hardmax Identity If ImageScaler InstanceNormalization IsInf IsNaN LayerNormalization LeakyRelu
    Less LessOrEqual Log LogSoftmax Loop LRN LSTM LpNormalization LpPool MatMul Max MaxPool Mean
    MeanVarianceNormalization Min Mish Mod Mul Neg NonMaxSuppression NonZero Not OneHot Or Pad
    ParametricSoftplus Pow PRelu QuantizeLinear RandomNormal RandomNormalLike RandomUniform
    RandomUniformLike Range Reciprocal ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean ReduceMin
    ReduceProd ReduceSum ReduceSumSquare Relu Reshape Resize ReverseSequence RNN RoiAlign Round
    ScaledTanh Scan Scatter ScatterElements ScatterND Selu Shape Shrink Sigmoid Sign Sin Sinh Size
    Slice Softmax Softplus Softsign SpaceToDepth Split Sqrt Squeeze Sub Sum Tan Tanh
    ThresholdedRelu Tile TopK Transpose Trilu Unsqueeze Upsample Where Xor""".split()
)


# --------------------------------------------------------------------------- portable


def portable(model: ir.Model, num_heads: int) -> None:
    """The model-local function with BitwiseAnd unpacking; nothing else changes."""
    del num_heads
    add_function(model, binary_linear_function(opset_of(model)))


# --------------------------------------------------------------------------- onnxruntime


def onnxruntime(model: ir.Model, num_heads: int) -> None:
    """The portable model with every attention block fused into MultiHeadAttention and the
    BinaryLinear weights stored in the CPU GEMM's panel layout."""
    add_function(model, binary_linear_function(opset_of(model), panels=True, activation=True))
    lay_out_panels(model)
    binary = any(is_binary_linear(n) for n in model.graph)
    fuse_attention(model, num_heads, own=binary)
    fuse_gelu(model)
    if binary:
        fuse_embed_layer_norms(model)
        fuse_skip_layer_norms(model)
        stack_qkv(model)
        fuse_binary_ffns(model)


def fuse_gelu(model: ir.Model) -> int:
    """``Gelu(BinaryLinear(x))`` → one BinaryLinear with ``activation = 1``; returns how many.

    The native op applies GELU in the GEMM's epilogue, on each value while it is in a register
    (cpu_kernels_internal.h), instead of a second pass over the [tokens, 3072] intermediate; the
    function applies it after its float32 result. Only the erf form (``approximate = "none"``,
    torch's default) and only where the BinaryLinear output feeds nothing else.
    """
    fused = 0
    for gelu in [n for n in model.graph if n.op_type == "Gelu" and n.domain in ("", "ai.onnx")]:
        approximate = gelu.attributes.get("approximate")
        if approximate is not None and approximate.as_string() != "none":
            continue
        linear = gelu.inputs[0].producer() if gelu.inputs[0] is not None else None
        if linear is None or not is_binary_linear(linear):
            continue
        y = linear.outputs[0]
        if len(list(y.uses())) != 1 or y.is_graph_output() or gelu.outputs[0].is_graph_output():
            continue
        linear.attributes["activation"] = ir.AttrInt64("activation", 1)
        gelu.outputs[0].replace_all_uses_with(y)
        model.graph.remove(gelu, safe=True)
        fused += 1
    return fused


def _attribute(node: ir.Node, name: str, default: float) -> float:
    attr = node.attributes.get(name)
    return default if attr is None else attr.value


def fuse_binary_ffns(model: ir.Model) -> int:
    """Every float32 ``BinaryLinear → BinaryLinear`` pair where the second reads only the first's
    output (GELU fused in or not; BERT's intermediate and output dense) and both binarize with a
    fixed activation scale (``act_scale > 0``, the elastic quantizer's), with biases, as one
    ``bitmaps::BinaryFeedForward``. Returns how many; adds the function when any.

    libbitmaps_ort.so's kernel then has the first GEMM write the second's input bits from a table
    of dot-product ranges made at session creation (csrc/kernels/cpu_binary_linear.h,
    ``ffn_bit_table``): no [tokens, 3072] float intermediate, no GELU, no second packing pass. Its
    bits are those of the exact GELU (float64) of the first layer's float32 output, where the two
    nodes round GELU to float32 first: they can differ only where GELU(y) is within a float32
    rounding of the second layer's threshold (export verification allows those bits either way,
    bitmaps/export/verify.py). The node is named ``first>second`` (:data:`FEEDS`).
    """
    done = 0
    for second in [n for n in model.graph if is_binary_linear(n)]:
        first = second.inputs[0].producer() if second.inputs[0] is not None else None
        if first is None or not is_binary_linear(first):
            continue
        hidden = first.outputs[0]
        if len(list(hidden.uses())) != 1 or hidden.is_graph_output():
            continue
        if (
            len(first.inputs) != 4
            or len(second.inputs) != 4
            or None in (*first.inputs, *second.inputs)
        ):
            continue
        if first.inputs[0].dtype != ir.DataType.FLOAT or _attribute(second, "activation", 0):
            continue
        if not (
            _attribute(first, "act_scale", 0.0) > 0 and _attribute(second, "act_scale", 0.0) > 0
        ):
            continue
        attrs = {}
        for name, (layer, attribute) in BINARY_FFN_ATTRIBUTES.items():
            node = (first, second)[layer]
            default = 0.0 if attribute in ("act_threshold", "act_scale") else 0
            attrs[name] = _attribute(node, attribute, default)
        fused = ir.node(
            BINARY_FFN_OP_TYPE, [*first.inputs, *second.inputs[1:]], attrs, domain=DOMAIN,
            name=f"{first.name}{FEEDS}{second.name}",
        )  # fmt: skip
        _replace_node(model, second, fused, "ffn")
        done += 1
    if done:
        add_function(model, binary_ffn_function(opset_of(model)), only=False)
        RemoveUnusedNodesPass()(model)
    return done


def lay_out_panels(model: ir.Model) -> int:
    """Store every BinaryLinear's W ``[N, KW]`` as panels ``[ceil(N/16), KW, 16]``; returns how many.

    The layout is ``bitmaps::prepack_weights``' (the same on every CPU path), so libbitmaps_ort.so
    runs on the initializer as it is, with no copy of its own: without this, each kernel kept a
    second, laid-out copy of its weights beside ONNX Runtime's (a custom op cannot release an
    initializer), 11 MB of BERT-base's 60 MB peak. The function reads both layouts.
    """
    done = 0
    for node in model.graph:
        if not is_binary_linear(node):
            continue
        w = node.inputs[1]
        tensor = ir.convenience.get_const_tensor(w) if w is not None else None
        if tensor is None or len(tensor.shape) != 2:
            continue
        k = node.attributes["in_features"].as_int()
        panels = reference_prepack_weights(torch.from_numpy(tensor.numpy().copy()), k).numpy()
        w.const_value = ir.tensor(panels, name=w.name)
        w.shape = ir.Shape(panels.shape)
        done += 1
    return done


def fuse_attention(model: ir.Model, num_heads: int, own: bool = False) -> int:
    """Fuse every attention block that matches (see :func:`_fuse_attention`); returns how many.

    ``own``: float32 blocks become ``bitmaps::MultiHeadAttention`` (and the model gets its
    function); other blocks, and all of them without ``own``, ``com.microsoft``'s."""
    nodes = [_fuse_attention(model.graph, softmax, num_heads, own) for softmax in _softmaxes(model)]
    fused = sum(node is not None for node in nodes)
    ours = sum(node is not None and node.domain == DOMAIN for node in nodes)
    if fused > ours:
        model.graph.opset_imports.setdefault(MS_DOMAIN, 1)
    if ours:
        add_function(model, multi_head_attention_function(opset_of(model)), only=False)
    if fused:
        RemoveUnusedNodesPass()(model)
    return fused


def _softmaxes(model: ir.Model) -> list[ir.Node]:
    return [n for n in model.graph if n.op_type == "Softmax" and n.domain == ""]


def _producer(value: ir.Value | None, op_type: str) -> ir.Node | None:
    node = value.producer() if value is not None else None
    return node if node is not None and node.op_type == op_type and node.domain == "" else None


def _only_consumer(value: ir.Value, op_type: str) -> ir.Node | None:
    uses = list(value.uses())
    if len(uses) != 1 or value.is_graph_output():
        return None
    node = uses[0].node
    return node if node.op_type == op_type and node.domain == "" else None


def _perm(node: ir.Node | None) -> list[int] | None:
    if node is None or "perm" not in node.attributes:
        return None
    return list(node.attributes["perm"].as_ints())


def _heads_input(value: ir.Value, perm: list[int]) -> ir.Value | None:
    """``x`` of ``Transpose(Reshape(x, [B, S, heads, d]), perm)``: the [B, S, hidden] projection."""
    transpose = _producer(value, "Transpose")
    if _perm(transpose) != perm:
        return None
    reshape = _producer(transpose.inputs[0], "Reshape")
    return reshape.inputs[0] if reshape is not None else None


def _scalar(value: ir.Value | None) -> float | None:
    tensor = ir.convenience.get_const_tensor(value) if value is not None else None
    if tensor is None or math.prod(tensor.shape.numpy()) != 1:
        return None
    return float(tensor.numpy().reshape(()))


def _fuse_attention(graph: ir.Graph, softmax: ir.Node, num_heads: int, own: bool) -> ir.Node | None:
    """Replace one eager attention block around ``softmax`` by MultiHeadAttention; the new node
    (domain ``bitmaps`` when ``own`` and the block is float32, else com.microsoft), or None.

    Matched (BERT's eager attention as torch.onnx traces it; anything else is left alone)::

        Softmax(Add(Mul(MatMul(Qh, Kᵀh), scale), bias)) → MatMul(·, Vh) → Transpose → Reshape
        Qh = Transpose(Reshape(q), 0 2 1 3)   Kᵀh = Transpose(Reshape(k), 0 2 3 1)   Vh as Qh
    """
    add = _producer(softmax.inputs[0], "Add")
    if add is None or softmax.attributes.get("axis", ir.AttrInt64("axis", -1)).as_int() != -1:
        return None
    mul = _producer(add.inputs[0], "Mul")
    scores = _producer(mul.inputs[0], "MatMul") if mul is not None else None
    scale = _scalar(mul.inputs[1]) if mul is not None else None
    context = _only_consumer(softmax.outputs[0], "MatMul")
    if scores is None or scale is None or context is None:
        return None
    if context.inputs[0] is not softmax.outputs[0]:
        return None
    merge = _only_consumer(context.outputs[0], "Transpose")
    if _perm(merge) != [0, 2, 1, 3]:
        return None
    flatten = _only_consumer(merge.outputs[0], "Reshape")
    q = _heads_input(scores.inputs[0], [0, 2, 1, 3])
    k = _heads_input(scores.inputs[1], [0, 2, 3, 1])
    v = _heads_input(context.inputs[1], [0, 2, 1, 3])
    if flatten is None or q is None or k is None or v is None:
        return None
    ours = own and q.dtype == ir.DataType.FLOAT
    # com.microsoft's inputs: query, key, value, bias, key_padding_mask, attention_bias
    inputs = [q, k, v, add.inputs[1]] if ours else [q, k, v, None, None, add.inputs[1]]
    attention = ir.node(
        ATTENTION_OP_TYPE,
        inputs,
        {"num_heads": num_heads, "scale": scale},
        domain=DOMAIN if ours else MS_DOMAIN,
        name=f"{flatten.name or 'attention'}/multi_head_attention",
    )
    attention.outputs[0].type = flatten.outputs[0].type
    attention.outputs[0].shape = flatten.outputs[0].shape
    graph.insert_before(flatten, attention)
    old = flatten.outputs[0]
    if old.is_graph_output():
        raise BitmapsError("an attention block's output is a graph output; cannot fuse it")
    old.replace_all_uses_with(attention.outputs[0])
    attention.outputs[0].name = old.name + "_mha"
    return attention


def _norms_of_sums(model: ir.Model) -> list[tuple[ir.Node, ir.Node, int]]:
    """Each (default domain) LayerNormalization whose input is an Add that feeds nothing else: the
    norm, that Add and the norm's axis."""
    found = []
    for norm in [n for n in model.graph if n.op_type == "LayerNormalization" and n.domain == ""]:
        add = _producer(norm.inputs[0], "Add")
        if add is None or _only_consumer(add.outputs[0], "LayerNormalization") is not norm:
            continue
        found.append((norm, add, norm.attributes.get("axis", ir.AttrInt64("axis", -1)).as_int()))
    return found


def _replace_node(model: ir.Model, norm: ir.Node, fused: ir.Node, suffix: str) -> None:
    """Put ``fused`` (one output, the type and shape of ``norm``'s: a LayerNormalization or the
    last node of what it replaces) before ``norm`` and move every use of norm's output to it; a
    graph output keeps its name (last_hidden_state), any other value is renamed
    ``<name>_<suffix>``. The nodes left unused go in the caller's cleanup."""
    fused.outputs[0].type = norm.outputs[0].type
    fused.outputs[0].shape = norm.outputs[0].shape
    model.graph.insert_before(norm, fused)
    old = norm.outputs[0]
    name, was_output = old.name, old.is_graph_output()
    old.replace_all_uses_with(fused.outputs[0], replace_graph_outputs=True)
    if was_output:
        old.name = f"{name}_unfused"
    fused.outputs[0].name = name if was_output else f"{name}_{suffix}"


def _int4_lookup(value: ir.Value) -> ir.Node | None:
    """The ``com.microsoft.GatherBlockQuantized`` that makes ``value`` when it is an int4 lookup of
    the form the embeddings pass writes (bitmaps/export/embeddings.py: rows of a uint8 table, no
    zero points, gather axis 0, quantize axis 1, float32 rows) and nothing else reads ``value``."""
    node = value.producer()
    if node is None or (node.domain, node.op_type) != (MS_DOMAIN, "GatherBlockQuantized"):
        return None
    attrs = {"bits": 4} | {k: a.as_int() for k, a in node.attributes.items()}  # 4: the default
    wanted = {"bits": 4, "gather_axis": 0, "quantize_axis": 1}
    if any(attrs.get(k, -1) != v for k, v in wanted.items()) or "block_size" not in attrs:
        return None
    if len(node.inputs) != 3 or value.dtype != ir.DataType.FLOAT or len(list(value.uses())) != 1:
        return None
    return None if value.is_graph_output() else node


def fuse_embed_layer_norms(model: ir.Model) -> int:
    """Every float32 ``LayerNormalization(Add(Add(a, b), c))`` over the last axis whose a, b and
    c are int4 lookups (:func:`_int4_lookup`) of one block size, indexed by tensors of one rank,
    as one ``bitmaps::EmbedLayerNormalization`` (BERT's word, token-type and position
    embeddings: three GatherBlockQuantized, two Add and the LayerNorm, six nodes that ONNX
    Runtime runs one after another on one thread, ~0.3 ms of binary BERT-base at 1 x 128, in one
    multi-threaded pass over the rows). Float addition is commutative, so the operand order of
    each Add does not matter; the sum is made in the graph's order. Returns how many; adds the
    function when any."""
    done = 0
    for norm, outer, axis in _norms_of_sums(model):
        if axis != -1 or len(norm.inputs) != 3 or norm.inputs[2] is None or len(norm.outputs) != 1:
            continue
        inner, last = _producer(outer.inputs[0], "Add"), outer.inputs[1]
        if inner is None:
            inner, last = _producer(outer.inputs[1], "Add"), outer.inputs[0]
        if inner is None or _only_consumer(inner.outputs[0], "Add") is not outer:
            continue
        lookups = [_int4_lookup(v) for v in (*inner.inputs, last)]
        if any(n is None for n in lookups):
            continue
        blocks = {n.attributes["block_size"].as_int() for n in lookups}
        ranks = {len(n.inputs[1].shape) if n.inputs[1].shape is not None else -1 for n in lookups}
        if len(blocks) != 1 or len(ranks) != 1 or -1 in ranks:
            continue
        eps = norm.attributes.get("epsilon", ir.AttrFloat32("epsilon", 1e-5)).as_float()
        inputs = [norm.inputs[1], norm.inputs[2]]
        for node in lookups:  # GatherBlockQuantized(data, indices, scales) -> ids, table, scale
            inputs += [node.inputs[1], node.inputs[0], node.inputs[2]]
        fused = ir.node(
            EMBED_LAYER_NORM_OP_TYPE, inputs, {"epsilon": eps, "block_size": blocks.pop()},
            domain=DOMAIN, name=f"{norm.name or 'layer_norm'}/embed_layer_norm",
        )  # fmt: skip
        _replace_node(model, norm, fused, "embed")
        done += 1
    if done:
        add_function(model, embed_layer_norm_function(opset_of(model)), only=False)
        model.graph.opset_imports.setdefault(MS_DOMAIN, 1)
        RemoveUnusedNodesPass()(model)
    return done


def fuse_skip_layer_norms(model: ir.Model) -> int:
    """Every float32 ``LayerNormalization(Add(a, b))`` over the last axis, where a and b have the
    same shape and the sum feeds nothing else, as one ``bitmaps::SkipLayerNormalization`` (the
    residual add and LayerNorm after each sublayer: libbitmaps_ort.so's kernel does both in one
    pass over the rows; ONNX Runtime's own SkipLayerNormalization was slower than the two nodes on
    the CPUs measured, see bitmaps/core/ort.py). Returns how many; adds the function when any."""
    done = 0
    for norm, add, axis in _norms_of_sums(model):
        a, b = add.inputs
        rank = len(a.shape) if a.shape is not None else 0
        if axis not in (-1, rank - 1) or len(norm.inputs) != 3 or norm.inputs[2] is None:
            continue
        if a.dtype != ir.DataType.FLOAT or a.shape is None or b.shape is None:
            continue
        if list(a.shape) != list(b.shape) or len(norm.outputs) != 1:
            continue
        eps = norm.attributes.get("epsilon", ir.AttrFloat32("epsilon", 1e-5)).as_float()
        fused = ir.node(
            SKIP_LAYER_NORM_OP_TYPE, [a, b, norm.inputs[1], norm.inputs[2]], {"epsilon": eps},
            domain=DOMAIN, name=f"{norm.name or 'layer_norm'}/skip_layer_norm",
        )  # fmt: skip
        _replace_node(model, norm, fused, "skip")
        done += 1
    if done:
        add_function(model, skip_layer_norm_function(opset_of(model)), only=False)
        RemoveUnusedNodesPass()(model)
    return done


def multi_head_attention_nodes(model: ir.Model) -> list[ir.Node]:
    """The fused attention nodes of either domain (bitmaps' or com.microsoft's), packed or not."""
    return [
        n for n in model.graph
        if (n.domain in (DOMAIN, MS_DOMAIN) and n.op_type == ATTENTION_OP_TYPE)
        or (n.domain == DOMAIN and n.op_type == PACKED_ATTENTION_OP_TYPE)
    ]  # fmt: skip


def int8_attention(model: ir.Model) -> int:
    """Every ``bitmaps`` attention node (packed or not) set to the int8 scheme (attribute
    ``int8 = 1``, csrc/kernels/cpu_attention.h) and the model's attention functions replaced by
    their int8 versions (the same bits, in standard ops). Returns how many nodes; 0 means the model
    has none (a float16 or baseline export keeps com.microsoft's attention)."""
    nodes = [
        n for n in model.graph
        if n.domain == DOMAIN and n.op_type in (ATTENTION_OP_TYPE, PACKED_ATTENTION_OP_TYPE)
    ]  # fmt: skip
    for node in nodes:
        node.attributes[ATTENTION_INT8] = ir.AttrInt64(ATTENTION_INT8, 1)
    opset = opset_of(model)
    for op_type in {n.op_type for n in nodes}:
        if op_type == ATTENTION_OP_TYPE:
            add_function(model, multi_head_attention_function(opset, int8=True), only=False)
        else:
            add_function(model, packed_multi_head_attention_function(opset, int8=True), only=False)
    return len(nodes)


def stack_qkv(model: ir.Model) -> int:
    """Every ``bitmaps::MultiHeadAttention`` fed by three BinaryLinear nodes that binarize the
    same input the same way (``act_threshold``, ``act_scale``, ``act_unsigned`` equal; no fused
    activation) and have equal widths, a multiple of the panel height 16, as ONE BinaryLinear
    with the three weights stacked (panels, scales and biases concatenated: Q, K, V side by side)
    feeding ``bitmaps::PackedMultiHeadAttention``, which reads Q, K and V in place. Returns how
    many.

    One node binarizes and packs the input once instead of three times and runs one GEMM of
    3 x the width in one parallel region. The node's name joins the three layers' names with
    ``+`` (:data:`~bitmaps.export.onnx_function.STACKED`), so export verification checks each
    third of its output against its own PyTorch layer. Layers trained with different activation
    thresholds or scales (``--activation-quantizer elastic``) stay three nodes.
    """
    done = 0
    for mha in [n for n in model.graph if n.domain == DOMAIN and n.op_type == ATTENTION_OP_TYPE]:
        stacked = _stack(model.graph, mha)
        if stacked is not None:
            done += 1
    if done:
        add_function(model, packed_multi_head_attention_function(opset_of(model)), only=False)
        RemoveUnusedNodesPass()(model)
        used = {v.name for n in model.graph for v in n.inputs if v is not None}
        for name in [n for n in model.graph.initializers if n not in used]:
            model.graph.initializers.pop(name)
    return done


def _stack(graph: ir.Graph, mha: ir.Node) -> ir.Node | None:
    """:func:`stack_qkv` for one attention node: the stacked BinaryLinear, or None."""
    inputs = [*mha.inputs, None, None, None, None][:4]
    linears = [v.producer() if v is not None else None for v in inputs[:3]]
    if (
        any(n is None or not is_binary_linear(n) for n in linears)
        or len(set(map(id, linears))) != 3
    ):
        return None
    x = linears[0].inputs[0]
    for node in linears:
        y = node.outputs[0]
        if node.inputs[0] is not x or len(list(y.uses())) != 1 or y.is_graph_output():
            return None
    attrs = [{k: a.value for k, a in n.attributes.items() if k != "out_features"} for n in linears]
    width = {n.attributes["out_features"].as_int() for n in linears}
    if attrs[1] != attrs[0] or attrs[2] != attrs[0] or attrs[0].get("activation", 0):
        return None
    if len(width) != 1 or next(iter(width)) % 16 or x.dtype != ir.DataType.FLOAT:
        return None
    consts = []  # per node: W panels, w_scale, bias (None when absent)
    for node in linears:
        values = [*node.inputs[1:], None, None, None][:3]
        tensors = [ir.convenience.get_const_tensor(v) if v is not None else None for v in values]
        if tensors[0] is None or len(tensors[0].shape) != 3 or tensors[1] is None:
            return None  # not the panel layout (lay_out_panels), or scales computed at run time
        if (values[2] is None) != (tensors[2] is None):
            return None
        consts.append([t.numpy() if t is not None else None for t in tensors])
    if len({c[2] is None for c in consts}) != 1:
        return None
    name = STACKED.join(n.name for n in linears)
    parts = ["packed_weight", "w_scale", "bias"]
    stacked_inputs = [x]
    for i, part in enumerate(parts):
        if consts[0][i] is None:
            continue
        array = np.concatenate([c[i] for c in consts], axis=0)
        value = ir.Value(name=f"{name}.{part}", const_value=ir.tensor(array, name=f"{name}.{part}"))
        value.shape, value.dtype = ir.Shape(array.shape), value.const_value.dtype
        graph.register_initializer(value)
        stacked_inputs.append(value)
    total = 3 * next(iter(width))
    linear = ir.node(
        linears[0].op_type, stacked_inputs,
        {**linears[0].attributes, "out_features": ir.AttrInt64("out_features", total)},
        domain=linears[0].domain, name=name,
    )  # fmt: skip
    q = linears[0].outputs[0]
    linear.outputs[0].dtype = ir.DataType.FLOAT
    if q.shape is not None:
        linear.outputs[0].shape = ir.Shape([*q.shape[:-1], total])
    linear.outputs[0].name = f"{q.name}_qkv"
    packed = ir.node(
        PACKED_ATTENTION_OP_TYPE, [linear.outputs[0], inputs[3]],
        dict(mha.attributes), domain=DOMAIN, name=f"{mha.name}_packed",
    )  # fmt: skip
    packed.outputs[0].type = mha.outputs[0].type
    packed.outputs[0].shape = mha.outputs[0].shape
    graph.insert_before(linears[0], linear)
    graph.insert_before(mha, packed)
    old = mha.outputs[0]
    name_out = old.name
    old.replace_all_uses_with(packed.outputs[0])
    old.name = f"{name_out}_unpacked"
    packed.outputs[0].name = name_out
    return linear


# --------------------------------------------------------------------------- tensorrt


def tensorrt(model: ir.Model, num_heads: int) -> None:
    """The fallback function with integer Div/Mod unpacking (TensorRT has no bitwise ops)."""
    del num_heads
    add_function(model, binary_linear_function(opset_of(model), unpack="arithmetic"))


def ops_outside_tensorrt(model: ir.Model) -> list[str]:
    """``domain::op`` of every node (main graph and functions) the TensorRT parser cannot import,
    BinaryLinear excepted (the plugin, or its function, which is checked itself)."""
    found: set[str] = set()
    functions = list(model.functions.values())
    for graph in (model.graph, *functions):
        for node in ir.traversal.RecursiveGraphIterator(graph):
            if is_binary_linear(node):
                continue
            if node.domain not in ("", "ai.onnx") or node.op_type not in TENSORRT_OPS:
                found.add(f"{node.domain or 'ai.onnx'}::{node.op_type}")
    return sorted(found)


PASSES = {"portable": portable, "onnxruntime": onnxruntime, "tensorrt": tensorrt}
