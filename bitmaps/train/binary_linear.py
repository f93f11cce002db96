"""BinaryLinear (training), its conversion to PackedBinaryLinear (inference, bitmaps/core/packed.py)
and ``binarize_(model, cfg)``.

:class:`BinaryLinear` keeps latent FP32 weights and computes, in training and in eval mode, exactly
the function of the ``bitmaps::BinaryLinear`` op of DESIGN.md, so export changes nothing::

    y[m, n] = s[m] · w_scale[n] · (a[m] · sign(W[n] − μ_n)) + bias[n]
    a[m] = sign(x[m] − β) ∈ ±1, or 1{x[m] − β > 0} ∈ {0, 1} for unsigned inputs (``act_unsigned``)
    μ_n = 0, or mean_k W[n, k] with ``center_weights``;  w_scale[n] = mean_k |W[n, k] − μ_n|
    s[m] = α (the elastic quantizer's learned scale) or mean_k |x[m, k] − β| (the other quantizers)

with gradients through the quantizers' surrogates (bitmaps/train/quantizers.py) and, XNOR-Net style,
through both scales. :meth:`BinaryLinear.export_spec` gives the op's inputs and attributes;
:class:`PackedBinaryLinear` holds only those (packed int32 signs: 1/32 of the FP32 weight bytes) and
calls the torch op. :func:`binarize_` swaps the six encoder linears of every layer in place, torchao
style (with ``activation="relu"`` it also swaps each layer's FFN activation for ReLU);
:func:`set_binarization_phase_` serves BiT's multi-step schedule (weights first).
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import nn
from torch.nn import functional as F
from transformers import PreTrainedModel

from bitmaps.core.config import BinarizeConfig
from bitmaps.core.embeddings import quantize_table
from bitmaps.core.errors import BitmapsError
from bitmaps.core.packed import BinaryLinearSpec, PackedBinaryLinear, set_submodule
from bitmaps.core.packing import pack_signs
from bitmaps.train.quantizers import (
    ScaledSign,
    SteSign,
    make_activation_quantizer,
    make_weight_quantizer,
)


class BinaryLinear(nn.Module):
    """A linear layer with 1-bit weights and activations (latent FP32 weights for training).

    ``binarize_weights`` / ``binarize_activations`` select the phase of BiT's multi-step schedule;
    only the final W1A1 phase is the exportable op. The phase is saved with the model (buffer
    ``binarized``), so a reloaded student computes what it computed when it was saved.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        weight_quantizer: nn.Module | None = None,
        input_quantizer: nn.Module | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features, device=device))
        self.bias = nn.Parameter(torch.empty(out_features, device=device)) if bias else None
        self.weight_quantizer = weight_quantizer if weight_quantizer is not None else ScaledSign()
        self.input_quantizer = input_quantizer if input_quantizer is not None else SteSign()
        self.register_buffer("binarized", torch.tensor([True, True], device=device))
        self.binarize_weights = True  # Python mirrors of `binarized`: no device sync per forward
        self.binarize_activations = True
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """nn.Linear's initialisation (used only when not built from a teacher layer)."""
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1 / math.sqrt(self.in_features) if self.in_features > 0 else 0.0
            nn.init.uniform_(self.bias, -bound, bound)

    @classmethod
    def from_linear(
        cls, linear: nn.Linear, cfg: BinarizeConfig | None = None, *, unsigned: bool = False
    ) -> BinaryLinear:
        """A BinaryLinear whose latent weights (FP32) and bias are copies of ``linear``'s;
        ``unsigned``: {0, 1} input bits (two-set binarization, for inputs after a ReLU)."""
        cfg = cfg if cfg is not None else BinarizeConfig()
        layer = cls(
            linear.in_features,
            linear.out_features,
            bias=linear.bias is not None,
            weight_quantizer=make_weight_quantizer(
                cfg.weight_quantizer, cfg.weight_clip, center=cfg.center_weights
            ),
            input_quantizer=make_activation_quantizer(
                cfg.activation_quantizer, cfg.clip, unsigned=unsigned
            ),
            device=linear.weight.device,
        )
        with torch.no_grad():
            layer.weight.copy_(linear.weight.float())
            if linear.bias is not None:
                layer.bias.copy_(linear.bias.float())
        return layer

    def set_phase(self, weights: bool, activations: bool) -> None:
        self.binarize_weights = bool(weights)
        self.binarize_activations = bool(activations)
        self.binarized.copy_(torch.tensor([self.binarize_weights, self.binarize_activations]))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:  # noqa: ANN001
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self.binarize_weights, self.binarize_activations = (bool(b) for b in self.binarized)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.binarize_activations:  # BiT phase 1: W1A32, not the op
            w = self.weight_quantizer(self.weight) if self.binarize_weights else self.weight
            return F.linear(x, w, self.bias)
        signs, s = self.input_quantizer.binarize(x)
        if s is None:  # β = 0 for quantizers without a learned threshold
            s = x.abs().mean(dim=-1, keepdim=True)
        if self.binarize_weights:
            w_signs, w_scale = self.weight_quantizer.binarize(self.weight)
        else:
            w_signs, w_scale = self.weight, None
        # The ±1 dot product first (exact integers in float32 for K < 2^24), then the scales, in
        # the op's order: a zero dot stays exactly zero, as in the kernels, so a later sign()
        # (after GELU, say) cannot flip on rounding noise between training and export.
        y = F.linear(signs, w_signs) * s
        if w_scale is None:
            return y if self.bias is None else y + self.bias
        if self.bias is None:
            return y * w_scale
        return torch.addcmul(self.bias, y, w_scale)

    def export_spec(self) -> BinaryLinearSpec:
        """The op's inputs/attributes for this layer; refuses a layer that is not W1A1."""
        if not (self.binarize_weights and self.binarize_activations):
            raise BitmapsError(
                "this student is in an intermediate phase of the bit_multistep schedule "
                f"(binary weights: {self.binarize_weights}, binary activations: "
                f"{self.binarize_activations}); only a W1A1 student can be exported"
            )
        if not isinstance(self.weight_quantizer, ScaledSign):
            raise BitmapsError(
                f"cannot export weight quantizer {type(self.weight_quantizer).__name__}"
            )
        q = self.input_quantizer
        act_scale = q.scale() if q.learned_scale else 0.0
        if q.learned_scale and not act_scale > 0:
            raise BitmapsError(f"learned activation scale is {act_scale}; the op needs it > 0")
        # the signs of v are the forward's weight signs: W, or W − row mean (center_weights)
        v, w_scale = self.weight_quantizer.export(self.weight)
        w = self.weight.detach().float()
        bias = self.bias.detach().float() if self.bias is not None else torch.zeros_like(w[:, 0])
        return BinaryLinearSpec(
            packed_weight=pack_signs(v).contiguous(),
            w_scale=w_scale.contiguous(),
            bias=bias.clone().contiguous(),
            in_features=self.in_features,
            out_features=self.out_features,
            act_threshold=float(q.threshold()),
            act_scale=float(act_scale),
            act_unsigned=int(getattr(q, "unsigned", False)),
        )

    def extra_repr(self) -> str:
        phase = f"W{1 if self.binarize_weights else 32}A{1 if self.binarize_activations else 32}"
        unsigned = ", act_unsigned=1" if getattr(self.input_quantizer, "unsigned", False) else ""
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, phase={phase}{unsigned}"
        )


def pack_binary_linears_(model: nn.Module) -> int:
    """Swap every BinaryLinear of ``model`` for a PackedBinaryLinear in place; returns how many."""
    targets = [(name, m) for name, m in model.named_modules() if isinstance(m, BinaryLinear)]
    for name, layer in targets:
        set_submodule(model, name, PackedBinaryLinear(layer.export_spec()))
    return len(targets)


def set_binarization_phase_(model: nn.Module, weights: bool, activations: bool) -> int:
    """Set the phase of every BinaryLinear (BiT multi-step schedule); returns how many."""
    layers = [m for m in model.modules() if isinstance(m, BinaryLinear)]
    for layer in layers:
        if (layer.binarize_weights, layer.binarize_activations) != (weights, activations):
            layer.set_phase(weights, activations)
    return len(layers)


def binarization_phase_for_step(step: int, cfg: BinarizeConfig) -> tuple[bool, bool]:
    """(binary weights, binary activations) at optimiser step ``step`` (0-based) of the schedule.

    ``"w1a1"``: (True, True) throughout. ``"bit_multistep"``: weights binary from step 0,
    activations from ``cfg.activation_start_step`` on (BiT, Liu et al. 2022, sec. 3.3: binarize
    the easier part first, then distil into the fully binary model).
    """
    if cfg.schedule == "bit_multistep":
        return True, step >= cfg.activation_start_step
    return True, True


# --------------------------------------------------------------------------- binarize_

# The model types bitmaps loads and binarizes (bitmaps/train/models.py refuses the rest), where
# their encoder layers are, and the paths of the six linears inside one layer.
SUPPORTED_MODEL_TYPES = ("bert",)
_ENCODER_LAYERS = "encoder.layer"
_BERT_ROLES = {
    "query": "attention.self.query",
    "key": "attention.self.key",
    "value": "attention.self.value",
    "attention_output": "attention.output.dense",
    "intermediate": "intermediate.dense",
    "output": "output.dense",
}


@dataclasses.dataclass(frozen=True)
class EncoderLayout:
    """Where the encoder layers of a supported model are, and the six linears inside each."""

    layers_path: str  # relative to the model given to :func:`encoder_layout`
    roles: dict[str, str]  # role (BinarizeConfig.MODULES) → path inside one layer
    num_layers: int

    def path(self, layer: int, role: str) -> str:
        return f"{self.layers_path}.{layer}.{self.roles[role]}"


def hf_model(model: nn.Module) -> nn.Module:
    """The Hugging Face model inside ``model`` (itself, a MaskedLMModel, DDP, …)."""

    for m in model.modules():
        if isinstance(m, PreTrainedModel):
            return m
    raise BitmapsError(f"{type(model).__name__} holds no Hugging Face model")


def encoder_layout(model: nn.Module) -> EncoderLayout:
    """The layout of a supported BERT ``*ForMaskedLM`` (maybe wrapped), or BitmapsError."""
    hf = hf_model(model)
    name = type(hf).__name__
    model_type = getattr(hf.config, "model_type", "")
    task_heads = ("ForMaskedLM", "ForSequenceClassification")
    if not name.endswith(task_heads) or model_type not in SUPPORTED_MODEL_TYPES:
        raise BitmapsError(
            f"unsupported model {name}: bitmaps binarizes the {', '.join(SUPPORTED_MODEL_TYPES)} "
            "masked-LM and classification models (*ForMaskedLM, *ForSequenceClassification)"
        )
    prefix = next(n for n, m in model.named_modules() if m is hf)
    layers_path = ".".join(p for p in (prefix, hf.base_model_prefix, _ENCODER_LAYERS) if p)
    try:
        layers = model.get_submodule(layers_path)
    except AttributeError:
        layers = None
    if not isinstance(layers, nn.ModuleList) or len(layers) == 0:
        raise BitmapsError(f"{name} has no encoder layers at {layers_path}")
    return EncoderLayout(layers_path, _BERT_ROLES, len(layers))


def binarize_(model: nn.Module, cfg: BinarizeConfig) -> list[str]:
    """Replace the configured encoder linears of ``model`` by BinaryLinear, in place.

    ``model`` is a BERT-family ``*ForMaskedLM`` (or a MaskedLMModel / DDP around one). Every layer's
    query, key, value, attention-output, intermediate and output dense (``cfg.modules``) becomes a
    BinaryLinear initialised from its weights; embeddings, LayerNorms, attention matmuls, pooler
    and MLM head are untouched. The phase is set for step 0 of ``cfg.schedule``. Returns the
    replaced module names. Refuses an already binarized model.
    """
    if any(isinstance(m, (BinaryLinear, PackedBinaryLinear)) for m in model.modules()):
        raise BitmapsError(f"{type(hf_model(model)).__name__} is already binarized")
    layout = encoder_layout(model)
    targets = [layout.path(i, role) for i in range(layout.num_layers) for role in cfg.modules]
    for path in targets:
        try:
            linear = model.get_submodule(path)
        except AttributeError:
            linear = None
        if not isinstance(linear, nn.Linear):
            raise BitmapsError(
                f"{type(hf_model(model)).__name__}: expected nn.Linear at {path}, "
                f"found {type(linear).__name__}"
            )
    act_paths = _ffn_activation_paths(model, layout) if cfg.activation == "relu" else []
    unsigned = {
        layout.path(i, role) for i in range(layout.num_layers) for role in cfg.unsigned_inputs()
    }
    weights, activations = binarization_phase_for_step(0, cfg)
    for path in targets:
        old = model.get_submodule(path)
        layer = BinaryLinear.from_linear(old, cfg, unsigned=path in unsigned)
        layer.set_phase(weights, activations)
        # the mode of the layer it replaces: a model binarized in eval mode stays in eval mode
        # (new modules start in training mode, where an elastic quantizer sets its scale from
        # the first batch it sees)
        layer.train(old.training)
        set_submodule(model, path, layer)
    for path in act_paths:
        set_submodule(model, path, nn.ReLU().train(model.get_submodule(path).training))
    if cfg.embeddings == "fp16":
        round_embeddings_(model)
    return targets


@torch.no_grad()
def round_embeddings_(model: nn.Module) -> None:
    """Every embedding table of ``model`` (word, position, token type; the tied MLM decoder is the
    word table) rounded in place to the table ``--embeddings fp16`` stores (``quantize_table``),
    kept in float32. A student trained this way (``BinarizeConfig.embeddings = "fp16"``: after
    every optimizer step) is the same model in FP32 and with ``--embeddings fp16``."""
    for module in model.modules():
        if isinstance(module, nn.Embedding):
            module.weight.copy_(quantize_table(module.weight, "fp16")[0])


# the attribute holding the FFN activation, in the module that holds the intermediate linear
_FFN_ACTIVATION_ATTR = "intermediate_act_fn"


def _ffn_activation_paths(model: nn.Module, layout: EncoderLayout) -> list[str]:
    """Where each layer's FFN activation (GELU in BERT) is, for ``activation="relu"``."""
    paths = []
    for i in range(layout.num_layers):
        parent = layout.path(i, "intermediate").rpartition(".")[0]
        owner = model.get_submodule(parent)
        if not callable(getattr(owner, _FFN_ACTIVATION_ATTR, None)):
            raise BitmapsError(
                f"{type(hf_model(model)).__name__}: no FFN activation found in {parent} "
                f"(looked for {_FFN_ACTIVATION_ATTR}); use activation gelu"
            )
        paths.append(f"{parent}.{_FFN_ACTIVATION_ATTR}")
    return paths
