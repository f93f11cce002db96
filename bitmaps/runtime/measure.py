"""One (model, backend, device) measured in a fresh process: latency per shape and peak memory.

``python -m bitmaps.runtime.measure JOB.json`` is started by :mod:`bitmaps.runtime.profile` once
per (model, backend, device), so that no model's memory, allocator caches, thread pools or JIT
state leak into another's numbers. It prints one line ``RESULT_PREFIX {json}`` per (batch, seq)
as soon as it is measured (the parent's progress bar follows them); a user-fixable problem is a
line ``RESULT_PREFIX {"error": ...}`` and exit code 2.

Method, per shape (shapes in ascending batch x seq order):

- inputs: ``rotations`` batches of random token ids (NumPy's generator seeded by seed, batch,
  seq), all positions attended; identical in every process, so every model sees the same
  inputs; call i uses batch ``i % rotations``. ONNX Runtime's process on the CPU imports no
  torch (about 3 s of imports on a 2-core machine); the torch side (its runners, CUDA timing
  and memory) is bitmaps/runtime/measure_torch.py.
- latency of one call on one batch (the stop rule of bitmaps/runtime/timing.py): ``warmup``
  untimed calls, then timed calls until at least ``repeats`` calls and ``min_time`` seconds,
  or ``max_time`` seconds (and 3 calls). CPU:
  ``time.perf_counter`` around the call, Python's GC off while timing; threads = ``threads``
  (torch intra-op and ONNX Runtime intra-op). CUDA: CUDA events around a CUDA graph replay
  (torch; eager if the model cannot be captured) or around the engine call (TensorRT).
- peak memory, CPU: RSS. The process's RSS is read after imports and inputs (``rss0``); after the
  model is loaded, freed memory is returned to the OS (``malloc_trim``) and the kernel's peak-RSS
  mark is reset (``/proc/self/clear_refs``, Linux >= 4.0), so that loading transients (a random
  FP32 init that is then binarized, a protobuf being parsed) do not count; before each shape the
  trim and reset are repeated. ``peak = VmHWM after the shape - rss0``: the model's resident
  weights plus what running the shape needs. CUDA: ``torch.cuda.max_memory_allocated`` minus
  the allocation before the model (torch); the drop of free device memory (TensorRT, whose
  allocations bypass torch).
- the runtime's own memory (a ``floor`` job, once per backend on the CPU): the same peak for a
  one-op model without weights, in its own process: what every peak of that backend includes
  before any weight or activation of the model (ONNX Runtime's session, arena and threads).
"""

from __future__ import annotations

import ctypes
import dataclasses
import gc
import importlib
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from bitmaps.core.errors import BitmapsError, one_line
from bitmaps.core.ort import function_session, kernel_session, library_missing
from bitmaps.runtime.amx import tile_data_permitted
from bitmaps.runtime.timing import cpu_timer, time_calls

RESULT_PREFIX = "BITMAPS-PROFILE "
# The model of a job that measures a runtime's own memory: one op, no weights (ONNX Runtime: the
# job's artifact, bitmaps.runtime.artifacts.floor_onnx's file; torch:
# measure_torch.floor_module). Its peak is what every model's peak on that backend holds before
# any weight: the runtime's session, arenas, threads.
FLOOR = "floor"


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise OSError(f"/proc/self/status has no {field}")


def rss_bytes() -> int:
    return _status_kb("VmRSS") * 1024


def hwm_bytes() -> int:
    return _status_kb("VmHWM") * 1024


def release_and_reset_peak() -> bool:
    """Give freed heap back to the OS, then reset the peak-RSS mark; False if it cannot reset."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim
        pass
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def make_inputs(vocab_size: int, batch: int, seq: int, seed: int, rotations: int) -> list:
    """``rotations`` (input_ids, attention_mask) pairs of int64 NumPy arrays; ids avoid the first
    1000 vocabulary entries (special and unused tokens in BERT vocabularies)."""

    rng = np.random.default_rng(seed * 1_000_003 + batch * 10_007 + seq)
    low = min(1000, vocab_size - 1)
    out = []
    for _ in range(rotations):
        ids = rng.integers(low, vocab_size, size=(batch, seq), dtype=np.int64)
        out.append((ids, np.ones((batch, seq), dtype=np.int64)))
    return out


# --------------------------------------------------------------------------- runners


class OrtRunner:
    """An ONNX Runtime session: plain (``function``), or with our native op (``kernel``; the
    function when the library is unavailable, as ``backends.path_description`` reports)."""

    device = "cpu"

    def __init__(self, onnx_path: str, session: str, threads: int) -> None:
        try:
            if session == "kernel" and library_missing() is None:
                self.session = kernel_session(onnx_path, threads)
            else:
                self.session = function_session(onnx_path, threads)
        except BitmapsError:
            raise
        except Exception as exc:  # noqa: BLE001 -- onnxruntime's Fail, InvalidGraph, ...
            # (a work folder's file edited by hand, or made by another bitmaps)
            raise BitmapsError(
                f"ONNX Runtime cannot load {onnx_path} ({one_line(exc)}); delete it, and the "
                "next profile exports it again"
            ) from None
        self.input_names = [i.name for i in self.session.get_inputs()]

    def prepare(self, ids: np.ndarray, mask: np.ndarray) -> dict[str, Any]:
        given = {"input_ids": ids, "attention_mask": mask}
        return {name: given[name] for name in self.input_names}

    def __call__(self, feed: dict[str, Any]) -> Any:
        return self.session.run(None, feed)


# What each backend's process imports before its memory baseline (so that the libraries' own
# memory is not counted as the model's); only its own: ONNX Runtime's process needs neither
# transformers nor the torch model code (about 8 s of imports on a 2-core machine).
PRELOAD = {
    "torch": ("transformers.models.bert.modeling_bert", "bitmaps.runtime.backends"),
    "onnxruntime": ("onnxruntime", "bitmaps.core.ort"),
    "tensorrt": ("bitmaps.runtime.tensorrt",),  # TensorRT itself is imported lazily
}


def preload(backend: str) -> None:
    for module in PRELOAD[backend]:
        importlib.import_module(module)


def _torch_side(job: dict[str, Any]) -> Any:
    """bitmaps.runtime.measure_torch (it imports torch) for a torch or TensorRT job or one on a
    CUDA device; None for ONNX Runtime on the CPU, whose process never imports torch."""
    if job["backend"] == "onnxruntime" and job["device"] != "cuda":
        return None
    from bitmaps.runtime import measure_torch

    return measure_torch


def _load_runner(job: dict[str, Any], torch_side: Any) -> Any:
    """The job's runner; ``torch_side`` is ``_torch_side(job)``."""

    backend, device = job["backend"], job["device"]
    if backend == "onnxruntime":
        return OrtRunner(job["artifact"], job["session"], job["threads"])
    if backend == "torch" and job["model"] == FLOOR:
        return torch_side.TorchRunner(torch_side.floor_module(), device)
    if backend == "torch":
        from bitmaps.runtime import backends as B  # this process's backend (PRELOAD)

        mlm = B.load_mlm(B.ModelSource(**job["source"]), job["model"])
        module = B.inference_module(
            mlm, job["model"], job["output"], device, job.get("attention", "float")
        )
        del mlm
        return torch_side.TorchRunner(module, device)
    from bitmaps.runtime.tensorrt import TensorRTEngine  # this process's backend (PRELOAD)

    return torch_side.TrtRunner(TensorRTEngine(job["artifact"]))


@dataclasses.dataclass
class Baseline:
    """Memory in use before the model was loaded."""

    rss: int  # process RSS, bytes
    cuda: Any = None  # measure_torch.CudaBaseline on a CUDA device


def _describe(runner: Any, job: dict[str, Any]) -> dict[str, Any]:
    """Weight bytes by part and the saved state_dict's size, for a torch module; else nothing."""

    if job["backend"] != "torch":
        return {}
    from bitmaps.runtime import backends as B  # a torch job's process: imported (PRELOAD)

    module = runner.module
    return {
        "weights": B.weight_breakdown(module),
        "file_bytes": B.state_dict_bytes(module, Path(job["workdir"])),
    }


def _measure_shape(
    runner: Any, job: dict[str, Any], base: Baseline, batch: int, seq: int, torch_side: Any
) -> dict[str, Any]:

    pairs = make_inputs(job["vocab_size"], batch, seq, job["seed"], job["timing"]["rotations"])
    feeds = [runner.prepare(ids, mask) for ids, mask in pairs]
    if base.cuda is not None:
        shape = torch_side.CudaShape(runner, job["backend"], feeds, base.cuda)
        samples = time_calls(shape.call, job["timing"])
        peak, peak_method = shape.peak()
        method = shape.method
    else:
        reset_ok = release_and_reset_peak()
        samples = time_calls(cpu_timer(lambda i: runner(feeds[i % len(feeds)])), job["timing"])
        peak = hwm_bytes() - base.rss
        method = "perf_counter"
        peak_method = "VmHWM - RSS before load" + (
            "" if reset_ok else " (peak not reset: includes loading)"
        )
    ms = np.asarray(samples)
    p50, p90, p99 = (float(np.percentile(ms, q)) for q in (50, 90, 99))
    return {
        "batch": batch,
        "seq": seq,
        "latency_ms_p50": p50,
        "latency_ms_p90": p90,
        "latency_ms_p99": p99,
        "throughput_seq_s": batch * 1e3 / p50,
        "peak_mem_bytes": peak,
        "calls": len(samples),
        "timed_s": float(ms.sum()) / 1e3,
        "method": method,
        "peak_method": peak_method,
    }


def run_job(job: dict[str, Any], emit: Callable[[dict[str, Any]], None]) -> None:
    """Load the runner, then measure every shape of ``job``, emitting one dict per shape."""

    torch_side = _torch_side(job)
    if torch_side is not None:
        torch_side.set_threads(job["threads"])
    preload(job["backend"])
    base = Baseline(rss_bytes())
    if job["device"] == "cuda":
        base.cuda = torch_side.CudaBaseline.now()
    runner = _load_runner(job, torch_side)
    emit({"loaded": _describe(runner, job)})
    shapes = sorted((tuple(s) for s in job["shapes"]), key=lambda s: (s[0] * s[1], s))
    for batch, seq in shapes:
        emit(_measure_shape(runner, job, base, batch, seq, torch_side))


def main(argv: list[str] | None = None) -> int:

    argv = sys.argv[1:] if argv is None else argv
    job = json.loads(Path(argv[0]).read_text())

    def emit(result: dict[str, Any]) -> None:
        print(RESULT_PREFIX + json.dumps(result), flush=True)

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        run_job(job, emit)
        if job.get("amx") == "withhold" and tile_data_permitted():
            raise BitmapsError("--amx withhold: the measuring process held AMX after all")
    except BitmapsError as exc:
        emit({"error": str(exc)})
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
