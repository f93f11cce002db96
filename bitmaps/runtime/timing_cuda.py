"""The CUDA timer of bitmaps/runtime/timing.py's harness (apart, so that timing.py imports no torch:
ONNX Runtime's measuring process and the CPU benchmarks never load it for a timer)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from bitmaps.runtime.timing import Timer


def cuda_event_timer(fn: Callable[[int], object], calls: int = 1) -> Timer:
    """``call(i)``: ``fn(i)`` ``calls`` times between two CUDA events, milliseconds per call."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

    def call(i: int) -> float:
        start.record()
        for _ in range(calls):
            fn(i)
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / calls

    return call
