"""Int8 attention (bitmaps/core/int8_attention.py, csrc/kernels/cpu_attention_int8.cpp): the torch
scheme's pieces, its distance from float attention, the native kernels (torch op and
libbitmaps_ort.so, every CPU path) against it bit for bit, and int8_attention_everywhere() on BERT.

Tolerances (documented here, used below):

- ``exp_level`` is ``round(2ⁿ · P(r) · 127)`` with P the Taylor polynomial of e^r to r⁴ on
  ``|r| <= ln2 / 2``: before rounding it is off by at most ``(ln2/2)⁵ / 120 · 127 ≈ 5.3e-3`` levels
  (n = 0, r < 0; float32 steps add ~1e-5), so it equals ``round(exp(x) · 127)`` except where
  ``exp(x) · 127`` lies within :data:`EXP_MARGIN` of a rounding boundary (x.5), and is never more
  than ``0.5 + EXP_MARGIN`` from it. 1e-3 is too tight: 86 of 700001 points of [-7, 0] then differ.
- int8 against float attention: Q, K rounded to 1/254 of their row's max, V to 1/254 of its
  column's, probabilities to 1/254 of the row's largest: within 5 % of max|out| on N(0, 1) inputs.
- the native kernels against :func:`int8_attention`: bit for bit (integer sums exact, every other
  step one float32 operation in the same order); int8 = 0 keeps test_ort_attention.py's 2e-6.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import NEEDS_C
from onnx import helper
from test_ort_attention import _inputs

from bitmaps.core import ops
from bitmaps.core.int8_attention import exp_level, int8_attention, round_int8
from bitmaps.train.attention import attention_precision, int8_attention_everywhere

NEG = torch.finfo(torch.float32).min  # what BERT's extended attention mask adds
EXP_MARGIN = 127 * (math.log(2) / 2) ** 5 / 120 + 1e-4
needs_c = pytest.mark.skipif(not ops.native_available(), reason=NEEDS_C)


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """[B, S, H·D] -> [B, H, S, D]"""
    return x.reshape(*x.shape[:2], heads, -1).transpose(1, 2)


def _merge(x: torch.Tensor) -> torch.Tensor:
    """[B, H, S, D] -> [B, S, H·D]"""
    return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], -1)


def _float_attention(q, k, v, bias, scale: float) -> torch.Tensor:  # noqa: ANN001
    """softmax(scale · Q Kᵀ + bias) V in float64, [B, H, S, Dv]."""
    scores = (q.double() @ k.double().transpose(-1, -2)) * scale
    if bias is not None:
        scores = scores + bias.double()
    return torch.softmax(scores, dim=-1) @ v.double()


# ------------------------------------------------------------------------- exp_level, round_int8


def test_exp_level_rounds_exp_times_127():
    x = torch.linspace(-7, 0, 700_001, dtype=torch.float32)
    got = exp_level(x).double()
    exact = torch.exp(x.double()) * 127
    assert (got - exact).abs().max() <= 0.5 + EXP_MARGIN
    clear = ((exact - exact.floor()) - 0.5).abs() >= EXP_MARGIN  # away from a boundary x.5
    assert clear.float().mean() > 0.98
    mismatch = got[clear] != torch.round(exact[clear])
    assert not mismatch.any(), x[clear][mismatch][:5]
    assert (got.diff() >= 0).all(), "not monotone"
    assert set(got.unique().tolist()) == set(range(128)), "some level 0..127 is never produced"


def test_exp_level_ends():
    x = torch.tensor([0.0, -0.0, -6.0, -6.5, -50.0, NEG, float("-inf")])
    assert exp_level(x).tolist() == [127, 127, 0, 0, 0, 0, 0]
    assert (exp_level(torch.linspace(-1000, -6, 1001)) == 0).all()
    assert exp_level(torch.tensor([-5.5])).item() == 1  # exp(-5.5) · 127 = 0.52


@pytest.mark.parametrize("dim", [-1, -2])
def test_round_int8(dim):
    x = torch.randn(3, 17, 40) * torch.rand(3, 17, 1) * 10
    x[1, 4, :] = 0  # a zero row (dim -1) ...
    x[2, :, 7] = 0  # ... and a zero column (dim -2)
    q, scale = round_int8(x, dim)
    assert q.dtype == torch.float32 and q.shape == x.shape
    assert scale.shape == tuple(1 if i == x.dim() + dim else n for i, n in enumerate(x.shape))
    assert (q == q.round()).all() and q.abs().max() <= 127
    amax = x.abs().amax(dim, keepdim=True)
    zero = amax == 0
    assert zero.sum() == 1
    assert (scale[zero] == 1).all() and (q * zero == 0).all()
    assert torch.allclose(scale[~zero], amax[~zero] / 127)
    # the element of largest magnitude maps to ±127 with its sign; the rest to within half a step
    at = x.abs().argmax(dim, keepdim=True)
    extreme = q.gather(dim, at)
    assert torch.equal(extreme[~zero], 127 * x.gather(dim, at)[~zero].sign())
    assert ((q * scale - x).abs() <= scale / 2 * (1 + 1e-5)).all()


def test_round_int8_ties_to_even():
    # 127 / 254 = 0.5 exactly: the odd integers land on x.5
    x = torch.tensor([[254.0, 1, 3, 5, -1, -3, 253]])
    assert round_int8(x, -1)[0].tolist() == [[127, 0, 2, 2, -0.0, -2, 126]]


# --------------------------------------------------------------------------- the torch scheme


def test_int8_attention_is_close_to_float_attention():
    q, k, v = (torch.randn(2, 4, 33, 64) for _ in range(3))
    bias = torch.randn(2, 4, 33, 33)
    bias[1, :, :, 20:] = NEG  # padding in the second sequence
    got = int8_attention(q, k, v, bias, 0.125)
    want = _float_attention(q, k, v, bias, 0.125)
    assert got.dtype == torch.float32 and got.shape == want.shape
    diff = (got.double() - want).abs().max()
    assert 0 < diff < 0.05 * want.abs().max(), diff


def test_masked_key_gets_no_weight():
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, 3, 11, 16, generator=g) for _ in range(3))
    bias = torch.zeros(2, 1, 1, 11)
    bias[..., 4] = NEG
    out = int8_attention(q, k, v, bias, 0.25)
    # V's scales count only the keys some row gives a level > 0: a masked (padding) key's value,
    # however large, changes nothing, so a sequence's output does not depend on its padding
    changed = v.clone()
    changed[..., 4, :] = 1000 * torch.randn(changed[..., 4, :].shape, generator=g)
    assert torch.equal(int8_attention(q, k, changed, bias, 0.25), out)
    # without the mask the same change does show
    assert not torch.equal(
        int8_attention(q, k, changed, None, 0.25), int8_attention(q, k, v, None, 0.25)
    )
    # Q = 0 (every score equal) and V one-hot on key 4: the output is key 4's weight, exactly 0
    # masked, 1/11 (level 127 of 11 equal ones) unmasked
    zero, onehot = torch.zeros_like(q), torch.zeros_like(v)
    onehot[..., 4, :] = 1
    assert (int8_attention(zero, k, onehot, bias, 0.25) == 0).all()
    unmasked = int8_attention(zero, k, onehot, None, 0.25)
    torch.testing.assert_close(unmasked, torch.full_like(unmasked, 1 / 11))


# --------------------------------------------------------------- the torch op's native kernel


def _qkv_cases(batch: int, seq: int, heads: int, dim: int):
    g = torch.Generator().manual_seed(batch * 1000 + seq * 10 + heads + dim)
    qkv = torch.randn(batch, seq, 3, heads, dim, generator=g)
    qkv[0, 0, 0] = 0  # a zero Q row (scale 1) in every head
    qkv[0, :, 2, 0, 0] = 0  # a zero V column
    keep = torch.rand(batch, 1, 1, seq, generator=g) > 0.3
    keep[..., 0] = True  # every row attends somewhere
    padding = torch.zeros(batch, 1, 1, seq).masked_fill_(~keep, NEG)
    full = torch.randn(batch, heads, seq, seq, generator=g) * 3  # some scores below the -6 floor
    return qkv.reshape(batch, seq, -1), {"none": None, "padding": padding, "full": full}


NATIVE_CASES = [
    # batch, seq, heads, head_dim
    (1, 1, 1, 5),
    (2, 5, 3, 16),
    (3, 17, 2, 72),
    (1, 37, 4, 32),
    (3, 37, 7, 5),
    (2, 128, 12, 64),
    (1, 128, 1, 72),
]


@needs_c
@pytest.mark.parametrize("case", NATIVE_CASES, ids=lambda c: "x".join(map(str, c)))
def test_packed_attention_int8_matches_reference_exactly(cpu_path, case):
    assert torch._C._dispatch_has_kernel_for_dispatch_key("bitmaps::packed_attention", "CPU")
    batch, seq, heads, dim = case
    qkv, biases = _qkv_cases(*case)
    for name, bias in biases.items():
        got = ops.packed_attention(qkv, bias, heads, dim**-0.5, int8=True)
        want = ops.reference_packed_attention(qkv, bias, heads, dim**-0.5, int8=True)
        assert got.dtype == torch.float32 and got.shape == (batch, seq, heads * dim)
        assert torch.equal(got, want), (name, (got - want).abs().max())


@needs_c
def test_packed_attention_int8_ties_round_to_even(cpu_path):
    # every Q and K row and every V column holds ±254: the odd integers round from x.5
    qkv = torch.randint(-254, 255, (2, 9, 3 * 2 * 24), generator=torch.Generator().manual_seed(3))
    qkv = qkv.float()
    qkv[:, :, : 2 * 2 * 24 : 24] = 254  # first element of each Q and K head row
    qkv[:, 0, 2 * 2 * 24 :] = -254  # the first key's V
    got = ops.packed_attention(qkv, None, 2, 1e-5, int8=True)
    assert torch.equal(got, ops.reference_packed_attention(qkv, None, 2, 1e-5, int8=True))


@needs_c
def test_packed_attention_int8_differs_from_float():
    qkv, biases = _qkv_cases(2, 17, 3, 16)
    for bias in biases.values():
        int8 = ops.packed_attention(qkv, bias, 3, 0.25, int8=True)
        fp32 = ops.packed_attention(qkv, bias, 3, 0.25)
        assert 0 < (int8 - fp32).abs().max() < 0.05 * fp32.abs().max()


def test_packed_attention_int8_opcheck():
    qkv, biases = _qkv_cases(2, 5, 2, 8)
    torch.library.opcheck(ops.packed_attention, (qkv, biases["padding"], 2, 0.5), {"int8": True})


# ----------------------------------------------------------------- ONNX Runtime, libbitmaps_ort.so


def _ort():  # noqa: ANN202 - the module bitmaps.runtime.onnxruntime
    """The model builders; skips where libbitmaps_ort.so is missing (as test_ort_attention.py)."""
    from bitmaps.runtime import onnxruntime as bort

    missing = bort.library_missing()
    if missing is not None:
        pytest.skip(f"needs libbitmaps_ort.so (make install builds it): {missing}")
    return bort


def _with_int8(model, value: int):  # noqa: ANN001, ANN202 - onnx.ModelProto
    """The single node ``attn`` given attribute ``int8 = value``, its function the int8 one (as
    the export writes it) when ``value`` is 1."""
    from bitmaps.export.onnx_function import (
        multi_head_attention_function,
        packed_multi_head_attention_function,
    )

    node = model.graph.node[0]
    node.attribute.append(helper.make_attribute("int8", value))
    if value == 1:
        make = {
            "MultiHeadAttention": multi_head_attention_function,
            "PackedMultiHeadAttention": packed_multi_head_attention_function,
        }[node.op_type]
        del model.functions[:]
        model.functions.append(make(model.opset_import[0].version, int8=True))
    return model


def _feed(seed: int, b: int, s: int, t: int, heads: int, d: int, dv: int, bias_shape):  # noqa: ANN001, ANN202
    return _inputs(np.random.default_rng(seed), b, s, t, heads, d, dv, bias_shape)


def _reference(feed: dict, heads: int, scale: float, int8: bool) -> np.ndarray:
    q, k, v = (_heads(torch.from_numpy(feed[n]), heads) for n in ("query", "key", "value"))
    bias = torch.from_numpy(feed["bias"]) if "bias" in feed else None
    out = int8_attention(q, k, v, bias, scale) if int8 else _float_attention(q, k, v, bias, scale)
    return _merge(out).numpy()


MHA_CASES = [
    # b, s, t, heads, d, dv, bias shape
    (2, 5, 9, 3, 16, 16, (2, 1, 1, 9)),
    (1, 37, 37, 12, 64, 64, (1, 12, 37, 37)),
    (3, 17, 23, 2, 72, 40, (3, 1, 17, 23)),  # S != T, Dv != D
    (2, 128, 128, 4, 32, 32, (2, 1, 1, 128)),
    (1, 1, 1, 1, 5, 5, None),
]


@pytest.mark.parametrize("case", MHA_CASES, ids=lambda c: "x".join(map(str, c[:6])))
def test_ort_attention_int8_matches_reference_exactly(cpu_path, monkeypatch, case):
    bort = _ort()
    from bitmaps.core.ort import function_session, kernel_session

    monkeypatch.setenv("BITMAPS_CPU_PATH", cpu_path)  # read at session creation
    heads, d, bias_shape = case[3], case[4], case[6]
    scale = 1.0 / math.sqrt(d)
    model = _with_int8(bort.attention_model(heads, scale, bias=bias_shape is not None), 1)
    feed = _feed(sum(case[:6]), *case)
    (out,) = kernel_session(model).run(None, feed)
    np.testing.assert_array_equal(out, _reference(feed, heads, scale, int8=True), strict=True)
    if bias_shape is not None:  # the int8 model-local function (standard ops) agrees
        (function,) = function_session(model).run(None, feed)
        np.testing.assert_array_equal(function, out)
    fp32_model = bort.attention_model(heads, scale, bias=bias_shape is not None)
    (fp32,) = kernel_session(_with_int8(fp32_model, 0)).run(None, feed)
    np.testing.assert_allclose(fp32, _reference(feed, heads, scale, int8=False), rtol=0, atol=2e-6)
    assert not np.array_equal(fp32, out)


PACKED_CASES = [
    # b, s, heads, d, bias shape
    (2, 128, 12, 64, (2, 1, 1, 128)),
    (3, 17, 4, 5, (3, 4, 17, 17)),
    (1, 37, 2, 72, (1, 1, 37, 37)),
    (2, 1, 1, 16, None),
]


@pytest.mark.parametrize("case", PACKED_CASES, ids=lambda c: "x".join(map(str, c[:4])))
def test_ort_packed_attention_int8_matches_reference_exactly(cpu_path, monkeypatch, case):
    bort = _ort()
    from bitmaps.core.ort import function_session, kernel_session

    monkeypatch.setenv("BITMAPS_CPU_PATH", cpu_path)
    b, s, heads, d, bias_shape = case
    scale = 1.0 / math.sqrt(d)
    feed = _feed(sum(case[:4]), b, s, s, heads, d, d, bias_shape)
    qkv = np.concatenate([feed["query"], feed["key"], feed["value"]], axis=-1)
    packed = {"qkv": qkv} | ({"bias": feed["bias"]} if bias_shape else {})
    model = _with_int8(bort.packed_attention_model(heads, scale, bias=bias_shape is not None), 1)
    (out,) = kernel_session(model).run(None, packed)
    bias = torch.from_numpy(feed["bias"]) if bias_shape else None
    want = ops.reference_packed_attention(torch.from_numpy(qkv), bias, heads, scale, int8=True)
    np.testing.assert_array_equal(out, want.numpy(), strict=True)
    if bias_shape is not None:
        (function,) = function_session(model).run(None, packed)
        np.testing.assert_array_equal(function, out)
    fp32_model = bort.packed_attention_model(heads, scale, bias=bias_shape is not None)
    (fp32,) = kernel_session(_with_int8(fp32_model, 0)).run(None, packed)
    np.testing.assert_allclose(fp32, _reference(feed, heads, scale, int8=False), rtol=0, atol=2e-6)


@pytest.mark.parametrize("packed", [False, True], ids=["MultiHeadAttention", "Packed"])
@pytest.mark.parametrize("value", [2, -1])
def test_ort_bad_int8_fails_session_creation_naming_the_node(packed, value):
    bort = _ort()
    from bitmaps.core.ort import kernel_session

    model = bort.packed_attention_model(2) if packed else bort.attention_model(2)
    op = "PackedMultiHeadAttention" if packed else "MultiHeadAttention"
    with pytest.raises(Exception, match=f"bitmaps::{op} node 'attn'") as info:
        kernel_session(_with_int8(model, value))
    assert f"int8 must be 0 (float32 attention) or 1 (int8), got {value}" in str(info.value)


# ------------------------------------------------------------------- int8_attention_everywhere


def _tiny_bert(impl: str):  # noqa: ANN202 - transformers.BertModel
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    # weights 10x BERT's 0.02, so that rounding the attention shows (at 0.02 every row's weights
    # are near uniform and int8 moves the outputs by 7e-5 only)
    config = BertConfig(
        vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=32, attn_implementation=impl,
        initializer_range=0.2,
    )  # fmt: skip
    return BertModel(config).eval()


def _layers_with_int8_attention(model, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
    """BERT's encoder written out, each self-attention by :func:`int8_attention`."""
    bias = torch.where(mask[:, None, None] == 0, NEG, 0.0)  # [B, 1, 1, S]
    h = model.embeddings(input_ids=ids)
    for layer in model.encoder.layer:
        sa = layer.attention.self
        q, k, v = (_heads(proj(h), sa.num_attention_heads) for proj in (sa.query, sa.key, sa.value))
        a = layer.attention.output(_merge(int8_attention(q, k, v, bias, sa.scaling)), h)
        h = layer.output(layer.intermediate(a), a)
    return h


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
def test_int8_attention_everywhere_on_bert(impl):
    model = _tiny_bert(impl)
    ids = torch.randint(1, 64, (2, 11), generator=torch.Generator().manual_seed(5))
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0  # padding in the second sequence

    def run() -> torch.Tensor:
        with torch.no_grad():
            return model(input_ids=ids, attention_mask=mask).last_hidden_state

    before = run()
    with int8_attention_everywhere():
        inside = run()
    with torch.no_grad():
        want = _layers_with_int8_attention(model, ids, mask)
    assert torch.equal(inside, want), (inside - want).abs().max()
    # int8 moves the outputs by ~2e-2 here; float attentions (eager, SDPA) differ by ~1e-7
    assert 1e-3 < (inside - before).abs().max() < 0.5
    assert torch.equal(run(), before), "still int8 after the block"
    with pytest.raises(KeyError), int8_attention_everywhere():
        raise KeyError("inside")
    assert torch.equal(run(), before), "still int8 after an exception in the block"
    with attention_precision("int8"):
        assert torch.equal(run(), inside)
    with attention_precision("float"):
        assert torch.equal(run(), before)
    with pytest.raises(ValueError, match="'float' or 'int8', got 'int4'"):
        with attention_precision("int4"):
            pass


def test_a_row_masked_whole_by_minus_inf_matches_the_native_op(cpu_path):
    """Every key of a row masked by a -inf bias: score - max is NaN; the kernel takes it to the
    floor (VMAXPS), and the reference raised IndexError on it."""
    torch.manual_seed(0)
    qkv = torch.randn(1, 3, 3 * 2 * 8)
    bias = torch.zeros(1, 1, 3, 3)
    bias[..., 1, :] = float("-inf")  # query row 1 sees no key
    ref = ops.reference_packed_attention(qkv, bias, 2, 0.35, True)
    assert ref.shape == (1, 3, 16)
    if ops.native_available():
        torch.testing.assert_close(ops.packed_attention(qkv, bias, 2, 0.35, True), ref,
                                   equal_nan=True)  # fmt: skip
