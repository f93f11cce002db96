"""Shared test fixtures. Tests of a higher tier (gpu, tensorrt) skip with a reason naming what is missing."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
