"""Masked-LM evaluation of a model on masked batches: cross entropy, top-1 accuracy and MRR of the
true token, masked tokens only.

The masks come from the data pipeline's fixed evaluation seed, so two models that share a tokenizer
are scored on exactly the same masked positions. Under ``torchrun`` each rank scores its shard and the
additive sums are reduced, so the metrics equal a single-process run's.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from bitmaps.core import distributed as D
from bitmaps.metrics.mlm import MaskedLMModel, MLMSums, batch_inputs


@torch.no_grad()
def evaluate_mlm(
    model: MaskedLMModel,
    batches: Iterable[dict[str, torch.Tensor]],
    env: D.DistEnv | None = None,
    *,
    amp_dtype: torch.dtype | None = None,
    progress: Any | None = None,
) -> dict[str, float]:
    """Score ``model`` (a :class:`MaskedLMModel`, not DDP-wrapped) on masked ``batches``."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    sums = MLMSums()
    ctx = (
        torch.autocast(device.type, dtype=amp_dtype)
        if amp_dtype is not None
        else contextlib.nullcontext()
    )
    try:
        for batch in batches:
            batch = {k: v.to(device) for k, v in batch.items()}
            with ctx:
                out = model(**batch_inputs(batch))
            sums.add(out.logits.float(), out.targets)
            if progress is not None:
                progress.update(1)
    finally:
        model.train(was_training)
    if env is not None and env.distributed:
        sums = MLMSums.from_tensor(D.all_reduce_sum(env, sums.as_tensor()))
    return sums.metrics()


def evaluate_model(
    model: nn.Module,
    batches: Iterable[dict[str, torch.Tensor]],
    *,
    device: torch.device | str = "cpu",
    progress: Any | None = None,
) -> dict[str, float]:
    """Score a Hugging Face ``*ForMaskedLM`` (teacher or binarized student) on masked batches."""
    wrapped = MaskedLMModel(model).to(device)
    return evaluate_mlm(wrapped, batches, progress=progress)
