"""Binarizers for weights and activations: a small function each, plus a thin module, by name.

In the style of larq's ``quantizers.py``: every quantizer is an :class:`torch.autograd.Function`
(forward: the binary value; backward: a documented surrogate gradient) wrapped by an ``nn.Module``
that :class:`~bitmaps.train.binary_linear.BinaryLinear` holds and the config selects by name.

Sign convention (DESIGN.md): sign(x) = −1 where x < 0, else +1, so sign(0) = +1 — the bit layout
stores bit 1 for −1. Every forward here uses :func:`binary_sign`, never ``torch.sign`` (which maps 0
to 0).

Activation quantizers (``BinarizeConfig.activation_quantizer``):

- ``"ste"``         :func:`ste_sign` — clipped straight-through estimator (Hubara et al. 2016;
  Courbariaux et al. 2016 "BinaryNet").
- ``"approx_sign"`` :func:`approx_sign` — Bi-Real Net's piecewise-polynomial gradient
  (Liu et al. 2018, "Bi-Real Net", ECCV).
- ``"elastic"``     :func:`elastic_sign` — BiT's elastic binarizer with a learned scale α and
  threshold β (Liu et al. 2022, "BiT: Robustly Binarized Multi-distilled Transformer", NeurIPS).

Each module's ``binarize(x)`` returns ``(signs, scale)``: ±1 signs carrying the surrogate gradient,
and the learned scale α (``elastic``) or None, in which case BinaryLinear uses the per-row scale
mean_k |x[m, k]| (XNOR-Net, Rastegari et al. 2016). The layer forms the exact ±1 dot product and
scales it afterwards, in the order of the ``bitmaps::BinaryLinear`` op.

Weight quantizer (``BinarizeConfig.weight_quantizer``): ``"scaled_sign"`` — :func:`scaled_sign`,
α_n·sign(W_n) with α_n = mean_k |W[n, k]| per output channel (XNOR-Net).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def binary_sign(x: torch.Tensor) -> torch.Tensor:
    """±1 of the dtype of ``x``: −1 where x < 0, else +1 (sign(0) = +1, the bit convention)."""
    return torch.where(x < 0, -1.0, 1.0).to(x.dtype)


# --------------------------------------------------------------------------- straight-through sign


class _SteSign(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, clip: float) -> torch.Tensor:
        ctx.save_for_backward(x)
        ctx.clip = clip
        return binary_sign(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (x,) = ctx.saved_tensors
        # one fused pass: grad where −clip < x < clip, else 0
        return torch.ops.aten.hardtanh_backward(grad, x, -ctx.clip, ctx.clip), None


def ste_sign(x: torch.Tensor, clip: float = 1.0) -> torch.Tensor:
    """Sign with the clipped straight-through estimator.

    forward:  q = sign(x)  (−1 where x < 0, else +1)
    backward: ∂q/∂x = 1{|x| < clip}   (the gradient of clip·hardtanh(x / clip); the boundary
              |x| = clip, a measure-zero set, gets 0 as in torch's hardtanh)

    Hubara et al. 2016, "Binarized Neural Networks"; larq ``ste_sign``.
    """
    return _SteSign.apply(x, float(clip))


# --------------------------------------------------------------------------- Bi-Real ApproxSign


class _ApproxSign(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, clip: float) -> torch.Tensor:
        ctx.save_for_backward(x)
        ctx.clip = clip
        return binary_sign(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (x,) = ctx.saved_tensors
        c = ctx.clip
        # (2/c)·(1 − |x|/c) inside the window, 0 outside; in place on one temporary
        slope = x.abs().mul_(-1.0 / c).add_(1.0).clamp_(min=0.0).mul_(2.0 / c)
        return slope.mul_(grad), None


def approx_sign(x: torch.Tensor, clip: float = 1.0) -> torch.Tensor:
    """Sign with Bi-Real Net's piecewise-polynomial surrogate gradient.

    forward:  q = sign(x)
    backward: ∂q/∂x = 2 − 2|x| for |x| ≤ 1, else 0 — the derivative of the piecewise quadratic
              F(x) = sign(x)·(2|x| − x²) on [−1, 1] (Liu et al. 2018, "Bi-Real Net", eq. 4).
    ``clip`` = c widens the window: ∂q/∂x = (2/c)·(1 − |x|/c) on |x| ≤ c (c = 1 is the paper).
    """
    return _ApproxSign.apply(x, float(clip))


# --------------------------------------------------------------------------- BiT elastic binarizer


class _ElasticUnitSign(torch.autograd.Function):
    """sign(x − β) with BiT's surrogate divided by α (the layer multiplies α back in)."""

    @staticmethod
    def forward(
        ctx: Any, x: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor, gscale: float
    ) -> torch.Tensor:
        ctx.save_for_backward(x, alpha, beta)
        ctx.gscale = gscale
        return binary_sign(x - beta.to(x.dtype))

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, torch.Tensor, None]:
        x, alpha, beta = ctx.saved_tensors
        acc = torch.promote_types(x.dtype, torch.float32)  # fp16/bf16 activations: sum in fp32
        a = alpha.detach().to(acc)
        inside = ((x.to(acc) - beta.to(acc)).abs() <= a).to(acc)
        g = grad.to(acc) * inside / a
        grad_beta = -g.sum() * ctx.gscale
        return g.to(grad.dtype), None, grad_beta.reshape(beta.shape).to(beta.dtype), None


class _ScaleGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, t: torch.Tensor, factor: float) -> torch.Tensor:
        ctx.factor = factor
        return t.clone()  # bit-exact value (LSQ's (t − t·f).detach() + t·f is not)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad * ctx.factor, None


def scale_grad(t: torch.Tensor, factor: float) -> torch.Tensor:
    """``t`` in the forward, ``factor · ∂L/∂t`` in the backward (LSQ's grad_scale)."""
    return _ScaleGrad.apply(t, float(factor))


def elastic_binarize(
    x: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(sign(x − β), α') with α'·sign(x − β) = :func:`elastic_sign`, value and gradients.

    Kept apart so that a layer can form the exact ±1 dot product first and scale it afterwards,
    as the ``bitmaps::BinaryLinear`` op does. α' is ``alpha`` with its gradient scaled.
    """
    gscale = x.numel() ** -0.5
    return _ElasticUnitSign.apply(x, alpha, beta, gscale), scale_grad(alpha, gscale)


def elastic_sign(x: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """BiT's elastic binarizer for signed activations, with learned scalars α > 0 and β.

    forward:  q = α · sign(x − β)
    backward (BiT, Liu et al. 2022, elastic binarization of signed activations; the STE on
    sign(clip((x − β)/α, −1, 1))):
        ∂q/∂x = 1{|x − β| ≤ α}
        ∂q/∂α = sign(x − β)            (α inside the sign is ignored, as in the paper)
        ∂q/∂β = −1{|x − β| ≤ α}
    The α and β gradients (sums over every element of ``x``) are multiplied by 1/sqrt(numel(x)),
    the gradient scale of LSQ (Esser et al. 2020), which learns quantizer scales the same way: a
    scalar collecting M·K terms would otherwise dominate the global gradient norm the trainer
    clips. (With Adam the factor changes nothing else.)
    """
    signs, a = elastic_binarize(x, alpha, beta)
    return signs * a.to(signs.dtype)


# --------------------------------------------------------------------------- weight binarizer


def scaled_sign(w: torch.Tensor, clip: float = 1.0) -> torch.Tensor:
    """Per-output-channel scaled sign of a weight ``[N, K]`` (XNOR-Net, Rastegari et al. 2016).

    forward:  Q[n, k] = α_n · sign(W[n, k]),  α_n = mean_k |W[n, k]|
    backward: the exact derivative of that expression with the sign replaced by :func:`ste_sign`
              (XNOR-Net's weight gradient):
        ∂L/∂W[n, k] = α_n · 1{|W[n, k]| < clip} · G[n, k]
                      + sign(W[n, k]) / K · Σ_j G[n, j] · sign(W[n, j])
    where G = ∂L/∂Q. (torch's ∂|w|/∂w is 0 at w = 0, a measure-zero difference.)
    """
    return ste_sign(w, clip) * weight_scale(w)


def weight_scale(w: torch.Tensor) -> torch.Tensor:
    """α_n = mean_k |W[n, k]| as ``[N, 1]`` (differentiable)."""
    return w.abs().mean(dim=-1, keepdim=True)


# --------------------------------------------------------------------------- modules


class SteSign(nn.Module):
    """Module form of :func:`ste_sign`.

    Activation quantizer protocol (what BinaryLinear calls): ``binarize(x) -> (signs, scale)``
    with ±1 ``signs`` carrying the surrogate gradient and ``scale`` the learned activation scale
    (a 0-d tensor) or None, meaning the layer's per-row mean |x| (XNOR-Net); ``learned_scale``,
    ``threshold()`` (β) and ``scale()`` (α, 0.0 for none) as floats for export. ``forward(x)`` is
    the binarized value alone.
    """

    learned_scale = False

    def __init__(self, clip: float = 1.0) -> None:
        super().__init__()
        self.clip = float(clip)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.binarize(x)[0]

    def binarize(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        return ste_sign(x, self.clip), None

    def threshold(self) -> float:
        return 0.0

    def scale(self) -> float:
        return 0.0

    def extra_repr(self) -> str:
        return f"clip={self.clip}"


class ApproxSign(SteSign):
    """Module form of :func:`approx_sign`; the layer adds the per-row mean scale."""

    def binarize(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        return approx_sign(x, self.clip), None


class ElasticSign(nn.Module):
    """Module form of :func:`elastic_sign`, parameters ``alpha`` (scale) and ``beta`` (threshold).

    Initialisation: β = 0 and, on the first forward in training mode, α = mean |x − β| over that
    batch — the scale that minimises ‖x − α·sign(x − β)‖² for the given signs (XNOR-Net's closed
    form), averaged over ranks under torch.distributed so replicas stay identical. Until then (a
    model evaluated before any training step) α = ``init_alpha``. The ``initialized`` buffer is
    saved with the model, so a resumed or reloaded student is not re-initialised.

    The forward uses |α|, so an optimiser step can never flip the output's sign; export reads the
    same |α| (and refuses α = 0, which the op would read as "per-row mean").
    """

    learned_scale = True

    def __init__(self, init_alpha: float = 1.0) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.tensor(float(init_alpha)))
        self.beta = nn.Parameter(torch.tensor(0.0))
        self.register_buffer("initialized", torch.tensor(False))
        self._initialized = False  # Python mirror: no device sync in the forward

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        signs, alpha = self.binarize(x)
        return signs * alpha.to(signs.dtype)

    def binarize(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.training and not self._initialized:
            self._init_from(x)
        return elastic_binarize(x, self.alpha.abs(), self.beta)

    @torch.no_grad()
    def _init_from(self, x: torch.Tensor) -> None:
        value = (x.float() - self.beta).abs().mean()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(value)
            value /= torch.distributed.get_world_size()
        self.alpha.copy_(value.clamp_min(1e-6))
        self.initialized.fill_(True)
        self._initialized = True

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:  # noqa: ANN001
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._initialized = bool(self.initialized)

    def threshold(self) -> float:
        return float(self.beta.detach())

    def scale(self) -> float:
        return float(self.alpha.detach().abs())

    def extra_repr(self) -> str:
        return f"alpha={self.scale():.4g}, beta={self.threshold():.4g}"


class ScaledSign(nn.Module):
    """Module form of :func:`scaled_sign` (weights).

    ``binarize(w) -> (signs, α)``: ±1 signs with the STE and α_n ``[N]`` (differentiable), so the
    layer can scale the exact ±1 dot product afterwards; ``scale(w)`` gives α_n for export.
    """

    def __init__(self, clip: float = 1.0) -> None:
        super().__init__()
        self.clip = float(clip)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return scaled_sign(w, self.clip)

    def binarize(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return ste_sign(w, self.clip), weight_scale(w).squeeze(-1)

    @staticmethod
    def scale(w: torch.Tensor) -> torch.Tensor:
        """α_n as ``[N]`` float32."""
        return weight_scale(w.detach().float()).squeeze(-1)

    def extra_repr(self) -> str:
        return f"clip={self.clip}"


ACTIVATION_QUANTIZERS: dict[str, type[nn.Module]] = {
    "ste": SteSign,
    "approx_sign": ApproxSign,
    "elastic": ElasticSign,
}
WEIGHT_QUANTIZERS: dict[str, type[nn.Module]] = {"scaled_sign": ScaledSign}


def make_activation_quantizer(name: str, clip: float = 1.0) -> nn.Module:
    """The activation quantizer module called ``name`` (keys of :data:`ACTIVATION_QUANTIZERS`)."""
    if name not in ACTIVATION_QUANTIZERS:
        raise KeyError(f"unknown activation quantizer {name!r}")
    if name == "elastic":
        return ElasticSign()
    return ACTIVATION_QUANTIZERS[name](clip)


def make_weight_quantizer(name: str, clip: float = 1.0) -> nn.Module:
    """The weight quantizer module called ``name`` (keys of :data:`WEIGHT_QUANTIZERS`)."""
    if name not in WEIGHT_QUANTIZERS:
        raise KeyError(f"unknown weight quantizer {name!r}")
    return WEIGHT_QUANTIZERS[name](clip)
