"""Text classification on the shared trainer: the data, the objectives, evaluation.

Teacher stage: a full-precision ``BertForSequenceClassification`` (from bert-tiny, minilm-l6, a
folder, a masked-LM teacher checkpoint: encoder reused, head fresh; or a classifier) fine-tuned
with cross entropy on the labels (:class:`ClassificationObjective`). Student stage: a copy of the
fine-tuned teacher binarized by ``binarize_`` exactly as for masked LM, distilled by the same
``DistillationObjective`` through :class:`~bitmaps.metrics.classify.SequenceClassifierModel`::

    loss = λ_mlm · CE(student logits, true label)           (λ_mlm weighs the task loss here)
         + λ_logit · T² · KL(teacher ‖ student) over the labels, mean per example
         + λ_hidden · hidden-state MSE + λ_attn · attention MSE (real tokens, as for masked LM)

:func:`classify_data` gives the trainer the stream, the held-out evaluation (accuracy, macro-F1,
confusion matrix) and the fingerprint that a resumed run must match.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Collection, Iterator
from typing import Any

import torch
from torch import nn

from bitmaps.core import distributed as D
from bitmaps.core.config import DataConfig
from bitmaps.core.devices import torch_device
from bitmaps.core.embeddings import embeddings_label, quantize_embeddings_
from bitmaps.core.errors import BitmapsError
from bitmaps.data.labelled import (
    ClassifyStream,
    LabelledData,
    build_labelled,
    classify_batches,
    read_labelled,
)
from bitmaps.metrics.classify import SequenceClassifierModel, evaluate_classifier
from bitmaps.train.models import LoadedModel, load_model

__all__ = [
    "ClassificationObjective",
    "TaskData",
    "classify_data",
    "describe_metrics",
    "evaluate_classifier_on_data",
]


class ClassificationObjective:
    """Cross entropy of the true label (the teacher stage)."""

    def __call__(
        self, model: nn.Module, batch: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, float]]:
        out = model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            labels=batch["labels"],
        )
        loss = nn.functional.cross_entropy(out.logits.float(), out.targets)
        return loss, {"ce": float(loss.detach())}


@dataclasses.dataclass
class TaskData:
    """What the trainer needs from a task's data (masked LM or classification)."""

    fingerprint: str
    stats: dict[str, Any]
    stream: Iterator[dict[str, torch.Tensor]]  # with state_dict() / load_state_dict()
    evaluate: Callable[[nn.Module], dict[str, Any]]  # the wrapped model → held-out metrics
    describe: Callable[[dict[str, Any]], str]


def describe_metrics(m: dict[str, Any]) -> str:
    return (
        f"accuracy {m['accuracy']:.4f}  macro-F1 {m['macro_f1']:.4f}  "
        f"(majority class {m['majority_accuracy']:.4f}, {m['examples']} examples)"
    )


def read_task_labels(job_paths: list[str], source: LoadedModel | None = None) -> LabelledData:
    """The labelled training data; with a teacher ``source``, its labels must be the data's."""
    data = read_labelled(job_paths)
    if source is not None and source.labels != data.labels:
        raise BitmapsError(
            f"the teacher classifies {', '.join(source.labels or ())}; the data has labels "
            f"{', '.join(data.labels)}"
        )
    return data


def classify_data(
    data: LabelledData,
    tokenizer: Any,
    cfg: DataConfig,
    env: D.DistEnv,
    *,
    batch_size: int,
    seed: int,
    eval_examples: int,
    amp_dtype: torch.dtype | None,
    log: Callable[[str], None],
) -> TaskData:
    corpus = build_labelled(data, tokenizer, cfg)
    tr, ho = corpus.stats["train"], corpus.stats["heldout"]
    log(
        f"labelled data: {tr['documents']} train / {ho['documents']} held-out documents, labels "
        f"{', '.join(corpus.labels)}, sequences of {cfg.seq_len}"
    )
    stream = ClassifyStream(
        corpus.train, batch_size=batch_size, seed=seed, rank=env.rank, world_size=env.world_size
    )

    def evaluate(wrapped: nn.Module) -> dict[str, Any]:
        batches = classify_batches(
            corpus.heldout,
            batch_size=batch_size,
            max_examples=eval_examples,
            rank=env.rank,
            world_size=env.world_size,
        )
        hf = wrapped.model if isinstance(wrapped, SequenceClassifierModel) else wrapped
        return evaluate_classifier(
            hf, batches, len(corpus.labels), env, label_names=corpus.labels, amp_dtype=amp_dtype
        )

    stats = {**corpus.stats, "task": "classify"}
    return TaskData(corpus.key, stats, stream, evaluate, describe_metrics)


def evaluate_classifier_on_data(
    model: str,
    paths: list[str],
    cfg: DataConfig,
    *,
    batch_size: int = 64,
    max_examples: int = 0,
    split: str = "heldout",
    device: str = "auto",
    explicit: Collection[str] | None = None,
    log: Callable[[str], None] = print,
    embeddings: str = "fp32",
    embedding_group: int = 64,
) -> dict[str, Any]:
    """``bitmaps eval`` on a classifier: accuracy, macro-F1, confusion matrix on one split.

    ``explicit``: the fields of ``cfg`` the user set; every other one is taken from the
    checkpoint's training (:meth:`LoadedModel.trained_data`). None: ``cfg`` as it is.
    ``embeddings``: the tables as the export's ``--embeddings`` stores them (bitmaps/core/embeddings.py).
    """
    loaded = load_model(model)
    if loaded.task != "classify":
        raise BitmapsError(f"{model} is a masked-LM model, not a classifier")
    quantize_embeddings_(loaded.model, embeddings, embedding_group)
    if explicit is not None:
        cfg = loaded.trained_data(cfg, explicit, log=log)
    labels = loaded.labels or ()
    data = read_labelled(paths, labels=labels)
    corpus = build_labelled(data, loaded.tokenizer, cfg)
    part = corpus.heldout if split == "heldout" else corpus.train
    dev = torch_device(device)
    log(f"scoring {model} on {len(part)} {split} documents ({', '.join(labels)})")
    batches = classify_batches(part, batch_size=batch_size, max_examples=max_examples)
    result = evaluate_classifier(loaded.model.to(dev), batches, len(labels), label_names=labels)
    return {
        "model": str(model),
        "binary": loaded.is_binary,
        "split": split,
        "embeddings": embeddings_label(embeddings, embedding_group),
        "seq_len": cfg.seq_len,
        "data_config": cfg.to_dict(),
        "documents": len(part) if max_examples <= 0 else min(max_examples, len(part)),
        **result,
    }
