"""CPU inference fusions of a packed binary transformers BERT (``fuse_for_cpu_inference_``): the
FFN's GELU in its GEMM's epilogue (or, with fixed activation scales, the FFN's two layers as one
call through a table of bits), Q, K and V side by side with bitmaps' attention kernel, the
residual add + LayerNorm kernel, the encoder as one loop over these ops, and the int4 embedding
lookups with their LayerNorm as one op. Each fused module keeps its state dict and runs
transformers' own code wherever the fusion does not apply."""

from __future__ import annotations

import functools

import torch
from torch import nn
from torch.nn.modules import module as torch_module
from transformers.models.bert import modeling_bert as mb

from bitmaps.core import ops
from bitmaps.core.embeddings import QuantizedEmbedding
from bitmaps.core.packed import PackedBinaryLinear, run_prepacked

try:  # transformers' output capturing (5.x): hooks it installs once and switches on per call
    from transformers.utils import output_capturing as _output_capturing
except ImportError:  # pragma: no cover - older transformers: no such hooks
    _output_capturing = None


def fuse_gelu_(model: nn.Module) -> int:
    """For inference: each ``dense`` PackedBinaryLinear whose output goes straight into an erf
    GELU (a module with ``dense`` and an ``intermediate_act_fn`` that is ``torch.nn.GELU()`` or
    transformers' ``GELUActivation`` on ``torch.nn.functional.gelu``: BERT's intermediate layers)
    takes the GELU into the GEMM's epilogue, and the activation becomes the identity. Returns how
    many were fused. The output is the same function of the input (the epilogue GELU is within
    3e-7 max(1, |y|) of torch's); ONNX export does not see the change (it traces
    ``bitmaps::binary_linear`` and applies the GELU as a separate op)."""
    fused = 0
    for module in model.modules():
        dense, act = getattr(module, "dense", None), getattr(module, "intermediate_act_fn", None)
        if isinstance(dense, PackedBinaryLinear) and dense.activation == 0 and _is_erf_gelu(act):
            dense.activation = 1
            module.intermediate_act_fn = nn.Identity()
            fused += 1
    return fused


def _is_erf_gelu(act: object) -> bool:
    if isinstance(act, nn.GELU):
        return act.approximate == "none"
    # transformers.activations.GELUActivation: nn.functional.gelu unless use_gelu_python
    return (
        type(act).__name__ == "GELUActivation" and getattr(act, "act", None) is nn.functional.gelu
    )


def fuse_qkv_(model: nn.Module) -> int:
    """For inference on the CPU: each transformers ``BertSelfAttention`` whose ``query``, ``key``
    and ``value`` are PackedBinaryLinear layers of equal shapes computes Q, K and V side by side
    in one ``[B, S, 3·hidden]`` tensor and runs ``bitmaps::packed_attention`` (the CPU attention
    kernel, reading them in place) where transformers would run its eager or SDPA attention
    without returning weights (else transformers' own attention on slices of that tensor). Where
    the three binarize their common input alike (same ``act_threshold``, ``act_scale``,
    ``act_unsigned``; the default STE quantizer) and are a multiple of 16 wide, that tensor is ONE
    ``binary_linear_prepacked`` call on their panels side by side (the input binarized and packed
    once, one GEMM region of three times the width, as the onnxruntime export's stacked node);
    otherwise (students of the elastic quantizer learn a threshold and scale per layer) three calls
    whose outputs are concatenated. A call with a cache, in training mode, with gradients enabled
    (the ops have no backward: run inference under ``torch.no_grad()`` or
    ``torch.inference_mode()``), off the CPU or while exporting runs transformers' forward
    unchanged. Returns how many were fused; 0 when this transformers version lacks the attention
    interface it relies on. The layers' own modules, weights and state dict are untouched (the
    stacked panels are a non-persistent buffer, and each layer's panels become a view of them,
    so they are held once)."""
    if not (hasattr(mb, "ALL_ATTENTION_FUNCTIONS") and hasattr(mb, "eager_attention_forward")):
        return 0
    base = mb.BertSelfAttention
    fused = 0
    for module in model.modules():
        if type(module) is not base or not hasattr(module, "scaling"):
            continue
        layers = (module.query, module.key, module.value)
        if not _fusable(layers):
            continue
        stack = _stackable(layers)
        for name, part in (
            ("qkv_panels", "panels"),
            ("qkv_scale", "w_scale"),
            ("qkv_bias", "bias"),
        ):
            stacked = torch.cat([getattr(m, part) for m in layers]) if stack else None
            module.register_buffer(name, stacked, persistent=False)
        if stack:  # each layer's panels a view of the stacked ones: the weights held once
            rows = module.qkv_panels.shape[0] // 3
            for i, m in enumerate(layers):
                m.panels = module.qkv_panels[i * rows : (i + 1) * rows]
        module.__class__ = _stacked_class()
        fused += 1
    return fused


def _fusable(layers: tuple[nn.Module, ...]) -> bool:
    """Q, K and V as packed layers of one shape, on the CPU, with no fused activation."""
    first = layers[0]
    return all(
        isinstance(m, PackedBinaryLinear)
        and m.panels is not None
        and m.activation == 0
        and (m.in_features, m.out_features) == (first.in_features, first.out_features)
        for m in layers
    )


def _stackable(layers: tuple[nn.Module, ...]) -> bool:
    """Fusable layers that binarize their input alike: one call on their panels side by side."""
    first = layers[0]
    same = ("act_threshold", "act_scale", "act_unsigned")
    return (
        first.out_features % ops.PANEL_ROWS == 0
        and all(getattr(m, a) == getattr(first, a) for m in layers for a in same)
        and all(m.w_scale.dtype == m.bias.dtype == torch.float32 for m in layers)
    )


def _qkv(attention: nn.Module, h: torch.Tensor) -> torch.Tensor:
    """Q, K and V of contiguous ``h`` side by side, ``[..., 3·hidden]``: one stacked call where
    :func:`fuse_qkv_` stacked the layers, else three calls concatenated."""
    q = attention.query
    if attention.qkv_panels is None:
        return torch.cat([run_prepacked(m, h) for m in (q, attention.key, attention.value)], -1)
    return ops.binary_linear_prepacked(h, attention.qkv_panels, attention.qkv_scale,
                                       attention.qkv_bias, q.in_features, q.act_threshold,
                                       q.act_scale, q.act_unsigned)  # fmt: skip


def _additive_bias(mask: torch.Tensor | None) -> torch.Tensor | None | bool:
    """transformers' attention mask as an additive float32 bias ``[B, 1, S or 1, T]``: None for
    none, 0 / the float32 minimum for a boolean one (True: attend), a float one as it is; False
    when it has another form (then transformers' own attention runs)."""
    if mask is None:
        return None
    if mask.dim() != 4:
        return False
    if mask.dtype == torch.bool:
        bias = torch.zeros(mask.shape, dtype=torch.float32, device=mask.device)
        return bias.masked_fill_(~mask, torch.finfo(torch.float32).min)
    return mask if mask.dtype == torch.float32 else False


@functools.cache
def _stacked_class() -> type:
    class StackedBertSelfAttention(mb.BertSelfAttention):
        """BertSelfAttention with Q, K and V side by side and bitmaps' attention kernel
        (:func:`fuse_qkv_`); transformers' forward wherever that does not apply."""

        def forward(self, hidden_states, attention_mask=None, cache=None, **kwargs):  # noqa: ANN001, ANN003, ANN201
            if (
                cache is not None
                or self.training
                or hidden_states.device.type != "cpu"
                or any(m.panels is None for m in (self.query, self.key, self.value))
                or torch.compiler.is_exporting()
                or torch.is_grad_enabled()  # the ops have no backward: autograd's own path
            ):
                return super().forward(hidden_states, attention_mask, cache, **kwargs)
            qkv = _qkv(self, hidden_states.contiguous())
            input_shape = hidden_states.shape[:-1]
            bias = _additive_bias(attention_mask)
            if (
                qkv.dim() == 3
                and bias is not False
                and kwargs.get("encoder_hidden_states") is None
                and not kwargs.get("output_attentions")
                and self.config._attn_implementation in ("sdpa", "eager")
            ):
                # the CPU attention kernel reads Q, K and V in place in the stacked output
                out = ops.packed_attention(
                    qkv, bias, self.num_attention_heads, self.scaling, _int8_attention(self)
                )
                return out, None
            hidden_shape = (*input_shape, -1, self.attention_head_size)
            width = self.query.out_features
            query, key, value = (
                qkv[..., i * width : (i + 1) * width].view(*hidden_shape).transpose(1, 2)
                for i in range(3)
            )
            attention = mb.ALL_ATTENTION_FUNCTIONS.get_interface(
                self.config._attn_implementation, mb.eager_attention_forward
            )
            out, weights = attention(self, query, key, value, attention_mask, dropout=0.0,
                                     scaling=self.scaling, **kwargs)  # fmt: skip
            return out.reshape(*input_shape, -1).contiguous(), weights

    return StackedBertSelfAttention


def fuse_skip_layer_norm_(model: nn.Module) -> int:
    """For inference on the CPU: each transformers ``BertSelfOutput`` / ``BertOutput`` (dense,
    dropout, ``LayerNorm(dense + residual)``) normalizes with ``bitmaps::skip_layer_norm``, the
    residual add and LayerNorm in one pass (csrc/kernels/cpu_layer_norm.h); in training, with
    gradients enabled, off the CPU, for other dtypes or while exporting it runs transformers'
    forward. Returns how many."""
    fused = 0
    for module in model.modules():
        if type(module) in (mb.BertSelfOutput, mb.BertOutput) and isinstance(
            getattr(module, "LayerNorm", None), nn.LayerNorm
        ):
            module.__class__ = _skip_norm_class(type(module))
            fused += 1
    return fused


@functools.cache
def _skip_norm_class(base: type) -> type:
    def forward(self, hidden_states, input_tensor):  # noqa: ANN001, ANN202
        norm = self.LayerNorm
        h = self.dense(hidden_states)
        if (
            self.training
            or h.device.type != "cpu"
            or h.dtype != torch.float32
            or input_tensor.shape != h.shape
            or norm.weight is None
            or torch.compiler.is_exporting()
            or torch.is_grad_enabled()  # the op has no backward: autograd's own path
        ):
            return norm(self.dropout(h) + input_tensor)
        return ops.skip_layer_norm(h, input_tensor, norm.weight, norm.bias, norm.eps)

    return type(f"SkipNorm{base.__name__}", (base,), {"forward": forward, "__module__": __name__})


def fuse_embed_layer_norm_(model: nn.Module) -> int:
    """For inference on the CPU: each transformers ``BertEmbeddings`` whose word, token-type and
    position tables are int4 :class:`~bitmaps.core.embeddings.QuantizedEmbedding` of one group
    size runs its three lookups, their two additions and its LayerNorm as one
    ``bitmaps::embed_layer_norm`` (csrc/kernels/cpu_embed.h, the kernel of the onnxruntime
    target's ``bitmaps::EmbedLayerNormalization``) instead of some twenty aten ops. Default token
    types are the zeros they are in transformers (when its buffer holds zeros); with
    ``inputs_embeds``, in training, with gradients enabled, off the CPU, for other dtypes or while
    exporting it runs transformers' forward. Returns how many."""
    fused = 0
    for module in model.modules():
        if type(module) is not mb.BertEmbeddings or not _int4_tables(module):
            continue
        norm = getattr(module, "LayerNorm", None)
        if not isinstance(norm, nn.LayerNorm) or norm.weight is None:
            continue
        types = getattr(module, "token_type_ids", None)
        module._bitmaps_zero_types = types is None or not bool(types.any())
        module.__class__ = _embed_norm_class(type(module))
        fused += 1
    return fused


def _int4_tables(module: nn.Module) -> bool:
    tables = [getattr(module, name, None) for name in _EMBEDDING_TABLES]
    if not all(isinstance(t, QuantizedEmbedding) and t.mode == "int4" for t in tables):
        return False
    # one group and width for all three; the op's blocks tile the row (a row padded to whole
    # groups, hidden not a multiple of the group, stays on the module's own lookups)
    shapes = {(t.group, t.embedding_dim) for t in tables}
    return len(shapes) == 1 and all(dim % group == 0 for group, dim in shapes)


# the order of transformers' additions: (word + token type) + position
_EMBEDDING_TABLES = ("word_embeddings", "token_type_embeddings", "position_embeddings")


@functools.cache
def _embed_norm_class(base: type) -> type:
    def forward(  # noqa: ANN202
        self, input_ids=None, token_type_ids=None, position_ids=None, inputs_embeds=None,  # noqa: ANN001
        **kwargs,  # noqa: ANN003
    ):  # fmt: skip
        norm = self.LayerNorm
        start = kwargs.get("cache_length", 0)
        tables = [getattr(self, name) for name in _EMBEDDING_TABLES]
        if (
            input_ids is None
            or inputs_embeds is not None
            or set(kwargs) - {"cache_length"}
            or not isinstance(start, int)
            or input_ids.dim() != 2
            or any(t is not None and t.dim() != 2 for t in (token_type_ids, position_ids))
            or input_ids.device.type != "cpu"
            or self.training
            or norm.weight.dtype != torch.float32
            or any(t.scale.dtype != torch.float32 for t in tables)
            or (token_type_ids is None and not self._bitmaps_zero_types)
            or torch.compiler.is_exporting()
            or torch.is_grad_enabled()  # the op has no backward: autograd's own path
        ):
            return base.forward(self, input_ids=input_ids, token_type_ids=token_type_ids,
                                position_ids=position_ids, inputs_embeds=inputs_embeds,
                                **kwargs)  # fmt: skip
        seq = input_ids.shape[1]
        if position_ids is None:
            position_ids = self.position_ids[:, start : seq + start]
        if token_type_ids is None:  # zeros, broadcast over every token
            token_type_ids = input_ids.new_zeros((1, 1))
        ids = [input_ids, token_type_ids, position_ids]
        return ops.embed_layer_norm(
            ids, [t.data for t in tables], [t.scale for t in tables], norm.weight, norm.bias,
            norm.eps,
        )  # fmt: skip

    return type(f"EmbedNorm{base.__name__}", (base,), {"forward": forward, "__module__": __name__})


def fuse_encoder_(model: nn.Module) -> int:
    """For inference on the CPU: a transformers ``BertEncoder`` whose every layer went through
    :func:`fuse_qkv_`, :func:`fuse_gelu_` and :func:`fuse_skip_layer_norm_` runs its layers as one
    loop over the bitmaps ops (per layer: Q, K, V; attention; output dense + add &
    LayerNorm; intermediate dense with its GELU; output dense + add & LayerNorm), without the
    module calls in between (a third of binary BERT-base's time at 1 x 128 on 2 cores went to
    them). transformers' forward runs instead whenever anything asks for more than the last hidden
    state: a cache, cross-attention inputs, training, gradients enabled, a forward hook or
    pre-hook on any module in the encoder (transformers' output capturing, export verification),
    another device or dtype, or a kwarg this loop does not serve. Returns how many encoders."""
    fused = 0
    for module in model.modules():
        if type(module) is mb.BertEncoder and all(_layer_fused(layer) for layer in module.layer):
            module.__class__ = _encoder_class()
            fused += 1
    return fused


def fuse_ffn_(model: nn.Module) -> int:
    """For inference on the CPU: each transformers ``BertLayer`` whose FFN is two
    PackedBinaryLinear layers with fixed activation scales (``act_scale > 0``: the elastic
    quantizer), the first with its GELU fused (:func:`fuse_gelu_`), gets the table of
    ``bitmaps::ffn_bit_table`` (a non-persistent buffer ``ffn_table`` of its ``intermediate``,
    rebuilt when a state dict is loaded), and the encoder loop of :func:`fuse_encoder_` runs the
    two layers as one ``bitmaps::binary_ffn_prepacked`` call: the first GEMM writes the second's
    input bits (the sign of the exact GELU, as the onnxruntime export's BinaryFeedForward node),
    no float intermediate, no GELU, no second packing pass. Returns how many layers."""
    fused = 0
    for module in model.modules():
        intermediate, output = (
            getattr(module, "intermediate", None),
            getattr(module, "output", None),
        )
        first = getattr(intermediate, "dense", None)
        second = getattr(output, "dense", None)
        if not (isinstance(first, PackedBinaryLinear) and isinstance(second, PackedBinaryLinear)):
            continue
        if not (first.act_scale > 0 and second.act_scale > 0 and first.activation == 1):
            continue
        if first.panels is None or second.panels is None:
            continue
        _set_ffn_table(intermediate, first, second)
        intermediate.register_load_state_dict_post_hook(
            lambda m, _, first=first, second=second: _set_ffn_table(m, first, second)
        )
        fused += 1
    return fused


def _set_ffn_table(
    intermediate: nn.Module, first: PackedBinaryLinear, second: PackedBinaryLinear
) -> None:
    table = ops.ffn_bit_table(first.w_scale, first.bias, first.in_features, first.act_scale,
                              first.act_unsigned, 1, second.act_threshold, second.act_unsigned)  # fmt: skip
    intermediate.register_buffer("ffn_table", table, persistent=False)


def _ffn(layer: nn.Module, h: torch.Tensor) -> torch.Tensor:
    """The layer's FFN output before its add + LayerNorm: one binary_ffn_prepacked call where
    :func:`fuse_ffn_` made a table, else the two layers."""
    first, second = layer.intermediate.dense, layer.output.dense
    table = getattr(layer.intermediate, "ffn_table", None)
    if table is None or table.device != h.device:
        return run_prepacked(second, run_prepacked(first, h))
    return ops.binary_ffn_prepacked(
        h, first.panels, first.w_scale, first.bias, first.in_features, first.act_threshold,
        first.act_scale, first.act_unsigned, 1, table, second.panels, second.w_scale,
        second.bias, second.act_threshold, second.act_scale, second.act_unsigned,
    )  # fmt: skip


def _layer_fused(layer: nn.Module) -> bool:
    return (
        type(layer.attention.self) is _stacked_class()
        and type(layer.attention.output) is _skip_norm_class(mb.BertSelfOutput)
        and type(layer.output) is _skip_norm_class(mb.BertOutput)
        and isinstance(layer.intermediate.dense, PackedBinaryLinear)
        and layer.intermediate.dense.activation == 1
        and isinstance(layer.intermediate.intermediate_act_fn, nn.Identity)
        and isinstance(layer.attention.output.dense, PackedBinaryLinear)
        and isinstance(layer.output.dense, PackedBinaryLinear)
        and not getattr(layer, "crossattention", None)
        and getattr(layer, "chunk_size_feed_forward", 0) == 0
    )


def _hooked(module: nn.Module) -> bool:
    """A forward hook or pre-hook that would miss calls if the loop skipped the modules: any
    global one, any on ``module`` or below, except transformers' output-capturing hooks while
    they capture nothing (transformers installs them for good the first time a call asks for
    hidden states or attentions, and switches them on per call)."""
    if torch_module._global_forward_hooks or torch_module._global_forward_pre_hooks:
        return True
    capturing = _transformers_capturing()
    for m in module.modules():
        for hook in (*m._forward_hooks.values(), *m._forward_pre_hooks.values()):
            if capturing or "install_output_capuring_hook" not in getattr(hook, "__qualname__", ""):
                return True
    return False


def _transformers_capturing() -> bool:
    """Whether transformers' output capturing collects anything in this call (True when this
    transformers version does not say)."""
    if _output_capturing is None:
        return False
    collector = getattr(_output_capturing, "_active_collector", None)
    try:
        return bool(collector.get())  # None or {} outside a capturing call
    except (AttributeError, TypeError, LookupError):
        return True


@functools.cache
def _encoder_class() -> type:
    class LoopBertEncoder(mb.BertEncoder):
        """BertEncoder whose layers run as one loop over the bitmaps ops (:func:`fuse_encoder_`)."""

        def forward(  # noqa: ANN201
            self,
            hidden_states,  # noqa: ANN001
            attention_mask=None,  # noqa: ANN001
            encoder_hidden_states=None,  # noqa: ANN001
            encoder_attention_mask=None,  # noqa: ANN001
            cache=None,  # noqa: ANN001
            use_cache=None,  # noqa: ANN001
            **kwargs,  # noqa: ANN003
        ):
            bias = _additive_bias(attention_mask)
            unserved = {k for k, v in kwargs.items() if v is not None and k != "position_ids"}
            first = self.layer[0].attention.self
            if (
                encoder_hidden_states is not None
                or encoder_attention_mask is not None
                or cache is not None
                or use_cache
                or unserved
                or bias is False
                or self.training
                or hidden_states.device.type != "cpu"
                or hidden_states.dtype != torch.float32
                or hidden_states.dim() != 3
                or first.query.panels is None
                or torch.compiler.is_exporting()
                or torch.is_grad_enabled()  # the ops have no backward: autograd's own path
                or _hooked(self)
            ):
                return super().forward(hidden_states, attention_mask, encoder_hidden_states,
                                       encoder_attention_mask, cache=cache, use_cache=use_cache,
                                       **kwargs)  # fmt: skip
            h = hidden_states.contiguous()
            for layer in self.layer:
                sa, so, out = layer.attention.self, layer.attention.output, layer.output
                a = ops.packed_attention(
                    _qkv(sa, h), bias, sa.num_attention_heads, sa.scaling, _int8_attention(sa)
                )
                norm = so.LayerNorm
                h = ops.skip_layer_norm(
                    run_prepacked(so.dense, a), h, norm.weight, norm.bias, norm.eps
                )
                norm = out.LayerNorm
                h = ops.skip_layer_norm(_ffn(layer, h), h, norm.weight, norm.bias, norm.eps)
            return mb.BaseModelOutputWithPastAndCrossAttentions(last_hidden_state=h, cache=None)

    return LoopBertEncoder


# The model config's field that makes the fused CPU attention run the int8 scheme
# (csrc/kernels/cpu_attention.h; fuse_for_cpu_inference_'s ``attention``)
INT8_ATTENTION_FIELD = "bitmaps_attention"


def _int8_attention(module: nn.Module) -> bool:
    return getattr(module.config, INT8_ATTENTION_FIELD, "float") == "int8"


def fuse_for_cpu_inference_(model: nn.Module, attention: str = "float") -> dict[str, int]:
    """Every CPU inference fusion of a packed binary transformers BERT, in order:
    :func:`fuse_gelu_`, :func:`fuse_qkv_`, :func:`fuse_skip_layer_norm_`, :func:`fuse_ffn_`,
    :func:`fuse_encoder_`, :func:`fuse_embed_layer_norm_`. ``attention`` "int8": the fused
    attention in the int8 scheme (``packed_attention(int8=True)``, recorded in the model's config;
    where transformers' own attention runs instead, wrap the call in
    :func:`bitmaps.train.attention.int8_attention_everywhere`).
    Returns how many modules each changed. Call it after ``pack_binary_linears_`` on a model kept
    for inference on the CPU and call it under ``torch.no_grad()`` or ``torch.inference_mode()``
    (``bitmaps profile``'s torch rows do); the state dict stays the same, and each fused module
    runs transformers' own code wherever the fusion does not apply (with gradients enabled too:
    the bitmaps ops have no backward)."""
    if attention not in ("float", "int8"):
        raise ValueError(f"attention must be 'float' or 'int8', got {attention!r}")
    setattr(model.config, INT8_ATTENTION_FIELD, attention)
    return {
        "gelu": fuse_gelu_(model),
        "qkv": fuse_qkv_(model),
        "skip_layer_norm": fuse_skip_layer_norm_(model),
        "ffn": fuse_ffn_(model),
        "encoder": fuse_encoder_(model),
        "embed_layer_norm": fuse_embed_layer_norm_(model),
    }
