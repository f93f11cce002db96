"""Masked-LM evaluation: cross entropy, top-1 accuracy and MRR of the true token, masked tokens only.

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

from bitmaps.train import distributed as D
from bitmaps.train.mlm import MaskedLMModel, MLMSums, batch_inputs


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


def evaluate_on_text(
    spec: str,
    paths: list[str],
    data_cfg: Any,
    *,
    batch_size: int = 64,
    max_sequences: int = 0,
    split: str = "heldout",
    device: str = "auto",
    log: Any = print,
) -> dict[str, Any]:
    """Load a model (checkpoint, folder or asset name), build its corpus, score one split.

    Returns the metrics plus what was scored: ``model``, ``stage``, ``binary``, ``split``,
    ``sequences``, ``wall_s``.
    """
    import time

    from bitmaps.errors import BitmapsError
    from bitmaps.models import load_model
    from bitmaps.progress import ProgressReporter
    from bitmaps.train.data import build_corpus, eval_batches

    t0 = time.perf_counter()
    loaded = load_model(spec)
    corpus = build_corpus(paths, loaded.tokenizer, data_cfg, log=log)
    sequences = corpus.heldout if split == "heldout" else corpus.train
    if max_sequences:
        sequences = sequences[:max_sequences]
    if len(sequences) == 0:
        raise BitmapsError(f"the {split} split is empty: give more text")
    dev = torch.device(
        "cuda"
        if device == "auto" and torch.cuda.is_available()
        else ("cpu" if device == "auto" else device)
    )
    batches = eval_batches(sequences, loaded.tokenizer, data_cfg, batch_size=batch_size)
    n_batches = (len(sequences) + batch_size - 1) // batch_size
    with ProgressReporter(n_batches, "eval", log_every=max(1, n_batches // 10)) as progress:
        metrics = evaluate_model(loaded.model, batches, device=dev, progress=progress)
    meta = loaded.checkpoint["meta"] if loaded.checkpoint else {}
    return {
        "model": str(spec),
        "stage": meta.get("stage", "pretrained"),
        "binary": loaded.is_binary,
        "split": split,
        "sequences": len(sequences),
        **metrics,
        "wall_s": time.perf_counter() - t0,
    }
