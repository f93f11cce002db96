"""Opening an ONNX Runtime session for an exported bitmaps model, on a named backend.

It sits in the core layer because two layers need it: ``bitmaps.export.verify`` checks every
export in ONNX Runtime before the file is written, and ``bitmaps.runtime`` runs and profiles
exported files. Neither may reach into the other, so the session opener lives below both.

Backends (the names ``ExportConfig.backends`` and ``bitmaps profile`` use):

- ``"function"``: plain onnxruntime. Each ``bitmaps::BinaryLinear`` node runs through the
  model-local function (standard ops); needs nothing from bitmaps.
- ``"kernel"``: ``libbitmaps_ort.so`` (:func:`bitmaps.get_library_path`) registered, so each node
  runs the compiled XNOR-popcount kernel inside ONNX Runtime. ONNX Runtime prefers a registered
  kernel to a model-local function of the same name, so the file needs no rewriting.

Every session here (binary models and the FP32/FP16/INT8 baselines alike) is opened with
ONNX Runtime's ``SkipLayerNormFusion`` off (:data:`DISABLED_OPTIMIZERS`): on the CPUs measured
(Intel Xeon, onnxruntime 1.32, 2 threads) its fused ``SkipLayerNormalization`` kernel took 0.43 ms
for one [1, 128, 768] residual + LayerNorm where the unfused ``Add`` + ``LayerNormalization`` took
0.11 ms: binary BERT-base at 1 x 128 ran in 43.4 ms fused, 35.4 ms unfused
(`benchmarks/bench_ort_fusions.py`, benchmarks/results/ort-fusions.json).

onnxruntime is imported inside the functions: it is an optional, heavy dependency that most
commands (train, eval, --help) never touch.
"""

from __future__ import annotations

import functools
import os
import struct
from pathlib import Path
from typing import Any

from bitmaps import get_library_path
from bitmaps.core.errors import BitmapsError

BACKENDS = ("function", "kernel")


# ONNX Runtime graph transformers turned off in every session (see the module docstring)
DISABLED_OPTIMIZERS = ("SkipLayerNormFusion",)


def inference_session(
    model: Any, so: Any, disabled_optimizers: tuple[str, ...] = DISABLED_OPTIMIZERS
) -> Any:  # path | ModelProto -> InferenceSession
    """A CPU session on ``model`` with ``so``, without ``disabled_optimizers`` (bitmaps always
    passes the default, :data:`DISABLED_OPTIMIZERS`; bench_ort_fusions.py times it against ())."""
    import onnxruntime as ort  # optional, heavy

    return ort.InferenceSession(
        _source(model), so, providers=["CPUExecutionProvider"],
        disabled_optimizers=list(disabled_optimizers),
    )  # fmt: skip


def session_options(threads: int | None = None) -> Any:  # onnxruntime.SessionOptions
    import onnxruntime as ort  # optional, heavy

    so = ort.SessionOptions()
    so.log_severity_level = 3  # errors only: fp16 constant-folding notices are not actionable
    # No memory pattern: ONNX Runtime then takes each intermediate from its arena as it runs
    # instead of one block planned from the first run. Binary BERT-base 1 x 128, Intel Xeon: peak
    # 62.2 -> 56.5 MB, latency the same within noise (README, "ONNX: bitmaps::BinaryLinear").
    so.enable_mem_pattern = False
    if threads:
        so.intra_op_num_threads = threads
    return so


def _source(model: Any) -> str | bytes:
    """A path is opened by ONNX Runtime itself (one copy of the weights in memory)."""
    return str(model) if isinstance(model, (str, Path)) else model.SerializeToString()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[-1].strip() if text else type(exc).__name__


def elf_truncated(path: str) -> bool:
    """Whether ``path`` is an ELF file cut short: a loadable segment or the header tables reach
    past its end (or the headers are malformed). dlopen maps such a file and the process dies of
    SIGBUS on first touch (a truncated copy of libbitmaps_ort.so killed `bitmaps ort-library`,
    exit 135, no message). Reads the headers only."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            head = f.read(64)
            if head[:4] != b"\x7fELF":
                return False  # not ELF: the loader's own error says what it is
            wide, order = head[4:5] == b"\x02", "<" if head[5:6] == b"\x01" else ">"
            if wide:
                phoff, shoff = struct.unpack_from(order + "QQ", head, 32)
                phentsize, phnum, shentsize, shnum = struct.unpack_from(order + "HHHH", head, 54)
                entry = order + "IIQQQQ"  # type, flags, offset, vaddr, paddr, filesz
            else:
                phoff, shoff = struct.unpack_from(order + "II", head, 28)
                phentsize, phnum, shentsize, shnum = struct.unpack_from(order + "HHHH", head, 42)
                entry = order + "IIIII"  # type, offset, vaddr, paddr, filesz
            if phoff + phnum * phentsize > size or shoff + shnum * shentsize > size:
                return True
            if phentsize < struct.calcsize(entry):
                return phnum > 0
            f.seek(phoff)
            table = f.read(phnum * phentsize)
            for i in range(phnum):
                fields = struct.unpack_from(entry, table, i * phentsize)
                kind, offset, filesz = fields[0], fields[2 if wide else 1], fields[-1]
                if kind == 1 and offset + filesz > size:  # PT_LOAD
                    return True
    except OSError:
        return False  # unreadable: the loader's own error says it
    except struct.error:  # headers shorter than their fields: cut inside the ELF header
        return True
    return False


@functools.cache
def _library_problem(path: str) -> str | None:
    import onnxruntime as ort  # optional, heavy

    if elf_truncated(path):
        return (
            f"{path} is a truncated shared library (its ELF segments reach past its end): "
            "rebuild it (make setup)"
        )
    try:
        session_options().register_custom_ops_library(path)
    except Exception as exc:  # noqa: BLE001 - every failure to load is reported the same way
        return f"{path} does not load into onnxruntime {ort.__version__}: {_first_line(exc)}"
    return None


def native_library() -> str:
    """The path of a library that loads into this onnxruntime; BitmapsError (one line) otherwise."""
    path = get_library_path()
    problem = _library_problem(path)
    if problem:
        raise BitmapsError(problem)
    return path


def library_missing() -> str | None:
    """Why ``libbitmaps_ort.so`` was not built (callers then run the model-local function and say
    so), or None when it exists. A library that exists but does not load is an error instead:
    :func:`kernel_session` raises it."""
    try:
        get_library_path()
    except BitmapsError as exc:
        return str(exc)
    return None


def native_problem() -> str | None:
    """Why ``libbitmaps_ort.so`` cannot run BinaryLinear nodes here (missing or does not load)."""
    try:
        native_library()
    except BitmapsError as exc:
        return str(exc)
    return None


def function_session(model: Any, threads: int | None = None) -> Any:
    """Plain onnxruntime: BinaryLinear runs through the model-local function."""
    return inference_session(model, session_options(threads))


def kernel_session(model: Any, threads: int | None = None) -> Any:
    """onnxruntime with ``libbitmaps_ort.so`` registered: BinaryLinear nodes run our kernel."""
    so = session_options(threads)
    so.register_custom_ops_library(native_library())
    return inference_session(model, so)


def open_session(
    model: Any, backend: str, threads: int | None = None
) -> Any:  # onnx.ModelProto | path -> onnxruntime.InferenceSession
    """``backend``: ``"function"`` (plain onnxruntime) or ``"kernel"`` (the native op)."""
    if backend == "function":
        return function_session(model, threads)
    if backend == "kernel":
        return kernel_session(model, threads)
    raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
