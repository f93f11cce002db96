"""Classification metrics: accuracy, macro-F1 and the confusion matrix, from additive counts.

:class:`ConfusionCounts` holds the confusion matrix ``C[true, predicted]``; it adds across batches
and, under ``torchrun``, across ranks (one all-reduce), so every metric equals a single-process
run's. Macro-F1 is the unweighted mean over classes of F1 = 2·P·R / (P + R), with F1 = 0 for a
class that is never predicted and never true (scikit-learn's ``zero_division=0``).
:func:`evaluate_classifier` scores any module whose output has ``.logits [batch, labels]``;
:class:`SequenceClassifierModel` adapts a classifier to the trainer and the distillation loss.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn

from bitmaps.core import distributed as D
from bitmaps.metrics.mlm import MaskedLMModel, MaskedLMOutput, require_finite


class ConfusionCounts:
    """``matrix[t, p]``: examples of true class t predicted as p (int64)."""

    def __init__(self, num_labels: int) -> None:
        self.matrix = torch.zeros(num_labels, num_labels, dtype=torch.int64)

    def add(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        n = self.matrix.shape[0]
        require_finite(logits)
        pred = logits.argmax(-1).cpu()
        flat = labels.cpu() * n + pred
        self.matrix += torch.bincount(flat, minlength=n * n).reshape(n, n)

    def metrics(self, label_names: Sequence[str] | None = None) -> dict[str, Any]:
        return classification_metrics(self.matrix, label_names)


def classification_metrics(
    matrix: torch.Tensor, label_names: Sequence[str] | None = None
) -> dict[str, Any]:
    """accuracy, macro_f1, per-label precision / recall / F1 / support, the confusion matrix."""
    m = matrix.to(torch.float64)
    total = float(m.sum())
    tp = m.diagonal()
    predicted, true = m.sum(0), m.sum(1)
    precision = torch.where(predicted > 0, tp / predicted.clamp_min(1), torch.zeros_like(tp))
    recall = torch.where(true > 0, tp / true.clamp_min(1), torch.zeros_like(tp))
    denom = precision + recall
    f1 = torch.where(denom > 0, 2 * precision * recall / denom.clamp_min(1e-300), 0 * denom)
    names = list(label_names) if label_names is not None else [str(i) for i in range(len(m))]
    return {
        "accuracy": float(tp.sum()) / total if total else 0.0,
        "macro_f1": float(f1.mean()),
        "examples": int(total),
        "labels": names,
        "per_label": {
            name: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(true[i]),
            }
            for i, name in enumerate(names)
        },
        "confusion_matrix": matrix.tolist(),
    }


def majority_accuracy(matrix: torch.Tensor) -> float:
    """Accuracy of always predicting the most frequent true class (the baseline to beat)."""
    true = matrix.sum(1)
    return float(true.max()) / max(1, int(true.sum()))


def format_confusion(metrics: dict[str, Any]) -> str:
    """The confusion matrix as a small text table: rows true, columns predicted."""
    names = metrics["labels"]
    corner = "true \\ predicted"
    first = max(len(corner), *(len(n) for n in names)) + 2
    width = max(6, *(len(n) for n in names)) + 2
    head = corner.ljust(first) + "".join(n.rjust(width) for n in names)
    rows = [
        name.ljust(first) + "".join(str(v).rjust(width) for v in row)
        for name, row in zip(names, metrics["confusion_matrix"], strict=True)
    ]
    return "\n".join([head, *rows])


@torch.no_grad()
def evaluate_classifier(
    model: nn.Module,
    batches: Iterable[dict[str, torch.Tensor]],
    num_labels: int,
    env: D.DistEnv | None = None,
    *,
    label_names: Sequence[str] | None = None,
    amp_dtype: torch.dtype | None = None,
) -> dict[str, Any]:
    """Score ``model(input_ids=, attention_mask=).logits`` on labelled batches."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    counts = ConfusionCounts(num_labels)
    ctx = (
        torch.autocast(device.type, dtype=amp_dtype)
        if amp_dtype is not None
        else contextlib.nullcontext()
    )
    try:
        for batch in batches:
            with ctx:
                out = model(
                    input_ids=batch["input_ids"].to(device),
                    attention_mask=batch["attention_mask"].to(device),
                )
            counts.add(out.logits.float(), batch["labels"])
    finally:
        model.train(was_training)
    if env is not None and env.distributed:
        counts.matrix = D.all_reduce_sum(env, counts.matrix.to(env.device)).cpu().long()
    result = counts.metrics(label_names)
    result["majority_accuracy"] = majority_accuracy(counts.matrix)
    return result


class SequenceClassifierModel(MaskedLMModel):
    """A ``*ForSequenceClassification`` behind :class:`MaskedLMModel`'s interface.

    ``forward(input_ids, attention_mask, labels, ...)`` returns a :class:`MaskedLMOutput` whose
    ``logits`` are ``[batch, labels]`` and ``targets`` the true classes, so the trainer's loop and
    ``DistillationObjective`` (CE on the targets, T²·KL on the logits, hidden-state and attention
    MSE) serve classification unchanged: one distillation recipe for both tasks.
    """

    def __init__(self, model: nn.Module) -> None:
        nn.Module.__init__(self)
        self.model = model
        self.backbone = getattr(model, model.base_model_prefix)
        self.head = model.classifier

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        labels: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
    ) -> MaskedLMOutput:
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            output_hidden_states=output_hidden_states,
            output_attentions=output_attentions,
        )
        return MaskedLMOutput(
            logits=out.logits,
            targets=labels,
            hidden_states=out.hidden_states if output_hidden_states else None,
            attentions=out.attentions if output_attentions else None,
        )
