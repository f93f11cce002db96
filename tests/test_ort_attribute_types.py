"""Every custom op of libbitmaps_ort.so refuses an attribute of the wrong type when the session is
created, naming the node and both types: the C API reads one attribute type at a time and fails
alike for a missing attribute and one of another type, and an optional attribute read as absent
ran the node with its default (``act_scale = 2`` as an int ran BinaryLinear with a per-row mean
scale; ``int8 = 1.0`` ran float attention). A required attribute of the wrong type says so too."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from test_ort_binary_ffn import _attrs, _layers, ffn_model
from test_ort_embed_layer_norm import _tables, embed_model
from test_ort_native import _set_attribute

from bitmaps.core.ort import kernel_session
from bitmaps.runtime import onnxruntime as bort

MISSING = bort.library_missing()
pytestmark = pytest.mark.skipif(
    MISSING is not None, reason=f"needs libbitmaps_ort.so (make install builds it): {MISSING}"
)


def _linear() -> onnx.ModelProto:
    return bort.single_node_model(64, 8, 0.0, 0.0)[0]


def _ffn() -> onnx.ModelProto:
    k, h, n = 33, 100, 17
    return ffn_model(_layers(np.random.default_rng(0), k, h, n, spread=0.1), _attrs(k, h, n))


def _embed() -> onnx.ModelProto:
    return embed_model(_tables(np.random.default_rng(1), 16, 8), 8)


CASES = [
    # (model, op, attribute, wrong value, its type as the message says it)
    (_linear, "BinaryLinear", "act_scale", 2, "a float", "an int"),
    (_linear, "BinaryLinear", "act_threshold", "0.5", "a float", "a string"),
    (_linear, "BinaryLinear", "act_unsigned", 1.0, "an int", "a float"),
    (_linear, "BinaryLinear", "activation", [1], "an int", "a list of ints"),
    (_linear, "BinaryLinear", "in_features", 64.0, "an int", "a float"),
    (_linear, "BinaryLinear", "plugin_version", 1, "a string", "an int"),
    (_ffn, "BinaryFeedForward", "hidden_act_scale", 1, "a float", "an int"),
    (_ffn, "BinaryFeedForward", "activation", 1.0, "an int", "a float"),
    (lambda: bort.attention_model(2, 0.25), "MultiHeadAttention", "scale", 1, "a float", "an int"),
    (lambda: bort.attention_model(2, 0.25), "MultiHeadAttention", "int8", 1.0, "an int", "a float"),
    (lambda: bort.packed_attention_model(2, 0.25), "PackedMultiHeadAttention", "int8", [1.0],
     "an int", "a list of floats"),
    (lambda: bort.skip_layer_norm_model(8), "SkipLayerNormalization", "epsilon", 1, "a float",
     "an int"),
    (_embed, "EmbedLayerNormalization", "epsilon", 1, "a float", "an int"),
    (_embed, "EmbedLayerNormalization", "block_size", 8.0, "an int", "a float"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("model", "op", "name", "value", "wanted", "found"),
    CASES,
    ids=[f"{c[1]}-{c[2]}" for c in CASES],
)
def test_an_attribute_of_the_wrong_type_fails_session_creation(model, op, name, value, wanted,
                                                               found):  # fmt: skip
    with pytest.raises(Exception, match=f"bitmaps::{op} node '") as info:
        kernel_session(_set_attribute(model(), name, value))
    assert f"attribute {name} must be {wanted}, got {found}" in str(info.value)


def test_a_missing_required_attribute_names_its_type():
    model = _linear()
    node = model.graph.node[0]
    kept = [a for a in node.attribute if a.name != "in_features"]
    del node.attribute[:]
    node.attribute.extend(kept)
    with pytest.raises(Exception, match="node 'binary_linear': attribute in_features .an int. is "
                       "required"):  # fmt: skip
        kernel_session(model)


def test_optional_attributes_of_the_right_type_still_run():
    # the type probe must not turn a present attribute of the right type, or an absent one, into
    # an error: act_scale given as a float, act_threshold absent
    model = _set_attribute(_linear(), "act_scale", 2.0)
    node = model.graph.node[0]
    kept = [a for a in node.attribute if a.name != "act_threshold"]
    del node.attribute[:]
    node.attribute.extend(kept)
    x = np.random.default_rng(0).standard_normal((3, 64)).astype(np.float32)
    (y,) = kernel_session(model).run(None, {"X": x})
    assert y.shape == (3, 8) and np.isfinite(y).all()
