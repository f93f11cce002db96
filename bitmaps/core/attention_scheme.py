"""The constants of the int8 attention scheme (csrc/kernels/cpu_attention.h), torch-free: the torch
version (:mod:`bitmaps.core.int8_attention`) and the model-local ONNX function
(:mod:`bitmaps.export.onnx_function`) read them from here, the C++ kernels hold the same values
(csrc/kernels/cpu_attention_int8.cpp)."""

from __future__ import annotations

LEVELS = 127.0  # int8 rows and columns in [-127, 127], probabilities as levels 0..127
EXP_FLOOR = -6.0  # exp(-6) * 127 < 0.5: level 0 below
LOG2E = 1.44269504088896341
LN2 = 0.693147180559945309
EXP_POLY = (1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0)  # e^r = ((((c0 r + c1) r + c2) r + c3) r + 1
TWO_POW = tuple(2.0**-i for i in range(10))  # 2^n for n = 0, -1, ..., -9 (x >= -6)
