"""Int8 attention: the scheme of csrc/kernels/cpu_attention.h (``AttentionArgs::int8``) in torch.

Opt-in (``bitmaps export --target onnxruntime --attention int8``, ``bitmaps eval --attention
int8``), a departure from DESIGN.md, which keeps the two attention matmuls and the softmax in
float. Per (batch, head):

- Q and K rounded to int8 per row (D values), V per column over the attended keys (those some
  query row gives a level > 0 below; the others' values become 0, so padding changes nothing):
  ``x · (127 / max|x|)`` rounded to nearest even, standing for ``x · (max|x| / 127)``; a zero row:
  0, scale 1;
- ``score = (Σ q8·k8 · sq) · (sk · scale) + bias``;
- ``p = level(score − row max)`` in 0..127: ``round(exp(x) · 127)`` with ``exp(x) = 2ⁿ · e^r``,
  ``n = round(x · log2 e)``, ``r = x − n · ln 2``, ``e^r`` by its Taylor polynomial to ``r⁴``, on
  ``max(x, −6)`` (``exp(−6) · 127 < 0.5``);
- ``out = (Σ p·v8 · sv) / Σ p`` (a division: ONNX Runtime rewrites ``x · (1 / y)`` as ``x / y``).

The integer sums are exact (computed in float64 here, int32 in the kernel) and every other step is
one IEEE float32 operation, none fused, so this module, the CPU kernel (libbitmaps_ort.so and
``torch.ops.bitmaps.packed_attention(..., int8=True)``) and the model-local function in ONNX's
standard ops compute the same bits. :func:`bitmaps.train.attention.int8_attention_everywhere` makes a
transformers model's attention use it (evaluation and export verification).
"""

from __future__ import annotations

import torch

from bitmaps.core.attention_scheme import EXP_FLOOR, EXP_POLY, LEVELS, LN2, LOG2E, TWO_POW


def _f32(x: float) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float32)


def round_int8(
    x: torch.Tensor, dim: int, use: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``x`` (float32) rounded to integers in [-127, 127] with one scale per slice along ``dim``:
    (the integers as float32, the scales, keepdim). ``use`` (boolean, broadcast to ``x``): only
    those elements set the scale; the others become 0."""
    magnitude = x.abs() if use is None else torch.where(use, x.abs(), _f32(0.0))
    amax = magnitude.amax(dim=dim, keepdim=True)
    nonzero = amax > 0
    mul = torch.where(nonzero, _f32(LEVELS) / amax, _f32(0.0))
    scale = torch.where(nonzero, amax / _f32(LEVELS), _f32(1.0))
    rounded = torch.round(x * mul)
    return (rounded if use is None else torch.where(use, rounded, _f32(0.0))), scale


def exp_level(x: torch.Tensor) -> torch.Tensor:
    """``round(exp(x) · 127)`` for ``x <= 0`` (float32) as the kernel computes it (module doc)."""
    # NaN (a row whose every key is masked by -inf: -inf - -inf) -> the floor, as the kernel's
    # VMAXPS gives it (torch.clamp keeps NaN, and the index below then failed)
    x = torch.where(x > EXP_FLOOR, x, torch.full_like(x, EXP_FLOOR))
    n = torch.round(x * _f32(LOG2E))
    r = x - n * _f32(LN2)
    p = torch.full_like(x, EXP_POLY[0])
    for c in EXP_POLY[1:]:
        p = p * r + _f32(c)
    p = p * r + _f32(1.0)
    two_n = torch.tensor(TWO_POW, dtype=torch.float32, device=x.device)[(-n).long()]
    return torch.round((p * two_n) * _f32(LEVELS))


def int8_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None, scale: float
) -> torch.Tensor:
    """Attention of ``q [B, H, S, D]``, ``k [B, H, T, D]``, ``v [B, H, T, Dv]`` with an additive
    ``bias`` broadcast to ``[B, H, S, T]`` (or None), in the int8 scheme; float32 ``[B, H, S, Dv]``."""
    q8, sq = round_int8(q.float(), -1)
    k8, sk = round_int8(k.float(), -1)
    dot = (q8.double() @ k8.double().transpose(-1, -2)).float()
    scores = (dot * sq) * (sk.transpose(-1, -2) * _f32(scale))
    if bias is not None:
        scores = scores + bias.float()
    p = exp_level(scores - scores.amax(dim=-1, keepdim=True))
    # V's column scales over the keys some query row gives a level > 0 (a padding key's value
    # then changes nothing); the other keys' values become 0
    attended = (p > 0).any(dim=-2, keepdim=True).transpose(-1, -2)
    v8, sv = round_int8(v.float(), -2, attended)
    total = p.sum(dim=-1, keepdim=True)  # exact: integers below 2^24
    acc = (p.double() @ v8.double()).float()
    return (acc * sv) / total
