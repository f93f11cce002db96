"""bitmaps::embed_layer_norm (the int4 word, token-type and position lookups, their sums and the
LayerNorm as one op): the native CPU kernel on every path equals the plain-PyTorch reference, which
equals transformers' own embeddings on the same tables; bad inputs are one-line errors; the fake
kernel gives the shape; and fuse_embed_layer_norm_ runs a BERT's int4 embeddings through it with
the model's output unchanged, stepping aside where it does not apply."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import NEEDS_C
from torch import nn

from bitmaps.core import ops
from bitmaps.core.embeddings import quantize_embeddings_, quantize_table

needs_c = pytest.mark.skipif(not ops.native_available(), reason=NEEDS_C)


def _lookups(n: int, block: int, rows: tuple[int, ...], seed: int = 0):
    """Random int4 tables of any block size (bitmaps' own quantizer takes groups of 32 or 64)."""
    g = torch.Generator().manual_seed(seed)
    data = [torch.randint(0, 256, (r, n // 2), generator=g, dtype=torch.uint8) for r in rows]
    scale = [torch.rand(r, n // block, generator=g) + 0.1 for r in rows]
    gamma = torch.rand(n, generator=g) + 0.5
    beta = torch.randn(n, generator=g)
    return data, scale, gamma, beta


def test_random_tables_have_the_quantizer_layout() -> None:
    """The tables above are what quantize_table writes (so the cases cover real tables too)."""
    data, scale = quantize_table(torch.randn(5, 64), "int4", 32)
    assert data.dtype == torch.uint8 and data.shape == (5, 32) and scale.shape == (5, 2)


CASES = [  # hidden, block, rows of each table, ids' shapes (broadcast as BERT's)
    (128, 32, (1000, 2, 64), [(3, 17), (1, 1), (1, 17)]),
    (64, 64, (50, 7, 40), [(2, 5), (2, 5), (2, 5)]),
    (2, 2, (5, 3), [(4,), (1,)]),
    (96, 6, (30, 30), [(1, 9), (4, 1)]),
]


@needs_c
def test_dispatcher_registers_the_native_cpu_kernel() -> None:
    dump = torch._C._dispatch_dump("bitmaps::embed_layer_norm")
    cpu_lines = [line for line in dump.splitlines() if line.startswith("CPU:")]
    assert cpu_lines and "csrc/torch/ops_cpu.cpp" in cpu_lines[0], dump


@pytest.mark.parametrize("n, block, rows, shapes", CASES)
@pytest.mark.parametrize("ids_dtype", [torch.int64, torch.int32])
@pytest.mark.parametrize("with_beta", [True, False])
def test_native_equals_reference(cpu_path, n, block, rows, shapes, ids_dtype, with_beta) -> None:
    data, scale, gamma, beta = _lookups(n, block, rows)
    g = torch.Generator().manual_seed(1)
    ids = [
        torch.randint(-r, r, s, generator=g).to(ids_dtype)
        for r, s in zip(rows, shapes, strict=True)
    ]
    args = (ids, data, scale, gamma, beta if with_beta else None, 1e-12)
    want = ops.reference_embed_layer_norm(*args)
    got = ops.embed_layer_norm(*args)
    assert got.shape == want.shape == (*torch.broadcast_shapes(*shapes), n)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_reference_equals_transformers_embeddings() -> None:
    """The reference is what transformers' BertEmbeddings computes on the same int4 tables."""
    model = _tiny_bert()
    quantize_embeddings_(model, "int4", 32)
    emb = model.bert.embeddings
    ids = torch.randint(0, 120, (2, 9))
    types = torch.randint(0, 2, (2, 9))
    with torch.no_grad():
        want = emb(input_ids=ids, token_type_ids=types)
    tables = [emb.word_embeddings, emb.token_type_embeddings, emb.position_embeddings]
    got = ops.reference_embed_layer_norm(
        [ids, types, emb.position_ids[:, :9]], [t.data for t in tables],
        [t.scale for t in tables], emb.LayerNorm.weight.detach(), emb.LayerNorm.bias.detach(),
        emb.LayerNorm.eps,
    )  # fmt: skip
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


@needs_c
@pytest.mark.parametrize(
    "change, message",
    [
        (lambda a: a.update(ids=[a["ids"][0]]), "lists of 2 or 3 tensors"),
        (lambda a: a.update(ids=[a["ids"][0].float(), a["ids"][1]]), "ids[0] must be Long or Int"),
        (lambda a: a.update(data=[a["data"][0].int(), a["data"][1]]), "data[0] must be Byte"),
        (
            lambda a: a.update(scale=[a["scale"][0], a["scale"][1][:, :1]]),
            "data[1] [2, 4] and scale[1] [2, 1] must be [rows, 4] and [rows, 2]",
        ),
        (
            lambda a: a.update(data=[a["data"][0][:, :3], a["data"][1]]),
            "data[0] [10, 3] and scale[0] [10, 2] must be [rows, 4] and [rows, 2]",
        ),
        (lambda a: a.update(scale=[torch.ones(10, 3), a["scale"][1]]), "an even block dividing"),
        (lambda a: a.update(ids=[a["ids"][0], torch.zeros(3, dtype=torch.long)]), "rank"),
        (lambda a: a.update(ids=[a["ids"][0], torch.zeros(2, 4, dtype=torch.long)]), "broadcast"),
        (lambda a: a.update(gamma=torch.ones(7)), "even"),
        (lambda a: a.update(beta=torch.ones(3)), "beta must have"),
        (lambda a: a.update(epsilon=float("nan")), "epsilon"),
    ],
)
def test_bad_input_is_one_line(change, message) -> None:
    data, scale, gamma, beta = _lookups(8, 4, (10, 2))
    args = {"ids": [torch.zeros(2, 3, dtype=torch.long), torch.zeros(1, 1, dtype=torch.long)],
            "data": data, "scale": scale, "gamma": gamma, "beta": beta, "epsilon": 1e-5}  # fmt: skip
    change(args)
    for fn in (ops.embed_layer_norm, ops.reference_embed_layer_norm):
        with pytest.raises(RuntimeError) as info:
            fn(**args)
        text = str(info.value).strip()
        assert message in text and "bitmaps::embed_layer_norm" in text
        if fn is ops.embed_layer_norm:  # the native message: one line, no C++ backtrace
            assert len(text.splitlines()) == 1, text


@needs_c
def test_out_of_range_ids_name_the_lookup_and_the_index() -> None:
    data, scale, gamma, beta = _lookups(8, 4, (10, 2))
    ids = [torch.tensor([[1, 2, 10]]), torch.tensor([[0]])]
    with pytest.raises(RuntimeError, match=r"ids\[0\] holds 10 at position 2, outside \[-10, 10\)"):
        ops.embed_layer_norm(ids, data, scale, gamma, beta, 1e-5)
    ids = [torch.tensor([[1]]), torch.tensor([[-3]])]
    with pytest.raises(RuntimeError, match=r"ids\[1\] holds -3"):
        ops.embed_layer_norm(ids, data, scale, gamma, beta, 1e-5)


def test_fake_kernel_gives_the_broadcast_shape() -> None:
    from torch._subclasses.fake_tensor import FakeTensorMode

    data, scale, gamma, beta = _lookups(16, 8, (10, 2, 12))
    with FakeTensorMode(allow_non_fake_inputs=True):
        ids = [torch.zeros(3, 5, dtype=torch.long), torch.zeros(1, 1, dtype=torch.long),
               torch.zeros(1, 5, dtype=torch.long)]  # fmt: skip
        out = ops.embed_layer_norm(ids, data, scale, gamma, beta, 1e-5)
        assert tuple(out.shape) == (3, 5, 16) and out.dtype == torch.float32


def test_a_table_on_another_device_is_refused_not_faked() -> None:
    # stop 48's probe: data or scale on "meta" (the rest on the CPU) sent the call to the fake
    # kernel, which checked the devices of ids, gamma and beta only and returned uninitialized
    # CPU memory
    data, scale, gamma, beta = _lookups(16, 8, (10, 2, 12))
    ids = [torch.zeros(1, 4, dtype=torch.long) for _ in range(3)]
    for part in ("data", "scale"):
        moved = {"data": list(data), "scale": list(scale)}
        moved[part][1] = moved[part][1].to("meta")
        with pytest.raises(RuntimeError, match=f"bitmaps::embed_layer_norm: .*{part}\\[1\\]"):
            ops.embed_layer_norm(ids, moved["data"], moved["scale"], gamma, beta, 1e-5)


def _tiny_bert() -> nn.Module:
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=120, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=48, max_position_embeddings=64)  # fmt: skip
    return BertForMaskedLM(cfg).eval()


@needs_c
def test_fusion_runs_the_op_and_keeps_the_output() -> None:
    from bitmaps.runtime.fusion import fuse_embed_layer_norm_

    model = _tiny_bert()
    assert fuse_embed_layer_norm_(model) == 0  # float tables: nothing to fuse
    quantize_embeddings_(model, "int4", 32)
    fused = copy.deepcopy(model)
    assert fuse_embed_layer_norm_(fused) == 1
    assert type(fused.bert.embeddings).__name__ == "EmbedNormBertEmbeddings"
    calls = []
    real = ops.embed_layer_norm

    def counted(*args):  # noqa: ANN002, ANN202
        calls.append(1)
        return real(*args)

    ids = torch.randint(0, 120, (3, 11))
    types = torch.randint(0, 2, (3, 11))
    positions = torch.arange(2, 13)[None]
    try:
        ops.embed_layer_norm = counted
        with torch.inference_mode():
            for kwargs in ({}, {"token_type_ids": types}, {"position_ids": positions}):
                want = model(input_ids=ids, **kwargs).logits
                got = fused(input_ids=ids, **kwargs).logits
                torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
            assert len(calls) == 3
            # what the op does not take: transformers' forward
            embeds = model.bert.embeddings.word_embeddings(ids)
            torch.testing.assert_close(
                fused(inputs_embeds=embeds).logits, model(inputs_embeds=embeds).logits
            )
            assert len(calls) == 3
        fused.train()
        with torch.no_grad():
            fused(input_ids=ids)
        fused.eval()
        with torch.enable_grad():
            fused(input_ids=ids)
        assert len(calls) == 3
    finally:
        ops.embed_layer_norm = real


@needs_c
def test_fusion_steps_aside_for_non_zero_default_token_types() -> None:
    from bitmaps.runtime.fusion import fuse_embed_layer_norm_

    model = _tiny_bert()
    quantize_embeddings_(model, "int4", 32)
    model.bert.embeddings.token_type_ids.fill_(1)
    fused = copy.deepcopy(model)
    assert fuse_embed_layer_norm_(fused) == 1
    ids = torch.randint(0, 120, (2, 7))
    with torch.inference_mode():
        torch.testing.assert_close(fused(input_ids=ids).logits, model(input_ids=ids).logits)


@needs_c
@pytest.mark.parametrize(("hidden", "heads", "group"), [(48, 3, 32), (96, 3, 64), (72, 6, 64)])
def test_fusion_leaves_rows_padded_to_whole_groups_to_the_module(hidden, heads, group) -> None:
    """int4 rows whose width is not a multiple of the group are padded to whole groups; the op's
    blocks tile an unpadded row, so such tables are not fused (they crashed the fused path)."""
    from transformers import BertConfig, BertForMaskedLM

    from bitmaps.runtime.fusion import fuse_embed_layer_norm_, fuse_for_cpu_inference_

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=50, hidden_size=hidden, num_hidden_layers=1,
                     num_attention_heads=heads, intermediate_size=64,
                     max_position_embeddings=16)  # fmt: skip
    model = BertForMaskedLM(cfg).eval()
    quantize_embeddings_(model, "int4", group)
    assert fuse_embed_layer_norm_(copy.deepcopy(model)) == 0
    fused = copy.deepcopy(model)
    fuse_for_cpu_inference_(fused)
    ids = torch.randint(0, 50, (2, 5))
    with torch.inference_mode():
        torch.testing.assert_close(
            fused(input_ids=ids, attention_mask=torch.ones_like(ids)).logits,
            model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits,
            rtol=1e-4, atol=1e-4,
        )  # fmt: skip
