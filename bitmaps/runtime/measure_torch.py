"""The torch side of the profile's measuring process (bitmaps/runtime/measure.py): the torch and
TensorRT runners, CUDA graph timing and CUDA memory. Only a torch or TensorRT job's process (or
one on a CUDA device) imports this module; ONNX Runtime's measures without torch, which saves it
about 3 s of imports on a 2-core machine.

The runners take the job's inputs as NumPy arrays (``measure.make_inputs``) and hold them as
tensors on their device.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from bitmaps.runtime.timing_cuda import cuda_event_timer


class TorchRunner:
    """A module called as ``module(input_ids=..., attention_mask=...)`` under inference_mode."""

    def __init__(self, module: torch.nn.Module, device: str) -> None:
        self.module = module
        self.device = device

    def prepare(self, ids: np.ndarray, mask: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.from_numpy(ids).to(self.device), torch.from_numpy(mask).to(self.device)

    def __call__(self, inputs: tuple[torch.Tensor, torch.Tensor]) -> Any:
        with torch.inference_mode():
            return self.module(input_ids=inputs[0], attention_mask=inputs[1])


class _Floor(torch.nn.Module):
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return input_ids.float()


def floor_module() -> torch.nn.Module:
    """The torch model of a floor job (bitmaps.runtime.measure.FLOOR): one op, no weights."""
    return _Floor().eval()


class TrtRunner:
    """A TensorRT engine (:class:`bitmaps.runtime.tensorrt.TensorRTEngine`)."""

    device = "cuda"

    def __init__(self, engine: Any) -> None:
        self.engine = engine

    def prepare(self, ids: np.ndarray, mask: np.ndarray) -> dict[str, torch.Tensor]:
        given = {"input_ids": torch.from_numpy(ids).cuda(),
                 "attention_mask": torch.from_numpy(mask).cuda()}  # fmt: skip
        return {name: given[name] for name in self.engine.inputs}

    def __call__(self, feed: dict[str, torch.Tensor]) -> Any:
        return self.engine.run(feed)


def set_threads(threads: int) -> None:
    torch.set_num_threads(threads)


@dataclasses.dataclass
class CudaBaseline:
    """CUDA memory in use before the model was loaded."""

    allocated: int  # torch.cuda.memory_allocated()
    free: int  # free device memory (cudaMemGetInfo)

    @classmethod
    def now(cls) -> CudaBaseline:
        torch.cuda.init()
        return cls(torch.cuda.memory_allocated(), torch.cuda.mem_get_info()[0])


def _cuda_graph_timer(runner: Any, feeds: list) -> Callable[[int], float] | None:
    """Capture the torch module once on static input buffers; None if it cannot be captured."""

    static = tuple(t.clone() for t in feeds[0])
    try:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                runner(static)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            runner(static)
    except Exception:  # noqa: BLE001 - any capture failure means: time it eagerly instead
        torch.cuda.synchronize()
        return None
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

    def call(i: int) -> float:
        for dst, src in zip(static, feeds[i % len(feeds)], strict=True):
            dst.copy_(src)  # before the start event: not timed
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        return start.elapsed_time(end)

    return call


class CudaShape:
    """One shape on a CUDA device: the timer (a CUDA graph where the torch module can be
    captured, else CUDA events around each call) and the peak memory after the timing."""

    def __init__(self, runner: Any, backend: str, feeds: list, base: CudaBaseline) -> None:
        self.backend, self.base = backend, base
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        self.free0 = torch.cuda.mem_get_info()[0]
        call = _cuda_graph_timer(runner, feeds) if backend == "torch" else None
        self.method = "cuda events + cuda graph" if call else "cuda events"
        self.call = call or cuda_event_timer(lambda i: runner(feeds[i % len(feeds)]))

    def peak(self) -> tuple[int, str]:
        """(peak bytes, how it was measured)."""
        torch.cuda.synchronize()
        if self.backend == "torch":
            peak = torch.cuda.max_memory_allocated() - self.base.allocated
            return peak, "torch.cuda.max_memory_allocated"
        peak = self.base.free - min(self.free0, torch.cuda.mem_get_info()[0])
        return peak, "drop of free CUDA memory since before the engine was loaded"
