"""Masked-LM metric definitions on hand-made logits (cross entropy, top-1 accuracy, MRR)."""

from __future__ import annotations

import math

import pytest
import torch

from bitmaps.metrics.mlm import MLMSums, mlm_metrics


def test_metrics_on_hand_made_logits() -> None:
    # Three masked tokens over a vocabulary of 4.
    logits = torch.tensor(
        [
            [3.0, 1.0, 0.0, 0.0],  # true 0: rank 1
            [0.0, 2.0, 1.0, 3.0],  # true 2: two scores above (3, 2) → rank 3
            [1.0, 1.0, 5.0, 0.0],  # true 1: one above (5); tie with 0 does not count → rank 2
        ]
    )
    targets = torch.tensor([0, 2, 1])
    m = mlm_metrics(logits, targets)

    def nll(row: list[float], t: int) -> float:
        return -(row[t] - math.log(sum(math.exp(v) for v in row)))

    expected_ce = sum(nll(r, t) for r, t in zip(logits.tolist(), targets.tolist(), strict=True)) / 3
    assert m["cross_entropy"] == pytest.approx(expected_ce, rel=1e-6)
    assert m["accuracy"] == pytest.approx(1 / 3)
    assert m["mrr"] == pytest.approx((1 + 1 / 3 + 1 / 2) / 3)
    assert m["masked_tokens"] == 3


def test_sums_merge_equals_one_pass() -> None:
    logits = torch.randn(50, 20)
    targets = torch.randint(0, 20, (50,))
    whole = mlm_metrics(logits, targets)
    a, b = MLMSums(), MLMSums()
    a.add(logits[:17], targets[:17])
    b.add(logits[17:], targets[17:])
    a.merge(b)
    merged = MLMSums.from_tensor(a.as_tensor()).metrics()
    for key in ("cross_entropy", "accuracy", "mrr"):
        assert merged[key] == pytest.approx(whole[key], rel=1e-6)  # float32 partial sums
    assert merged["masked_tokens"] == 50


def test_perfect_and_empty() -> None:
    logits = torch.eye(5) * 10
    m = mlm_metrics(logits, torch.arange(5))
    assert m["accuracy"] == 1.0 and m["mrr"] == 1.0
    assert m["cross_entropy"] < 1e-3
    empty = MLMSums().metrics()
    assert empty["masked_tokens"] == 0
