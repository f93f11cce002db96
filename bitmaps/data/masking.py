"""Masked-LM batches: on-the-fly masking, the resumable training stream, fixed-mask eval batches.

Masking (BERT's recipe): each eligible token — not ``[CLS]``/``[SEP]``/``[PAD]``/``[MASK]``/
``[UNK]``-style special tokens — is selected with probability ``mask_prob`` (15%); a selected
token becomes ``[MASK]`` with probability ``mask_replace_prob`` (80%), a random word piece with
probability ``mask_random_prob`` (10%; never a special or ``[unusedN]`` token), and stays as it is
otherwise (10%). ``labels`` hold the original id at selected positions and -100 elsewhere. All
randomness comes from an explicit ``torch.Generator``, so masks are a function of the seed.

Batches are dicts of int64 tensors: ``input_ids``, ``attention_mask`` (``input_ids != [PAD]``),
``token_type_ids`` (zeros) and ``labels``.

:class:`TrainStream` is the trainer's infinite iterator. Think of the training sequences as an
endless tape: epoch ``e`` is a permutation drawn from ``(seed, e)``; global step ``g`` takes tape
positions ``[g·B·W, (g+1)·B·W)`` and rank ``r`` the ``r``-th block of ``B`` of them, so the ranks
of a step never share a sequence and one epoch visits every sequence once. Masks are drawn from
``(seed, g, r)``. The whole position is therefore the step counter: ``state_dict()`` is a few
ints, and a restored stream yields exactly the batches the original would have.

:func:`eval_batches` masks sequence ``i`` with a generator seeded from ``(eval_mask_seed, i)``,
so every model that shares a tokenizer is scored on the same masks, whatever the batch size, the
number of ranks or the number of sequences evaluated.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from collections.abc import Iterator
from typing import Any

import torch

from bitmaps.core.config import DataConfig
from bitmaps.core.errors import BitmapsError

Batch = dict[str, torch.Tensor]

_PLACEHOLDER = re.compile(r"^\[[^\]]*\]$")  # [CLS], [unused17], ...: never a random replacement


def derive_seed(*parts: Any) -> int:
    """A 63-bit seed from any tuple of ints/strings (stable across runs, machines, Python)."""
    digest = hashlib.sha256("\0".join(map(str, ("bitmaps", *parts))).encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


@dataclasses.dataclass(frozen=True, eq=False)
class MaskVocab:
    """What masking needs to know about a tokenizer."""

    vocab_size: int
    pad_id: int
    cls_id: int
    sep_id: int
    mask_id: int
    special_ids: torch.Tensor  # int64: never selected for masking
    random_ids: torch.Tensor  # int64: candidates for the 10% random replacements

    @classmethod
    def from_tokenizer(cls, tokenizer: Any) -> MaskVocab:
        if isinstance(tokenizer, MaskVocab):
            return tokenizer
        ids = {}
        for role in ("pad", "cls", "sep", "mask"):
            value = getattr(tokenizer, f"{role}_token_id", None)
            if value is None:
                raise BitmapsError(
                    f"the tokenizer has no {role} token: bitmaps needs a BERT-style tokenizer "
                    "([CLS], [SEP], [PAD], [MASK])"
                )
            ids[role] = int(value)
        vocab = tokenizer.get_vocab()
        size = max(len(tokenizer), max(vocab.values()) + 1)
        special = set(tokenizer.all_special_ids) | set(ids.values())
        excluded = special | {i for tok, i in vocab.items() if _PLACEHOLDER.match(tok)}
        keep = torch.ones(size, dtype=torch.bool)
        keep[sorted(excluded)] = False
        return cls(
            vocab_size=size,
            pad_id=ids["pad"],
            cls_id=ids["cls"],
            sep_id=ids["sep"],
            mask_id=ids["mask"],
            special_ids=torch.tensor(sorted(special), dtype=torch.int64),
            random_ids=keep.nonzero().flatten(),
        )


def attention_mask(input_ids: torch.Tensor, vocab: MaskVocab) -> torch.Tensor:
    return (input_ids != vocab.pad_id).long()


def mask_batch(
    input_ids: torch.Tensor, vocab: MaskVocab, cfg: DataConfig, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(masked_input_ids, labels)``, int64, as in the module doc; ``input_ids`` is unchanged."""
    ids = input_ids.long()
    eligible = ~torch.isin(ids, vocab.special_ids)
    selected = (torch.rand(ids.shape, generator=generator) < cfg.mask_prob) & eligible
    labels = torch.where(selected, ids, torch.full_like(ids, -100))
    u = torch.rand(ids.shape, generator=generator)
    to_mask = selected & (u < cfg.mask_replace_prob)
    to_random = selected & (u >= cfg.mask_replace_prob)
    to_random &= u < cfg.mask_replace_prob + cfg.mask_random_prob
    pick = torch.randint(len(vocab.random_ids), ids.shape, generator=generator)
    masked = torch.where(to_mask, torch.full_like(ids, vocab.mask_id), ids)
    masked = torch.where(to_random, vocab.random_ids[pick], masked)
    return masked, labels


def make_batch(
    sequences: torch.Tensor, vocab: MaskVocab, cfg: DataConfig, generator: torch.Generator
) -> Batch:
    masked, labels = mask_batch(sequences, vocab, cfg, generator)
    return {
        "input_ids": masked,
        "attention_mask": attention_mask(masked, vocab),
        "token_type_ids": torch.zeros_like(masked),
        "labels": labels,
    }


def _check_sequences(sequences: torch.Tensor, what: str) -> None:
    if sequences.ndim != 2 or sequences.shape[0] == 0:
        fix = (
            "add text, or raise data.heldout_fraction above 0" if what == "held-out" else "add text"
        )
        raise BitmapsError(f"no {what} sequences (got shape {tuple(sequences.shape)}): {fix}")


class TrainStream:
    """Infinite, resumable, DDP-sharded stream of masked training batches (see module doc).

    ``batch_size`` is per rank; a global step consumes ``batch_size * world_size`` sequences.
    """

    STATE_KEYS = ("step", "seed", "num_sequences", "batch_size", "world_size")

    def __init__(
        self,
        sequences: torch.Tensor,
        tokenizer_or_vocab: Any,
        cfg: DataConfig | None = None,
        *,
        batch_size: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        _check_sequences(sequences, "training")
        if batch_size < 1:
            raise BitmapsError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= rank < world_size:
            raise BitmapsError(f"rank {rank} is outside world_size {world_size}")
        self.sequences = sequences
        self.vocab = MaskVocab.from_tokenizer(tokenizer_or_vocab)
        self.cfg = cfg or DataConfig()
        self.batch_size, self.seed, self.rank, self.world_size = batch_size, seed, rank, world_size
        self.step = 0
        self._perms: dict[int, torch.Tensor] = {}

    @property
    def epoch(self) -> float:
        """Epochs completed so far (fractional), counting every rank's sequences."""
        return self.step * self.batch_size * self.world_size / len(self.sequences)

    def _perm(self, epoch: int) -> torch.Tensor:
        if epoch not in self._perms:
            if len(self._perms) > 2:  # a step spans at most a few epochs: keep memory flat
                self._perms.pop(min(self._perms))
            g = torch.Generator().manual_seed(derive_seed("epoch", self.seed, epoch))
            self._perms[epoch] = torch.randperm(len(self.sequences), generator=g)
        return self._perms[epoch]

    def indices(self, step: int) -> torch.Tensor:
        """Row indices of this rank's batch at global ``step``."""
        n = len(self.sequences)
        start = (step * self.world_size + self.rank) * self.batch_size
        positions = torch.arange(start, start + self.batch_size)
        epochs = positions // n
        out = torch.empty(self.batch_size, dtype=torch.int64)
        for e in epochs.unique().tolist():
            sel = epochs == e
            out[sel] = self._perm(e)[positions[sel] % n]
        return out

    def batch(self, step: int) -> Batch:
        g = torch.Generator().manual_seed(derive_seed("mask", self.seed, step, self.rank))
        return make_batch(self.sequences[self.indices(step)], self.vocab, self.cfg, g)

    def __iter__(self) -> Iterator[Batch]:
        return self

    def __next__(self) -> Batch:
        out = self.batch(self.step)
        self.step += 1
        return out

    def state_dict(self) -> dict[str, int]:
        return {
            "step": self.step,
            "seed": self.seed,
            "num_sequences": len(self.sequences),
            "batch_size": self.batch_size,
            "world_size": self.world_size,
        }

    def load_state_dict(self, state: dict[str, int]) -> None:
        missing = [k for k in self.STATE_KEYS if k not in state]
        if missing:
            raise BitmapsError(f"data stream state lacks {', '.join(missing)}: not a bitmaps state")
        mine = self.state_dict()
        for key in ("seed", "num_sequences", "batch_size", "world_size"):
            if int(state[key]) != mine[key]:
                raise BitmapsError(
                    f"cannot resume the data stream: it was saved with {key}={state[key]}, this "
                    f"run has {key}={mine[key]}; resume with the same data and settings"
                )
        self.step = int(state["step"])


def eval_batches(
    sequences: torch.Tensor,
    tokenizer_or_vocab: Any,
    cfg: DataConfig | None = None,
    *,
    batch_size: int,
    max_sequences: int | None = None,
    rank: int = 0,
    world_size: int = 1,
) -> Iterator[Batch]:
    """Masked batches of held-out ``sequences`` with the fixed ``cfg.eval_mask_seed``.

    Uses the first ``max_sequences`` (if given and > 0, else ``cfg.max_eval_sequences`` if > 0,
    else all) sequences; under DDP rank ``r`` takes every ``world_size``-th of them from ``r``.
    """
    cfg = cfg or DataConfig()
    vocab = MaskVocab.from_tokenizer(tokenizer_or_vocab)
    _check_sequences(sequences, "held-out")
    if batch_size < 1:
        raise BitmapsError(f"batch_size must be >= 1, got {batch_size}")
    limit = max_sequences or cfg.max_eval_sequences or len(sequences)
    rows = torch.arange(min(limit, len(sequences)))[rank::world_size]
    return _eval_iter(sequences, rows, vocab, cfg, batch_size)


def _eval_iter(
    sequences: torch.Tensor, rows: torch.Tensor, vocab: MaskVocab, cfg: DataConfig, bs: int
) -> Iterator[Batch]:
    g = torch.Generator()
    for start in range(0, len(rows), bs):
        chunk = rows[start : start + bs].tolist()
        parts = []
        for i in chunk:
            g.manual_seed(derive_seed("eval", cfg.eval_mask_seed, i))
            parts.append(mask_batch(sequences[i : i + 1], vocab, cfg, g))
        masked = torch.cat([m for m, _ in parts])
        yield {
            "input_ids": masked,
            "attention_mask": attention_mask(masked, vocab),
            "token_type_ids": torch.zeros_like(masked),
            "labels": torch.cat([lab for _, lab in parts]),
        }
