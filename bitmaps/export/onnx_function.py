"""The ``bitmaps::BinaryLinear`` ONNX op: its names, its schema, and its model-local function.

DESIGN.md fixes the op (domain ``bitmaps``, version 1; inputs X, W, w_scale, bias; attributes
``in_features``, ``out_features``, ``act_threshold``, ``act_scale``, ``act_unsigned``,
``plugin_version``, ``plugin_namespace``). Every exported binary model carries
:func:`binary_linear_function`, a FunctionProto of the same name built from standard ONNX ops only
(opset ≥ 18), so plain onnxruntime, or any runtime with model-local functions and those ops,
runs the file without bitmaps, correctly if slowly (tested in onnxruntime only)::

    W bits    BitwiseAnd(W[..., None], 1 << j) != 0   (int32, opset 18)  → ±1, [N, K], transposed
    x         Cast(X, float32) − β ;  sign: Where(x < 0, −1, +1)          (sign(0) = +1)
    a         Where(act_unsigned, Cast(x > 0, float32), sign)   ({0, 1} for two-set binarization;
              ``act_unsigned`` defaults to 0 in the function, as in the op, so a node without it
              is a signed layer)
    s         Where(act_scale > 0, act_scale, ReduceMean(|x|, axis −1))  (the attribute is a
              Constant with ``ref_attr_name``; both branches are computed, Where selects)
    Y         CastLike((a @ W±1ᵀ) · s · w_scale + bias, X)

The body computes in float32 whatever the dtype of X, exactly like the reference op in
bitmaps/core/ops.py: a ±1 dot product over K = 3072 is an integer up to 3072, which float16 cannot hold
exactly (its integers stop at 2048), and ``w_scale``/``bias`` are float32 inputs by contract.
BitShift is not used because ONNX defines it for unsigned types only; BitwiseAnd takes int32.

The ONNX Runtime export (``--target onnxruntime``) stores W in the CPU GEMM's panel layout
``[ceil(N/16), KW, 16]`` (``panels=True``): its function first turns either layout back into
rows (:func:`_weight_rows`), and takes the optional ``activation`` attribute (1: GELU applied to
Y, the target's fusion of BinaryLinear → Gelu; :func:`_activation`).

The TensorRT export (``--target tensorrt``) carries the same function with the weight bits read by
integer arithmetic instead (``unpack="arithmetic"``: Less/Where/Sub for the sign bit, then
Div by 2^j and Mod 2, all int32), because the ONNX-TensorRT parser supports neither BitwiseAnd
nor BitShift. The weights are initializers, so TensorRT folds the unpacking into a constant ±1
matrix at build time when it imports the function instead of the plugin.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from bitmaps.core import attention_scheme as i8

DOMAIN = "bitmaps"
OP_TYPE = "BinaryLinear"
OP_VERSION = 1
PLUGIN_VERSION = "1"
PLUGIN_NAMESPACE = "bitmaps"
INPUTS = ("X", "W", "w_scale", "bias")
ATTRIBUTES = (
    "in_features",
    "out_features",
    "act_threshold",
    "act_scale",
    "act_unsigned",
    "plugin_version",
    "plugin_namespace",
)
# attributes a node may omit, with the value the op and the function then use (DESIGN.md)
ATTRIBUTE_DEFAULTS: dict[str, int] = {"act_unsigned": 0}
MIN_OPSET = 18  # BitwiseAnd, ReduceMean with axes as an input


def binary_linear_schema() -> onnx.defs.OpSchema:
    """An (unregistered) OpSchema of the op, for tools that need one to emit the node."""
    schema = onnx.defs.OpSchema
    param = schema.FormalParameter
    attr = schema.Attribute
    return schema(
        OP_TYPE,
        DOMAIN,
        OP_VERSION,
        doc="1-bit linear layer: sign(X − β) XNOR packed sign(W), popcount, scales, bias.",
        inputs=[
            param("X", "T"),
            param("W", "tensor(int32)"),
            param("w_scale", "tensor(float)"),
            param("bias", "tensor(float)"),
        ],
        outputs=[param("Y", "T")],
        type_constraints=[("T", ["tensor(float)", "tensor(float16)"], "activations")],
        attributes=[
            attr("in_features", schema.AttrType.INT, "K"),
            attr("out_features", schema.AttrType.INT, "N"),
            attr("act_threshold", schema.AttrType.FLOAT, "β, subtracted before the sign"),
            attr("act_scale", schema.AttrType.FLOAT, "> 0: fixed scale; 0: per-row mean |X − β|"),
            attr("act_unsigned", schema.AttrType.INT, "0: activations to ±1; 1: to {0, 1}"),
            attr("plugin_version", schema.AttrType.STRING, '"1"'),
            attr("plugin_namespace", schema.AttrType.STRING, '"bitmaps"'),
        ],
    )


def _const(name: str, value: np.ndarray) -> onnx.NodeProto:
    return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(value, name))


def _const_from_attr(name: str, field: str, ref: str, kind: int) -> onnx.NodeProto:
    node = helper.make_node("Constant", [], [name])
    attribute = onnx.AttributeProto(name=field, ref_attr_name=ref, type=kind)
    node.attribute.append(attribute)
    return node


def _bit_masks() -> np.ndarray:
    """``1 << j`` for j = 0..31 as int32 (bit 31 is the sign bit: −2**31)."""
    return (np.uint32(1) << np.arange(32, dtype=np.uint32)).view(np.int32)


UNPACKS = ("bitwise", "arithmetic")


def _weight_rows() -> list[onnx.NodeProto]:
    """W as packed rows [N, KW] (``W_rows``) from either layout the op takes.

    Rows ``[N, KW]`` or the CPU GEMM's panels ``[ceil(N/16), KW, 16]`` (``--target onnxruntime``):
    both are read as ``[P, KW, L]`` (rows: L = 1), turned into ``[P·L, KW]`` and cut to N rows, so
    one body serves both (for rows the nodes change nothing).
    """
    return [
        _const_from_attr("n", "value_int", "out_features", onnx.AttributeProto.INT),
        _const("lanes_last", np.array([0, 0, -1], np.int64)),
        _const("any_rows", np.array([-1], np.int64)),
        helper.make_node("Reshape", ["W", "lanes_last"], ["w_lanes"]),
        helper.make_node("Transpose", ["w_lanes"], ["w_lanes_t"], perm=[0, 2, 1]),
        helper.make_node("Shape", ["W"], ["kw_1d"], start=1, end=2),
        helper.make_node("Concat", ["any_rows", "kw_1d"], ["rows_shape"], axis=0),
        helper.make_node("Reshape", ["w_lanes_t", "rows_shape"], ["w_padded_rows"]),
        helper.make_node("Unsqueeze", ["n", "start"], ["n_1d"]),  # "start": [0], defined first
        helper.make_node("Slice", ["w_padded_rows", "start", "n_1d", "start"], ["W_rows"]),
    ]


def _weight_bits_bitwise(w: str) -> list[onnx.NodeProto]:
    """W [N, KW] → ``w_positive`` [N, KW, 32]: BitwiseAnd with ``1 << j`` (opset 18)."""
    return [
        _const("bit_masks", _bit_masks()),
        helper.make_node("Unsqueeze", [w, "last_axis"], ["w_words"]),
        helper.make_node("BitwiseAnd", ["w_words", "bit_masks"], ["w_bits"]),
        helper.make_node("Equal", ["w_bits", "zero_i32"], ["w_positive"]),
    ]


def _weight_bits_arithmetic(w: str) -> list[onnx.NodeProto]:
    """W [N, KW] → ``w_positive`` [N, KW, 32] with integer Div/Mod only (no bitwise ops).

    Bit 31 is the sign of the int32 word. Bits 0..30 are those of ``low = W − (W < 0 ? −2³¹ : 0)``,
    which lies in [0, 2³¹) without overflow; bit j = ``(low / 2^j) mod 2``. For the ONNX-TensorRT
    parser, which has no BitwiseAnd or BitShift.
    """
    powers = (np.int64(1) << np.arange(31, dtype=np.int64)).astype(np.int32)
    return [
        _const("int_min", np.array(np.iinfo(np.int32).min, np.int32)),
        _const("two_i32", np.array(2, np.int32)),
        _const("powers_of_two", powers),
        helper.make_node("Less", [w, "zero_i32"], ["w_negative"]),
        helper.make_node("Where", ["w_negative", "int_min", "zero_i32"], ["w_top"]),
        helper.make_node("Sub", [w, "w_top"], ["w_low"]),
        helper.make_node("Unsqueeze", ["w_low", "last_axis"], ["w_low_3d"]),
        helper.make_node("Div", ["w_low_3d", "powers_of_two"], ["w_shifted"]),
        helper.make_node("Mod", ["w_shifted", "two_i32"], ["w_low_bits"]),
        helper.make_node("Cast", ["w_negative"], ["w_top_bit"], to=TensorProto.INT32),
        helper.make_node("Unsqueeze", ["w_top_bit", "last_axis"], ["w_top_bit_3d"]),
        helper.make_node("Concat", ["w_low_bits", "w_top_bit_3d"], ["w_bits"], axis=-1),
        helper.make_node("Equal", ["w_bits", "zero_i32"], ["w_positive"]),
    ]


def _activation() -> list[onnx.NodeProto]:
    """``y32`` → ``y_act``: GELU (erf form, as torch's ``gelu``) where the node's ``activation``
    attribute is 1, else ``y32`` unchanged (both computed, Where selects)."""
    return [
        _const_from_attr("activation_i", "value_int", "activation", onnx.AttributeProto.INT),
        _const("rsqrt2", np.array(1 / np.sqrt(2), np.float32)),
        _const("half", np.array(0.5, np.float32)),
        helper.make_node("Cast", ["activation_i"], ["use_gelu"], to=TensorProto.BOOL),
        helper.make_node("Mul", ["y32", "rsqrt2"], ["y_over_sqrt2"]),
        helper.make_node("Erf", ["y_over_sqrt2"], ["y_erf"]),
        helper.make_node("Add", ["y_erf", "plus_one"], ["y_erf_plus_one"]),
        helper.make_node("Mul", ["y32", "half"], ["y_half"]),
        helper.make_node("Mul", ["y_half", "y_erf_plus_one"], ["y_gelu"]),
        helper.make_node("Where", ["use_gelu", "y_gelu", "y32"], ["y_act"]),
    ]


def binary_linear_function(
    opset: int, unpack: str = "bitwise", panels: bool = False, activation: bool = False
) -> onnx.FunctionProto:
    """The model-local function ``bitmaps::BinaryLinear`` for a model importing ``opset``.

    ``unpack``: how the weight bits are read, ``"bitwise"`` (BitwiseAnd; the portable export) or
    ``"arithmetic"`` (integer Div/Mod; the TensorRT export). Both give the same ±1 matrix.
    ``panels``: the body also takes W in the CPU GEMM's panel layout (:func:`_weight_rows`; the
    ``onnxruntime`` export stores its weights that way). ``activation``: the function declares
    the optional ``activation`` attribute (0, default: none; 1: GELU applied to Y, the
    ``onnxruntime`` export's fusion of BinaryLinear → Gelu) and applies it (:func:`_activation`).
    """
    if opset < MIN_OPSET:
        raise ValueError(f"the BinaryLinear function needs opset >= {MIN_OPSET}, got {opset}")
    if unpack not in UNPACKS:
        raise ValueError(f"unpack must be one of {', '.join(UNPACKS)}, got {unpack!r}")
    f32 = TensorProto.FLOAT
    w = "W_rows" if panels else "W"
    weight_bits = _weight_bits_bitwise(w) if unpack == "bitwise" else _weight_bits_arithmetic(w)
    nodes = [
        _const_from_attr("k", "value_int", "in_features", onnx.AttributeProto.INT),
        _const_from_attr("beta", "value_float", "act_threshold", onnx.AttributeProto.FLOAT),
        _const_from_attr("fixed_scale", "value_float", "act_scale", onnx.AttributeProto.FLOAT),
        _const_from_attr("unsigned_i", "value_int", "act_unsigned", onnx.AttributeProto.INT),
        _const("zero_i32", np.array(0, np.int32)),
        _const("zero", np.array(0, np.float32)),
        _const("plus_one", np.array(1, np.float32)),
        _const("minus_one", np.array(-1, np.float32)),
        _const("last_axis", np.array([-1], np.int64)),
        _const("start", np.array([0], np.int64)),
        _const("rows_by_bits", np.array([0, -1], np.int64)),
        # W [N, KW] → bits [N, KW, 32] → ±1 [N, 32·KW] → [N, K] (drop padding) → [K, N]
        *(_weight_rows() if panels else []),
        *weight_bits,
        helper.make_node("Where", ["w_positive", "plus_one", "minus_one"], ["w_signs_3d"]),
        helper.make_node("Reshape", ["w_signs_3d", "rows_by_bits"], ["w_signs_padded"]),
        helper.make_node("Unsqueeze", ["k", "start"], ["k_1d"]),
        helper.make_node("Slice", ["w_signs_padded", "start", "k_1d", "last_axis"], ["w_signs"]),
        helper.make_node("Transpose", ["w_signs"], ["w_signs_t"], perm=[1, 0]),
        # activations, in float32
        helper.make_node("Cast", ["X"], ["x32"], to=f32),
        helper.make_node("Sub", ["x32", "beta"], ["x_centered"]),
        helper.make_node("Less", ["x_centered", "zero"], ["x_negative"]),
        helper.make_node("Where", ["x_negative", "minus_one", "plus_one"], ["x_pm"]),
        helper.make_node("Greater", ["x_centered", "zero"], ["x_positive"]),
        helper.make_node("Cast", ["x_positive"], ["x_01"], to=f32),
        helper.make_node("Cast", ["unsigned_i"], ["unsigned"], to=TensorProto.BOOL),
        helper.make_node("Where", ["unsigned", "x_01", "x_pm"], ["x_signs"]),
        helper.make_node("Abs", ["x_centered"], ["x_abs"]),
        helper.make_node("ReduceMean", ["x_abs", "last_axis"], ["row_scale"], keepdims=1),
        helper.make_node("Greater", ["fixed_scale", "zero"], ["use_fixed_scale"]),
        helper.make_node("Where", ["use_fixed_scale", "fixed_scale", "row_scale"], ["scale"]),
        # the same order of float operations as bitmaps.core.ops.reference_binary_linear
        helper.make_node("MatMul", ["x_signs", "w_signs_t"], ["dot"]),
        helper.make_node("Mul", ["dot", "scale"], ["dot_scaled"]),
        helper.make_node("Mul", ["dot_scaled", "w_scale"], ["y_scaled"]),
        helper.make_node("Add", ["y_scaled", "bias"], ["y32"]),
        *(_activation() if activation else []),
        helper.make_node("CastLike", ["y_act" if activation else "y32", "X"], ["Y"]),
    ]
    defaults = {**ATTRIBUTE_DEFAULTS, **({"activation": 0} if activation else {})}
    return helper.make_function(
        DOMAIN,
        OP_TYPE,
        list(INPUTS),
        ["Y"],
        nodes,
        opset_imports=[helper.make_opsetid("", opset)],
        attributes=[a for a in ATTRIBUTES if a not in ATTRIBUTE_DEFAULTS],
        attribute_protos=[helper.make_attribute(k, v) for k, v in defaults.items()],
        doc_string=f"bitmaps::BinaryLinear from standard ops (see DESIGN.md; {unpack} weight "
        f"unpacking{'; W as rows or panels' if panels else ''}"
        f"{'; optional GELU' if activation else ''}); float32 inside.",
    )


# A BinaryLinear node that holds several layers side by side in its output (the onnxruntime
# target's stacked Q, K and V) is named after them, joined by this
STACKED = "+"
# A bitmaps::BinaryFeedForward node (two layers, the first feeding the second) is named after its
# layers, joined by this
FEEDS = ">"


def node_layers(node: onnx.NodeProto) -> list[str]:
    """The layers a BinaryLinear node holds, by name: its own, or those it stacks; for a
    BinaryFeedForward node, its two layers in order."""
    if node.op_type == BINARY_FFN_OP_TYPE:
        return node.name.split(FEEDS)
    return node.name.split(STACKED)


ATTENTION_OP_TYPE = "MultiHeadAttention"
ATTENTION_INPUTS = ("query", "key", "value", "attention_bias")
ATTENTION_ATTRIBUTES = ("num_heads", "scale")


def multi_head_attention_function(opset: int, int8: bool = False) -> onnx.FunctionProto:
    """The model-local function ``bitmaps::MultiHeadAttention`` (``--target onnxruntime``, binary
    float32 models): BERT's eager attention from standard ops, as torch.onnx traces it::

        Qh = Transpose(Reshape(query, [0, 0, num_heads, -1]), 0 2 1 3)      (Vh the same)
        Kᵀh = Transpose(Reshape(key, [0, 0, num_heads, -1]), 0 2 3 1)
        out = Reshape(Transpose(Softmax(Qh·Kᵀh · scale + attention_bias) · Vh, 0 2 1 3), [0, 0, -1])

    libbitmaps_ort.so runs the node on its own kernel instead (csrc/kernels/cpu_attention.h),
    where ``attention_bias`` is optional; the function needs it (the export always passes BERT's
    mask) and both attributes.
    """
    if int8:
        return _attention_function(
            ATTENTION_OP_TYPE, ATTENTION_INPUTS, _attention_nodes(opset, int8=True), opset,
            "bitmaps::MultiHeadAttention (int8 = 1) from standard ops: the int8 scheme of "
            "csrc/kernels/cpu_attention.h, the same bits as the kernel.", int8=True,
        )  # fmt: skip
    return _attention_function(
        ATTENTION_OP_TYPE, ATTENTION_INPUTS, _attention_nodes(opset), opset,
        "bitmaps::MultiHeadAttention from standard ops (eager BERT attention).",
    )  # fmt: skip


PACKED_ATTENTION_OP_TYPE = "PackedMultiHeadAttention"
PACKED_ATTENTION_INPUTS = ("qkv", "attention_bias")


def packed_multi_head_attention_function(opset: int, int8: bool = False) -> onnx.FunctionProto:
    """The model-local function ``bitmaps::PackedMultiHeadAttention``: ``qkv [B, S, 3 * hidden]``
    (Q, K and V side by side: one BinaryLinear with the three projections' weights stacked) split
    in three, then :func:`multi_head_attention_function`'s nodes. libbitmaps_ort.so's kernel reads
    Q, K and V in place instead."""
    split = helper.make_node("Split", ["qkv"], ["query", "key", "value"], axis=-1, num_outputs=3)
    return _attention_function(
        PACKED_ATTENTION_OP_TYPE, PACKED_ATTENTION_INPUTS,
        [split, *_attention_nodes(opset, int8=int8)], opset,
        "bitmaps::PackedMultiHeadAttention from standard ops (Split + "
        + ("the int8 scheme of csrc/kernels/cpu_attention.h)." if int8 else "eager attention)."),
        int8=int8,
    )  # fmt: skip


# The optional attribute of both attention ops: 1 selects the int8 scheme (cpu_attention.h); a
# file's functions implement the scheme its nodes ask for (the export writes both).
ATTENTION_INT8 = "int8"


def _attention_function(
    op_type: str, inputs: tuple[str, ...], nodes: list[onnx.NodeProto], opset: int, doc: str,
    int8: bool = False,
) -> onnx.FunctionProto:  # fmt: skip
    attributes = [*ATTENTION_ATTRIBUTES, *([ATTENTION_INT8] if int8 else [])]
    return helper.make_function(
        DOMAIN, op_type, list(inputs), ["output"], nodes,
        opset_imports=[helper.make_opsetid("", opset)], attributes=attributes,
        doc_string=doc,
    )  # fmt: skip


def _round_int8_nodes(x: str, axis: str, use: str | None = None) -> list[onnx.NodeProto]:
    """``{x}8`` (integers in [-127, 127], float32) and ``{x}_sc`` (scales, keepdims) along the
    axis held by the constant ``axis``, only the elements where the boolean ``use`` is set (if
    given): bitmaps.core.int8_attention.round_int8."""
    magnitude = [helper.make_node("Abs", [x], [f"{x}_abs" if use is None else f"{x}_abs_any"])]
    if use is not None:
        magnitude.append(helper.make_node("Where", [use, f"{x}_abs_any", "f_zero"], [f"{x}_abs"]))
    rounded = f"{x}8" if use is None else f"{x}8_any"
    return [
        *magnitude,
        helper.make_node("ReduceMax", [f"{x}_abs", axis], [f"{x}_amax"], keepdims=1),
        helper.make_node("Greater", [f"{x}_amax", "f_zero"], [f"{x}_nonzero"]),
        helper.make_node("Div", ["f_levels", f"{x}_amax"], [f"{x}_mul_any"]),
        helper.make_node("Where", [f"{x}_nonzero", f"{x}_mul_any", "f_zero"], [f"{x}_mul"]),
        helper.make_node("Div", [f"{x}_amax", "f_levels"], [f"{x}_sc_any"]),
        helper.make_node("Where", [f"{x}_nonzero", f"{x}_sc_any", "f_one"], [f"{x}_sc"]),
        helper.make_node("Mul", [x, f"{x}_mul"], [f"{x}_scaled"]),
        helper.make_node("Round", [f"{x}_scaled"], [rounded]),
        *([] if use is None else [helper.make_node("Where", [use, rounded, "f_zero"], [f"{x}8"])]),
    ]


def _int8_attention_nodes() -> list[onnx.NodeProto]:
    """From the heads ``q_h [B, H, S, D]``, ``k_h [B, H, T, D]``, ``v_h [B, H, T, Dv]``,
    ``scale_value`` and ``attention_bias`` to ``context [B, H, S, Dv]`` in the int8 scheme, one
    standard op per float32 operation of bitmaps.core.int8_attention (so the same bits)."""
    f32 = np.float32
    poly = []
    for i in range(1, len(i8.EXP_POLY)):
        prev = "exp_c0" if i == 1 else f"exp_p{i - 1}"
        poly += [
            helper.make_node("Mul", [prev, "exp_r"], [f"exp_pr{i}"]),
            helper.make_node("Add", [f"exp_pr{i}", f"exp_c{i}"], [f"exp_p{i}"]),
        ]
    last = f"exp_p{len(i8.EXP_POLY) - 1}"
    return [
        _const("f_zero", np.array(0.0, f32)),
        _const("f_one", np.array(1.0, f32)),
        _const("f_levels", np.array(i8.LEVELS, f32)),
        _const("exp_floor", np.array(i8.EXP_FLOOR, f32)),
        _const("log2e", np.array(i8.LOG2E, f32)),
        _const("ln2", np.array(i8.LN2, f32)),
        *[_const(f"exp_c{i}", np.array(c, f32)) for i, c in enumerate(i8.EXP_POLY)],
        _const("two_pow", np.array(i8.TWO_POW, f32)),
        _const("axis_last", np.array([-1], np.int64)),
        _const("axis_keys", np.array([-2], np.int64)),
        *_round_int8_nodes("q_h", "axis_last"),
        *_round_int8_nodes("k_h", "axis_last"),
        helper.make_node("Transpose", ["k_h8"], ["k_h8_t"], perm=[0, 1, 3, 2]),
        helper.make_node("Transpose", ["k_h_sc"], ["k_h_sc_t"], perm=[0, 1, 3, 2]),
        helper.make_node("MatMul", ["q_h8", "k_h8_t"], ["dot"]),  # exact: integers below 2^24
        helper.make_node("Mul", ["dot", "q_h_sc"], ["dot_q"]),
        helper.make_node("Mul", ["k_h_sc_t", "scale_value"], ["k_scale"]),
        helper.make_node("Mul", ["dot_q", "k_scale"], ["scores_scaled"]),
        helper.make_node("Add", ["scores_scaled", "attention_bias"], ["scores_biased"]),
        helper.make_node("ReduceMax", ["scores_biased", "axis_last"], ["row_max"], keepdims=1),
        helper.make_node("Sub", ["scores_biased", "row_max"], ["exp_x_any"]),
        helper.make_node("Max", ["exp_x_any", "exp_floor"], ["exp_x"]),
        helper.make_node("Mul", ["exp_x", "log2e"], ["exp_x2"]),
        helper.make_node("Round", ["exp_x2"], ["exp_n"]),
        helper.make_node("Mul", ["exp_n", "ln2"], ["exp_nln2"]),
        helper.make_node("Sub", ["exp_x", "exp_nln2"], ["exp_r"]),
        *poly,
        helper.make_node("Mul", [last, "exp_r"], ["exp_pr_last"]),
        helper.make_node("Add", ["exp_pr_last", "f_one"], ["exp_poly"]),
        helper.make_node("Neg", ["exp_n"], ["exp_minus_n"]),
        helper.make_node("Cast", ["exp_minus_n"], ["exp_index"], to=TensorProto.INT64),
        helper.make_node("Gather", ["two_pow", "exp_index"], ["exp_two_n"]),
        helper.make_node("Mul", ["exp_poly", "exp_two_n"], ["exp_e"]),
        helper.make_node("Mul", ["exp_e", "f_levels"], ["levels_any"]),
        helper.make_node("Round", ["levels_any"], ["levels"]),
        # V over the keys some row gives a level > 0 (the rest 0)
        helper.make_node("ReduceMax", ["levels", "axis_keys"], ["key_top"], keepdims=1),
        helper.make_node("Greater", ["key_top", "f_zero"], ["attended_row"]),
        helper.make_node("Transpose", ["attended_row"], ["attended"], perm=[0, 1, 3, 2]),
        *_round_int8_nodes("v_h", "axis_keys", "attended"),
        helper.make_node("ReduceSum", ["levels", "axis_last"], ["levels_sum"], keepdims=1),
        helper.make_node("MatMul", ["levels", "v_h8"], ["acc"]),  # exact: integers below 2^24
        helper.make_node("Mul", ["acc", "v_h_sc"], ["acc_scaled"]),
        helper.make_node("Div", ["acc_scaled", "levels_sum"], ["context"]),
    ]


def _attention_nodes(opset: int, int8: bool = False) -> list[onnx.NodeProto]:
    """The eager attention from ``query``, ``key``, ``value`` and ``attention_bias`` to ``output``
    (``int8``: the int8 scheme between the heads' split and merge)."""
    if opset < MIN_OPSET:
        raise ValueError(f"the attention function needs opset >= {MIN_OPSET}, got {opset}")
    if int8:
        middle = [
            helper.make_node("Transpose", ["k_heads"], ["k_h"], perm=[0, 2, 1, 3]),
            *_int8_attention_nodes(),
        ]
    else:
        middle = [
            helper.make_node("Transpose", ["k_heads"], ["k_t"], perm=[0, 2, 3, 1]),
            helper.make_node("MatMul", ["q_h", "k_t"], ["scores"]),
            helper.make_node("Mul", ["scores", "scale_value"], ["scores_scaled"]),
            helper.make_node("Add", ["scores_scaled", "attention_bias"], ["scores_biased"]),
            helper.make_node("Softmax", ["scores_biased"], ["probs"], axis=-1),
            helper.make_node("MatMul", ["probs", "v_h"], ["context"]),
        ]
    return [
        _const_from_attr("heads", "value_int", "num_heads", onnx.AttributeProto.INT),
        _const_from_attr("scale_value", "value_float", "scale", onnx.AttributeProto.FLOAT),
        _const("zeros_2", np.array([0, 0], np.int64)),
        _const("minus_one_1d", np.array([-1], np.int64)),
        _const("axis_0", np.array([0], np.int64)),
        _const("flat_shape", np.array([0, 0, -1], np.int64)),
        helper.make_node("Unsqueeze", ["heads", "axis_0"], ["heads_1d"]),
        helper.make_node(
            "Concat", ["zeros_2", "heads_1d", "minus_one_1d"], ["heads_shape"], axis=0
        ),
        helper.make_node("Reshape", ["query", "heads_shape"], ["q_heads"]),
        helper.make_node("Transpose", ["q_heads"], ["q_h"], perm=[0, 2, 1, 3]),
        helper.make_node("Reshape", ["key", "heads_shape"], ["k_heads"]),
        helper.make_node("Reshape", ["value", "heads_shape"], ["v_heads"]),
        helper.make_node("Transpose", ["v_heads"], ["v_h"], perm=[0, 2, 1, 3]),
        *middle,
        helper.make_node("Transpose", ["context"], ["context_t"], perm=[0, 2, 1, 3]),
        helper.make_node("Reshape", ["context_t", "flat_shape"], ["output"]),
    ]


SKIP_LAYER_NORM_OP_TYPE = "SkipLayerNormalization"
SKIP_LAYER_NORM_INPUTS = ("input", "skip", "gamma", "beta")


def skip_layer_norm_function(opset: int) -> onnx.FunctionProto:
    """The model-local function ``bitmaps::SkipLayerNormalization`` (``--target onnxruntime``,
    binary float32 models): ``LayerNormalization(input + skip, gamma, beta)`` over the last axis
    with the node's ``epsilon``. libbitmaps_ort.so runs the node on its own kernel instead
    (csrc/kernels/cpu_layer_norm.h), where ``beta`` is optional; the function needs it (BERT's
    LayerNorms have one). It reads ``beta`` through an Identity, so that ONNX Runtime refuses a
    node without it when the session is created (naming the node: an Identity input "expected to
    have type but instead is null"); passed on to LayerNormalization as it is, a missing ``beta``
    crashed ONNX Runtime 1.32 (SIGSEGV)."""
    if opset < MIN_OPSET:
        raise ValueError(f"the SkipLayerNormalization function needs opset >= {MIN_OPSET}")
    beta = helper.make_node("Identity", ["beta"], ["beta_required"])
    norm = helper.make_node(
        "LayerNormalization", ["sum", "gamma", "beta_required"], ["output"], axis=-1
    )
    norm.attribute.append(
        onnx.AttributeProto(name="epsilon", ref_attr_name="epsilon", type=onnx.AttributeProto.FLOAT)
    )
    return helper.make_function(
        DOMAIN,
        SKIP_LAYER_NORM_OP_TYPE,
        list(SKIP_LAYER_NORM_INPUTS),
        ["output"],
        [helper.make_node("Add", ["input", "skip"], ["sum"]), beta, norm],
        opset_imports=[helper.make_opsetid("", opset)],
        attributes=["epsilon"],
        doc_string="bitmaps::SkipLayerNormalization from standard ops (Add + LayerNormalization).",
    )


EMBED_LAYER_NORM_OP_TYPE = "EmbedLayerNormalization"
EMBED_LAYER_NORM_INPUTS = (
    "gamma", "beta", "ids_0", "table_0", "scale_0", "ids_1", "table_1", "scale_1",
    "ids_2", "table_2", "scale_2",
)  # fmt: skip
MS_DOMAIN = "com.microsoft"


def embed_layer_norm_function(opset: int) -> onnx.FunctionProto:
    """The model-local function ``bitmaps::EmbedLayerNormalization`` (``--target onnxruntime``,
    binary float32 models with int4 embeddings): three ``com.microsoft.GatherBlockQuantized``
    lookups (4 bits, zero point 8, the node's ``block_size``), added in order, then
    ``LayerNormalization`` over the last axis with the node's ``epsilon``: the nodes the export
    replaced. libbitmaps_ort.so runs the node on its own kernel instead (csrc/kernels/cpu_embed.h).
    ONNX Runtime only (the lookups are its contrib op), like the target."""
    if opset < MIN_OPSET:
        raise ValueError(f"the EmbedLayerNormalization function needs opset >= {MIN_OPSET}")
    block = onnx.AttributeProto(
        name="block_size", ref_attr_name="block_size", type=onnx.AttributeProto.INT
    )
    nodes = []
    for i in range(3):
        # 4 bits: the default (ONNX Runtime 1.21 and older reject a `bits` attribute)
        lookup = helper.make_node(
            "GatherBlockQuantized", [f"table_{i}", f"ids_{i}", f"scale_{i}"], [f"rows_{i}"],
            domain=MS_DOMAIN, gather_axis=0, quantize_axis=1,
        )  # fmt: skip
        lookup.attribute.append(block)
        nodes.append(lookup)
    nodes.append(helper.make_node("Add", ["rows_0", "rows_1"], ["sum_01"]))
    nodes.append(helper.make_node("Add", ["sum_01", "rows_2"], ["sum"]))
    norm = helper.make_node("LayerNormalization", ["sum", "gamma", "beta"], ["output"], axis=-1)
    norm.attribute.append(
        onnx.AttributeProto(name="epsilon", ref_attr_name="epsilon", type=onnx.AttributeProto.FLOAT)
    )
    nodes.append(norm)
    return helper.make_function(
        DOMAIN,
        EMBED_LAYER_NORM_OP_TYPE,
        list(EMBED_LAYER_NORM_INPUTS),
        ["output"],
        nodes,
        opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid(MS_DOMAIN, 1)],
        attributes=["epsilon", "block_size"],
        doc_string="bitmaps::EmbedLayerNormalization from ONNX Runtime's ops (three "
        "GatherBlockQuantized, two Add, LayerNormalization).",
    )


BINARY_FFN_OP_TYPE = "BinaryFeedForward"
BINARY_FFN_INPUTS = ("X", "W1", "w_scale1", "bias1", "W2", "w_scale2", "bias2")
# the fused node's attribute → (layer, that layer's BinaryLinear attribute)
BINARY_FFN_ATTRIBUTES: dict[str, tuple[int, str]] = {
    "in_features": (0, "in_features"),
    "hidden_features": (0, "out_features"),
    "act_threshold": (0, "act_threshold"),
    "act_scale": (0, "act_scale"),
    "act_unsigned": (0, "act_unsigned"),
    "activation": (0, "activation"),
    "out_features": (1, "out_features"),
    "hidden_act_threshold": (1, "act_threshold"),
    "hidden_act_scale": (1, "act_scale"),
    "hidden_act_unsigned": (1, "act_unsigned"),
}


def binary_ffn_function(opset: int) -> onnx.FunctionProto:
    """The model-local function ``bitmaps::BinaryFeedForward`` (``--target onnxruntime``, binary
    float32 models): the two ``bitmaps::BinaryLinear`` nodes it replaced, written out as two
    copies of the BinaryLinear function's body (the first with its ``activation``, GELU; the
    second binarizing the first's output), their attribute references renamed to the fused
    node's (onnx's checker does not resolve a nested function call's references).
    libbitmaps_ort.so runs the node on one driver instead (csrc/kernels/cpu_binary_linear.h,
    ``binary_ffn``), where the first GEMM writes the second's input bits."""
    if opset < MIN_OPSET:
        raise ValueError(f"the BinaryFeedForward function needs opset >= {MIN_OPSET}")
    body = binary_linear_function(opset, panels=True, activation=True)
    nodes = []
    for layer, (inputs, output) in enumerate(
        [(("X", "W1", "w_scale1", "bias1"), "hidden"), (("hidden", "W2", "w_scale2", "bias2"), "Y")]
    ):
        names = {**dict(zip(INPUTS, inputs, strict=True)), "Y": output}
        refs = {a: name for name, (i, a) in BINARY_FFN_ATTRIBUTES.items() if i == layer}
        if layer == 1:
            refs["in_features"] = "hidden_features"  # the first layer's out_features
        for node in body.node:
            copy = onnx.NodeProto()
            copy.CopyFrom(node)
            copy.input[:] = [names.get(v, f"l{layer}_{v}") if v else v for v in node.input]
            copy.output[:] = [names.get(v, f"l{layer}_{v}") for v in node.output]
            for a in copy.attribute:
                if not a.ref_attr_name:
                    continue
                if a.ref_attr_name in refs:
                    a.ref_attr_name = refs[a.ref_attr_name]
                else:  # the second layer's activation: none
                    value = ATTRIBUTE_DEFAULTS.get(a.ref_attr_name, 0)
                    copy.attribute.remove(a)
                    copy.attribute.append(helper.make_attribute("value_int", value))
                    break
            nodes.append(copy)
    return helper.make_function(
        DOMAIN,
        BINARY_FFN_OP_TYPE,
        list(BINARY_FFN_INPUTS),
        ["Y"],
        nodes,
        opset_imports=[helper.make_opsetid("", opset)],
        attributes=list(BINARY_FFN_ATTRIBUTES),
        doc_string="bitmaps::BinaryFeedForward as two bitmaps::BinaryLinear bodies (standard ops).",
    )


def binary_linear_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """The ``bitmaps::BinaryLinear`` nodes of the main graph, in graph order."""
    return [n for n in model.graph.node if n.domain == DOMAIN and n.op_type == OP_TYPE]


def binary_ffn_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """The ``bitmaps::BinaryFeedForward`` nodes of the main graph, in graph order."""
    return [n for n in model.graph.node if n.domain == DOMAIN and n.op_type == BINARY_FFN_OP_TYPE]


def binary_layer_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """The nodes that hold binary layers (BinaryLinear and BinaryFeedForward), in graph order."""
    kinds = (OP_TYPE, BINARY_FFN_OP_TYPE)
    return [n for n in model.graph.node if n.domain == DOMAIN and n.op_type in kinds]


def node_attributes(node: onnx.NodeProto) -> dict[str, object]:
    """Attribute name → Python value (strings decoded)."""
    out: dict[str, object] = {}
    for a in node.attribute:
        value = helper.get_attribute_value(a)
        out[a.name] = value.decode() if isinstance(value, bytes) else value
    return out
