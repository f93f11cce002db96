"""The bit layout of DESIGN.md, in Python: the one place that turns signs into int32 words and back.

- bit 1 means −1, bit 0 means +1 (the sign bit); sign(0) = +1;
- bits are packed along K (the last axis) into int32 words, least significant bit first:
  element ``k`` is bit ``k % 32`` of word ``k // 32``; shape ``[..., ceil(K/32)]``;
- padding bits (K not a multiple of 32) are 0;
- ``dot(a, b) = K − 2·popcount(a XOR b)``.

The C++ mirror is ``csrc/kernels/bit_layout.h``. These functions are the reference: plain PyTorch,
any device, no native code.
"""

from __future__ import annotations

import torch

WORD_BITS = 32


def packed_width(k: int) -> int:
    """Number of int32 words that hold ``k`` bits."""
    return (k + WORD_BITS - 1) // WORD_BITS


def sign_bits(x: torch.Tensor) -> torch.Tensor:
    """Boolean sign bits of ``x``: True where the binary value is −1 (x < 0)."""
    return x < 0


def pack_bits(bits: torch.Tensor) -> torch.Tensor:
    """Pack a boolean tensor ``[..., K]`` into int32 words ``[..., ceil(K/32)]`` (LSB first)."""
    k = bits.shape[-1]
    kw = packed_width(k)
    padded = torch.zeros(*bits.shape[:-1], kw * WORD_BITS, dtype=torch.int64, device=bits.device)
    padded[..., :k] = bits.to(torch.int64)
    weights = torch.bitwise_left_shift(
        torch.ones(WORD_BITS, dtype=torch.int64, device=bits.device),
        torch.arange(WORD_BITS, dtype=torch.int64, device=bits.device),
    )
    words = (padded.view(*bits.shape[:-1], kw, WORD_BITS) * weights).sum(-1)
    # Reinterpret the unsigned 32-bit value as int32 (two's complement), as the kernels read it.
    words = torch.where(words >= 2**31, words - 2**32, words)
    return words.to(torch.int32)


def unpack_bits(words: torch.Tensor, k: int) -> torch.Tensor:
    """Inverse of :func:`pack_bits`: int32 ``[..., KW]`` → boolean ``[..., k]``."""
    if words.shape[-1] != packed_width(k):
        raise ValueError(f"expected {packed_width(k)} words for K={k}, got {words.shape[-1]}")
    shifts = torch.arange(WORD_BITS, dtype=torch.int64, device=words.device)
    bits = (words.to(torch.int64).unsqueeze(-1) >> shifts) & 1
    # the word count spelt out, not -1: a tensor of no rows cannot infer it
    return bits.reshape(*words.shape[:-1], words.shape[-1] * WORD_BITS)[..., :k].bool()


def pack_signs(x: torch.Tensor) -> torch.Tensor:
    """Float ``[..., K]`` → packed sign words int32 ``[..., ceil(K/32)]``."""
    return pack_bits(sign_bits(x))


def unpack_signs(words: torch.Tensor, k: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Packed sign words → ±1 values ``[..., k]`` of ``dtype``."""
    bits = unpack_bits(words, k)
    return 1 - 2 * bits.to(dtype)
