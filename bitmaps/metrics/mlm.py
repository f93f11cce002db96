"""Masked-LM plumbing shared by training, distillation and evaluation.

:class:`MaskedLMModel` wraps a Hugging Face ``*ForMaskedLM`` so that the vocabulary projection runs only
on the masked positions (15% of tokens: the MLM head is the costliest matmul of a small BERT), and so
that DistributedDataParallel wraps one module whose ``forward`` is the whole training computation.
:func:`mlm_metrics` defines the three numbers of the original study on masked tokens only.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from bitmaps.core.errors import BitmapsError

IGNORE_INDEX = -100


@dataclasses.dataclass
class MaskedLMOutput:
    """Logits at the masked positions only, plus what distillation needs."""

    logits: torch.Tensor  # [T, V], T = number of masked tokens in the batch
    targets: torch.Tensor  # [T] true token ids
    hidden_states: tuple[torch.Tensor, ...] | None = None  # embeddings + one per layer, [B, L, H]
    attentions: tuple[torch.Tensor, ...] | None = None  # one per layer, [B, heads, L, L]


def backbone_and_head(model: nn.Module) -> tuple[nn.Module, nn.Module]:
    """The encoder and the MLM head of a BERT-family ``*ForMaskedLM``."""
    backbone = getattr(model, model.base_model_prefix, None)
    head = getattr(model, "cls", None)
    if backbone is None or head is None:
        raise TypeError(f"{type(model).__name__} is not a BERT-family masked-LM model")
    return backbone, head


class MaskedLMModel(nn.Module):
    """``forward(batch)`` → :class:`MaskedLMOutput`; the wrapped model is ``self.model``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.backbone, self.head = backbone_and_head(model)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        labels: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
    ) -> MaskedLMOutput:
        out = self.backbone(
            input_ids=input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            output_hidden_states=output_hidden_states,
            output_attentions=output_attentions,
        )
        selected = labels != IGNORE_INDEX
        logits = self.head(out.last_hidden_state[selected])
        return MaskedLMOutput(
            logits=logits,
            targets=labels[selected],
            hidden_states=out.hidden_states if output_hidden_states else None,
            attentions=out.attentions if output_attentions else None,
        )


def batch_inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The keyword arguments of :meth:`MaskedLMModel.forward` present in a data batch."""
    keys = ("input_ids", "attention_mask", "labels", "token_type_ids")
    return {k: batch[k] for k in keys if k in batch}


def require_finite(logits: torch.Tensor) -> None:
    """Refuse to score outputs that hold NaN or infinity: every comparison with NaN is false, so
    the ranks below would count a NaN model as always right (accuracy 1, MRR 1)."""
    if not bool(torch.isfinite(logits).all()):
        raise BitmapsError(
            "the model's outputs hold NaN or infinite values (its training diverged, or its "
            "weights are damaged): score an earlier checkpoint, or train again with a lower --lr"
        )


@dataclasses.dataclass
class MLMSums:
    """Additive statistics over masked tokens, so metrics aggregate exactly across batches/ranks."""

    nll: float = 0.0  # sum of cross entropy (nats)
    correct: float = 0.0  # top-1 hits
    reciprocal_rank: float = 0.0  # sum of 1 / rank of the true token
    tokens: int = 0

    def add(self, logits: torch.Tensor, targets: torch.Tensor) -> None:
        if targets.numel() == 0:
            return
        logits = logits.float()
        require_finite(logits)
        true = logits.gather(-1, targets[:, None])
        self.nll += float(nn.functional.cross_entropy(logits, targets, reduction="sum"))
        # rank = 1 + number of tokens scored strictly higher than the true one (ties favour it)
        rank = 1 + (logits > true).sum(-1)
        self.correct += float((rank == 1).sum())
        self.reciprocal_rank += float((1.0 / rank.double()).sum())
        self.tokens += int(targets.numel())

    def merge(self, other: MLMSums) -> None:
        self.nll += other.nll
        self.correct += other.correct
        self.reciprocal_rank += other.reciprocal_rank
        self.tokens += other.tokens

    def as_tensor(self) -> torch.Tensor:
        return torch.tensor(
            [self.nll, self.correct, self.reciprocal_rank, float(self.tokens)], dtype=torch.float64
        )

    @classmethod
    def from_tensor(cls, t: torch.Tensor) -> MLMSums:
        nll, correct, rr, tokens = t.tolist()
        return cls(nll, correct, rr, int(round(tokens)))

    def metrics(self) -> dict[str, float]:
        """cross_entropy (nats / masked token), accuracy (top-1), mrr, masked_tokens."""
        n = max(self.tokens, 1)
        return {
            "cross_entropy": self.nll / n,
            "accuracy": self.correct / n,
            "mrr": self.reciprocal_rank / n,
            "masked_tokens": self.tokens,
        }


def mlm_metrics(logits: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
    """Cross entropy, top-1 accuracy and mean reciprocal rank of the true token."""
    sums = MLMSums()
    sums.add(logits, targets)
    return sums.metrics()
