"""DistillationObjective: each term against a hand computation, padding, layer maps, configs."""

from __future__ import annotations

import copy
import socket

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from bitmaps.core.config import BinarizeConfig, DistillConfig
from bitmaps.core.errors import BitmapsError, ConfigError
from bitmaps.metrics.mlm import IGNORE_INDEX, MaskedLMModel
from bitmaps.train.binary_linear import BinaryLinear, binarize_, encoder_layout
from bitmaps.train.distill import (
    DistillationObjective,
    _attention,
    _capture_outputs,
    check_teacher_student,
    layer_map,
)

VOCAB = 90


def _bert(layers: int = 2, hidden: int = 32, vocab: int = VOCAB, init: float = 0.02) -> nn.Module:
    from transformers import BertConfig, BertForMaskedLM

    cfg = BertConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=48,
        max_position_embeddings=64,
        initializer_range=init,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    return BertForMaskedLM(cfg).eval()


def _batch(
    b: int = 4, length: int = 16, vocab: int = VOCAB, seed: int = 0, pad: bool = True
) -> dict:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, vocab, (b, length), generator=g)
    mask = torch.ones_like(ids)
    if pad:
        mask[1, length - 5 :] = 0  # a padded sequence
        mask[3, length - 2 :] = 0
    ids = ids.masked_fill(mask == 0, 0)
    labels = torch.full_like(ids, IGNORE_INDEX)
    pick = (torch.rand(b, length, generator=g) < 0.3) & (mask == 1)
    labels[pick] = ids[pick]
    return {
        "input_ids": ids,
        "attention_mask": mask,
        "token_type_ids": torch.zeros_like(ids),
        "labels": labels,
    }


def test_hooked_attention_equals_eager_attention_weights() -> None:
    model = _bert(2)
    model.config._attn_implementation = "eager"  # only to read HF's own weights for comparison
    batch = _batch()
    layout = encoder_layout(model)
    paths = [layout.path(i, r) for i in range(2) for r in ("query", "key")]
    with torch.no_grad(), _capture_outputs(model, paths) as qk:
        out = model.bert(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            output_attentions=True,
        )
    for i in range(2):
        probs = _attention(
            qk[layout.path(i, "query")],
            qk[layout.path(i, "key")],
            2,
            batch["attention_mask"].bool(),
            "probs",
        )
        torch.testing.assert_close(probs, out.attentions[i])


def test_identical_student_has_zero_distillation_terms_and_plain_ce() -> None:
    teacher = _bert(2)
    student = MaskedLMModel(copy.deepcopy(teacher))
    objective = DistillationObjective(teacher, DistillConfig(temperature=2.0))
    batch = _batch()
    loss, parts = objective(student, batch)
    assert set(parts) == {"mlm", "kl", "hidden", "attn"}
    assert parts["kl"] == pytest.approx(0.0, abs=1e-6)
    assert parts["hidden"] == pytest.approx(0.0, abs=1e-10)
    assert parts["attn"] == pytest.approx(0.0, abs=1e-10)
    logits = teacher(**{k: batch[k] for k in ("input_ids", "attention_mask")}).logits
    sel = batch["labels"] != IGNORE_INDEX
    ce = F.cross_entropy(logits[sel], batch["labels"][sel])
    assert parts["mlm"] == pytest.approx(float(ce), rel=1e-5)
    total = sum(parts.values())  # every λ is 1 by default
    assert float(loss.detach()) == pytest.approx(total, rel=1e-6) and loss.requires_grad


def test_batch_without_masked_tokens_gives_finite_zero_logit_terms() -> None:
    teacher = _bert(2)
    objective = DistillationObjective(teacher, DistillConfig())
    batch = _batch()
    batch["labels"] = torch.full_like(batch["labels"], IGNORE_INDEX)
    loss, parts = objective(MaskedLMModel(_bert(2)), batch)
    assert parts["mlm"] == 0.0 and parts["kl"] == 0.0 and parts["hidden"] > 0
    loss.backward()
    assert torch.isfinite(loss.detach())


@pytest.mark.parametrize("pad", [True, False], ids=["padded", "packed"])
def test_terms_against_hand_computation(pad: bool) -> None:
    teacher, other = _bert(2, init=0.2), _bert(1, init=0.2)
    cfg = DistillConfig(
        lambda_mlm=0.5,
        lambda_logit=2.0,
        temperature=3.0,
        lambda_hidden=0.25,
        lambda_attn=4.0,
        attention_target="scores",
    )
    objective = DistillationObjective(teacher, cfg)
    student = MaskedLMModel(other)
    batch = _batch(pad=pad)
    loss, parts = objective(student, batch)

    mask = batch["attention_mask"].bool()
    sel = batch["labels"] != IGNORE_INDEX
    kw = {k: batch[k] for k in ("input_ids", "attention_mask")}
    with torch.no_grad():
        t_out = teacher.bert(**kw, output_hidden_states=True)
        s_out = other.bert(**kw, output_hidden_states=True)
        t_logits = teacher.cls(t_out.last_hidden_state[sel])
        s_logits = other.cls(s_out.last_hidden_state[sel])
    temp = 3.0
    p_t = F.softmax(t_logits / temp, -1)
    kl = (p_t * (p_t.log() - F.log_softmax(s_logits / temp, -1))).sum(-1).mean() * temp**2
    # student layer 1 ↔ teacher layer 2 (uniform map of 1 onto 2), embeddings ↔ embeddings
    hidden = sum(
        ((s_out.hidden_states[j] - t_out.hidden_states[g])[mask] ** 2).mean()
        for j, g in [(0, 0), (1, 2)]
    )

    def scores(model: nn.Module, layer: int, x: torch.Tensor) -> torch.Tensor:
        att = model.bert.encoder.layer[layer].attention.self
        q = att.query(x).view(4, 16, 2, 16).transpose(1, 2)
        k = att.key(x).view(4, 16, 2, 16).transpose(1, 2)
        return q @ k.transpose(-1, -2) / 4.0

    with torch.no_grad():
        diff = scores(other, 0, s_out.hidden_states[0]) - scores(teacher, 1, t_out.hidden_states[1])
    pairs = (mask[:, None, :, None] & mask[:, None, None, :]).expand_as(diff)
    attn = (diff[pairs] ** 2).mean()
    ce = F.cross_entropy(s_logits, batch["labels"][sel])
    assert parts["kl"] == pytest.approx(float(kl), rel=1e-4)
    assert parts["hidden"] == pytest.approx(float(hidden), rel=1e-4)
    assert parts["attn"] == pytest.approx(float(attn), rel=1e-4)
    assert parts["mlm"] == pytest.approx(float(ce), rel=1e-5)
    expected = 0.5 * ce + 2.0 * kl + 0.25 * hidden + 4.0 * attn
    assert float(loss.detach()) == pytest.approx(float(expected), rel=1e-4)


@pytest.mark.parametrize("target", ["scores", "probs"])
def test_padding_positions_do_not_contribute(target: str) -> None:
    teacher = _bert(2, init=0.2)
    student = MaskedLMModel(_bert(2, init=0.2))
    objective = DistillationObjective(teacher, DistillConfig(attention_target=target))
    batch = _batch()
    _, parts = objective(student, batch)
    changed = dict(batch)
    changed["input_ids"] = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, 7)
    _, parts2 = objective(student, changed)
    for key in ("hidden", "attn", "kl", "mlm"):
        assert parts2[key] == pytest.approx(parts[key], rel=1e-5), key


def test_layer_map() -> None:
    assert layer_map(2, 2) == [1, 2]
    assert layer_map(3, 12) == [4, 8, 12]
    assert layer_map(4, 12, "top") == [9, 10, 11, 12]
    assert layer_map(4, 12, "bottom") == [1, 2, 3, 4]
    assert layer_map(3, 4) == [1, 2, 4]
    with pytest.raises(BitmapsError, match="needs student layers 3 <= teacher 2"):
        layer_map(3, 2, "top")


def test_compatibility_checks() -> None:
    teacher = _bert(2)
    with pytest.raises(BitmapsError, match=f"^teacher vocab {VOCAB} != student vocab 120$"):
        check_teacher_student(teacher, _bert(2, vocab=120))
    with pytest.raises(BitmapsError, match="teacher hidden size 32 != student hidden size 64"):
        check_teacher_student(teacher, _bert(2, hidden=64))
    objective = DistillationObjective(teacher, DistillConfig())
    with pytest.raises(BitmapsError, match=f"teacher vocab {VOCAB} != student vocab 120"):
        objective(MaskedLMModel(_bert(2, vocab=120)), _batch())


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"lambda_hidden": -1.0}, "lambda_hidden must be >= 0, got -1.0"),
        ({"temperature": 0.0}, r"temperature must be in \[0.01, 1000\], got 0.0"),
        ({"attention_target": "values"}, "attention_target must be one of scores, probs"),
        ({"layer_mapping": "random"}, "layer_mapping must be one of uniform, top, bottom"),
        (
            {"lambda_mlm": 0, "lambda_logit": 0, "lambda_hidden": 0, "lambda_attn": 0},
            "at least one of",
        ),
    ],
)
def test_bad_distill_config_fails_with_one_line(kwargs, message) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        DistillConfig(**kwargs)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"activation_quantizer": "tanh"}, "activation_quantizer must be one of ste, approx_sign"),
        ({"weight_quantizer": "ternary"}, "weight_quantizer must be one of scaled_sign"),
        ({"clip": -1.0}, "clip must be > 0"),
        ({"modules": ("query", "pooler")}, "modules entry must be one of"),
        ({"schedule": "bit_multistep"}, "needs activation_start_step >= 1"),
    ],
)
def test_bad_binarize_config_fails_with_one_line(kwargs, message) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        BinarizeConfig(**kwargs)
    assert "\n" not in str(info.value)
    with pytest.raises(ConfigError, match="unknown field"):
        BinarizeConfig.from_dict({"activation_quantiser": "ste"})


def test_teacher_is_frozen_fp32_on_cpu_and_multistep_hook() -> None:
    teacher = _bert(2)
    student = copy.deepcopy(teacher)
    bcfg = BinarizeConfig(schedule="bit_multistep", activation_start_step=3)
    binarize_(student, bcfg)
    objective = DistillationObjective(teacher.train(), DistillConfig(), binarize=bcfg)
    t = objective.teacher
    assert not t.training and all(not p.requires_grad for p in t.parameters())
    assert all(p.dtype == torch.float32 for p in t.parameters())
    layers = [m for m in student.modules() if isinstance(m, BinaryLinear)]
    objective.on_step(2, student)
    assert all(m.binarize_weights and not m.binarize_activations for m in layers)
    objective.on_step(3, student)
    assert all(m.binarize_weights and m.binarize_activations for m in layers)


def _distil(teacher: nn.Module, quantizer: str, steps: int, batches: list[dict]) -> list[float]:
    student = copy.deepcopy(teacher)
    binarize_(student, BinarizeConfig(activation_quantizer=quantizer))
    student = MaskedLMModel(student).train()
    objective = DistillationObjective(teacher, DistillConfig(lambda_mlm=0.0))
    opt = torch.optim.Adam(student.parameters(), lr=2e-3)
    history = []
    for step in range(steps):
        loss, parts = objective(student, batches[step % len(batches)])
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append(float(loss.detach()))
    return history


@pytest.mark.parametrize("quantizer", BinarizeConfig.ACTIVATION_QUANTIZERS)
def test_short_student_run_lowers_distillation_loss(quantizer: str) -> None:
    teacher = _bert(2, init=0.2)  # a teacher with confident, non-uniform predictions
    batches = [_batch(seed=s) for s in range(4)]
    history = _distil(teacher, quantizer, 24, batches)
    first, last = sum(history[:4]) / 4, sum(history[-4:]) / 4
    assert last < 0.75 * first, history


def test_student_run_on_real_bert_tiny(bert_tiny_dir) -> None:
    from transformers import BertForMaskedLM

    teacher = BertForMaskedLM.from_pretrained(bert_tiny_dir).eval()
    vocab = teacher.config.vocab_size
    batches = [_batch(b=4, length=32, vocab=vocab, seed=s) for s in range(2)]
    history = _distil(teacher, "elastic", 12, batches)
    assert sum(history[-2:]) / 2 < 0.8 * sum(history[:2]) / 2, history


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_objective_through_distributed_data_parallel() -> None:
    # one-process gloo group: hooks found through DDP's wrapper, elastic α init's all_reduce
    import torch.distributed as dist

    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1
    )
    try:
        teacher = _bert(2, init=0.2)
        student = copy.deepcopy(teacher)
        binarize_(student, BinarizeConfig(activation_quantizer="elastic"))
        ddp = nn.parallel.DistributedDataParallel(MaskedLMModel(student).train())
        objective = DistillationObjective(teacher, DistillConfig())
        loss, parts = objective(ddp, _batch())
        loss.backward()
        assert set(parts) == {"mlm", "kl", "hidden", "attn"} and parts["attn"] > 0
        query = student.bert.encoder.layer[0].attention.self.query
        assert query.input_quantizer._initialized and query.weight.grad is not None
    finally:
        dist.destroy_process_group()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU (CUDA)")
def test_fp16_teacher_and_autocast_student_on_cuda() -> None:
    teacher = _bert(2, init=0.2)
    student = copy.deepcopy(teacher)
    binarize_(student, BinarizeConfig(activation_quantizer="elastic"))
    student = MaskedLMModel(student).cuda().train()
    objective = DistillationObjective(teacher, DistillConfig(), device="cuda")
    assert all(p.dtype == torch.float16 for p in objective.teacher.parameters())
    batch = {k: v.cuda() for k, v in _batch().items()}
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss, parts = objective(student, batch)
    loss.backward()
    assert torch.isfinite(loss.detach()) and all(v == v for v in parts.values())
    assert student.model.bert.encoder.layer[0].attention.self.query.weight.grad is not None


# --------------------------------------------------------------------------- issue 13 options


@pytest.mark.parametrize("pad", [True, False], ids=["padded", "packed"])
def test_layer_normalized_mse_terms_against_hand_computation(pad: bool) -> None:
    teacher, other = _bert(2, init=0.2), _bert(1, init=0.2)
    cfg = DistillConfig(lambda_hidden=1.0, lambda_attn=1.0, mse_norm="layer")
    _, parts = DistillationObjective(teacher, cfg)(MaskedLMModel(other), _batch(pad=pad))
    _, raw = DistillationObjective(teacher, cfg.replace(mse_norm="none"))(
        MaskedLMModel(other), _batch(pad=pad)
    )
    batch = _batch(pad=pad)
    mask = batch["attention_mask"].bool()
    kw = {k: batch[k] for k in ("input_ids", "attention_mask")}
    with torch.no_grad():
        t_hs = teacher.bert(**kw, output_hidden_states=True).hidden_states
        s_hs = other.bert(**kw, output_hidden_states=True).hidden_states
    pairs = [(0, 0), (1, 2)]  # embeddings, student layer 1 ↔ teacher layer 2
    rel = [
        float(((s_hs[j] - t_hs[g])[mask] ** 2).mean() / (t_hs[g][mask] ** 2).mean())
        for j, g in pairs
    ]
    assert parts["hidden"] == pytest.approx(sum(rel) / 2, rel=1e-4)
    assert parts["hidden"] != pytest.approx(raw["hidden"], rel=1e-2)
    # one attention pair: the relative error is the raw MSE over the teacher's mean square
    with torch.no_grad():
        att = teacher.bert.encoder.layer[1].attention.self
        q = att.query(t_hs[1]).view(4, 16, 2, 16).transpose(1, 2)
        k = att.key(t_hs[1]).view(4, 16, 2, 16).transpose(1, 2)
        t_scores = q @ k.transpose(-1, -2) / 4.0
    valid = (mask[:, None, :, None] & mask[:, None, None, :]).expand_as(t_scores)
    ms = float((t_scores[valid] ** 2).mean())
    assert parts["attn"] == pytest.approx(raw["attn"] / ms, rel=1e-4)


def test_hidden_layers_last_matches_only_the_last_layer() -> None:
    teacher, other = _bert(2, init=0.2), _bert(2, init=0.2)
    batch = _batch(pad=False)
    cfg = DistillConfig(lambda_hidden=1.0, lambda_attn=0.0, hidden_layers="last")
    _, parts = DistillationObjective(teacher, cfg)(MaskedLMModel(other), batch)
    kw = {k: batch[k] for k in ("input_ids", "attention_mask")}
    with torch.no_grad():
        t = teacher.bert(**kw).last_hidden_state
        s = other.bert(**kw).last_hidden_state
    assert parts["hidden"] == pytest.approx(float(F.mse_loss(s, t)), rel=1e-5)


def test_intermediate_teacher_of_the_multistep_schedule() -> None:
    teacher = _bert(2, init=0.2)
    student = copy.deepcopy(teacher)
    bcfg = BinarizeConfig(
        activation_quantizer="elastic", schedule="bit_multistep", activation_start_step=2
    )
    binarize_(student, bcfg)
    cfg = DistillConfig(multistep_teacher="intermediate")
    objective = DistillationObjective(teacher, cfg, binarize=bcfg)
    wrapped = MaskedLMModel(student).train()
    batch = _batch()
    objective.on_step(0, student)
    objective.on_step(1, student)
    assert objective.teacher.model is teacher  # the FP teacher during W1A32
    objective(wrapped, batch)[0].backward()
    objective.on_step(2, student)  # first W1A1 step: the W1A32 student, frozen, teaches
    new = objective.teacher
    assert new.model is not teacher and not new.training
    assert all(not p.requires_grad for p in new.parameters())
    frozen = [m for m in new.modules() if isinstance(m, BinaryLinear)]
    live = [m for m in student.modules() if isinstance(m, BinaryLinear)]
    assert len(frozen) == 12 and all(not m.binarize_activations for m in frozen)
    assert all(m.binarize_activations for m in live)
    kw = {k: batch[k] for k in ("input_ids", "attention_mask")}
    with torch.no_grad():
        set_phase = copy.deepcopy(student)
        for m in set_phase.modules():
            if isinstance(m, BinaryLinear):
                m.set_phase(True, False)
        expected = set_phase.eval()(**kw).logits
        assert torch.equal(new.model(**kw).logits, expected)
    loss, parts = objective(wrapped, batch)
    assert torch.isfinite(loss) and parts["hidden"] > 0
    resumed = DistillationObjective(teacher, cfg, binarize=bcfg)
    with pytest.raises(BitmapsError, match="cannot resume at step 3: .*restart the run"):
        resumed.on_step(3, student)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"mse_norm": "batch"}, "mse_norm must be one of none, layer"),
        ({"hidden_layers": "first"}, "hidden_layers must be one of all, last"),
        ({"multistep_teacher": "self"}, "multistep_teacher must be one of teacher, intermediate"),
        ({"mse_decay_steps": -1}, "mse_decay_steps must be an integer >= 0, got -1"),
    ],
)
def test_bad_new_distill_fields(kwargs, message) -> None:
    with pytest.raises(ConfigError, match=message):
        DistillConfig(**kwargs)


def test_mse_weights_decay_linearly_to_zero() -> None:
    teacher, other = _bert(2, init=0.2), MaskedLMModel(_bert(2, init=0.2))
    batch = _batch(pad=False)
    cfg = DistillConfig(lambda_hidden=2.0, lambda_attn=0.5, mse_decay_steps=4)
    objective = DistillationObjective(teacher, cfg)
    full = DistillationObjective(teacher, cfg.replace(mse_decay_steps=0))
    _, parts = full(other, batch)
    for step, factor in [(0, 1.0), (1, 0.75), (3, 0.25), (4, 0.0), (9, 0.0)]:
        objective.on_step(step, other)
        assert objective.mse_weight() == factor
        loss, got = objective(other, batch)
        expected = (
            parts["mlm"] + parts["kl"] + factor * (2.0 * parts["hidden"] + 0.5 * parts["attn"])
        )
        assert float(loss.detach()) == pytest.approx(expected, rel=1e-5)
        assert ("hidden" in got) == (factor > 0)
