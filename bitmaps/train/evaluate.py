"""``bitmaps eval``: load a model by name (checkpoint, folder or asset), build its corpus, score one
split with :func:`bitmaps.metrics.evaluate.evaluate_model`.
"""

from __future__ import annotations

import time
from collections.abc import Collection
from typing import Any

from bitmaps.core.devices import torch_device
from bitmaps.core.embeddings import embeddings_label, quantize_embeddings_
from bitmaps.core.errors import BitmapsError
from bitmaps.core.progress import ProgressReporter
from bitmaps.data.corpus import build_corpus, eval_batches
from bitmaps.metrics.evaluate import evaluate_model
from bitmaps.train.models import load_model


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
    embeddings: str = "fp32",
    embedding_group: int = 64,
    explicit: Collection[str] | None = None,
) -> dict[str, Any]:
    """Load a model (checkpoint, folder or asset name), build its corpus, score one split.

    Returns the metrics plus what was scored: ``model``, ``stage``, ``binary``, ``split``,
    ``sequences``, ``wall_s``. ``embeddings``: the tables and the tied decoder as the export stores
    them (bitmaps/core/embeddings.py), so accuracy is that of the deployed model. ``explicit``: the
    fields of ``data_cfg`` the user set; every other one is taken from the checkpoint's training
    (:meth:`LoadedModel.trained_data`: its held-out split and masks). None: ``data_cfg`` as it is.
    """
    t0 = time.perf_counter()
    loaded = load_model(spec)
    loaded.trained_head("scoring masked-LM accuracy")
    if explicit is not None:
        data_cfg = loaded.trained_data(data_cfg, explicit, log=log)
    quantize_embeddings_(loaded.model, embeddings, embedding_group)
    corpus = build_corpus(paths, loaded.tokenizer, data_cfg, log=log)
    sequences = corpus.heldout if split == "heldout" else corpus.train
    if max_sequences:
        sequences = sequences[:max_sequences]
    if len(sequences) == 0:
        raise BitmapsError(f"the {split} split is empty: give more text")
    dev = torch_device(device)
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
        "embeddings": embeddings_label(embeddings, embedding_group),
        "data_config": data_cfg.to_dict(),
        "sequences": len(sequences),
        **metrics,
        "wall_s": time.perf_counter() - t0,
    }
