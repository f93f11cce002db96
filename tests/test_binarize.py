"""BinaryLinear == the bitmaps::BinaryLinear op, PackedBinaryLinear, binarize_() and the phases."""

from __future__ import annotations

import collections
import copy
import warnings

import pytest
import torch
from torch import nn

from bitmaps.core import ops as ops_module
from bitmaps.core.config import BinarizeConfig
from bitmaps.core.errors import BitmapsError, ConfigError
from bitmaps.core.ops import reference_binary_linear
from bitmaps.core.packed import PackedBinaryLinear
from bitmaps.core.packing import pack_signs
from bitmaps.metrics.mlm import MaskedLMModel
from bitmaps.train.binary_linear import (
    BinaryLinear,
    binarization_phase_for_step,
    binarize_,
    pack_binary_linears_,
    set_binarization_phase_,
)

QUANTIZERS = BinarizeConfig.ACTIVATION_QUANTIZERS


def _layer(k: int, n: int, quantizer: str, bias: bool) -> BinaryLinear:
    layer = BinaryLinear.from_linear(
        nn.Linear(k, n, bias=bias), BinarizeConfig(activation_quantizer=quantizer)
    )
    if quantizer == "elastic":  # a learned, non-trivial scale and threshold
        with torch.no_grad():
            layer.input_quantizer.beta.fill_(0.15)
        layer.train()(torch.randn(4, k))  # data initialisation of α
    return layer


def _reference(layer: BinaryLinear, x: torch.Tensor) -> torch.Tensor:
    s = layer.export_spec()
    return reference_binary_linear(
        x, s.packed_weight, s.w_scale, s.bias, s.in_features, s.act_threshold, s.act_scale
    )


@pytest.mark.parametrize("quantizer", QUANTIZERS)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("k, n", [(1, 3), (31, 5), (33, 8), (100, 17), (128, 512)])
@pytest.mark.parametrize("batch", [(7,), (2, 5), (2, 3, 4)])
def test_training_forward_equals_reference_op(quantizer, bias, k, n, batch) -> None:
    layer = _layer(k, n, quantizer, bias).train()
    x = torch.randn(*batch, k)
    y = layer(x)
    ref = _reference(layer, x)
    assert y.shape == (*batch, n) and y.dtype == torch.float32
    # same order of operations as the reference (exact ±1 dot, then s, then w_scale): bitwise
    # equal without bias; with bias the layer's fused multiply-add may differ by one rounding
    if not bias:
        assert torch.equal(y, ref)
    torch.testing.assert_close(y, ref, rtol=1e-6, atol=1e-6 * float(ref.abs().max()))
    assert torch.equal(y == 0, ref == 0)


@pytest.mark.parametrize("quantizer", QUANTIZERS)
def test_gradient_reaches_weights_inputs_and_scales(quantizer) -> None:
    layer = _layer(40, 6, quantizer, True).train()
    x = torch.randn(3, 40, requires_grad=True)
    layer(x).square().sum().backward()
    for t in (x, layer.weight, layer.bias, *layer.input_quantizer.parameters()):
        assert t.grad is not None and torch.isfinite(t.grad).all() and t.grad.abs().sum() > 0


def test_ste_layer_gradient_matches_xnor_net_formula() -> None:
    # y = (sign(x) @ (α·sign(W))ᵀ) · s + b with s[m] = mean_k |x[m, k]|: the input gradient is the
    # clipped STE through sign plus the exact gradient through s
    k, n = 24, 5
    layer = _layer(k, n, "ste", True).double().train()
    x = (torch.randn(4, k, dtype=torch.float64) * 0.9).requires_grad_(True)
    g = torch.randn(4, n, dtype=torch.float64)
    layer(x).backward(g)
    xs = torch.where(x < 0, -1.0, 1.0).double().detach()
    w = layer.weight.detach()
    wq = w.abs().mean(-1, keepdim=True) * torch.where(w < 0, -1.0, 1.0)
    s = x.detach().abs().mean(-1, keepdim=True)
    dot = xs @ wq.t()
    expected = (g * s) @ wq * (x.detach().abs() < 1.0) + torch.sign(x.detach()) / k * (g * dot).sum(
        -1, keepdim=True
    )
    torch.testing.assert_close(x.grad, expected)
    torch.testing.assert_close(layer.bias.grad, g.sum(0))


@pytest.mark.parametrize("quantizer", QUANTIZERS)
def test_packed_layer_equals_binary_layer_in_eval(quantizer) -> None:
    layer = _layer(100, 24, quantizer, True).eval()
    packed = PackedBinaryLinear(layer.export_spec())
    x = torch.randn(2, 9, 100)
    with torch.no_grad():
        y, yp = layer(x), packed(x)
    torch.testing.assert_close(yp, y, rtol=1e-5, atol=1e-5 * float(y.abs().max()))
    assert {n for n, _ in packed.named_parameters()} == set()  # no latent float weights
    assert packed.packed_weight.dtype == torch.int32 and packed.packed_weight.shape == (24, 4)
    half = copy.deepcopy(packed).half()
    assert half.w_scale.dtype == torch.float32 and half.bias.dtype == torch.float32
    torch.testing.assert_close(half.w_scale, packed.w_scale, rtol=0, atol=0)
    y16 = half(x.half())
    assert y16.dtype == torch.float16
    torch.testing.assert_close(y16.float(), yp, rtol=2e-2, atol=2e-2 * float(yp.abs().max()))


def test_spec_fields() -> None:
    layer = _layer(33, 4, "ste", False)
    s = layer.export_spec()
    assert (s.in_features, s.out_features, s.act_threshold, s.act_scale) == (33, 4, 0.0, 0.0)
    assert s.packed_weight.dtype == torch.int32 and s.packed_weight.shape == (4, 2)
    assert s.w_scale.dtype == torch.float32 and s.w_scale.shape == (4,)
    assert torch.equal(s.bias, torch.zeros(4))
    torch.testing.assert_close(s.w_scale, layer.weight.detach().abs().mean(-1))
    e = _layer(33, 4, "elastic", True).export_spec()
    assert e.act_scale > 0 and e.act_threshold == pytest.approx(0.15)


def _tiny_bert(layers: int = 2) -> nn.Module:
    from transformers import BertConfig, BertForMaskedLM

    cfg = BertConfig(
        vocab_size=120,
        hidden_size=32,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=48,
        max_position_embeddings=64,
    )
    return BertForMaskedLM(cfg).eval()


def _type_counts(model: nn.Module) -> collections.Counter:
    return collections.Counter(type(m).__name__ for m in model.modules())


def _check_binarized(model: nn.Module, before: nn.Module, names: list[str], layers: int) -> None:
    after = _type_counts(model)
    counts = _type_counts(before)
    assert len(names) == len(set(names)) == 6 * layers
    assert after["BinaryLinear"] == 6 * layers
    assert after["Linear"] == counts["Linear"] - 6 * layers
    inputs = ("SteSign", "ApproxSign", "ElasticSign")
    assert after["ScaledSign"] == sum(after[k] for k in inputs) == 6 * layers
    for kind in set(counts) | set(after):
        if kind not in ("Linear", "BinaryLinear", "ScaledSign", *inputs):
            assert after[kind] == counts[kind], kind
    replaced = {n for n, m in model.named_modules() if isinstance(m, BinaryLinear)}
    assert replaced == set(names)
    old = dict(before.named_modules())
    for name in names:  # initialised from the teacher's weights
        assert torch.equal(model.get_submodule(name).weight, old[name].weight.float())
    old_params = dict(before.named_parameters())
    for name, p in model.named_parameters():  # everything else: untouched, same values
        if not any(name.startswith(n + ".") for n in names):
            assert torch.equal(p, old_params[name]), name


@pytest.mark.parametrize("layers", [1, 3])
def test_binarize_replaces_exactly_six_per_layer(layers: int) -> None:
    model = _tiny_bert(layers)
    before = copy.deepcopy(model)
    names = binarize_(model, BinarizeConfig())
    assert names[:6] == [
        "bert.encoder.layer.0.attention.self.query",
        "bert.encoder.layer.0.attention.self.key",
        "bert.encoder.layer.0.attention.self.value",
        "bert.encoder.layer.0.attention.output.dense",
        "bert.encoder.layer.0.intermediate.dense",
        "bert.encoder.layer.0.output.dense",
    ]
    _check_binarized(model, before, names, layers)
    assert isinstance(model.cls.predictions.decoder, nn.Linear)
    assert isinstance(model.cls.predictions.transform.dense, nn.Linear)
    ids = torch.randint(0, 120, (2, 10))
    assert model(input_ids=ids).logits.shape == (2, 10, 120)


def test_binarize_real_bert_tiny(bert_tiny_dir) -> None:
    from transformers import BertForMaskedLM

    model = BertForMaskedLM.from_pretrained(bert_tiny_dir).eval()
    before = copy.deepcopy(model)
    names = binarize_(model, BinarizeConfig(activation_quantizer="elastic"))
    _check_binarized(model, before, names, model.config.num_hidden_layers)
    assert model.get_submodule(names[0]).weight.shape == (128, 128)


def test_binarize_wrapped_model_and_subset() -> None:
    wrapped = MaskedLMModel(_tiny_bert(2))
    names = binarize_(wrapped, BinarizeConfig(modules=("intermediate", "output")))
    assert names == [
        f"model.bert.encoder.layer.{i}.{p}"
        for i in range(2)
        for p in ("intermediate.dense", "output.dense")
    ]
    assert isinstance(wrapped.model.bert.encoder.layer[1].attention.self.query, nn.Linear)


@pytest.mark.parametrize("family", ["roberta", "distilbert", "electra"])
def test_binarize_refuses_other_families(family: str) -> None:
    # bitmaps loads only BERT (bitmaps/train/models.py); other families are refused, not half-done
    import transformers as T

    small = dict(vocab_size=100, num_hidden_layers=2, num_attention_heads=2)
    model = {
        "roberta": lambda: T.RobertaForMaskedLM(
            T.RobertaConfig(hidden_size=32, intermediate_size=48, **small)
        ),
        "electra": lambda: T.ElectraForMaskedLM(
            T.ElectraConfig(hidden_size=32, embedding_size=32, intermediate_size=48, **small)
        ),
        "distilbert": lambda: T.DistilBertForMaskedLM(
            T.DistilBertConfig(vocab_size=100, dim=32, n_layers=2, n_heads=2, hidden_dim=48)
        ),
    }[family]()
    with pytest.raises(BitmapsError, match=f"unsupported model {type(model).__name__}"):
        binarize_(model, BinarizeConfig())
    assert not any(isinstance(m, BinaryLinear) for m in model.modules())


def test_binarize_refusals() -> None:
    import transformers as T

    model = _tiny_bert(2)
    binarize_(model, BinarizeConfig())
    with pytest.raises(BitmapsError, match="already binarized"):
        binarize_(model, BinarizeConfig())
    with pytest.raises(BitmapsError, match="unsupported model BertModel"):
        binarize_(T.BertModel(_tiny_bert(1).config), BinarizeConfig())
    albert = T.AlbertForMaskedLM(
        T.AlbertConfig(vocab_size=50, hidden_size=32, num_attention_heads=2, intermediate_size=48)
    )
    with pytest.raises(BitmapsError, match="unsupported model AlbertForMaskedLM"):
        binarize_(albert, BinarizeConfig())
    with pytest.raises(BitmapsError, match="no encoder layers"):
        binarize_(_tiny_bert(0), BinarizeConfig())
    with pytest.raises(BitmapsError, match="holds no Hugging Face model"):
        binarize_(nn.Sequential(nn.Linear(3, 3)), BinarizeConfig())


def test_pack_binary_linears_matches_binary_model() -> None:
    model = _tiny_bert(2)
    binarize_(model, BinarizeConfig(activation_quantizer="approx_sign"))
    ids = torch.randint(0, 120, (3, 12))
    with torch.no_grad():
        expected = model(input_ids=ids).logits
        assert pack_binary_linears_(model) == 12
        got = model(input_ids=ids).logits
    assert not any(isinstance(m, BinaryLinear) for m in model.modules())
    assert sum(isinstance(m, PackedBinaryLinear) for m in model.modules()) == 12
    # layer outputs agree to ~1e-7; a sign flip downstream would show as a large error
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_phases_state_dict_and_export_refusal() -> None:
    cfg = BinarizeConfig(
        activation_quantizer="elastic", schedule="bit_multistep", activation_start_step=5
    )
    assert binarization_phase_for_step(4, cfg) == (True, False)
    assert binarization_phase_for_step(5, cfg) == (True, True)
    assert binarization_phase_for_step(0, BinarizeConfig()) == (True, True)
    model = _tiny_bert(2)
    binarize_(model, cfg)  # starts in the step-0 phase: W1A32
    layer = model.bert.encoder.layer[0].attention.self.query
    assert (layer.binarize_weights, layer.binarize_activations) == (True, False)
    x = torch.randn(3, 32)
    wq = layer.weight.abs().mean(-1, keepdim=True) * torch.where(layer.weight < 0, -1.0, 1.0)
    torch.testing.assert_close(layer(x), nn.functional.linear(x, wq, layer.bias))
    with pytest.raises(BitmapsError, match="only a W1A1 student can be exported"):
        pack_binary_linears_(model)
    layer.set_phase(False, True)  # W32A1: latent weights, binary (elastic) activations
    q = layer.input_quantizer.eval()
    xs = torch.where(x < q.threshold(), -1.0, 1.0)
    expected = (xs @ layer.weight.t()) * q.scale() + layer.bias
    torch.testing.assert_close(layer(x), expected)
    layer.set_phase(True, False)
    # a checkpoint restores the phase into a freshly binarized model
    rebuilt = _tiny_bert(2)
    binarize_(rebuilt, BinarizeConfig.from_dict(cfg.to_dict()))
    assert set_binarization_phase_(model, True, True) == 12
    model.train()(input_ids=torch.randint(0, 120, (2, 8)))  # initialises every elastic α
    rebuilt.load_state_dict(model.state_dict(), strict=True)
    rl = rebuilt.bert.encoder.layer[0].attention.self.query
    assert (rl.binarize_weights, rl.binarize_activations) == (True, True)
    assert rl.input_quantizer._initialized
    assert rl.input_quantizer.scale() == layer.input_quantizer.scale() != 1.0


# --------------------------------------------------------------------------- BiT recipe


def _unsigned_layer(k: int, n: int, quantizer: str, center: bool) -> BinaryLinear:
    cfg = BinarizeConfig(activation_quantizer=quantizer, center_weights=center)
    layer = BinaryLinear.from_linear(nn.Linear(k, n), cfg, unsigned=True)
    with torch.no_grad():
        layer.weight.add_(0.05)  # a row mean away from 0, so centring changes signs
    if quantizer == "elastic":
        layer.train()(torch.relu(torch.randn(4, k)))  # Lloyd initialisation of α
        with torch.no_grad():
            layer.input_quantizer.beta.fill_(-0.05)
    return layer


@pytest.mark.parametrize("quantizer", QUANTIZERS)
@pytest.mark.parametrize("center", [False, True])
@pytest.mark.parametrize("k, n", [(1, 3), (33, 8), (100, 17)])
def test_unsigned_layer_equals_reference_op(quantizer, center, k, n) -> None:
    layer = _unsigned_layer(k, n, quantizer, center)
    spec = layer.export_spec()
    assert spec.act_unsigned == 1
    x = torch.relu(torch.randn(2, 5, k))  # post-ReLU: exact zeros, which must give bit 0
    x[0, 0] = 0.0
    for mode in (layer.train(), layer.eval()):
        y = mode(x)
        ref = reference_binary_linear(
            x,
            spec.packed_weight,
            spec.w_scale,
            spec.bias,
            spec.in_features,
            spec.act_threshold,
            spec.act_scale,
            spec.act_unsigned,
        )
        torch.testing.assert_close(y, ref, rtol=1e-6, atol=1e-6 * float(ref.abs().max()))
        assert torch.equal(y == 0, ref == 0)
    with torch.no_grad():
        packed = PackedBinaryLinear(spec)(x)
    assert packed.shape == (2, 5, n) and "act_unsigned=1" in repr(PackedBinaryLinear(spec))
    torch.testing.assert_close(packed, layer(x), rtol=1e-5, atol=1e-5 * float(packed.abs().max()))


def test_centred_weights_pack_the_forward_signs() -> None:
    cfg = BinarizeConfig(center_weights=True, activation_quantizer="ste")  # per-row scales, β = 0
    layer = BinaryLinear.from_linear(nn.Linear(40, 6), cfg)
    with torch.no_grad():
        layer.weight.add_(torch.linspace(-0.2, 0.2, 6)[:, None])
    spec = layer.export_spec()
    v = layer.weight.detach() - layer.weight.detach().mean(-1, keepdim=True)
    assert torch.equal(spec.packed_weight, pack_signs(v))
    assert not torch.equal(spec.packed_weight, pack_signs(layer.weight.detach()))
    torch.testing.assert_close(spec.w_scale, v.abs().mean(-1))
    x = torch.randn(3, 40)
    ref = reference_binary_linear(x, spec.packed_weight, spec.w_scale, spec.bias, 40, 0.0, 0.0)
    torch.testing.assert_close(layer(x), ref, rtol=1e-6, atol=1e-6 * float(ref.abs().max()))


def test_binarize_relu_swaps_activation_and_makes_output_unsigned() -> None:
    model = _tiny_bert(2)
    before = _type_counts(model)
    names = binarize_(model, BinarizeConfig(activation="relu", activation_quantizer="elastic"))
    after = _type_counts(model)
    assert after["ReLU"] == before["ReLU"] + 2
    assert after["GELUActivation"] == before["GELUActivation"] - 2
    unsigned = [n for n in names if model.get_submodule(n).input_quantizer.unsigned]
    assert unsigned == [f"bert.encoder.layer.{i}.output.dense" for i in range(2)]
    layer = model.get_submodule(unsigned[0])
    model.train()(input_ids=torch.randint(0, 100, (2, 8)))  # Lloyd-initialises every α
    assert layer.export_spec().act_unsigned == 1
    # the default (GELU) keeps the activation and signed inputs everywhere
    plain = _tiny_bert(2)
    gelus = _type_counts(plain)["GELUActivation"]
    names = binarize_(plain, BinarizeConfig())
    assert _type_counts(plain)["GELUActivation"] == gelus
    assert not any(plain.get_submodule(n).input_quantizer.unsigned for n in names)


# What `BinarizeConfig().to_dict()` wrote before two-set binarization (version 1).
OLD_BINARIZE_DICT = {
    "weight_quantizer": "scaled_sign",
    "activation_quantizer": "elastic",
    "clip": 1.0,
    "weight_clip": 1.0,
    "modules": ["query", "key", "value", "attention_output", "intermediate", "output"],
    "schedule": "w1a1",
    "activation_start_step": 0,
    "version": 1,
}


def test_elastic_is_the_default_and_older_dicts_keep_theirs() -> None:
    assert BinarizeConfig().activation_quantizer == "elastic"
    assert BinarizeConfig.from_dict({}).activation_quantizer == "elastic"
    for version in (1, 2):  # written when the default was the clipped STE
        cfg = BinarizeConfig.from_dict({"version": version})
        assert cfg.activation_quantizer == "ste"
        assert cfg.to_dict()["activation_quantizer"] == "ste"
        explicit = BinarizeConfig.from_dict({"version": version, "activation_quantizer": "elastic"})
        assert explicit.activation_quantizer == "elastic"
    saved = BinarizeConfig(activation_quantizer="approx_sign").to_dict()
    assert BinarizeConfig.from_dict(saved).activation_quantizer == "approx_sign"


def test_config_round_trip_and_old_dict_loads_as_it_computed() -> None:
    cfg = BinarizeConfig(
        activation="relu", center_weights=True, unsigned_modules=("output", "value")
    )
    assert BinarizeConfig.from_json(cfg.to_json()) == cfg
    assert BinarizeConfig(activation="relu").unsigned_inputs() == ("output",)
    assert BinarizeConfig().unsigned_inputs() == ()
    assert BinarizeConfig(activation="relu", unsigned_modules=()).unsigned_inputs() == ()
    old = BinarizeConfig.from_dict(OLD_BINARIZE_DICT)
    assert (old.activation, old.unsigned_inputs(), old.center_weights) == ("gelu", (), False)
    assert old.to_dict()["version"] == BinarizeConfig.VERSION
    # a student saved by the old code (same modules, same state_dict keys) loads and computes
    # the same function
    saved = _tiny_bert(2)
    binarize_(saved, old)
    saved.train()(input_ids=torch.randint(0, 120, (2, 8)))
    rebuilt = _tiny_bert(2)
    binarize_(rebuilt, BinarizeConfig.from_dict(copy.deepcopy(OLD_BINARIZE_DICT)))
    rebuilt.load_state_dict(saved.state_dict(), strict=True)
    ids = torch.randint(0, 120, (2, 8))
    with torch.no_grad():
        assert torch.equal(rebuilt.eval()(input_ids=ids).logits, saved.eval()(input_ids=ids).logits)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"activation": "silu"}, "activation must be one of gelu, relu"),
        ({"unsigned_modules": ("pooler",)}, "unsigned_modules entry 'pooler' is not binarized"),
        ({"modules": ("query",), "unsigned_modules": ("output",)}, "is not binarized"),
        ({"center_weights": "yes"}, "center_weights must be true or false"),
    ],
)
def test_bad_recipe_config_fails_with_one_line(kwargs, message) -> None:
    with pytest.raises(ConfigError, match=message):
        BinarizeConfig(**kwargs)


@pytest.mark.parametrize("hidden_act", ["gelu", "gelu_new"])
def test_fuse_gelu_moves_bert_intermediate_gelu_into_the_kernel(hidden_act) -> None:
    from bitmaps.runtime.fusion import fuse_gelu_

    torch.manual_seed(0)
    model = _tiny_bert(layers=3)
    model.config.hidden_act = hidden_act
    for layer in model.bert.encoder.layer:  # rebuild the activation the config names
        from transformers.activations import ACT2FN

        layer.intermediate.intermediate_act_fn = ACT2FN[hidden_act]
    binarize_(model, BinarizeConfig())
    pack_binary_linears_(model)
    ids = torch.randint(0, 120, (2, 11))
    with torch.no_grad():
        before = model(input_ids=ids).logits
    fused = copy.deepcopy(model)
    count = fuse_gelu_(fused)
    if hidden_act != "gelu":  # tanh-approximate GELU is not the epilogue's erf form: untouched
        assert count == 0
        assert all(not m.activation for m in fused.modules() if isinstance(m, PackedBinaryLinear))
        return
    assert count == 3 and fuse_gelu_(fused) == 0  # once only
    for layer in fused.bert.encoder.layer:
        assert layer.intermediate.dense.activation == 1
        assert isinstance(layer.intermediate.intermediate_act_fn, nn.Identity)
        assert layer.output.dense.activation == 0  # no GELU after it
        assert "activation=gelu" in repr(layer.intermediate.dense)
    with torch.no_grad():
        after = fused(input_ids=ids).logits
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-4 * float(before.abs().max()))
    # the same module off the panels path (no prepacked weights) applies torch's GELU itself
    for layer in fused.bert.encoder.layer:
        layer.intermediate.dense.panels = None
    with torch.no_grad():
        unpacked = fused(input_ids=ids).logits
    torch.testing.assert_close(unpacked, before, rtol=1e-4, atol=1e-4 * float(before.abs().max()))


def test_cpu_inference_fusions_stack_qkv_and_norm_with_the_kernels() -> None:
    from bitmaps.runtime.fusion import fuse_gelu_, fuse_qkv_, fuse_skip_layer_norm_

    torch.manual_seed(0)
    model = _tiny_bert(layers=3)
    binarize_(model, BinarizeConfig())
    pack_binary_linears_(model)
    # layer 1's key binarizes its input differently (as the elastic quantizer's layers do): its
    # Q, K, V cannot share one packed input, so they are three calls, concatenated
    model.bert.encoder.layer[1].attention.self.key.act_threshold = 0.25
    ids = torch.randint(0, 120, (3, 13))
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0
    mask[2, 4:] = 0
    with torch.no_grad():
        before = [model(input_ids=ids, attention_mask=m).logits for m in (mask, None)]
    fused = copy.deepcopy(model)
    fuse_gelu_(fused)
    assert fuse_qkv_(fused) == 3 and fuse_qkv_(fused) == 0
    assert fuse_skip_layer_norm_(fused) == 6 and fuse_skip_layer_norm_(fused) == 0
    assert type(fused.bert.encoder.layer[0].output).__name__ == "SkipNormBertOutput"
    kinds = [type(layer.attention.self).__name__ for layer in fused.bert.encoder.layer]
    assert kinds == ["StackedBertSelfAttention"] * 3
    stacked = fused.bert.encoder.layer[0].attention.self
    assert stacked.qkv_panels.shape[0] == 3 * stacked.query.panels.shape[0]
    assert fused.bert.encoder.layer[1].attention.self.qkv_panels is None
    assert (
        "qkv_panels" not in fused.state_dict()
        and fused.state_dict().keys() == model.state_dict().keys()
    )
    calls = collections.Counter()
    real = {name: getattr(ops_module, name) for name in ("packed_attention", "skip_layer_norm")}

    def counting(name):  # noqa: ANN001, ANN202
        def call(*args):  # noqa: ANN002, ANN202
            calls[name] += 1
            return real[name](*args)

        return call

    def run_counted(*masks):  # noqa: ANN002, ANN202
        for name in real:
            setattr(ops_module, name, counting(name))
        try:
            with torch.no_grad():
                return [fused(input_ids=ids, attention_mask=m).logits for m in masks]
        finally:
            for name, op in real.items():
                setattr(ops_module, name, op)

    after = run_counted(mask, None)
    assert calls["packed_attention"] == 6  # three layers, two calls
    assert calls["skip_layer_norm"] == 12  # two per layer, three layers, two calls
    for a, b in zip(after, before, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4 * float(b.abs().max()))
    # training mode runs transformers' own forward (no fused call)
    fused.train()
    run_counted(mask)
    assert calls["packed_attention"] == 6 and calls["skip_layer_norm"] == 12


def test_fuse_encoder_runs_the_layers_as_one_loop_and_steps_aside_when_asked() -> None:
    from bitmaps.runtime.fusion import fuse_encoder_, fuse_for_cpu_inference_

    torch.manual_seed(1)
    model = _tiny_bert(layers=2)
    binarize_(model, BinarizeConfig(activation_quantizer="ste"))  # Q, K, V stack
    pack_binary_linears_(model)
    # layer 0's Q, K, V binarize differently (three calls, concatenated), layer 1's alike (one)
    model.bert.encoder.layer[0].attention.self.value.act_threshold = -0.1
    ids = torch.randint(0, 120, (2, 9))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    with torch.no_grad():
        want = model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    fused = copy.deepcopy(model)
    assert fuse_encoder_(fused) == 0  # its layers are not fused yet
    counts = fuse_for_cpu_inference_(fused)
    assert counts == {"gelu": 2, "qkv": 2, "skip_layer_norm": 4, "ffn": 0, "encoder": 1,
                      "embed_layer_norm": 0}  # fmt: skip
    assert fuse_encoder_(fused) == 0 and set(fuse_for_cpu_inference_(fused).values()) == {0}
    assert type(fused.bert.encoder).__name__ == "LoopBertEncoder"
    assert fused.bert.encoder.layer[0].attention.self.qkv_panels is None
    assert fused.bert.encoder.layer[1].attention.self.qkv_panels is not None
    # transformers' own forward calls each BertLayer; the loop calls none
    layer_class = type(fused.bert.encoder.layer[0])
    real = layer_class.forward
    layer_calls = collections.Counter()

    def counted(self, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        layer_calls["layer"] += 1
        return real(self, *args, **kwargs)

    layer_class.forward = counted
    try:
        with torch.no_grad():
            got = fused(input_ids=ids, attention_mask=mask).logits
            assert layer_calls["layer"] == 0  # the loop ran
            # hidden states asked for (transformers captures them with hooks): its own forward
            full = fused(input_ids=ids, attention_mask=mask, output_hidden_states=True)
            assert layer_calls["layer"] == 2
            handle = fused.bert.encoder.layer[1].output.register_forward_hook(lambda *a: None)
            fused(input_ids=ids, attention_mask=mask)
            handle.remove()
            assert layer_calls["layer"] == 4
            fused(input_ids=ids, attention_mask=mask)
            assert layer_calls["layer"] == 4
        # gradients enabled: the ops have no backward, so transformers' forward runs and a
        # gradient reaches the LayerNorm weights (around the packed layers, which have none
        # either: torch warns about those, as it always did for packed models)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            fused(input_ids=ids, attention_mask=mask).logits.sum().backward()
        assert layer_calls["layer"] == 6
        assert fused.bert.encoder.layer[0].output.LayerNorm.weight.grad is not None
    finally:
        layer_class.forward = real
    scale = float(want.logits.abs().max())
    torch.testing.assert_close(got, want.logits, rtol=1e-4, atol=1e-4 * scale)
    assert len(full.hidden_states) == len(want.hidden_states) == 3
    for a, b in zip(full.hidden_states, want.hidden_states, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4 * float(b.abs().max()))


def test_fuse_ffn_runs_each_fixed_scale_ffn_as_one_call() -> None:
    """Elastic quantizers (fixed activation scales): each layer's FFN becomes one
    bitmaps::binary_ffn_prepacked call through its table in the encoder loop, with the same
    output as transformers' forward (no first-layer output of this model lies in GELU's far tail
    or within a rounding of a threshold); a reloaded state dict rebuilds the table."""
    from bitmaps.core import ops as ops_module
    from bitmaps.runtime.fusion import fuse_for_cpu_inference_

    torch.manual_seed(2)
    model = _tiny_bert(layers=2)
    binarize_(model, BinarizeConfig(activation_quantizer="elastic"))
    pack_binary_linears_(model)
    ids = torch.randint(0, 120, (2, 9))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    with torch.no_grad():
        want = model(input_ids=ids, attention_mask=mask).logits
    fused = copy.deepcopy(model)
    assert fuse_for_cpu_inference_(fused)["ffn"] == 2
    intermediate = fused.bert.encoder.layer[0].intermediate
    table = intermediate.ffn_table
    assert table.dtype == torch.int32 and table.shape[0] == 2 and table.shape[2] == 48
    calls = collections.Counter()
    real = ops_module.binary_ffn_prepacked

    def counting(*args):  # noqa: ANN002, ANN202
        calls["ffn"] += 1
        return real(*args)

    ops_module.binary_ffn_prepacked = counting
    try:
        with torch.no_grad():
            got = fused(input_ids=ids, attention_mask=mask).logits
    finally:
        ops_module.binary_ffn_prepacked = real
    assert calls["ffn"] == 2
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * float(want.abs().max()))
    state = {k: v.clone() for k, v in fused.state_dict().items()}
    state["bert.encoder.layer.0.intermediate.dense.bias"] += 1.0
    fused.load_state_dict(state)
    assert not torch.equal(intermediate.ffn_table, table)


@pytest.mark.parametrize("training", [False, True])
def test_binarized_layers_keep_the_mode_of_the_layers_they_replace(training) -> None:
    """New modules start in training mode; a model binarized in eval mode and then called would
    have its elastic quantizers set their scales from that first batch."""
    from transformers import BertConfig, BertForMaskedLM

    from bitmaps.core.config import BinarizeConfig
    from bitmaps.train.binary_linear import BinaryLinear, binarize_

    cfg = BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=40, max_position_embeddings=16)  # fmt: skip
    model = BertForMaskedLM(cfg).train(training)
    binarize_(model, BinarizeConfig(activation_quantizer="elastic", activation="relu"))
    layers = [m for m in model.modules() if isinstance(m, BinaryLinear)]
    assert layers and all(m.training == training for m in layers)
    assert all(m.training == training for layer in layers for m in layer.modules())
    assert all(m.training == training for m in model.modules() if isinstance(m, torch.nn.ReLU))


@pytest.mark.parametrize("quantizer", ["ste", "elastic"])
def test_verification_allows_float16_ties_either_sign(quantizer) -> None:
    """ONNX Runtime may binarize a float16 node input before its rounding (a GELU between casts
    whose casts its optimizer drops): values within a float16 rounding of β may take either sign.
    The node check allows exactly those flips for float16 inputs, none for float32 ones (an
    FP16 export of a valid classifier was refused: one flip in 3 of 111 rows)."""
    from bitmaps.export.verify import half_precision_ties

    layer = _layer(64, 8, quantizer, True).eval()
    packed = PackedBinaryLinear(layer.export_spec())
    beta = float(torch.tensor(packed.act_threshold, dtype=torch.float16))
    x = torch.randn(3, 64) + 3.0
    x[0, :5] = beta  # five ties in row 0, none elsewhere
    assert half_precision_ties(packed, x) is None  # float32: ties are exact
    allowance = half_precision_ties(packed, x.half())
    assert allowance.shape == (3, 8)
    assert torch.all(allowance[1:] == 0) and torch.all(allowance[0] > 0)
    flipped = x.clone()
    flipped[0, :5] = beta - 1e-3 if not packed.act_unsigned else beta + 1e-3
    with torch.no_grad():
        moved = (packed(flipped.half().float()) - packed(x.half().float())).abs().double()
    assert torch.all(moved[0] <= allowance[0] * (1 + 1e-3) + 1e-6), (moved[0], allowance[0])
