"""benchmarks/bench_attention_int8_accuracy.py's emulation: ``float`` is BERT's own attention, the
int8 variants round exactly what they say, and the attention interface is restored after use."""

from __future__ import annotations

import pytest
import torch
from conftest import benchmark_module
from transformers import BertConfig, BertModel
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.bert.modeling_bert import eager_attention_forward


@pytest.fixture(scope="module")
def bench():
    return benchmark_module("bench_attention_int8_accuracy")


def _qkv(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(2, 3, 10, 64, generator=g) for _ in range(3))
    mask = torch.zeros(2, 1, 1, 10)
    mask[1, ..., 7:] = torch.finfo(torch.float32).min  # padding in the second sequence
    return q, k, v, mask


def test_float_variant_is_berts_attention(bench) -> None:
    q, k, v, mask = _qkv()
    module = torch.nn.Module().eval()
    want, _ = eager_attention_forward(module, q, k, v, mask, scaling=0.125)
    got, _ = bench.int8_attention(False, False)(module, q, k, v, mask, scaling=0.125)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_a_boolean_mask_masks_like_the_additive_one(bench) -> None:
    # transformers hands SDPA-configured models a boolean mask (True: attend)
    q, k, v, mask = _qkv(2)
    module = torch.nn.Module().eval()
    for qk, pv in ((False, False), (True, True)):
        fn = bench.int8_attention(qk, pv)
        additive, _ = fn(module, q, k, v, mask, scaling=0.125)
        boolean, _ = fn(module, q, k, v, mask == 0, scaling=0.125)
        torch.testing.assert_close(boolean, additive)


def test_int8_variants_round_their_operands_only(bench) -> None:
    q, k, v, mask = _qkv(1)
    module = torch.nn.Module().eval()
    exact, _ = bench.int8_attention(False, False)(module, q, k, v, mask, scaling=0.125)
    for qk, pv in ((True, False), (False, True), (True, True)):
        out, weights = bench.int8_attention(qk, pv)(module, q, k, v, mask, scaling=0.125)
        assert out.shape == exact.shape and torch.isfinite(out).all()
        # close to float (int8 operands), but not equal (they were rounded)
        assert 0 < (out - exact).abs().max() < 0.05
        torch.testing.assert_close(weights.sum(-1), torch.ones(2, 3, 10))
        assert (weights[1, ..., 7:] == 0).all()  # masked keys get exactly nothing
    # Q and K integers: the integer scores, times their scales, reproduce the emulated scores
    qi, sq = bench._round_rows(q, -1)
    assert qi.abs().max() <= 127 and (qi == qi.round()).all()
    assert torch.allclose(qi * sq, q, atol=float(sq.max()) / 2 + 1e-7)


def test_attention_as_swaps_and_restores_the_interface(bench) -> None:
    cfg = BertConfig(vocab_size=50, hidden_size=64, num_hidden_layers=1, num_attention_heads=1,
                     intermediate_size=32)  # fmt: skip
    model = BertModel(cfg).eval()
    ids = torch.tensor([[1, 2, 3, 4, 5, 6]])
    with torch.no_grad():
        before = model(ids).last_hidden_state
        with bench.attention_as("qk+pv"):
            rounded = model(ids).last_hidden_state
        after = model(ids).last_hidden_state
    assert "get_interface" not in ALL_ATTENTION_FUNCTIONS.__dict__
    torch.testing.assert_close(after, before)
    assert not torch.equal(rounded, before)
    assert (rounded - before).abs().max() < 0.1


def test_bad_variants_are_refused(bench) -> None:
    with pytest.raises(SystemExit) as exc:
        bench.main(["model.pt", "--data", "x", "--variants", "fp4"])
    assert exc.value.code == 2
