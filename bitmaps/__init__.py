"""bitmaps: make BERT 1-bit — distil a binarized student, export it with bit-packed weights,
run it through an XNOR-popcount GEMM, and measure what it costs and what it saves."""

from __future__ import annotations

import os
from pathlib import Path

from bitmaps.core.errors import BitmapsError

__version__ = "0.1.0"

ORT_LIBRARY_NAME = "libbitmaps_ort.so"


def get_library_path() -> str:
    """Absolute path of ``libbitmaps_ort.so``, the ONNX Runtime custom-op library (bitmaps::BinaryLinear).

    The onnxruntime-extensions convention::

        so = onnxruntime.SessionOptions()
        so.register_custom_ops_library(bitmaps.get_library_path())

    ``$BITMAPS_ORT_LIBRARY`` names another build. Raises :class:`bitmaps.core.errors.BitmapsError`
    when the library was not built (no compiler or no ONNX Runtime headers at install time).
    """
    env = os.environ.get("BITMAPS_ORT_LIBRARY")
    path = Path(env).expanduser() if env else Path(__file__).resolve().parent / ORT_LIBRARY_NAME
    if env and not path.is_file():
        raise BitmapsError(f"BITMAPS_ORT_LIBRARY={env}: no such file")
    if not path.is_file():
        raise BitmapsError(
            f"{path} does not exist: libbitmaps_ort.so was not built (no C++ compiler or no ONNX "
            "Runtime headers at install time); `python setup.py build_ext --inplace` in a bitmaps "
            "checkout builds it and says what is missing"
        )
    return str(path.resolve())
