"""transformers' attention swapped for the int8 scheme (:mod:`bitmaps.core.int8_attention`): what
``bitmaps eval --attention int8``, export verification of an ``--attention int8`` file and
``bitmaps profile --attention int8`` score PyTorch with."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from bitmaps.core.int8_attention import int8_attention


def _additive(mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """transformers' attention mask as an additive bias: SDPA's boolean one (True: attended)
    becomes 0 / the dtype's lowest, as the eager path's additive mask is."""
    if mask is None or mask.dtype != torch.bool:
        return mask
    zero = torch.zeros((), dtype=dtype)
    return torch.where(mask, zero, torch.tensor(torch.finfo(dtype).min, dtype=dtype))


def _transformers_attention(  # noqa: ANN202
    module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
    attention_mask: torch.Tensor | None, scaling: float | None = None, dropout: float = 0.0,
    **kwargs: object,
):  # fmt: skip
    """transformers' attention-interface signature (BERT's eager attention, no dropout: inference)."""
    del module, dropout, kwargs
    scaling = query.size(-1) ** -0.5 if scaling is None else scaling
    out = int8_attention(query, key, value, _additive(attention_mask, torch.float32), scaling)
    return out.to(query.dtype).transpose(1, 2).contiguous(), None


@contextlib.contextmanager
def attention_function_everywhere(fn: Callable[..., object]) -> Iterator[None]:
    """Inside the block, every attention that transformers looks up through its attention
    interface (BERT's, whatever its ``_attn_implementation``) runs ``fn`` (transformers'
    attention-function signature)."""
    saved = ALL_ATTENTION_FUNCTIONS.__dict__.get("get_interface")
    ALL_ATTENTION_FUNCTIONS.get_interface = lambda name, default: fn  # instance attribute
    try:
        yield
    finally:
        if saved is None:
            del ALL_ATTENTION_FUNCTIONS.get_interface
        else:
            ALL_ATTENTION_FUNCTIONS.get_interface = saved


def int8_attention_everywhere() -> contextlib.AbstractContextManager[None]:
    """:func:`attention_function_everywhere` with :func:`int8_attention`."""
    return attention_function_everywhere(_transformers_attention)


@contextlib.contextmanager
def attention_precision(precision: str) -> Iterator[None]:
    """``"float"``: nothing changes; ``"int8"``: :func:`int8_attention_everywhere`."""
    if precision == "int8":
        with int8_attention_everywhere():
            yield
    elif precision == "float":
        yield
    else:
        raise ValueError(f"attention precision must be 'float' or 'int8', got {precision!r}")
