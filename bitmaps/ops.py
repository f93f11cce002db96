"""The ``bitmaps::`` PyTorch ops, defined once: schema, fake kernel, plain-PyTorch reference.

=================  ==================================================================================
``pack_signs``     float ``[..., K]`` → int32 ``[..., ceil(K/32)]`` (layout: bitmaps/export/packing.py)
``xnor_gemm``      packed ``[M, KW]``, packed ``[N, KW]``, K → int32 ``[M, N]`` = K − 2·popcount(a⊕b)
``binary_linear``  fused binarize + pack + XNOR GEMM + scale + bias; the ONNX op of DESIGN.md
=================  ==================================================================================

The reference implementations (``reference_*``) are the ground truth for every test. They are also
registered as the ``CompositeExplicitAutograd`` kernels, so the ops run on any device without native
code; importing :mod:`bitmaps._C` (when it was built) registers faster CPU/CUDA kernels for the same
schemas, which then take precedence for their device.
"""

from __future__ import annotations

import torch

from bitmaps.export.packing import pack_signs as _pack_signs_reference
from bitmaps.export.packing import packed_width, unpack_signs

_lib = torch.library.Library("bitmaps", "DEF")
_lib.define("pack_signs(Tensor x) -> Tensor")
_lib.define("xnor_gemm(Tensor a, Tensor b, int k) -> Tensor")
_lib.define(
    "binary_linear(Tensor x, Tensor w, Tensor w_scale, Tensor? bias, int in_features, "
    "float act_threshold, float act_scale) -> Tensor"
)


# --------------------------------------------------------------------------- reference kernels


def reference_pack_signs(x: torch.Tensor) -> torch.Tensor:
    """Bit 1 where x < 0, packed LSB-first along the last axis into int32 words."""
    return _pack_signs_reference(x)


def reference_xnor_gemm(a: torch.Tensor, b: torch.Tensor, k: int) -> torch.Tensor:
    """``out[m, n] = k − 2·popcount(a[m] XOR b[n])``, computed as a ±1 matmul in float64 (exact)."""
    sa = unpack_signs(a, k, torch.float64)
    sb = unpack_signs(b, k, torch.float64)
    return (sa @ sb.transpose(-1, -2)).round().to(torch.int32)


def reference_binary_linear(
    x: torch.Tensor,
    w: torch.Tensor,
    w_scale: torch.Tensor,
    bias: torch.Tensor | None,
    in_features: int,
    act_threshold: float,
    act_scale: float,
) -> torch.Tensor:
    """The ``bitmaps::BinaryLinear`` op of DESIGN.md, in float32, cast back to the dtype of ``x``::

        x' = x − β ;  s[m] = act_scale if act_scale > 0 else mean_k |x'[m, k]|
        y[m, n] = s[m] · w_scale[n] · (K − 2·popcount(sign_bits(x'[m]) XOR W[n])) + bias[n]
    """
    xf = x.float() - act_threshold
    xs = torch.where(xf < 0, -1.0, 1.0)
    if act_scale > 0:
        s = torch.full((*xf.shape[:-1], 1), act_scale, dtype=torch.float32, device=x.device)
    else:
        s = xf.abs().mean(-1, keepdim=True)
    ws = unpack_signs(w, in_features, torch.float32)
    y = (xs @ ws.t()) * s * w_scale.float()
    if bias is not None:
        y = y + bias.float()
    return y.to(x.dtype)


# --------------------------------------------------------------------------- registrations

torch.library.impl(_lib, "pack_signs", "CompositeExplicitAutograd")(reference_pack_signs)
torch.library.impl(_lib, "xnor_gemm", "CompositeExplicitAutograd")(reference_xnor_gemm)
torch.library.impl(_lib, "binary_linear", "CompositeExplicitAutograd")(reference_binary_linear)


@torch.library.register_fake("bitmaps::pack_signs")
def _pack_signs_fake(x: torch.Tensor) -> torch.Tensor:
    return x.new_empty((*x.shape[:-1], packed_width(x.shape[-1])), dtype=torch.int32)


@torch.library.register_fake("bitmaps::xnor_gemm")
def _xnor_gemm_fake(a: torch.Tensor, b: torch.Tensor, k: int) -> torch.Tensor:
    torch._check(a.shape[-1] == b.shape[-1], lambda: "xnor_gemm: a and b packed widths differ")
    return a.new_empty((a.shape[0], b.shape[0]), dtype=torch.int32)


@torch.library.register_fake("bitmaps::binary_linear")
def _binary_linear_fake(x, w, w_scale, bias, in_features, act_threshold, act_scale):
    torch._check(x.shape[-1] == in_features, lambda: "binary_linear: x.shape[-1] != in_features")
    return x.new_empty((*x.shape[:-1], w.shape[0]))


# --------------------------------------------------------------------------- native kernels

try:  # registers CPU (and CUDA, where built) kernels for the schemas above
    from bitmaps import _C  # noqa: F401

    _NATIVE_ERROR: str | None = None
except ImportError as exc:  # a pure-Python install: the reference kernels serve every device
    _NATIVE_ERROR = str(exc)


def native_available() -> bool:
    """True when :mod:`bitmaps._C` was built and loaded."""
    return _NATIVE_ERROR is None


def native_status() -> str:
    """One line for logs and reports: which kernels serve the ops."""
    if _NATIVE_ERROR is not None:
        return f"reference kernels only (bitmaps._C not loaded: {_NATIVE_ERROR})"
    return "native kernels (bitmaps._C)"


# Convenience callables: tests, benchmarks and modules call the ops by these names.
pack_signs = torch.ops.bitmaps.pack_signs
xnor_gemm = torch.ops.bitmaps.xnor_gemm
binary_linear = torch.ops.bitmaps.binary_linear
