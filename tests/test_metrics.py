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


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_outputs_are_not_scored(bad) -> None:
    """Every comparison with NaN is false, so a NaN model's ranks were all 1: accuracy 1, MRR 1
    (`eval` of a diverged checkpoint printed perfect scores). Refused instead, for either task."""
    from bitmaps.core.errors import BitmapsError
    from bitmaps.metrics.classify import ConfusionCounts

    logits = torch.randn(4, 10)
    logits[2, 3] = bad
    with pytest.raises(BitmapsError, match="outputs hold NaN or infinite values"):
        MLMSums().add(logits, torch.tensor([1, 2, 3, 4]))
    with pytest.raises(BitmapsError, match="outputs hold NaN or infinite values"):
        ConfusionCounts(10).add(logits, torch.tensor([1, 2, 3, 4]))
    sums = MLMSums()
    sums.add(torch.randn(4, 10), torch.tensor([1, 2, 3, 4]))  # finite outputs: scored as before
    assert sums.tokens == 4
