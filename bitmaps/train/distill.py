"""Knowledge distillation of the binarized student from the frozen full-precision teacher.

:class:`DistillationObjective` is the student-stage objective of the shared trainer
(``objective(model, batch) -> (loss, parts)``)::

    loss = λ_mlm · CE(student, true token)                  masked positions
         + λ_logit · T² · KL(softmax(t/T) ‖ softmax(s/T))   masked positions, mean per token
         + λ_hidden · Σ_j MSE(h_s[j], h_t[g(j)])           j = 0 (embeddings) … S, real tokens
         + λ_attn · Σ_j MSE(A_s[j], A_t[g(j)])             j = 1 … S, real (query, key) pairs

(Hinton et al. 2015 for the T² KL; TinyBERT, Jiao et al. 2020, for the hidden-state and attention
terms and the uniform layer map g(j) = ⌊j·T_L/S_L⌋.) Each MSE is the mean over its valid elements.
With ``mse_norm="layer"`` each is divided by the teacher's mean square at that layer (a relative
error: BERT's hidden states and attention scores differ in scale from layer to layer, and the raw
sums weighed several times the KL) and Σ_j becomes the mean over j. ``hidden_layers="last"`` keeps
only j = S. ``mse_decay_steps`` = D > 0 multiplies λ_hidden and λ_attn by max(0, 1 − step/D) (the
step of the last ``on_step``): benchmarks/ablation/grad_alignment.py measured their gradients
+0.23 aligned with the KL's on a fresh student and ~0.07 (orthogonal, and several times larger)
after 300 steps, so they can only guide the start.

Attention: A is either the pre-softmax scores q·kᵀ/√d per head (``attention_target="scores"``,
TinyBERT's choice: they carry more information than probabilities, which saturate) or their softmax
over real keys (``"probs"``). Both are recomputed from the outputs of each layer's query and key
projections, captured with forward hooks, so the model keeps its fast SDPA attention (which returns
no attention weights) and nothing reaches into the model's forward. Padding keys and queries are
excluded from the MSE (and padding keys from the softmax). The recomputation assumes absolute
position embeddings (scores = q·kᵀ/√d exactly), which is checked.

The teacher runs under ``torch.no_grad()`` in eval mode: FP16 on CUDA, FP32 on CPU.
"""

from __future__ import annotations

import contextlib
import copy
import weakref
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from bitmaps.core.config import BinarizeConfig, DistillConfig
from bitmaps.core.errors import BitmapsError
from bitmaps.metrics.mlm import MaskedLMModel, MaskedLMOutput, batch_inputs
from bitmaps.train.binary_linear import (
    EncoderLayout,
    binarization_phase_for_step,
    encoder_layout,
    hf_model,
    set_binarization_phase_,
)

__all__ = [
    "DistillationObjective",
    "DistillationLoss",
    "check_teacher_student",
    "layer_map",
    "binarization_phase_for_step",
    "set_binarization_phase_",
]


def _hf_config(model_or_config: Any) -> Any:
    if isinstance(model_or_config, nn.Module):
        return hf_model(model_or_config).config
    return model_or_config


def check_teacher_student(teacher: Any, student: Any, *, attention: bool = True) -> None:
    """Raise BitmapsError unless the student can be distilled from the teacher.

    Both are models (any wrapper) or Hugging Face configs. Vocabulary and hidden size must match
    (the student is a binarized copy of the teacher); with ``attention`` also the head count.
    """
    t, s = _hf_config(teacher), _hf_config(student)
    if t.vocab_size != s.vocab_size:
        raise BitmapsError(f"teacher vocab {t.vocab_size} != student vocab {s.vocab_size}")
    if t.hidden_size != s.hidden_size:
        raise BitmapsError(
            f"teacher hidden size {t.hidden_size} != student hidden size {s.hidden_size}: "
            "the student must be a binarized copy of the teacher"
        )
    if attention and t.num_attention_heads != s.num_attention_heads:
        raise BitmapsError(
            f"teacher has {t.num_attention_heads} attention heads, student "
            f"{s.num_attention_heads}: attention distillation needs the same number"
        )
    for name, cfg in (("teacher", t), ("student", s)):
        kind = getattr(cfg, "position_embedding_type", "absolute")
        if attention and kind != "absolute":
            raise BitmapsError(
                f"{name} uses {kind} position embeddings; attention distillation supports "
                "absolute ones only (set lambda_attn to 0)"
            )


def layer_map(student_layers: int, teacher_layers: int, mapping: str = "uniform") -> list[int]:
    """Teacher layer g(j) (1-based, as in ``hidden_states``) for student layers j = 1 … S."""
    s, t = student_layers, teacher_layers
    if mapping == "uniform":
        return [j * t // s for j in range(1, s + 1)]
    if s > t:
        raise BitmapsError(f"layer mapping {mapping!r} needs student layers {s} <= teacher {t}")
    if mapping == "top":
        return [t - s + j for j in range(1, s + 1)]
    if mapping == "bottom":
        return list(range(1, s + 1))
    raise BitmapsError(f"unknown layer mapping {mapping!r}")


@contextlib.contextmanager
def _capture_outputs(model: nn.Module, paths: list[str]) -> Iterator[dict[str, torch.Tensor]]:
    """Record the forward output of each submodule at ``paths`` while the context is open."""
    store: dict[str, torch.Tensor] = {}
    handles = []
    for path in paths:

        def hook(_m: nn.Module, _inp: Any, out: torch.Tensor, path: str = path) -> None:
            store[path] = out

        handles.append(model.get_submodule(path).register_forward_hook(hook))
    try:
        yield store
    finally:
        for h in handles:
            h.remove()


def _qk_paths(layout: EncoderLayout, layers: list[int]) -> list[str]:
    return [layout.path(i - 1, role) for i in layers for role in ("query", "key")]


def _attention(
    q: torch.Tensor, k: torch.Tensor, heads: int, key_mask: torch.Tensor, target: str
) -> torch.Tensor:
    """Scores q·kᵀ/√d (or their softmax over real keys) per head, float32 ``[B, h, L, L]``."""
    b, length, hidden = q.shape
    d = hidden // heads
    qh = q.float().view(b, length, heads, d).transpose(1, 2)
    kh = k.float().view(b, length, heads, d).transpose(1, 2)
    scores = torch.matmul(qh, kh.transpose(-1, -2)) * d**-0.5
    if target == "probs":
        # finite fill: a row without real keys (an all-padding sequence) stays NaN-free
        scores = scores.masked_fill(~key_mask[:, None, None, :], torch.finfo(scores.dtype).min)
        scores = scores.softmax(-1)
    return scores


class DistillationObjective:
    """``objective(model, batch) -> (loss, parts)`` distilling ``teacher`` into ``model``.

    ``teacher``: a MaskedLMModel (or the ``*ForMaskedLM`` it wraps); the objective takes ownership:
    it moves it to ``device`` (default: where it is), casts it to FP16 on CUDA / FP32 on CPU, puts
    it in eval mode and freezes it — build the student (a copy) before constructing this.
    ``binarize``: the student's BinarizeConfig; with it :meth:`on_step` applies the BiT multi-step
    schedule (the trainer calls ``objective.on_step(step, model)`` before each step).
    ``parts`` holds each enabled term, unweighted, as floats: ``mlm``, ``kl``, ``hidden``, ``attn``.
    """

    def __init__(
        self,
        teacher: nn.Module,
        cfg: DistillConfig | None = None,
        *,
        binarize: BinarizeConfig | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        self.cfg = cfg if cfg is not None else DistillConfig()
        self.binarize = binarize
        self._intermediate = False
        self._step = 0  # of the last on_step call: the decay of the MSE weights follows it
        self._student: weakref.WeakKeyDictionary[nn.Module, tuple[EncoderLayout, list[int]]]
        if device is None:
            device = next(teacher.parameters()).device
        self._teacher_device = torch.device(device)
        self._set_teacher(teacher)

    def _teacher_precision(self) -> contextlib.AbstractContextManager:
        """FP16 autocast on CUDA (overriding a bf16 autocast of the trainer), none on CPU."""
        device = self._teacher_device
        if device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.float16)
        return torch.autocast(device.type, enabled=False)

    def on_step(self, step: int, model: nn.Module) -> None:
        """Set the student's binarization phase for ``step`` (BiT multi-step schedule).

        With ``multistep_teacher="intermediate"``, at the first W1A1 step a frozen copy of the
        W1A32 student becomes the teacher (BiT's multi-distillation). That copy is not saved, so
        a run resumed after that step is refused rather than continued with the wrong teacher.
        """
        self._step = step
        if self.binarize is None:
            return
        phase = binarization_phase_for_step(step, self.binarize)
        if (
            self.cfg.multistep_teacher == "intermediate"
            and self.binarize.schedule == "bit_multistep"
            and not self._intermediate
        ):
            start = self.binarize.activation_start_step
            if step > start:
                raise BitmapsError(
                    f"cannot resume at step {step}: distill.multistep_teacher=intermediate took "
                    f"its teacher from the student at step {start}, which the checkpoint does "
                    "not hold; restart the run"
                )
            if step == start:
                self._set_teacher(copy.deepcopy(hf_model(model)))
                self._intermediate = True
        set_binarization_phase_(model, *phase)

    def mse_weight(self) -> float:
        """The factor on λ_hidden and λ_attn at the current step: 1 − step/mse_decay_steps, ≥ 0."""
        if self.cfg.mse_decay_steps <= 0:
            return 1.0
        return max(0.0, 1.0 - self._step / self.cfg.mse_decay_steps)

    def _set_teacher(self, teacher: nn.Module) -> None:
        if not isinstance(teacher, MaskedLMModel):
            teacher = MaskedLMModel(teacher)
        dtype = torch.float16 if self._teacher_device.type == "cuda" else torch.float32
        self.teacher = teacher.to(device=self._teacher_device, dtype=dtype)
        self.teacher.eval().requires_grad_(False)
        self._teacher_layout = encoder_layout(self.teacher)
        self._teacher_heads = hf_model(self.teacher).config.num_attention_heads
        self._student = weakref.WeakKeyDictionary()  # layer maps against the new teacher

    def _student_plan(self, model: nn.Module) -> tuple[EncoderLayout, list[int]]:
        """The student's layout and layer map, checked once per model object."""
        plan = self._student.get(model)
        if plan is None:
            check_teacher_student(self.teacher, model, attention=self.cfg.lambda_attn > 0)
            layout = encoder_layout(model)
            mapping = layer_map(
                layout.num_layers, self._teacher_layout.num_layers, self.cfg.layer_mapping
            )
            plan = self._student[model] = (layout, mapping)
        return plan

    def __call__(
        self, model: nn.Module, batch: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, float]]:
        cfg = self.cfg
        layout, mapping = self._student_plan(model)
        inputs = batch_inputs(batch)
        decay = self.mse_weight()
        want_hidden = cfg.lambda_hidden * decay > 0
        want_attn = cfg.lambda_attn * decay > 0
        s_layers = list(range(1, layout.num_layers + 1))

        teacher_out, t_qk = None, {}
        if cfg.lambda_logit > 0 or want_hidden or want_attn:
            t_paths = _qk_paths(self._teacher_layout, mapping) if want_attn else []
            with (
                torch.no_grad(),
                self._teacher_precision(),
                _capture_outputs(self.teacher, t_paths) as t_qk,
            ):
                teacher_out = self.teacher(**inputs, output_hidden_states=want_hidden)
        s_paths = _qk_paths(layout, s_layers) if want_attn else []
        with _capture_outputs(model, s_paths) as s_qk:
            out = model(**inputs, output_hidden_states=want_hidden, output_attentions=False)

        terms: dict[str, tuple[float, torch.Tensor]] = {}
        for name, (weight, value) in self._logit_terms(out, teacher_out).items():
            terms[name] = (weight, value)
        mask = batch["attention_mask"].bool()
        full = bool(mask.all())  # packed text has no padding: plain means, fewer temporaries
        if want_hidden:
            pairs = list(zip(range(layout.num_layers + 1), [0, *mapping], strict=True))
            if cfg.hidden_layers == "last":
                pairs = pairs[-1:]
            terms["hidden"] = (
                cfg.lambda_hidden * decay,
                self._hidden_mse(out, teacher_out, pairs, mask, full, cfg.mse_norm == "layer"),
            )
        if want_attn:
            terms["attn"] = (
                cfg.lambda_attn * decay,
                self._attention_mse(layout, mapping, s_qk, t_qk, mask, full),
            )
        loss = sum(w * t for w, t in terms.values())
        # one device sync for all the floats; the trainer reports the total loss itself
        values = torch.stack([t.detach().float() for _, t in terms.values()])
        parts = dict(zip(terms, values.tolist(), strict=True))
        return loss, parts

    # ------------------------------------------------------------------ terms

    def _logit_terms(
        self, out: MaskedLMOutput, teacher: MaskedLMOutput | None
    ) -> dict[str, tuple[float, torch.Tensor]]:
        """CE and T²·KL on the masked positions, sharing one log-softmax when T = 1.

        KL(p_t ‖ p_s) = Σ p_t log p_t − Σ p_t log p_s: the first sum is a constant of the teacher,
        the second a dot product — no [tokens, vocab] temporary beyond the log-softmax itself.
        """
        cfg = self.cfg
        n = out.targets.numel()
        terms: dict[str, tuple[float, torch.Tensor]] = {}
        if n == 0:  # no masked token in this batch: keep the graph, contribute nothing
            zero = out.logits.sum() * 0.0
            if cfg.lambda_mlm > 0:
                terms["mlm"] = (cfg.lambda_mlm, zero)
            if cfg.lambda_logit > 0:
                terms["kl"] = (cfg.lambda_logit, zero)
            return terms
        logits, temp = out.logits.float(), cfg.temperature
        log_s = None
        if cfg.lambda_logit > 0:
            log_s = F.log_softmax(logits / temp if temp != 1 else logits, dim=-1)
        if cfg.lambda_mlm > 0:
            if log_s is not None and temp == 1:
                ce = F.nll_loss(log_s, out.targets)
            else:
                ce = F.cross_entropy(logits, out.targets)
            terms["mlm"] = (cfg.lambda_mlm, ce)
        if log_s is not None:
            with torch.no_grad():
                log_t = F.log_softmax(teacher.logits.float() / temp, dim=-1)
                p_t = log_t.exp()
                neg_entropy = torch.dot(p_t.flatten(), log_t.flatten())
            cross = torch.dot(p_t.flatten(), log_s.flatten())
            terms["kl"] = (cfg.lambda_logit, (neg_entropy - cross) * (temp**2 / n))
        return terms

    @staticmethod
    def _hidden_mse(
        out: MaskedLMOutput,
        teacher: MaskedLMOutput,
        pairs: list[tuple[int, int]],
        mask: torch.Tensor,
        full: bool,
        normalize: bool = False,
    ) -> torch.Tensor:
        total = torch.zeros((), dtype=torch.float32, device=mask.device)
        weight = mask.unsqueeze(-1).float()
        denom = weight.sum().clamp_min(1.0) * out.hidden_states[0].shape[-1]
        for j, g in pairs:
            s, t = out.hidden_states[j].float(), teacher.hidden_states[g].float()
            if full:
                mse = F.mse_loss(s, t)
            else:
                mse = ((s - t).square() * weight).sum() / denom
            total = total + (mse / _mean_square(t, weight, denom, full) if normalize else mse)
        return total / len(pairs) if normalize else total

    def _attention_mse(
        self,
        layout: EncoderLayout,
        mapping: list[int],
        s_qk: dict[str, torch.Tensor],
        t_qk: dict[str, torch.Tensor],
        mask: torch.Tensor,
        full: bool,
    ) -> torch.Tensor:
        heads, target = self._teacher_heads, self.cfg.attention_target
        normalize = self.cfg.mse_norm == "layer"
        pair_mask = (mask[:, None, :, None] & mask[:, None, None, :]).float()
        denom = pair_mask.sum().clamp_min(1.0) * heads
        total = torch.zeros((), dtype=torch.float32, device=mask.device)
        t_layout = self._teacher_layout
        for j, g in enumerate(mapping, start=1):
            s_q, s_k = s_qk[layout.path(j - 1, "query")], s_qk[layout.path(j - 1, "key")]
            s_att = _attention(s_q, s_k, heads, mask, target)
            with torch.no_grad():
                t_q, t_k = t_qk[t_layout.path(g - 1, "query")], t_qk[t_layout.path(g - 1, "key")]
                t_att = _attention(t_q, t_k, heads, mask, target)
            if full:
                mse = F.mse_loss(s_att, t_att)
            else:
                mse = ((s_att - t_att).square() * pair_mask).sum() / denom
            if normalize:
                mse = mse / _mean_square(t_att, pair_mask, denom, full)
            total = total + mse
        return total / len(mapping) if normalize else total


def _mean_square(
    t: torch.Tensor, weight: torch.Tensor, denom: torch.Tensor, full: bool
) -> torch.Tensor:
    """mean(t²) over the valid elements (no gradient: ``t`` is the teacher's), floored at 1e-12."""
    with torch.no_grad():
        ms = t.square().mean() if full else (t.square() * weight).sum() / denom
        return ms.clamp_min(1e-12)


DistillationLoss = DistillationObjective
