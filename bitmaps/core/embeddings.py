"""Quantized embedding tables: FP16, INT8 per-row and INT4 group-wise, dequantized at the gather.

In a binary BERT the encoder is tiny (BERT-base: 11.4 MB of packed layers) and the word, position
and token-type tables (95.4 MB in FP32) are most of the file. This module stores them small and
expands only the rows a batch looks up:

- ``int8``: per-row symmetric, ``scale[v] = max_h |W[v, h]| / 127``, ``q = round(W / scale)`` in
  [-127, 127], stored int8 ``[V, H]``; scales ``[V, 1]``.
- ``int4``: group-wise symmetric along the hidden axis, groups of ``group`` (32 or 64) values,
  ``scale[v, g] = max |W[v, g·group : (g+1)·group]| / 7``, ``q`` in [-7, 7]. Stored as unsigned
  nibbles ``u = q + 8`` (the "uint4, zero point 8" convention of ONNX Runtime's MatMulNBits and
  GatherBlockQuantized), two per byte, element ``2j`` in the low nibble of byte ``j``; a hidden size
  that is not a multiple of ``group`` is padded with zeros (``u = 8``) up to ``G·group``,
  ``G = ceil(H / group)``. Stored uint8 ``[V, G·group / 2]``; scales ``[V, G]``.
- ``fp16``: the table cast to float16, no scale.

A value is ``(u − 8) · scale`` (int4) or ``q · scale`` (int8): one float multiply of an exact small
integer, so PyTorch and the ONNX graph of :mod:`bitmaps.export.embeddings` agree bit for bit.
Scales are kept in the model's float dtype.

:func:`quantize_embeddings_` swaps a ``*ForMaskedLM``'s embeddings for :class:`QuantizedEmbedding`
and its tied MLM decoder for :class:`TiedQuantizedDecoder`, which reads the word table's buffers:
one table, not two. The embedding LayerNorm and the head's transform are untouched.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from bitmaps.core.errors import BitmapsError

EMBEDDING_MODES = ("fp32", "fp16", "int8", "int4")
INT4_GROUPS = (32, 64)
INT4_OFFSET = 8  # stored nibble = q + 8
# What a binary student ships with unless told otherwise (`bitmaps export`, `profile`'s binary
# model). Chosen from measurements: benchmarks/RESULTS.md, "Embeddings".
STUDENT_EMBEDDINGS = "int4"
STUDENT_EMBEDDING_GROUP = 64
_QMAX = {"int8": 127, "int4": 7}


def _check(mode: str, group: int) -> None:
    if mode not in EMBEDDING_MODES:
        raise BitmapsError(f"embeddings must be one of {', '.join(EMBEDDING_MODES)}, got {mode!r}")
    if mode == "int4" and group not in INT4_GROUPS:
        raise BitmapsError(f"int4 group size must be one of {INT4_GROUPS}, got {group}")


def num_groups(hidden: int, mode: str, group: int) -> int:
    """Scale columns per row: 1 (int8), ceil(hidden / group) (int4), 0 (float)."""
    return {"int8": 1, "int4": -(-hidden // group)}.get(mode, 0)


def quantize_table(
    weight: torch.Tensor, mode: str, group: int = 64
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``weight [V, H]`` → ``(data, scale)`` as described in the module docstring.

    Computed in float32 from ``weight``'s values; ``scale`` is returned in ``weight``'s dtype
    (what the dequantization multiplies by). ``fp32``/``fp16`` return the cast table and None.
    """
    _check(mode, group)
    if weight.dim() != 2:
        raise BitmapsError(f"an embedding table is 2-D, got shape {tuple(weight.shape)}")
    if mode in ("fp32", "fp16"):
        return weight.to(torch.float32 if mode == "fp32" else torch.float16).contiguous(), None
    w = weight.detach().float()
    v, h = w.shape
    size = h if mode == "int8" else group
    g = -(-h // size)
    w = F.pad(w, (0, g * size - h)).reshape(v, g, size)
    scale = w.abs().amax(dim=-1) / _QMAX[mode]
    scale = scale.to(weight.dtype).float()  # the scale the runtime multiplies by
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = torch.round(w / safe[..., None]).clamp(-_QMAX[mode], _QMAX[mode]).to(torch.int16)
    if mode == "int8":
        return q.reshape(v, h).to(torch.int8).contiguous(), scale.to(weight.dtype).contiguous()
    u = (q.reshape(v, g * size) + INT4_OFFSET).to(torch.uint8)
    packed = u[:, 0::2] | (u[:, 1::2] << 4)
    return packed.contiguous(), scale.to(weight.dtype).contiguous()


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """uint8 ``[..., B]`` → the nibbles as uint8 ``[..., 2B]`` (low nibble first)."""
    low, high = packed & 0x0F, packed >> 4
    return torch.stack((low, high), dim=-1).flatten(-2)


def dequantize(
    data: torch.Tensor, scale: torch.Tensor | None, mode: str, hidden: int, dtype: torch.dtype
) -> torch.Tensor:
    """Rows ``data [..., *]`` (already gathered, or the whole table) → float ``[..., hidden]``."""
    if mode in ("fp32", "fp16"):
        return data.to(dtype)
    assert scale is not None
    scale = scale.to(dtype)
    if mode == "int8":
        return data.to(dtype) * scale
    values = unpack_int4(data).to(dtype) - INT4_OFFSET
    g = scale.shape[-1]
    values = values.reshape(*values.shape[:-1], g, -1) * scale[..., None]
    return values.flatten(-2)[..., :hidden]


class QuantizedEmbedding(nn.Module):
    """``nn.Embedding`` stand-in: ``forward(ids)`` gathers rows of the stored table, then dequantizes.

    Buffers ``data`` (int8 / packed uint8 / float16 / float32) and, for int8/int4, ``scale``.
    The output dtype follows ``scale`` (or the model's dtype for fp16 tables, set by ``dtype``).
    """

    def __init__(
        self, weight: torch.Tensor, mode: str, group: int = 64, padding_idx: int | None = None
    ) -> None:
        super().__init__()
        data, scale = quantize_table(weight, mode, group)
        self.mode, self.group = mode, group if mode == "int4" else 0
        self.num_embeddings, self.embedding_dim = int(weight.shape[0]), int(weight.shape[1])
        self.padding_idx = padding_idx
        self.out_dtype = weight.dtype
        self.register_buffer("data", data)
        self.register_buffer("scale", scale)

    def _apply(self, fn, recurse: bool = True):  # noqa: ANN001, ANN202
        # .half()/.float() on the model change the output dtype and the scales, never the table
        data = self.data
        super()._apply(fn, recurse)
        if self.scale is not None:
            self.out_dtype = self.scale.dtype
        else:
            probe = fn(torch.zeros((), dtype=self.out_dtype))
            if probe.is_floating_point():
                self.out_dtype = probe.dtype
        self.data = data.to(self.data.device)
        return self

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        rows = self.data[ids]
        scale = None if self.scale is None else self.scale[ids]
        return dequantize(rows, scale, self.mode, self.embedding_dim, self.out_dtype)

    def table(self) -> torch.Tensor:
        """The whole dequantized table ``[V, H]`` (what the tied decoder multiplies by)."""
        return dequantize(self.data, self.scale, self.mode, self.embedding_dim, self.out_dtype)

    def extra_repr(self) -> str:
        group = f", group={self.group}" if self.group else ""
        return f"{self.num_embeddings}, {self.embedding_dim}, mode={self.mode}{group}"


class TiedQuantizedDecoder(nn.Module):
    """The MLM decoder tied to a :class:`QuantizedEmbedding`: ``x @ table()ᵀ + bias``.

    Holds the embedding module itself (not a copy), so the word table is stored once.
    """

    def __init__(self, embedding: QuantizedEmbedding, bias: nn.Parameter | None) -> None:
        super().__init__()
        self.embedding = embedding
        self.bias = bias  # the head's own bias Parameter (HF ties decoder.bias to it), not a copy

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.embedding.table(), self.bias)


def _embeddings_of(model: nn.Module) -> nn.Module:
    base = getattr(model, "base_model", model)
    emb = getattr(base, "embeddings", None)
    if emb is None or not hasattr(emb, "word_embeddings"):
        raise BitmapsError(f"{type(model).__name__} has no BERT embeddings to quantize")
    return emb


def embeddings_label(mode: str, group: int = 64) -> str:
    """How results name a storage mode: ``int4-g64`` for int4, else the mode."""
    return f"int4-g{group}" if mode == "int4" else mode


def quantize_embeddings_(model: nn.Module, mode: str, group: int = 64) -> nn.Module:
    """In place: word, position and token-type tables → :class:`QuantizedEmbedding`; a tied MLM
    decoder → :class:`TiedQuantizedDecoder` on the word table. ``fp32`` leaves the model as is
    (the model's own dtype). Returns ``model``."""
    _check(mode, group)
    if mode == "fp32":
        return model
    emb = _embeddings_of(model)
    word = emb.word_embeddings
    if isinstance(word, QuantizedEmbedding):
        raise BitmapsError("the embeddings are already quantized")
    head = getattr(model, "cls", None)
    decoder = getattr(getattr(head, "predictions", None), "decoder", None)
    tied = decoder is not None and decoder.weight.data_ptr() == word.weight.data_ptr()
    for name in ("word_embeddings", "position_embeddings", "token_type_embeddings"):
        old = getattr(emb, name, None)
        if isinstance(old, nn.Embedding):
            new = QuantizedEmbedding(old.weight.detach(), mode, group, old.padding_idx)
            setattr(emb, name, new)
    if decoder is not None:
        if not tied:
            raise BitmapsError("the MLM decoder is not tied to the word embeddings")
        head.predictions.decoder = TiedQuantizedDecoder(emb.word_embeddings, decoder.bias)
    return model


def embedding_tables(model: nn.Module) -> list[QuantizedEmbedding]:
    """The quantized tables of a model (empty when its embeddings are plain)."""
    return [m for m in model.modules() if isinstance(m, QuantizedEmbedding)]
