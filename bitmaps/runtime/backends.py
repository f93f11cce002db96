"""The backends ``bitmaps profile`` measures, and the models it gives them.

Three backends, each a thin runner over another module's public API:

=============  =======  =====================================================================
torch          cpu      the Hugging Face module in eager PyTorch; binary = ``binarize_`` +
               cuda     ``pack_binary_linears_``: ``torch.ops.bitmaps.binary_linear`` per layer
onnxruntime    cpu      fp32/fp16: plain ONNX Runtime (CPUExecutionProvider) on the baseline
                        export; binary: the ``bitmaps::BinaryLinear`` nodes run our native
                        custom op, libbitmaps_ort.so (``kernel_session``), else the model-local
                        function when the library is unavailable (the path column says which)
tensorrt       cuda     an engine from bitmaps.runtime.tensorrt (binary: the plugin)
=============  =======  =====================================================================

Models: ``fp32``, ``fp16`` and ``binary`` (1-bit encoder linears). On CUDA the float parts of the
binary model (embeddings, attention, LayerNorm, GELU) run in float16, since its competitor there is
fp16; on CPU in float32. fp16 on a CPU without FP16 arithmetic (x86 without AVX512-FP16) is
emulated (torch) or computed in float32 between casts (ONNX Runtime): slow, and not what a user
would deploy, so it is profiled only when asked for by name (a "vs fp16" ratio against it would
flatter the binary model).

Weight bytes (:func:`weight_breakdown`) are the bytes of every parameter and buffer the profiled
module holds, each tensor once (tied embeddings), at its stored dtype: packed int32 signs count
4 bytes per 32 weights, FP32 embeddings count in full. ``encoder`` is the transformer layers (what
is binarized), ``embeddings`` the token/position/type embeddings and their LayerNorm, ``head`` the
MLM head (only in ``--output logits``).
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bitmaps.core.config import BinarizeConfig
from bitmaps.core.embeddings import (
    STUDENT_EMBEDDING_GROUP,
    STUDENT_EMBEDDINGS,
    quantize_embeddings_,
)
from bitmaps.core.errors import BitmapsError
from bitmaps.core.ops import native_status
from bitmaps.runtime.fusion import fuse_for_cpu_inference_
from bitmaps.runtime.onnxruntime import library_missing, native_cpu_path
from bitmaps.runtime.tensorrt import find_plugin_library, import_tensorrt
from bitmaps.train.binary_linear import binarize_, pack_binary_linears_
from bitmaps.train.models import load_model

MODELS = ("fp32", "fp16", "int8", "binary")
BACKENDS = ("torch", "onnxruntime", "tensorrt")
BACKEND_DEVICES = {"torch": ("cpu", "cuda"), "onnxruntime": ("cpu",), "tensorrt": ("cuda",)}
MB = 1e6  # every "MB" in bitmaps' reports is 10^6 bytes


# How a bare shape's binary model is binarized: the recipe of `make demo` and the README
# (``--act-quantizer elastic``: a learned, fixed activation scale and threshold per layer, at
# their initial values 1 and 0 here), so its export is what that recipe's students export to
# (the onnxruntime target's BinaryFeedForward needs fixed scales). Part of the profile cache key.
SHAPE_BINARIZE = BinarizeConfig(activation_quantizer="elastic")


@dataclasses.dataclass(frozen=True)
class ModelSource:
    """Where the models come from: a bare shape (random weights), or teacher + student."""

    shape: str | None = None  # "bert-base": BertConfig() with weights from ``seed``
    teacher: str | None = None  # fp32 / fp16: checkpoint, HF folder or asset name
    student: str | None = None  # binary: a binarized student checkpoint
    seed: int = 0

    def spec(self, model: str) -> str:
        """What :func:`bitmaps.train.models.load_model` loads for ``model`` (checked by the planner)."""
        if self.shape:
            return self.shape
        spec = self.student if model == "binary" else self.teacher
        if spec is None:
            raise BitmapsError(f"no source for the {model} model")
        return spec

    def describe(self) -> str:
        if self.shape:
            quantizer = SHAPE_BINARIZE.activation_quantizer
            return (
                f"{self.shape} shapes, random weights (seed {self.seed}; {quantizer} activations)"
            )
        parts = [
            f"teacher {self.teacher}" if self.teacher else "",
            f"student {self.student}" if self.student else "",
        ]
        return ", ".join(p for p in parts if p)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def load_mlm(source: ModelSource, model: str) -> nn.Module:
    """The ``*ForMaskedLM`` for ``model``: a teacher, or a student with BinaryLinear layers."""

    if source.shape:
        torch.manual_seed(source.seed)  # same weights in every process of a run
        mlm = load_model(source.shape, require_tokenizer=False).model
        if model == "binary":
            binarize_(mlm, SHAPE_BINARIZE)
        return mlm.eval()
    loaded = load_model(source.spec(model), require_tokenizer=False)
    if loaded.is_binary != (model == "binary"):
        want = "a binarized student" if model == "binary" else "a full-precision teacher"
        raise BitmapsError(f"{source.spec(model)} is not {want}")
    return loaded.model.eval()


def float_dtype(model: str, device: str) -> torch.dtype:
    """The dtype of the float tensors of ``model`` on ``device`` (see the module docstring)."""
    if model == "fp16" or (model == "binary" and device == "cuda"):
        return torch.float16
    return torch.float32


def inference_module(
    mlm: nn.Module, model: str, output: str, device: str, attention: str = "float"
) -> nn.Module:
    """What is timed: packed binary layers, the encoder alone for ``hidden``, dtype, device;
    ``attention`` "int8": the binary model's fused CPU attention in the int8 scheme.

    Changes ``mlm`` in place (callers pass a model they own).
    """

    if model == "binary":
        pack_binary_linears_(mlm)
        quantize_embeddings_(mlm, STUDENT_EMBEDDINGS, STUDENT_EMBEDDING_GROUP)
        if device == "cpu":  # GELU in the FFN's epilogue, stacked Q, K, V, the bitmaps float ops
            fuse_for_cpu_inference_(mlm, attention)
    module = mlm.base_model if output == "hidden" else mlm
    return module.to(device=device, dtype=float_dtype(model, device)).eval()


def weight_breakdown(module: nn.Module) -> dict[str, int]:
    """Bytes of parameters + buffers by part: ``encoder``, ``embeddings``, ``head``, ``total``."""
    parts = {"encoder": 0, "embeddings": 0, "head": 0}
    # named_parameters/named_buffers yield a shared tensor once (the tied decoder weight is the
    # word embedding), under its first name. Non-persistent buffers count too: they are held in
    # memory beside the rest (the CPU GEMM's prepacked panels, a second copy of the binary
    # weights in their GEMM layout; position ids), though not shipped (file MB leaves them out).
    # Views of one storage (each Q, K, V layer's panels inside the stacked ones) count once;
    # transformers' position and token-type id tables are indices, not weights.
    seen: set[int] = set()
    for name, t in (*module.named_parameters(), *module.named_buffers()):
        if name.rpartition(".")[2] in ("position_ids", "token_type_ids"):
            continue
        storage = t.untyped_storage()
        if storage.data_ptr() in seen and storage.nbytes():
            continue
        seen.add(storage.data_ptr())
        part = (
            "encoder" if "encoder." in name else "embeddings" if "embeddings." in name else "head"
        )
        parts[part] += max(storage.nbytes(), t.numel() * t.element_size())
    return {**parts, "total": sum(parts.values())}


def state_dict_bytes(module: nn.Module, folder: Path) -> int:
    """Size of ``torch.save(module.state_dict())``: the torch backend's "file"."""

    fd, tmp = tempfile.mkstemp(prefix=".state-", suffix=".pt", dir=folder)
    os.close(fd)
    try:
        torch.save(module.state_dict(), tmp)
        return os.path.getsize(tmp)
    finally:
        os.unlink(tmp)


# --------------------------------------------------------------------------- availability


def cpu_has_fp16_math() -> bool:
    """True where the CPU computes in FP16 natively (x86 AVX512-FP16/AMX-FP16, Arm FP16)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    flags = set(text.split())
    return bool(flags & {"avx512_fp16", "amx_fp16", "asimdhp", "fphp"})


def backend_problem(backend: str) -> str | None:
    """Why ``backend`` cannot run on this machine, or None."""
    if backend == "onnxruntime":
        try:
            import onnxruntime  # noqa: F401
        except ImportError as exc:
            return f"ONNX Runtime is not installed: {exc} (pip install onnxruntime)"
        return None
    if backend == "tensorrt":
        try:
            import_tensorrt()
        except BitmapsError as exc:
            return str(exc)
        if not torch.cuda.is_available():
            return "TensorRT needs a CUDA GPU, and torch sees none"
        return None
    return None


def devices(backend: str, wanted: str) -> list[str]:
    """The devices ``backend`` runs on here, filtered by ``--device`` (auto, cpu, cuda)."""
    found = [d for d in BACKEND_DEVICES[backend] if d == "cpu" or torch.cuda.is_available()]
    return [d for d in found if wanted in ("auto", d)]


def model_problem(backend: str, device: str, model: str, named: bool) -> str | None:
    """Why (backend, device) does not profile ``model`` here, or None. ``named``: asked by name."""
    if model == "int8" and backend != "onnxruntime":
        return "int8 is ONNX Runtime's dynamic quantization: profiled on the onnxruntime backend"
    if backend in ("torch", "onnxruntime") and device == "cpu" and model == "fp16" and not named:
        if not cpu_has_fp16_math():
            runs = "emulated" if backend == "torch" else "computed in float32 between casts"
            return (
                f"{backend} fp16 on this CPU is {runs} (no AVX512-FP16): slow and not a "
                "deployment target; name it in --models to measure it anyway"
            )
    if model == "binary" and backend == "tensorrt":
        try:
            find_plugin_library()
        except BitmapsError as exc:
            return str(exc)
    return None


def path_description(backend: str, device: str, model: str, attention: str = "float") -> str:
    """One line: which code produced a row."""
    what = _path_description(backend, device, model)
    if model == "binary" and attention == "int8" and (backend, device) in (
        ("onnxruntime", "cpu"), ("torch", "cpu"),
    ):  # fmt: skip
        what += "; attention in int8 (--attention int8: Q, K, V and the probabilities rounded)"
    return what


def _path_description(backend: str, device: str, model: str) -> str:

    if backend == "torch":
        what = "eager PyTorch" + (" + CUDA graph" if device == "cuda" else "")
        if model == "binary":
            op = (
                "binary_linear_prepacked (weights laid out at load; the FFN's GELU in its "
                "epilogue, or with fixed activation scales the FFN as one "
                "torch.ops.bitmaps.binary_ffn_prepacked call through its table of bits; "
                "Q, K, V side by side, one stacked call where they binarize alike; "
                "attention = torch.ops.bitmaps.packed_attention; residual add + LayerNorm = "
                "torch.ops.bitmaps.skip_layer_norm; int4 embeddings + LayerNorm = "
                "torch.ops.bitmaps.embed_layer_norm; fully fused encoders as one loop over "
                "these ops: bitmaps.runtime.fusion.fuse_for_cpu_inference_)"
                if device == "cpu"
                else "binary_linear"
            )
            what += f"; BinaryLinear = torch.ops.bitmaps.{op}, {native_status()}"
        if model == "fp16" and device == "cpu" and not cpu_has_fp16_math():
            what += "; fp16 emulated on this CPU (no AVX512-FP16)"
        return what
    if backend == "onnxruntime":
        if model == "binary":
            if library_missing() is None:  # a library that does not load fails the row
                return (
                    "ONNX Runtime CPUExecutionProvider; bitmaps::BinaryLinear (and "
                    "bitmaps::BinaryFeedForward, the FFN with fixed activation scales) = native "
                    f"op libbitmaps_ort.so (CPU path {native_cpu_path()})"
                )
            return (
                "ONNX Runtime CPUExecutionProvider; bitmaps::BinaryLinear = model-local ONNX "
                "function (standard ops): libbitmaps_ort.so was not built"
            )
        if model == "int8":
            return (
                "ONNX Runtime CPUExecutionProvider; dynamic INT8 of the fp32 baseline export "
                "(onnxruntime.quantization.quantize_dynamic, QInt8 weights)"
            )
        what = f"plain ONNX Runtime CPUExecutionProvider ({model} baseline export)"
        if model == "fp16":
            what += (
                "; the CPU provider lacks fp16 kernels for most ops and inserts Casts, so it "
                "computes in float32 with weights upcast at load (see peak MB)"
            )
        return what
    if model == "binary":
        return "TensorRT engine (fp16), bitmaps::BinaryLinear = the bitmaps TensorRT plugin"
    return f"TensorRT engine ({'fp16' if model == 'fp16' else 'fp32'})"
