"""The runners ``bitmaps.runtime.measure`` times: one call of a profiled model on prepared inputs.

Each backend's runner imports only what that backend needs, inside its constructor, so that a
measuring process for ONNX Runtime or TensorRT does not load transformers and the torch model
code (about 8 s of imports on a 2-core machine, and their memory) for nothing. The process
imports its backend's modules before it reads its memory baseline (``measure.preload``).
"""

from __future__ import annotations

from typing import Any

import torch


class TorchRunner:
    """A module called as ``module(input_ids=..., attention_mask=...)`` under inference_mode."""

    def __init__(self, module: torch.nn.Module, device: str) -> None:
        self.module = module
        self.device = device

    def prepare(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return ids.to(self.device), mask.to(self.device)

    def __call__(self, inputs: tuple[torch.Tensor, torch.Tensor]) -> Any:
        with torch.inference_mode():
            return self.module(input_ids=inputs[0], attention_mask=inputs[1])


class OrtRunner:
    """An ONNX Runtime session: plain (``function``), or with our native op (``kernel``; the
    function when the library is unavailable, as ``backends.path_description`` reports)."""

    device = "cpu"

    def __init__(self, onnx_path: str, session: str, threads: int) -> None:
        from bitmaps.core.ort import function_session, kernel_session, library_missing

        if session == "kernel" and library_missing() is None:
            self.session = kernel_session(onnx_path, threads)
        else:
            self.session = function_session(onnx_path, threads)
        self.input_names = [i.name for i in self.session.get_inputs()]

    def prepare(self, ids: torch.Tensor, mask: torch.Tensor) -> dict[str, Any]:
        given = {"input_ids": ids.numpy(), "attention_mask": mask.numpy()}
        return {name: given[name] for name in self.input_names}

    def __call__(self, feed: dict[str, Any]) -> Any:
        return self.session.run(None, feed)


class TrtRunner:
    """A TensorRT engine through :class:`bitmaps.runtime.tensorrt.TensorRTEngine`."""

    device = "cuda"

    def __init__(self, engine_path: str) -> None:
        from bitmaps.runtime.tensorrt import TensorRTEngine

        self.engine = TensorRTEngine(engine_path)

    def prepare(self, ids: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        given = {"input_ids": ids.cuda(), "attention_mask": mask.cuda()}
        return {name: given[name] for name in self.engine.inputs}

    def __call__(self, feed: dict[str, torch.Tensor]) -> Any:
        return self.engine.run(feed)
