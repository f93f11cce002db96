"""Quantized embeddings (``--embeddings fp16|int8|int4``): tables, the PyTorch module, the ONNX pass.

Round trips of the int8/int4 tables against an independent NumPy reading of the layout
(bitmaps/core/embeddings.py docstring), the tied decoder stays one table, and each choice exported
from the small random student of tests/test_export.py runs in ONNX Runtime (the model-local function
and our kernel) equal to the quantized PyTorch module at the export's tolerance.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper
from test_export import small_student

from bitmaps.cli import main
from bitmaps.core.config import ConfigError, ExportConfig
from bitmaps.core.embeddings import (
    QuantizedEmbedding,
    TiedQuantizedDecoder,
    dequantize,
    embedding_tables,
    quantize_embeddings_,
    quantize_table,
)
from bitmaps.core.errors import BitmapsError
from bitmaps.export.embeddings import quantize_onnx_embeddings
from bitmaps.export.onnx_graph import initializer_bytes, packed_bytes
from bitmaps.export.pipeline import export_verified


def _nibbles(packed: np.ndarray) -> np.ndarray:
    out = np.empty((*packed.shape[:-1], 2 * packed.shape[-1]), dtype=np.int16)
    out[..., 0::2], out[..., 1::2] = packed & 0x0F, packed >> 4
    return out - 8


@pytest.mark.parametrize("hidden", [1, 31, 33, 64, 100])
def test_int8_rows_round_trip(hidden):
    w = torch.randn(7, hidden) * torch.linspace(0.01, 3.0, 7)[:, None]
    w[3] = 0.0  # an all-zero row: scale 0, values 0
    q, scale = quantize_table(w, "int8")
    assert q.dtype == torch.int8 and q.shape == (7, hidden) and scale.shape == (7, 1)
    amax = w.abs().amax(1, keepdim=True)
    assert torch.equal(scale, amax / 127)
    assert q.abs().max() <= 127 and (q[amax[:, 0] > 0].abs().amax(1) == 127).all()
    back = dequantize(q, scale, "int8", hidden, torch.float32)
    assert torch.equal(back, q.float() * scale)
    assert ((back - w).abs() <= scale / 2 + 1e-7).all()
    assert torch.equal(back[3], torch.zeros(hidden))


@pytest.mark.parametrize("group", [32, 64])
@pytest.mark.parametrize("hidden", [1, 31, 33, 64, 100])
def test_int4_groups_round_trip(hidden, group):
    w = torch.randn(5, hidden)
    packed, scale = quantize_table(w, "int4", group)
    groups = -(-hidden // group)
    assert packed.dtype == torch.uint8 and packed.shape == (5, groups * group // 2)
    assert scale.shape == (5, groups)
    values = _nibbles(packed.numpy())  # independent reading: low nibble first, offset 8
    assert values.min() >= -7 and values.max() <= 7
    assert (values[:, hidden:] == 0).all()  # padding of the last group
    padded = np.zeros((5, groups * group), dtype=np.float32)
    padded[:, :hidden] = w.numpy()
    amax = np.abs(padded.reshape(5, groups, group)).max(-1)
    np.testing.assert_allclose(scale.numpy(), amax / 7, rtol=1e-6)
    expect = (values.reshape(5, groups, group) * scale.numpy()[..., None]).reshape(5, -1)
    back = dequantize(packed, scale, "int4", hidden, torch.float32)
    np.testing.assert_array_equal(back.numpy(), expect[:, :hidden])
    err = np.abs(back.numpy() - w.numpy()).reshape(5, -1)
    bound = np.repeat(scale.numpy(), group, axis=1)[:, :hidden] / 2 + 1e-6
    assert (err <= bound).all()


def test_gather_dequantizes_only_the_rows_looked_up():
    w = torch.randn(50, 40)
    emb = QuantizedEmbedding(w, "int4", 32)
    ids = torch.tensor([[3, 7, 3], [49, 0, 1]])
    assert torch.equal(emb(ids), emb.table()[ids])
    assert emb.data.dtype == torch.uint8 and emb.scale.shape == (50, 2)


@pytest.mark.parametrize("mode", ["fp16", "int8", "int4"])
def test_tied_decoder_stays_one_table(mode):
    model = small_student()
    word = model.bert.embeddings.word_embeddings.weight.detach().clone()
    quantize_embeddings_(model, mode, 32)
    emb = model.bert.embeddings.word_embeddings
    decoder = model.cls.predictions.decoder
    assert isinstance(emb, QuantizedEmbedding) and isinstance(decoder, TiedQuantizedDecoder)
    assert decoder.embedding is emb and decoder.bias is model.cls.predictions.bias
    assert len(embedding_tables(model)) == 3
    names = [n for n, _ in model.named_buffers() if n.endswith(".data")]
    assert sorted(names) == sorted(
        f"bert.embeddings.{t}.data"
        for t in ("word_embeddings", "position_embeddings", "token_type_embeddings")
    )
    x = torch.randn(3, word.shape[1])
    assert torch.equal(decoder(x), x @ emb.table().T + model.cls.predictions.bias)
    err = (emb.table() - word).abs().max().item()
    assert err < {"fp16": 1e-3, "int8": 0.02, "int4": 0.2}[mode]
    model.half()  # the table is stored as chosen; the output follows the model's dtype
    assert emb.data.dtype == {"fp16": torch.float16, "int8": torch.int8, "int4": torch.uint8}[mode]
    assert emb(torch.tensor([1])).dtype == torch.float16


def test_bad_choices_are_refused():
    with pytest.raises(BitmapsError, match="embeddings must be one of"):
        quantize_table(torch.zeros(2, 2), "int2")
    with pytest.raises(BitmapsError, match="group size"):
        quantize_table(torch.zeros(2, 2), "int4", 16)
    with pytest.raises(ConfigError, match="embeddings must be one of"):
        ExportConfig(embeddings="bf16")
    with pytest.raises(ConfigError, match="embedding_group"):
        ExportConfig(embedding_group=48)


@pytest.mark.parametrize("value", [["--embeddings", "int2"], ["--embedding-group", "16"]])
def test_cli_bad_embeddings_value_one_line_exit_2(value, tmp_path, capsys):
    out = tmp_path / "m.onnx"
    code = main(["export", str(tmp_path / "missing.pt"), str(out), *value])
    _, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error:"), err
    assert value[0] in lines[0] and not out.exists()


@pytest.fixture(scope="module")
def exports():
    """One verified export per choice (fp32 included: the size reference)."""
    out = {}
    for mode in ("fp32", "fp16", "int8", "int4"):
        cfg = ExportConfig(embeddings=mode, embedding_group=32)
        out[mode] = export_verified(small_student(), cfg, binary=True)
    out["int8-opset21"] = export_verified(
        small_student(), ExportConfig(embeddings="int8", opset=21), binary=True
    )
    return out


def _table_inits(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    return {
        t.name: t for t in model.graph.initializer if "_embeddings" in t.name or "decoder" in t.name
    }


@pytest.mark.parametrize("mode", ["fp16", "int8", "int4", "int8-opset21"])
def test_export_parity_with_pytorch_on_both_sessions(exports, mode):
    report = exports[mode].report
    assert report.ok, report.failure()
    assert {r.backend for r in report.results} == {"function", "kernel"}
    model = exports[mode].model
    props = {p.key: p.value for p in model.metadata_props}
    assert props["bitmaps.embeddings"] == {"int4": "int4-g32"}.get(mode, mode.split("-")[0])
    gathers = [n for n in model.graph.node if n.op_type == "Gather"]
    inits = {t.name: t for t in model.graph.initializer}
    tables = {
        n.input[0] for n in gathers if n.input[0] in inits and len(inits[n.input[0]].dims) == 2
    }
    # the int4 value-pair table (embeddings_q/const_*) is gathered too, by the unpacking
    tables = {t for t in tables if not t.endswith(".scale") and not t.startswith("embeddings_q/")}
    kind = {"fp16": TensorProto.FLOAT16, "int8": TensorProto.INT8, "int4": TensorProto.UINT8}
    assert {inits[t].data_type for t in tables} == {kind[mode.split("-")[0]]}
    if mode == "int4":  # unpacked by a table lookup, without bitwise ops
        ops = {n.op_type for n in model.graph.node}
        assert not {"BitwiseAnd", "BitShift"} & ops
        unpacks = sum(n.input[0].startswith("embeddings_q/") for n in gathers)
        lookups = sum(n.input[0].endswith(".int4") for n in gathers)
        whole = any(i.endswith(".dequantized") for n in model.graph.node for i in n.input)
        assert unpacks == lookups + whole  # each row lookup, and the tied decoder's whole table
    if mode == "int8-opset21":
        assert any(n.op_type == "DequantizeLinear" for n in model.graph.node)


@pytest.mark.parametrize("mode", ["fp16", "int8", "int4"])
def test_one_table_in_the_file_and_the_expected_size(exports, mode):
    base, model = exports["fp32"].model, exports[mode].model
    v, h = (int(d) for d in next(
        t.dims for t in base.graph.initializer if t.name.endswith("decoder.weight")
    ))  # fmt: skip
    word = [t for t in model.graph.initializer if len(t.dims) == 2 and t.dims[0] == v]
    assert len(word) == 2 if mode != "fp16" else len(word) == 1  # the table (+ its scales)
    rows = v + 64 + 2  # word + position (max_position_embeddings 64) + token type
    per_row = {"fp16": 2 * h, "int8": h + 4, "int4": h // 2 + 4 * (h // 32)}[mode]
    saved = initializer_bytes(base) - initializer_bytes(model)
    consts = sum(
        len(t.raw_data) or 8 for t in model.graph.initializer if t.name.startswith("embeddings_q/")
    )
    assert saved == rows * (4 * h - per_row) - consts


def test_onnxruntime_target_decoder_reads_the_int4_table_with_matmul_nbits(exports):
    """--target onnxruntime: the tied decoder is MatMulNBits on the stored int4 table (ONNX
    Runtime never expands it to float), still one table for the gathers and the decoder; the
    other tables are looked up by GatherBlockQuantized (verified against PyTorch like the rest)."""
    cfg = ExportConfig(target="onnxruntime", embeddings="int4", embedding_group=32)
    result = export_verified(small_student(), cfg, binary=True)
    assert result.report.ok, result.report.failure()
    model = result.model
    (nbits,) = [n for n in model.graph.node if n.op_type == "MatMulNBits"]
    attrs = {a.name: helper.get_attribute_value(a) for a in nbits.attribute}
    assert (nbits.domain, attrs["bits"], attrs["block_size"], attrs["K"], attrs["N"]) == (
        "com.microsoft", 4, 32, 64, 300,
    )  # fmt: skip
    inits = {t.name: t for t in model.graph.initializer}
    table = inits[nbits.input[1]]
    assert table.data_type == TensorProto.UINT8 and list(table.dims) == [300, 2, 16]
    word_gather = [
        n for n in model.graph.node if n.op_type == "Gather" and n.input[0] == table.name
    ]
    assert len(word_gather) == 1  # the same initializer feeds the lookup
    # the other tables' lookups: ONNX Runtime's GatherBlockQuantized, one node each
    gbq = [n for n in model.graph.node if n.op_type == "GatherBlockQuantized"]
    assert {inits[n.input[0]].name for n in gbq} == {
        "model.bert.embeddings.position_embeddings.weight.int4",
        "model.bert.embeddings.token_type_embeddings.weight.int4",
    }
    assert all(n.domain == "com.microsoft" for n in gbq)
    assert not any(n.op_type == "Transpose" and n.input[0] == table.name for n in model.graph.node)
    assert not any(name.endswith(".dequantized") for n in model.graph.node for name in n.output)
    portable = exports["int4"].model  # the same student and table, the portable target
    # no second table (the binary weights differ by the panel layout's padding rows)
    assert abs(
        initializer_bytes(model) - packed_bytes(model)
        - (initializer_bytes(portable) - packed_bytes(portable))
    ) < 64  # fmt: skip


def test_pass_is_a_no_op_for_fp32_and_for_fp16_tables_of_an_fp16_export():
    model = export_verified(small_student(), ExportConfig(dtype="fp16"), binary=True).model
    before = model.SerializeToString()
    assert quantize_onnx_embeddings(model, "fp32") == []
    assert quantize_onnx_embeddings(model, "fp16") == []
    assert model.SerializeToString() == before


def test_profile_parts_of_an_onnx_file(exports, tmp_path):
    """``profile``'s weight bytes by part of an ONNX file: the embeddings part alone shrinks."""
    from bitmaps.runtime.artifacts import onnx_weights_by_part

    parts = {}
    for mode in ("fp32", "int4"):
        path = tmp_path / f"{mode}.onnx"
        onnx.save(exports[mode].model, str(path))
        parts[mode] = onnx_weights_by_part(path)
        assert parts[mode]["total"] == initializer_bytes(exports[mode].model)
    assert parts["int4"]["encoder"] == parts["fp32"]["encoder"] > 0
    assert parts["int4"]["head"] == parts["fp32"]["head"] > 64 * 64 * 4  # transform dense + bias
    assert parts["int4"]["embeddings"] < parts["fp32"]["embeddings"] / 4


def test_fp16_exact_tables_make_fp16_embeddings_lossless():
    """A student whose tables are float16 values (BinarizeConfig.embeddings="fp16") computes the
    same logits, bit for bit, with --embeddings fp16 as in FP32; an ordinary one does not."""
    import copy

    from bitmaps.train.binary_linear import round_embeddings_

    model = small_student()
    with torch.no_grad():  # tables far from float16 values, as after FP32 training
        for t in ("word_embeddings", "position_embeddings", "token_type_embeddings"):
            getattr(model.bert.embeddings, t).weight.add_(torch.rand_like(
                getattr(model.bert.embeddings, t).weight) * 1e-3)  # fmt: skip
    ids = torch.randint(0, 300, (4, 32))

    def logits(m: torch.nn.Module) -> torch.Tensor:
        with torch.no_grad():
            return m(input_ids=ids).logits

    ordinary = quantize_embeddings_(copy.deepcopy(model), "fp16")
    assert not torch.equal(logits(ordinary), logits(model))
    round_embeddings_(model)
    word = model.bert.embeddings.word_embeddings.weight
    assert word is model.cls.predictions.decoder.weight  # still tied
    for m in model.modules():
        if isinstance(m, torch.nn.Embedding):
            assert torch.equal(m.weight, m.weight.half().float())
    fp16 = quantize_embeddings_(copy.deepcopy(model), "fp16")
    assert torch.equal(logits(fp16), logits(model))


def test_student_training_keeps_fp16_exact_tables(sotu_small, tmp_path, bert_tiny_dir):
    from bitmaps.core.checkpoint import load_checkpoint
    from bitmaps.core.config import BinarizeConfig, DataConfig, DistillConfig, TrainConfig
    from bitmaps.train.trainer import TrainJob, run_training

    def student_job(out, **binarize):  # a student of the BERT-tiny asset
        return TrainJob(
            train=TrainConfig(stage="student", steps=3, batch_size=4, lr=3e-3, eval_every=0,
                              save_every=0, eval_sequences=8),  # fmt: skip
            data=DataConfig(), data_paths=[str(sotu_small)], output=out, model="bert-tiny",
            binarize=BinarizeConfig(**binarize),
            distill=DistillConfig(lambda_hidden=0, lambda_attn=0),
        )  # fmt: skip

    tables = ("word_embeddings", "position_embeddings", "token_type_embeddings")
    for mode, exact in (("fp16", True), ("fp32", False)):
        out = tmp_path / f"s-{mode}.pt"
        run_training(student_job(out, embeddings=mode), log=lambda _m: None)
        ckpt = load_checkpoint(out)
        assert ckpt["binarize"]["embeddings"] == mode
        is_exact = {
            t: torch.equal(w, w.half().float())
            for t in tables
            for w in [ckpt["state_dict"][f"bert.embeddings.{t}.weight"]]
        }
        # fp16: every table; fp32: trained tables are not float16 values (the word table is not)
        assert all(is_exact.values()) if exact else not is_exact["word_embeddings"], is_exact
    with pytest.raises(ConfigError, match="embeddings"):
        BinarizeConfig(embeddings="int8").validate()


def test_int4_pairs_table_is_the_torch_unpacking():
    """The graph's lookup table holds, per byte, what unpack_int4 gives minus the offset."""
    from bitmaps.core.embeddings import INT4_OFFSET, unpack_int4
    from bitmaps.export.embeddings import int4_pairs

    data = torch.arange(256, dtype=torch.int32).to(torch.uint8)
    expected = unpack_int4(data).to(torch.int64).reshape(256, 2) - INT4_OFFSET
    assert np.array_equal(int4_pairs(), expected.numpy())
