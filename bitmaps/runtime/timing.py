"""The one timing harness: `bitmaps profile` (bitmaps/runtime/measure.py) and benchmarks/ use it.

A *timer* is a function ``call(i) -> milliseconds`` that runs the work once (on input ``i``) and
says how long it took: :func:`cpu_timer` (``time.perf_counter`` around ``n`` calls, the mean) and
``cuda_event_timer`` (CUDA events around ``n`` calls, the mean; in bitmaps/runtime/timing_cuda.py,
so that this module imports no torch). :func:`time_calls` applies the
stop rule to one timer; :func:`time_alternating` samples several timers in turn (A, B, A, B, ...) so
that load from other processes hits all of them alike, which is how a kernel is compared with its
baseline in the same run. :func:`calls_per_sample` sizes a sample of a microsecond kernel.

The clock is a parameter so that the stop rule is tested without sleeping.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Sequence
from typing import Any

MIN_CALLS = 3  # a shape that hits max_time still gets this many timed calls

Timer = Callable[[int], float]


def cpu_timer(fn: Callable[[int], object], calls: int = 1) -> Timer:
    """``call(i)``: ``fn(i)`` ``calls`` times, wall-clock milliseconds per call."""

    def call(i: int) -> float:
        start = time.perf_counter()
        for _ in range(calls):
            fn(i)
        return (time.perf_counter() - start) * 1e3 / calls

    return call


def calls_per_sample(timer_of: Callable[[int], Timer], sample_ms: float, warmup: int = 2) -> int:
    """How many calls make one sample last about ``sample_ms`` (after ``warmup`` untimed calls);
    ``timer_of(n)`` builds the timer of ``n`` calls."""
    one = timer_of(1)
    for i in range(warmup):
        one(i)
    return max(1, int(sample_ms / max(one(0), 1e-6)))


def time_calls(
    call: Timer, timing: dict[str, Any], clock: Callable[[], float] = time.perf_counter
) -> list[float]:
    """Warm up, then ``call(i)`` (milliseconds) until the stop rule holds; the samples.

    Warm-up: at least ``warmup`` calls and ``warmup_time`` seconds (default 0), never more than
    ``max_time`` seconds of it. Timed: until at least ``repeats`` calls and ``min_time``
    seconds, or ``max_time`` seconds and at least ``MIN_CALLS`` calls (``repeats`` if fewer).
    Python's garbage collector is off while timing.
    """
    warm_start, i = clock(), 0
    warm_for = min(timing.get("warmup_time", 0.0), timing["max_time"])
    while i < timing["warmup"] or clock() - warm_start < warm_for:
        call(i)
        i += 1
    samples: list[float] = []
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        start = clock()
        while True:
            samples.append(call(len(samples)))
            elapsed = clock() - start
            n = len(samples)
            if n >= timing["repeats"] and elapsed >= timing["min_time"]:
                break
            if elapsed >= timing["max_time"] and n >= min(MIN_CALLS, timing["repeats"]):
                break
    finally:
        if gc_was_enabled:
            gc.enable()
    return samples


def time_alternating(timers: Sequence[Timer], repeats: int) -> list[list[float]]:
    """``repeats`` samples of each timer, taken in turn (one of each per round)."""
    samples: list[list[float]] = [[] for _ in timers]
    for r in range(repeats):
        for timer, out in zip(timers, samples, strict=True):
            out.append(timer(r))
    return samples
