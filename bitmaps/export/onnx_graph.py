"""Reading exported models: taps on BinaryLinear nodes, a dtype audit, and the size accounting.

- :func:`tap_binary_linears` returns a copy whose graph also outputs every BinaryLinear node's
  input X and output Y (verification compares them layer by layer).
- :func:`float32_on_compute_path` lists every float32 tensor of the main graph except the
  ``w_scale``/``bias`` inputs of BinaryLinear nodes, which DESIGN.md fixes as float32 (the op reads
  them internally). An FP16 export must return an empty list. The model-local function's body is
  the op's implementation and computes in float32 by design; it is not part of the audit.
- :func:`packed_bytes` and :func:`fp32_parameter_bytes` give the summary line's numbers. The FP32
  baseline's size is computed, not exported: the parameters and buffers of the same architecture
  in full precision (tied weights counted once), which is what a baseline ONNX file stores as
  initializers. ``tests/test_export_cli.py`` compares that estimate with a real baseline export.
"""

from __future__ import annotations

import math

import onnx
import torch
from onnx import TensorProto, helper
from transformers import BertForMaskedLM

from bitmaps.export.onnx_function import (
    BINARY_FFN_OP_TYPE,
    binary_layer_nodes,
    binary_linear_nodes,
    node_layers,
)

_FLOAT32 = TensorProto.FLOAT


# (layer name, X name, Y name, part, parts): the layer's output is part `part` of `parts` equal
# slices of Y's last axis (one BinaryLinear node may hold several layers side by side, its name
# their names joined by onnx_function.STACKED, node_layers; otherwise part 0 of 1)
Tap = tuple[str, str, str, int, int]


def tap_binary_linears(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[Tap]]:
    """A copy with X and Y of every BinaryLinear and BinaryFeedForward node added as graph
    outputs.

    Returns the copy and its :data:`Tap` per layer (per BinaryFeedForward node: one, named after
    the node, ``first>second``), in graph order.
    """
    tapped = onnx.ModelProto()
    tapped.CopyFrom(model)
    types = {vi.name: vi.type.tensor_type.elem_type for vi in tapped.graph.value_info}
    types.update({vi.name: vi.type.tensor_type.elem_type for vi in tapped.graph.input})
    fallback = tapped.graph.output[0].type.tensor_type.elem_type
    existing = {o.name for o in tapped.graph.output}
    taps = []
    for node in binary_layer_nodes(tapped):
        x, y = node.input[0], node.output[0]
        layers = [node.name] if node.op_type == BINARY_FFN_OP_TYPE else node_layers(node)
        taps += [(layer, x, y, i, len(layers)) for i, layer in enumerate(layers)]
        for name in (x, y):
            if name not in existing:
                elem = types.get(name, fallback)
                tapped.graph.output.append(helper.make_tensor_value_info(name, elem, None))
                existing.add(name)
    return tapped, taps


def _op_inputs_allowed(model: onnx.ModelProto) -> set[str]:
    """The binary nodes' w_scale and bias inputs (float32 by the op's contract)."""
    allowed = {name for node in binary_linear_nodes(model) for name in node.input[2:4]}
    for node in binary_layer_nodes(model):
        if node.op_type == BINARY_FFN_OP_TYPE:
            allowed.update((*node.input[2:4], *node.input[5:7]))
    return allowed


def float32_on_compute_path(model: onnx.ModelProto) -> list[str]:
    """Every float32 tensor, cast or constant of the main graph, except BinaryLinear's scales."""
    allowed = _op_inputs_allowed(model)
    inferred = onnx.shape_inference.infer_shapes(model)
    g = inferred.graph
    found: list[str] = []
    for t in g.initializer:
        if t.data_type == _FLOAT32 and t.name not in allowed:
            found.append(f"initializer {t.name}")
    for vi in (*g.input, *g.output, *g.value_info):
        if vi.type.tensor_type.elem_type == _FLOAT32 and vi.name not in allowed:
            found.append(f"tensor {vi.name}")
    for node in g.node:
        for a in node.attribute:
            if node.op_type == "Cast" and a.name == "to" and a.i == _FLOAT32:
                found.append(f"Cast to float32 in node {node.name}")
            if a.type == onnx.AttributeProto.TENSOR and a.t.data_type == _FLOAT32:
                found.append(f"float32 constant in node {node.name}")
    typed = {vi.name for vi in (*g.input, *g.output, *g.value_info)}
    typed |= {t.name for t in g.initializer}
    untyped = [o for node in g.node for o in node.output if o and o not in typed]
    found.extend(f"untyped tensor {name} (cannot vouch for its dtype)" for name in untyped)
    return found


def packed_bytes(model: onnx.ModelProto) -> int:
    """Bytes of the packed int32 weights of all BinaryLinear and BinaryFeedForward nodes."""
    inits = {t.name: t for t in model.graph.initializer}
    total = 0
    for node in binary_layer_nodes(model):
        weights = (1, 4) if node.op_type == BINARY_FFN_OP_TYPE else (1,)
        for i in weights:
            total += 4 * math.prod(inits[node.input[i]].dims)
    return total


def initializer_bytes(model: onnx.ModelProto) -> int:
    """Bytes of all initializers' data (what dominates an ONNX file's size)."""
    total = 0
    for t in model.graph.initializer:
        count = 1
        for d in t.dims:
            count *= d
        total += count * helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
    return total


def fp32_parameter_bytes(config: object) -> int:
    """Parameter + buffer bytes of a full-precision ``BertForMaskedLM(config)`` in float32.

    Built on the meta device (no memory, no time); tied tensors counted once; integer buffers
    (position ids) at their own size.
    """

    with torch.device("meta"):
        model = BertForMaskedLM(config)
    seen: set[int] = set()
    total = 0
    for t in (*model.parameters(), *model.buffers()):
        if id(t) in seen:
            continue
        seen.add(id(t))
        size = 4 if t.is_floating_point() else t.element_size()
        total += t.numel() * size
    return total
