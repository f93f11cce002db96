"""The ``bitmaps::`` PyTorch ops, defined once: schema, fake kernel, plain-PyTorch reference.

============================  ====================================================================
``pack_signs``                float ``[..., K]`` → int32 ``[..., ceil(K/32)]`` (bitmaps/core/packing.py)
``xnor_gemm``                 packed ``[M, KW]``, packed ``[N, KW]``, K → int32 ``[M, N]`` = K − 2·popc(a⊕b)
``binary_linear``             fused binarize + pack + XNOR GEMM + scale + bias; the ONNX op of DESIGN.md
``prepack_weights``           packed ``[N, KW]`` → the CPU GEMM's panels ``[ceil(N/16), KW, 16]``
``binary_linear_prepacked``   ``binary_linear`` on prepacked weights (laid out once, at load)
``packed_attention``          attention on Q, K, V side by side ``[B, S, 3·H·D]`` (the CPU kernel of
                              csrc/kernels/cpu_attention.h; inference on the stacked projection)
``skip_layer_norm``           ``LayerNorm(x + skip)`` over the last axis (csrc/kernels/cpu_layer_norm.h)
``embed_layer_norm``          2 or 3 int4 embedding lookups summed, then LayerNorm: BERT's
                              embeddings (csrc/kernels/cpu_embed.h, bitmaps::EmbedLayerNormalization)
``ffn_bit_table``             per column, the ranges of a binary layer's dot products whose output,
                              after GELU, the next binary layer binarizes to 1 (fixed scales)
``binary_ffn_prepacked``      two prepacked binary layers, the second binarizing the first's
                              (GELU'd) output, through that table: bitmaps::BinaryFeedForward
============================  ====================================================================

The reference implementations (``reference_*``) are the ground truth for every test. They are also
registered as the ``CompositeExplicitAutograd`` kernels, so the ops run on any device without native
code; importing :mod:`bitmaps._C` (when it was built) registers faster CPU/CUDA kernels for the same
schemas, which then take precedence for their device. On CPU the compiled kernels pick an AVX-512,
AVX2 or scalar path at run time; :func:`forced_cpu_path` pins one (tests, benchmarks).
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator

import torch

from bitmaps.core.errors import BitmapsError, one_line
from bitmaps.core.int8_attention import int8_attention
from bitmaps.core.packing import pack_signs as _pack_signs_reference
from bitmaps.core.packing import packed_width, unpack_signs

_lib = torch.library.Library("bitmaps", "DEF")
_lib.define("pack_signs(Tensor x) -> Tensor")
_lib.define("xnor_gemm(Tensor a, Tensor b, int k) -> Tensor")
_lib.define(
    "binary_linear(Tensor x, Tensor w, Tensor w_scale, Tensor? bias, int in_features, "
    "float act_threshold, float act_scale, int act_unsigned=0) -> Tensor"
)
_lib.define("prepack_weights(Tensor w, int in_features) -> Tensor")
_lib.define(
    "binary_linear_prepacked(Tensor x, Tensor panels, Tensor w_scale, Tensor? bias, "
    "int in_features, float act_threshold, float act_scale, int act_unsigned=0, "
    "int activation=0) -> Tensor"
)
_lib.define(
    "packed_attention(Tensor qkv, Tensor? bias, int num_heads, float scale, bool int8=False) "
    "-> Tensor"
)
_lib.define(
    "skip_layer_norm(Tensor x, Tensor skip, Tensor gamma, Tensor? beta, float epsilon) -> Tensor"
)
_lib.define(
    "embed_layer_norm(Tensor[] ids, Tensor[] data, Tensor[] scale, Tensor gamma, Tensor? beta, "
    "float epsilon) -> Tensor"
)
_lib.define(
    "ffn_bit_table(Tensor w_scale, Tensor? bias, int in_features, float act_scale, "
    "int act_unsigned, int activation, float next_act_threshold, int next_act_unsigned) -> Tensor"
)
_lib.define(
    "binary_ffn_prepacked(Tensor x, Tensor panels, Tensor w_scale, Tensor? bias, "
    "int in_features, float act_threshold, float act_scale, int act_unsigned, int activation, "
    "Tensor table, Tensor next_panels, Tensor next_w_scale, Tensor? next_bias, "
    "float next_act_threshold, float next_act_scale, int next_act_unsigned) -> Tensor"
)

# Weight rows per panel of the prepacked layout (csrc/kernels/cpu_kernels.h kPanelRows): one
# 512-bit vector of int32 words. The layout is the same on every CPU path.
PANEL_ROWS = 16


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
    act_unsigned: int = 0,
) -> torch.Tensor:
    """The ``bitmaps::BinaryLinear`` op of DESIGN.md, in float32, cast back to the dtype of ``x``::

    x' = x − β ;  s[m] = act_scale if act_scale > 0 else mean_k |x'[m, k]|
    y[m, n] = s[m] · w_scale[n] · (K − 2·popcount(sign_bits(x'[m]) XOR W[n])) + bias[n]

    act_unsigned = 1 (two-set binarization, BiT): a = (x' > 0) ∈ {0, 1},
    y[m, n] = s[m] · w_scale[n] · (popcount(a[m]) − 2·popcount(a[m] AND W[n])) + bias[n]
    (the same as a · w with w = ±1 from the weight signs).
    """
    xf = x.float() - act_threshold
    if act_unsigned:
        xs = (xf > 0).float()
    else:
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


def reference_prepack_weights(w: torch.Tensor, in_features: int) -> torch.Tensor:
    """Packed rows ``[N, KW]`` → panels ``[ceil(N/16), KW, 16]``: ``panels[p, j, l] = w[16p + l, j]``,
    rows past N and the padding bits of the last word zeroed."""
    n, kw = w.shape
    rows = -(-n // PANEL_ROWS) * PANEL_ROWS
    padded = torch.zeros(rows, kw, dtype=torch.int32, device=w.device)
    padded[:n] = w
    tail = in_features % 32
    if tail:
        padded[:, -1] &= (1 << tail) - 1
    return padded.view(-1, PANEL_ROWS, kw).transpose(1, 2).contiguous()


def unpack_panels(panels: torch.Tensor, n: int) -> torch.Tensor:
    """Inverse of :func:`reference_prepack_weights`: panels → packed rows ``[n, KW]``."""
    rows = panels.shape[0] * panels.shape[2]  # spelt out: no panels cannot infer -1
    return panels.transpose(1, 2).reshape(rows, panels.shape[1])[:n]


def reference_binary_linear_prepacked(
    x: torch.Tensor,
    panels: torch.Tensor,
    w_scale: torch.Tensor,
    bias: torch.Tensor | None,
    in_features: int,
    act_threshold: float,
    act_scale: float,
    act_unsigned: int = 0,
    activation: int = 0,
) -> torch.Tensor:
    """:func:`reference_binary_linear` with the weights given as prepacked panels; ``activation``
    1 applies GELU (erf form, ``torch.nn.functional.gelu``) to the result, 0 nothing."""
    _check_activation("binary_linear_prepacked", activation)
    w = unpack_panels(panels, w_scale.shape[0])
    y = reference_binary_linear(
        x, w, w_scale, bias, in_features, act_threshold, act_scale, act_unsigned
    )
    return torch.nn.functional.gelu(y.float()).to(y.dtype) if activation else y


def _check_activation(op: str, activation: int) -> None:
    if activation not in (0, 1):
        raise RuntimeError(
            f"bitmaps::{op}: activation must be 0 (none) or 1 (GELU, erf form), got {activation}"
        )


def reference_packed_attention(
    qkv: torch.Tensor, bias: torch.Tensor | None, num_heads: int, scale: float, int8: bool = False
) -> torch.Tensor:
    """Attention over ``num_heads`` heads of Q, K and V side by side in ``qkv [B, S, 3·H·D]``:
    ``softmax(scale · Q Kᵀ + bias) V`` per head (float32, ``bias`` additive, broadcast from
    ``[B or 1, H or 1, S or 1, S]``), out ``[B, S, H·D]``: the eager math the CPU kernel
    (csrc/kernels/cpu_attention.h) computes. ``int8``: the int8 scheme of
    :mod:`bitmaps.core.int8_attention` (the same bits as the kernel's)."""
    _check_packed_attention(qkv, bias, num_heads, scale)
    b, s, width = qkv.shape
    head_dim = width // (3 * num_heads)  # spelt out: a reshape of no elements cannot infer it
    if width == 0:  # no heads' worth of columns: the output has none either
        return qkv.new_empty((b, s, 0))
    q, k, v = (t.reshape(b, s, num_heads, head_dim).transpose(1, 2)
               for t in qkv.split(width // 3, -1))  # fmt: skip
    if int8:
        out = int8_attention(q, k, v, bias, scale)
        return out.transpose(1, 2).reshape(b, s, width // 3)
    scores = (q * scale) @ k.transpose(-1, -2)
    if bias is not None:
        scores = scores + bias
    out = torch.softmax(scores, dim=-1) @ v
    return out.transpose(1, 2).reshape(b, s, width // 3)


def reference_skip_layer_norm(
    x: torch.Tensor, skip: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor | None,
    epsilon: float,
) -> torch.Tensor:  # fmt: skip
    """``layer_norm(x + skip)`` over the last axis with ``gamma``, ``beta`` (or none), float32."""
    _check_skip_layer_norm(x, skip, gamma, beta, epsilon)
    return torch.nn.functional.layer_norm(x + skip, (x.shape[-1],), gamma, beta, epsilon)


def reference_embed_layer_norm(
    ids: list[torch.Tensor], data: list[torch.Tensor], scale: list[torch.Tensor],
    gamma: torch.Tensor, beta: torch.Tensor | None, epsilon: float,
) -> torch.Tensor:  # fmt: skip
    """``layer_norm(T0[ids0] + T1[ids1] (+ T2[ids2]))`` over the last axis, float32, the sum in
    list order (broadcast over the ids' shapes). Table ``i`` is ``data[i]`` ``[rows, hidden / 2]``
    uint8 (two values per byte, low nibble first, zero point 8) times ``scale[i]`` ``[rows,
    hidden / block]`` per block of values: the int4 layout of bitmaps.core.embeddings."""
    _check_embed_layer_norm(ids, data, scale, gamma, beta, epsilon)
    n = gamma.shape[0]
    total = None
    for i, d, s in zip(ids, data, scale, strict=True):
        idx = i.long()
        rows = d[idx]
        nibbles = torch.stack((rows & 0x0F, rows >> 4), dim=-1).flatten(-2).float() - 8.0
        block = n // s.shape[1]
        blocks = nibbles.reshape(*nibbles.shape[:-1], s.shape[1], block)  # no -1: ids may be empty
        values = (blocks * s[idx][..., None]).flatten(-2)
        total = values if total is None else total + values
    return torch.nn.functional.layer_norm(total, (n,), gamma, beta, epsilon)


# erfc(−y/√2) below which 1 + erf(y/√2) rounds to 0 in float32 (erf within half an ulp of −1):
# a float32 GELU is 0 there; csrc/kernels/cpu_binary_linear.cpp kGeluFloat32Zero
GELU_FLOAT32_ZERO = 2.0**-25
# At most this many ranges per column in an ffn_bit_table (GELU(y) − β changes sign at most twice);
# csrc/kernels/cpu_binary_linear.h kMaxFfnRuns
MAX_FFN_RUNS = 2
# The largest in_features a table is made for (its cost grows with K); csrc/kernels/
# cpu_binary_linear.h kMaxFfnTableFeatures
MAX_FFN_TABLE_FEATURES = 1 << 20


def ffn_bits(
    y: torch.Tensor, activation: int, next_threshold: float, next_unsigned: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The next layer's input bits of the float32 outputs ``y`` (bitmaps::BinaryFeedForward),
    and GELU(y) − β: bit 1 where GELU(y) − β < 0 (> 0 for {0, 1} activations), GELU in float64
    as 0.5·y·erfc(−y/√2), and 0 where a float32 GELU is: where 1 + erf(y/√2) rounds to 0
    (erfc(−y/√2) < GELU_FLOAT32_ZERO, y below about −5.56), as in torch and ONNX Runtime, whose
    float32 GELU the model was trained and is exported with (true-sign bits there flipped every
    such unit of a next layer with β = 0)."""
    v = y.double()
    if activation:
        e = torch.special.erfc(-v / math.sqrt(2.0))
        v = torch.where(e < GELU_FLOAT32_ZERO, torch.zeros_like(v), 0.5 * v * e)
    beta = float(torch.tensor(next_threshold, dtype=torch.float32))
    return (v - beta > 0 if next_unsigned else v - beta < 0), v - beta


def reference_ffn_bit_table(
    w_scale: torch.Tensor, bias: torch.Tensor | None, in_features: int, act_scale: float,
    act_unsigned: int, activation: int, next_act_threshold: float, next_act_unsigned: int,
) -> torch.Tensor:  # fmt: skip
    """int32 ``[2, runs, N]``: for each output column n of a binary layer with a fixed activation
    scale, the ranges ``[lo, hi]`` (``[0]`` and ``[1]``) of its integer dot products d whose output
    ``y = (d · act_scale) · w_scale[n] + bias[n]`` (float32) the next layer binarizes to 1 after
    GELU (``activation`` 1) or as it is: :func:`ffn_bits`. d runs over what the layer can produce
    (K − 2p for ±1 inputs, every integer in [−K, K] for {0, 1} inputs); an unused range has
    lo > hi. Raises where it does not apply (``act_scale`` not > 0, more than MAX_FFN_RUNS ranges)."""
    _check_ffn_bit_table(w_scale, bias, in_features, act_scale, act_unsigned, activation)
    step = 1 if act_unsigned else 2
    d = torch.arange(-in_features, in_features + 1, step, dtype=torch.int32)
    scale = torch.tensor(act_scale, dtype=torch.float32)
    y = (d.float() * scale)[None, :] * w_scale.float()[:, None]
    if bias is not None:
        y = y + bias.float()[:, None]
    bits, _ = ffn_bits(y, activation, next_act_threshold, next_act_unsigned)  # [N, count]
    n = bits.shape[0]
    pad = torch.zeros(n, 1, dtype=torch.bool)
    starts = bits & ~torch.cat([pad, bits[:, :-1]], 1)
    ends = bits & ~torch.cat([bits[:, 1:], pad], 1)
    runs = int(starts.sum(1).max()) if n else 0
    if runs > MAX_FFN_RUNS:
        raise RuntimeError(f"bitmaps::ffn_bit_table: a column needs {runs} ranges (at most "
                           f"{MAX_FFN_RUNS})")  # fmt: skip
    table = torch.empty(2, runs, n, dtype=torch.int32)
    table[0].fill_(torch.iinfo(torch.int32).max)
    table[1].fill_(torch.iinfo(torch.int32).min)
    for part, marks in ((0, starts), (1, ends)):
        rows, cols = marks.nonzero(as_tuple=True)
        order = marks.cumsum(1)[rows, cols] - 1  # which range of its column
        table[part, order, rows] = d[cols]
    return table


def _check_ffn_bit_table(
    w_scale: torch.Tensor, bias: torch.Tensor | None, in_features: int, act_scale: float,
    act_unsigned: int, activation: int,
) -> None:  # fmt: skip
    op = "ffn_bit_table"
    if not 1 <= in_features <= MAX_FFN_TABLE_FEATURES:
        raise RuntimeError(
            f"bitmaps::{op}: in_features must be in [1, {MAX_FFN_TABLE_FEATURES}] (the table "
            f"looks at every dot product of the layer), got {in_features}"
        )
    if not act_scale > 0:
        raise RuntimeError(f"bitmaps::{op}: act_scale must be > 0 (a fixed scale), got {act_scale}")
    if w_scale.dtype != torch.float32 or w_scale.dim() != 1:
        raise RuntimeError(f"bitmaps::{op}: w_scale must be Float of shape [out_features], got "
                           f"{w_scale.dtype} {list(w_scale.shape)}")  # fmt: skip
    if bias is not None and (bias.dtype != torch.float32 or bias.shape != w_scale.shape):
        raise RuntimeError(f"bitmaps::{op}: bias must be Float of shape {list(w_scale.shape)}, "
                           f"got {bias.dtype} {list(bias.shape)}")  # fmt: skip
    if act_unsigned not in (0, 1):
        raise RuntimeError(f"bitmaps::{op}: act_unsigned must be 0 or 1, got {act_unsigned}")
    _check_activation(op, activation)


def reference_binary_ffn_prepacked(
    x: torch.Tensor, panels: torch.Tensor, w_scale: torch.Tensor, bias: torch.Tensor | None,
    in_features: int, act_threshold: float, act_scale: float, act_unsigned: int, activation: int,
    table: torch.Tensor, next_panels: torch.Tensor, next_w_scale: torch.Tensor,
    next_bias: torch.Tensor | None, next_act_threshold: float, next_act_scale: float,
    next_act_unsigned: int,
) -> torch.Tensor:  # fmt: skip
    """Two binary layers (bitmaps::BinaryFeedForward, csrc/onnxruntime/README.md): the first
    (prepacked) on float32 ``x``, its output's bits for the second as :func:`ffn_bits` defines
    them, the second (prepacked) on those bits. ``table`` (:func:`reference_ffn_bit_table` of the
    first layer and the second's threshold) is what the native kernel reads instead; here only
    its shape is checked."""
    _check_binary_ffn(x, w_scale, next_w_scale, table, act_scale, next_act_scale)
    y = reference_binary_linear_prepacked(x, panels, w_scale, bias, in_features, act_threshold,
                                          act_scale, act_unsigned)  # fmt: skip
    bits, _ = ffn_bits(y, activation, next_act_threshold, next_act_unsigned)
    beta = float(torch.tensor(next_act_threshold, dtype=torch.float32))
    on, off = (beta + 1.0, beta - 1.0) if next_act_unsigned else (beta - 1.0, beta + 1.0)
    h = torch.where(bits, torch.tensor(on), torch.tensor(off)).float()  # 1 from beta: exact signs
    return reference_binary_linear_prepacked(h, next_panels, next_w_scale, next_bias,
                                             w_scale.shape[0], next_act_threshold, next_act_scale,
                                             next_act_unsigned)  # fmt: skip


def _check_binary_ffn(
    x: torch.Tensor, w_scale: torch.Tensor, next_w_scale: torch.Tensor, table: torch.Tensor,
    act_scale: float, next_act_scale: float,
) -> None:  # fmt: skip
    op = "binary_ffn_prepacked"
    if x.dtype != torch.float32:
        raise RuntimeError(f"bitmaps::{op}: x must be Float, got {x.dtype}")
    if not (act_scale > 0 and next_act_scale > 0):
        raise RuntimeError(f"bitmaps::{op}: act_scale and next_act_scale must be > 0 (fixed "
                           f"scales), got {act_scale} and {next_act_scale}")  # fmt: skip
    n = w_scale.shape[0]
    if (table.dtype != torch.int32 or table.dim() != 3 or table.shape[0] != 2
            or table.shape[1] > MAX_FFN_RUNS or table.shape[2] != n):  # fmt: skip
        raise RuntimeError(f"bitmaps::{op}: table must be int32 of shape [2, runs <= "
                           f"{MAX_FFN_RUNS}, {n}] (bitmaps::ffn_bit_table), got {table.dtype} "
                           f"{list(table.shape)}")  # fmt: skip
    if next_w_scale.dim() != 1:
        raise RuntimeError(f"bitmaps::{op}: next_w_scale must have shape [out_features], got "
                           f"{list(next_w_scale.shape)}")  # fmt: skip


def _check_skip_layer_norm(
    x: torch.Tensor, skip: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor | None,
    epsilon: float,
) -> None:  # fmt: skip
    op = "skip_layer_norm"
    for name, t in (("x", x), ("skip", skip), ("gamma", gamma), ("beta", beta)):
        if t is not None and t.dtype != torch.float32:
            raise RuntimeError(f"bitmaps::{op}: {name} must be Float, got {t.dtype}")
    if x.dim() < 1 or x.shape[-1] < 1:
        raise RuntimeError(f"bitmaps::{op}: x must have at least one dimension, the last not "
                           f"empty, got shape {list(x.shape)}")  # fmt: skip
    if skip.shape != x.shape:
        raise RuntimeError(f"bitmaps::{op}: skip must have the shape of x {list(x.shape)}, got "
                           f"{list(skip.shape)}")  # fmt: skip
    n = x.shape[-1]
    for name, t in (("gamma", gamma), ("beta", beta)):
        if t is not None and tuple(t.shape) != (n,):
            raise RuntimeError(f"bitmaps::{op}: {name} must have shape [{n}] (x's last "
                               f"dimension), got {list(t.shape)}")  # fmt: skip
    if not (math.isfinite(epsilon) and epsilon >= 0):
        raise RuntimeError(f"bitmaps::{op}: epsilon must be finite and >= 0, got {epsilon}")


def _check_embed_layer_norm(
    ids: list[torch.Tensor], data: list[torch.Tensor], scale: list[torch.Tensor],
    gamma: torch.Tensor, beta: torch.Tensor | None, epsilon: float,
) -> None:  # fmt: skip
    """The shape and dtype checks of every embed_layer_norm kernel (index ranges: the native one
    and the reference's indexing)."""
    op = "embed_layer_norm"
    if not (2 <= len(ids) <= 3 and len(data) == len(ids) and len(scale) == len(ids)):
        raise RuntimeError(f"bitmaps::{op}: ids, data and scale must be lists of 2 or 3 tensors "
                           f"each (one per lookup), got {len(ids)}, {len(data)} and "
                           f"{len(scale)}")  # fmt: skip
    for name, t in (("gamma", gamma), ("beta", beta)):
        if t is not None and t.dtype != torch.float32:
            raise RuntimeError(f"bitmaps::{op}: {name} must be Float, got {t.dtype}")
    if gamma.dim() != 1:
        raise RuntimeError(f"bitmaps::{op}: gamma must have shape [hidden], got "
                           f"{list(gamma.shape)}")  # fmt: skip
    n = gamma.shape[0]
    if n < 2 or n % 2:
        raise RuntimeError(f"bitmaps::{op}: the hidden size (gamma's length) must be even and "
                           f">= 2, got {n}")  # fmt: skip
    if beta is not None and tuple(beta.shape) != (n,):
        raise RuntimeError(f"bitmaps::{op}: beta must have gamma's shape [{n}], got "
                           f"{list(beta.shape)}")  # fmt: skip
    if not (math.isfinite(epsilon) and epsilon >= 0):
        raise RuntimeError(f"bitmaps::{op}: epsilon must be finite and >= 0, got {epsilon}")
    rank = ids[0].dim()
    if rank < 1:
        raise RuntimeError(f"bitmaps::{op}: ids[0] must have at least one dimension")
    groups = scale[0].shape[1] if scale[0].dim() == 2 else 0
    if groups < 1 or n % groups or (n // groups) % 2:
        raise RuntimeError(f"bitmaps::{op}: scale[0] must have shape [rows, hidden / block] with "
                           f"an even block dividing hidden {n}, got {list(scale[0].shape)}")  # fmt: skip
    block, lead = n // groups, [1] * rank
    for t, (i, d, s) in enumerate(zip(ids, data, scale, strict=True)):
        if i.dtype not in (torch.int64, torch.int32):
            raise RuntimeError(f"bitmaps::{op}: ids[{t}] must be Long or Int, got {i.dtype}")
        if d.dtype != torch.uint8:
            raise RuntimeError(f"bitmaps::{op}: data[{t}] must be Byte, got {d.dtype}")
        if s.dtype != torch.float32:
            raise RuntimeError(f"bitmaps::{op}: scale[{t}] must be Float, got {s.dtype}")
        # the messages of csrc/kernels/cpu_embed.cpp fit_embedding_lookup
        if i.dim() != rank:
            raise RuntimeError(f"bitmaps::{op}: ids[{t}] must have ids[0]'s rank {rank}, got "
                               f"{list(i.shape)}")  # fmt: skip
        for k, size in enumerate(i.shape):
            if size != 1 and lead[k] not in (1, size):
                raise RuntimeError(f"bitmaps::{op}: ids[{t}] {list(i.shape)} does not broadcast "
                                   f"with the other lookups' ids (dimension {k})")  # fmt: skip
            lead[k] = size if size != 1 else lead[k]
        if (d.dim() != 2 or s.dim() != 2 or d.shape[1] * 2 != n or s.shape[0] != d.shape[0]
                or s.shape[1] * block != n):  # fmt: skip
            raise RuntimeError(f"bitmaps::{op}: data[{t}] {list(d.shape)} and scale[{t}] "
                               f"{list(s.shape)} must be [rows, {n // 2}] and [rows, {n // block}] "
                               f"(hidden {n}, block_size {block})")  # fmt: skip


def _check_packed_attention(
    qkv: torch.Tensor, bias: torch.Tensor | None, num_heads: int, scale: float
) -> None:
    op = "packed_attention"
    if qkv.dtype != torch.float32:
        raise RuntimeError(f"bitmaps::{op}: qkv must be Float, got {qkv.dtype}")
    if not 1 <= num_heads < 2**31:
        raise RuntimeError(f"bitmaps::{op}: num_heads must be in [1, 2^31 - 1], got {num_heads}")
    if qkv.dim() != 3 or qkv.shape[2] % (3 * num_heads):
        raise RuntimeError(
            f"bitmaps::{op}: qkv must have shape [batch, seq, 3 * num_heads * head_dim] "
            f"(num_heads={num_heads}), got {list(qkv.shape)}"
        )
    if not math.isfinite(scale):
        raise RuntimeError(f"bitmaps::{op}: scale must be finite, got {scale}")
    if bias is not None:
        b, s = qkv.shape[0], qkv.shape[1]
        d = tuple(bias.shape)
        fits = len(d) == 4 and d[0] in (1, b) and d[1] in (1, num_heads) and d[2] in (1, s)
        if bias.dtype != torch.float32 or not (fits and d[3] == s):
            raise RuntimeError(
                f"bitmaps::{op}: bias must be Float of shape [batch or 1, num_heads or 1, seq or "
                f"1, seq] = [{b}, {num_heads}, {s}, {s}], got {bias.dtype} {list(d)}"
            )


# --------------------------------------------------------------------------- registrations

torch.library.impl(_lib, "pack_signs", "CompositeExplicitAutograd")(reference_pack_signs)
torch.library.impl(_lib, "xnor_gemm", "CompositeExplicitAutograd")(reference_xnor_gemm)
torch.library.impl(_lib, "binary_linear", "CompositeExplicitAutograd")(reference_binary_linear)
torch.library.impl(_lib, "prepack_weights", "CompositeExplicitAutograd")(reference_prepack_weights)
torch.library.impl(_lib, "binary_linear_prepacked", "CompositeExplicitAutograd")(
    reference_binary_linear_prepacked
)
torch.library.impl(_lib, "packed_attention", "CompositeExplicitAutograd")(
    reference_packed_attention
)
torch.library.impl(_lib, "skip_layer_norm", "CompositeExplicitAutograd")(reference_skip_layer_norm)
torch.library.impl(_lib, "embed_layer_norm", "CompositeExplicitAutograd")(
    reference_embed_layer_norm
)
torch.library.impl(_lib, "ffn_bit_table", "CompositeExplicitAutograd")(reference_ffn_bit_table)
torch.library.impl(_lib, "binary_ffn_prepacked", "CompositeExplicitAutograd")(
    reference_binary_ffn_prepacked
)


# The fake kernels check what the compiled kernels check (same messages), so shape and dtype errors
# surface while tracing too, and a call that mixes devices (say CPU x with a meta w, which the
# dispatcher routes here) fails instead of returning an uninitialised tensor.


def _check_same_device(op: str, **tensors: torch.Tensor | None) -> None:
    devices = {name: t.device for name, t in tensors.items() if t is not None}
    first = next(iter(devices.values()))
    torch._check(
        all(d == first for d in devices.values()),
        lambda: (
            f"bitmaps::{op}: all tensors must be on one device, got "
            + ", ".join(f"{name} on {d}" for name, d in devices.items())
        ),
    )


def _check_packed(op: str, name: str, t: torch.Tensor, k: int) -> None:
    torch._check(
        t.dtype == torch.int32, lambda: f"bitmaps::{op}: {name} must be int32, got {t.dtype}"
    )
    torch._check(
        t.dim() == 2 and t.shape[1] == packed_width(k),
        lambda: (
            f"bitmaps::{op}: {name} must have shape [rows, {packed_width(k)}] "
            f"(ceil(k/32) words for k={k}), got {list(t.shape)}"
        ),
    )


@torch.library.register_fake("bitmaps::pack_signs")
def _pack_signs_fake(x: torch.Tensor) -> torch.Tensor:
    torch._check(x.dim() >= 1, lambda: "bitmaps::pack_signs: x must have at least one dimension")
    torch._check(
        x.dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64),
        lambda: (
            f"bitmaps::pack_signs: x must be float32, float16, bfloat16 or float64, got {x.dtype}"
        ),
    )
    return x.new_empty((*x.shape[:-1], packed_width(x.shape[-1])), dtype=torch.int32)


@torch.library.register_fake("bitmaps::xnor_gemm")
def _xnor_gemm_fake(a: torch.Tensor, b: torch.Tensor, k: int) -> torch.Tensor:
    _check_same_device("xnor_gemm", a=a, b=b)
    torch._check(k >= 1, lambda: f"bitmaps::xnor_gemm: k must be >= 1, got {k}")
    _check_packed("xnor_gemm", "a", a, k)
    _check_packed("xnor_gemm", "b", b, k)
    return a.new_empty((a.shape[0], b.shape[0]), dtype=torch.int32)


def _check_activations(
    op: str, x: torch.Tensor, in_features: int, n: int, act_unsigned: int,
    **params: torch.Tensor | None,
) -> None:  # fmt: skip
    torch._check(
        x.dtype in (torch.float32, torch.float16),
        lambda: f"bitmaps::{op}: x must be float32 or float16, got {x.dtype}",
    )
    torch._check(
        in_features >= 1 and x.dim() >= 1 and x.shape[-1] == in_features,
        lambda: (
            f"bitmaps::{op}: x.shape[-1] must equal in_features={in_features}, "
            f"got x of shape {list(x.shape)}"
        ),
    )
    for name, t in params.items():
        torch._check(
            t is None or (t.dtype == torch.float32 and t.shape == (n,)),
            lambda name=name, t=t: (
                f"bitmaps::{op}: {name} must be float32 of shape [{n}], "
                f"got {t.dtype} {list(t.shape)}"
            ),
        )
    torch._check(
        act_unsigned in (0, 1),
        lambda: (
            f"bitmaps::{op}: act_unsigned must be 0 (activations to ±1) or 1 ({{0, 1}}), "
            f"got {act_unsigned}"
        ),
    )


@torch.library.register_fake("bitmaps::binary_linear")
def _binary_linear_fake(
    x: torch.Tensor,
    w: torch.Tensor,
    w_scale: torch.Tensor,
    bias: torch.Tensor | None,
    in_features: int,
    act_threshold: float,
    act_scale: float,
    act_unsigned: int = 0,
) -> torch.Tensor:
    _check_same_device("binary_linear", x=x, w=w, w_scale=w_scale, bias=bias)
    _check_packed("binary_linear", "w", w, in_features)
    _check_activations(
        "binary_linear", x, in_features, w.shape[0], act_unsigned, w_scale=w_scale, bias=bias
    )
    return x.new_empty((*x.shape[:-1], w.shape[0]))


@torch.library.register_fake("bitmaps::prepack_weights")
def _prepack_weights_fake(w: torch.Tensor, in_features: int) -> torch.Tensor:
    torch._check(
        in_features >= 1,
        lambda: f"bitmaps::prepack_weights: in_features must be >= 1, got {in_features}",
    )
    _check_packed("prepack_weights", "w", w, in_features)
    panels = -(-w.shape[0] // PANEL_ROWS)
    return w.new_empty((panels, packed_width(in_features), PANEL_ROWS))


def _check_panels_shape(
    op: str, name: str, panels: torch.Tensor, n: int, in_features: int
) -> None:  # fmt: skip
    """Prepacked weights of ``n`` rows of ``in_features`` bits: int32 of prepack_weights' shape."""
    want = (-(-n // PANEL_ROWS), packed_width(max(in_features, 1)), PANEL_ROWS)
    torch._check(
        panels.dtype == torch.int32 and tuple(panels.shape) == want,
        lambda: (
            f"bitmaps::{op}: {name} must be int32 of shape {list(want)} (bitmaps::prepack_weights "
            f"of {n} rows of in_features={in_features} bits), got {panels.dtype} "
            f"{list(panels.shape)}"
        ),
    )


@torch.library.register_fake("bitmaps::binary_linear_prepacked")
def _binary_linear_prepacked_fake(
    x: torch.Tensor,
    panels: torch.Tensor,
    w_scale: torch.Tensor,
    bias: torch.Tensor | None,
    in_features: int,
    act_threshold: float,
    act_scale: float,
    act_unsigned: int = 0,
    activation: int = 0,
) -> torch.Tensor:
    op = "binary_linear_prepacked"
    _check_activation(op, activation)
    _check_same_device(op, x=x, panels=panels, w_scale=w_scale, bias=bias)
    n = w_scale.shape[0]
    _check_panels_shape(op, "panels", panels, n, in_features)
    _check_activations(op, x, in_features, n, act_unsigned, w_scale=w_scale, bias=bias)
    return x.new_empty((*x.shape[:-1], n))


@torch.library.register_fake("bitmaps::packed_attention")
def _packed_attention_fake(
    qkv: torch.Tensor, bias: torch.Tensor | None, num_heads: int, scale: float, int8: bool = False
) -> torch.Tensor:
    del int8
    _check_same_device("packed_attention", qkv=qkv, bias=bias)
    _check_packed_attention(qkv, bias, num_heads, scale)
    return qkv.new_empty((qkv.shape[0], qkv.shape[1], qkv.shape[2] // 3))


@torch.library.register_fake("bitmaps::skip_layer_norm")
def _skip_layer_norm_fake(
    x: torch.Tensor, skip: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor | None,
    epsilon: float,
) -> torch.Tensor:  # fmt: skip
    _check_same_device("skip_layer_norm", x=x, skip=skip, gamma=gamma, beta=beta)
    _check_skip_layer_norm(x, skip, gamma, beta, epsilon)
    return torch.empty_like(x, memory_format=torch.contiguous_format)


@torch.library.register_fake("bitmaps::embed_layer_norm")
def _embed_layer_norm_fake(
    ids: list[torch.Tensor], data: list[torch.Tensor], scale: list[torch.Tensor],
    gamma: torch.Tensor, beta: torch.Tensor | None, epsilon: float,
) -> torch.Tensor:  # fmt: skip
    tensors = {f"ids[{t}]": i for t, i in enumerate(ids)} | {"gamma": gamma, "beta": beta}
    tensors |= {f"data[{t}]": d for t, d in enumerate(data)}
    tensors |= {f"scale[{t}]": s for t, s in enumerate(scale)}
    _check_same_device("embed_layer_norm", **tensors)
    _check_embed_layer_norm(ids, data, scale, gamma, beta, epsilon)
    lead = torch.broadcast_shapes(*(tuple(i.shape) for i in ids))
    return gamma.new_empty((*lead, gamma.shape[0]))


@torch.library.register_fake("bitmaps::ffn_bit_table")
def _ffn_bit_table_fake(
    w_scale: torch.Tensor, bias: torch.Tensor | None, in_features: int, act_scale: float,
    act_unsigned: int, activation: int, next_act_threshold: float, next_act_unsigned: int,
) -> torch.Tensor:  # fmt: skip
    _check_same_device("ffn_bit_table", w_scale=w_scale, bias=bias)
    _check_ffn_bit_table(w_scale, bias, in_features, act_scale, act_unsigned, activation)
    runs = torch.library.get_ctx().new_dynamic_size(max=MAX_FFN_RUNS)
    return w_scale.new_empty((2, runs, w_scale.shape[0]), dtype=torch.int32)


@torch.library.register_fake("bitmaps::binary_ffn_prepacked")
def _binary_ffn_prepacked_fake(
    x: torch.Tensor, panels: torch.Tensor, w_scale: torch.Tensor, bias: torch.Tensor | None,
    in_features: int, act_threshold: float, act_scale: float, act_unsigned: int, activation: int,
    table: torch.Tensor, next_panels: torch.Tensor, next_w_scale: torch.Tensor,
    next_bias: torch.Tensor | None, next_act_threshold: float, next_act_scale: float,
    next_act_unsigned: int,
) -> torch.Tensor:  # fmt: skip
    op = "binary_ffn_prepacked"
    _check_same_device(op, x=x, panels=panels, w_scale=w_scale, bias=bias, table=table,
                       next_panels=next_panels, next_w_scale=next_w_scale, next_bias=next_bias)  # fmt: skip
    _check_binary_ffn(x, w_scale, next_w_scale, table, act_scale, next_act_scale)
    _binary_linear_prepacked_fake(x, panels, w_scale, bias, in_features, act_threshold,
                                  act_scale, act_unsigned, activation)  # fmt: skip
    # the second layer's panels too (its input: the first layer's outputs), as the CPU kernel does
    n = next_w_scale.shape[0]
    _check_panels_shape(op, "next_panels", next_panels, n, w_scale.shape[0])
    return x.new_empty((*x.shape[:-1], n))


# --------------------------------------------------------------------------- native kernels

try:  # registers CPU (and CUDA, where built) kernels for the schemas above
    from bitmaps import _C

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
    try:
        path = _C.cpu_path()
    except RuntimeError as exc:  # a bad BITMAPS_CPU_PATH: say so here, the ops will raise it
        path = f"unusable: {exc}"
    return f"native kernels (bitmaps._C, CPU path {path})"


def cpu_path() -> str | None:
    """The CPU kernel path the next call takes ("avx512", "avx2", "scalar"); None without _C.

    Precedence: :func:`forced_cpu_path` / ``bitmaps._C.set_cpu_path`` > the environment variable
    ``BITMAPS_CPU_PATH`` > the best path this CPU supports.
    """
    return _C.cpu_path() if _NATIVE_ERROR is None else None


ORT_THREAD_MODES = ("ort", "std", "serial")


def check_native_settings() -> None:
    """``BITMAPS_CPU_PATH`` and ``BITMAPS_ORT_THREADS`` as the native kernels will read them: a
    name they do not know, or a CPU path this CPU or build lacks, is a one-line BitmapsError."""
    mode = os.environ.get("BITMAPS_ORT_THREADS", "")
    if mode and mode not in ORT_THREAD_MODES:
        raise BitmapsError(
            f"BITMAPS_ORT_THREADS must be {', '.join(ORT_THREAD_MODES[:-1])} or "
            f"{ORT_THREAD_MODES[-1]}, got {mode!r}: fix or unset it"
        )
    forced = os.environ.get("BITMAPS_CPU_PATH", "")
    if not forced or forced == "auto":
        return
    if _NATIVE_ERROR is None:
        try:
            _C.cpu_path()
        except RuntimeError as exc:
            raise BitmapsError(f"{one_line(exc)}: fix or unset it") from None
    elif forced not in ("avx512", "avx2", "neon", "scalar"):
        raise BitmapsError(
            f"BITMAPS_CPU_PATH: unknown CPU path {forced!r} (expected auto, avx512, avx2, neon or "
            "scalar): fix or unset it"
        )


def cpu_paths_supported() -> list[str]:
    """CPU kernel paths this CPU can run, fastest first (empty without :mod:`bitmaps._C`)."""
    return list(_C.cpu_paths_supported()) if _NATIVE_ERROR is None else []


@contextlib.contextmanager
def forced_cpu_path(name: str) -> Iterator[None]:
    """Run the CPU ops on one path ("avx512", "avx2", "scalar", "auto") inside the block.

    Process-wide (not per thread); on exit the choice goes back to ``BITMAPS_CPU_PATH`` / auto
    (blocks do not nest). Raises RuntimeError for a path this CPU lacks, ValueError for an
    unknown name, BitmapsError when :mod:`bitmaps._C` is not built.
    """
    if _NATIVE_ERROR is not None:
        raise BitmapsError(f"cannot force CPU path {name!r}: {native_status()}")
    _C.set_cpu_path(name)
    try:
        yield
    finally:
        _C.set_cpu_path(None)


# Convenience callables: tests, benchmarks and modules call the ops by these names.
pack_signs = torch.ops.bitmaps.pack_signs
xnor_gemm = torch.ops.bitmaps.xnor_gemm
binary_linear = torch.ops.bitmaps.binary_linear
prepack_weights = torch.ops.bitmaps.prepack_weights
binary_linear_prepacked = torch.ops.bitmaps.binary_linear_prepacked
packed_attention = torch.ops.bitmaps.packed_attention
skip_layer_norm = torch.ops.bitmaps.skip_layer_norm
embed_layer_norm = torch.ops.bitmaps.embed_layer_norm
ffn_bit_table = torch.ops.bitmaps.ffn_bit_table
binary_ffn_prepacked = torch.ops.bitmaps.binary_ffn_prepacked
