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

Two-set binarization (BiT's binarization of non-negative activations, the op's ``act_unsigned=1``):
every activation quantizer built with ``unsigned=True`` returns {0, 1} bits instead of ±1 signs,
bit = 1{x − t > 0} (strict: x = t gives 0, as the op's ``abits = (x − β > 0)``). ``ste`` and
``approx_sign`` use t = 0 and the surrogate of (1 + sign(x))/2 (:func:`ste_step`, :func:`approx_step`);
``elastic`` learns α and β and binarizes to {0, α} with t = β + α/2 (:func:`elastic_step`).

Weight quantizer (``BinarizeConfig.weight_quantizer``): ``"scaled_sign"`` — :func:`scaled_sign`,
α_n·sign(W_n) with α_n = mean_k |W[n, k]| per output channel (XNOR-Net); with ``center=True``
(BiT) the row mean is subtracted first: α_n·sign(W_n − μ_n), α_n = mean_k |W[n, k] − μ_n|.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def binary_sign(x: torch.Tensor) -> torch.Tensor:
    """±1 of the dtype of ``x``: −1 where x < 0, else +1 (sign(0) = +1, the bit convention)."""
    return torch.where(x < 0, -1.0, 1.0).to(x.dtype)


def binary_step(x: torch.Tensor) -> torch.Tensor:
    """{0, 1} of the dtype of ``x``: 1 where x > 0, else 0 (the op's unsigned bits; step(0) = 0)."""
    return (x > 0).to(x.dtype)


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


# --------------------------------------------------------------------------- {0, 1} steps


class _SurrogateStep(torch.autograd.Function):
    """1{x > 0} with half the gradient of a signed surrogate, the estimator of (1 + sign(x))/2."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, clip: float, smooth: bool) -> torch.Tensor:
        ctx.save_for_backward(x)
        ctx.clip, ctx.smooth = clip, smooth
        return binary_step(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        (x,) = ctx.saved_tensors
        c = ctx.clip
        if ctx.smooth:  # ½ · (2/c)(1 − |x|/c)₊
            slope = x.abs().mul_(-1.0 / c).add_(1.0).clamp_(min=0.0).mul_(1.0 / c)
            return slope.mul_(grad), None, None
        return torch.ops.aten.hardtanh_backward(grad, x, -c, c).mul_(0.5), None, None


def ste_step(x: torch.Tensor, clip: float = 1.0) -> torch.Tensor:
    """{0, 1} step with the clipped straight-through estimator (two-set binarization).

    forward:  b = 1{x > 0}  (step(0) = 0, the op's ``act_unsigned`` bit)
    backward: ∂b/∂x = ½ · 1{|x| < clip} — the estimator of b = (1 + sign(x))/2 with the clipped
              STE for sign (:func:`ste_sign`).
    """
    return _SurrogateStep.apply(x, float(clip), False)


def approx_step(x: torch.Tensor, clip: float = 1.0) -> torch.Tensor:
    """{0, 1} step with Bi-Real's surrogate: forward 1{x > 0}, backward ½ · ∂approx_sign/∂x,
    i.e. (1/c)·(1 − |x|/c) on |x| ≤ c, else 0."""
    return _SurrogateStep.apply(x, float(clip), True)


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


def elastic_step_threshold(alpha: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """t = β + α/2 in float32: the op's ``act_threshold`` of an unsigned elastic quantizer (the
    forward and the export both take it from here, so training and the op cut at the same value)."""
    return beta.detach().float() + 0.5 * alpha.detach().float()


class _ElasticUnitStep(torch.autograd.Function):
    """1{x − (β + α/2) > 0} with BiT's unsigned surrogate divided by α (the layer multiplies α)."""

    @staticmethod
    def forward(
        ctx: Any, x: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor, gscale: float
    ) -> torch.Tensor:
        ctx.save_for_backward(x, alpha, beta)
        ctx.gscale = gscale
        return binary_step(x - elastic_step_threshold(alpha, beta).to(x.dtype))

    @staticmethod
    def backward(
        ctx: Any, grad: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, None]:
        x, alpha, beta = ctx.saved_tensors
        acc = torch.promote_types(x.dtype, torch.float32)
        a = alpha.detach().to(acc)
        u = (x.to(acc) - beta.to(acc)) / a
        middle = ((u >= 0) & (u <= 1)).to(acc)
        g = grad.to(acc) / a  # ∂L/∂q, q = α·b
        grad_x = g * middle
        # α's explicit factor (b) reaches it through the layer's scale; this is the −u part
        grad_alpha = -(g * u * middle).sum() * ctx.gscale
        grad_beta = -grad_x.sum() * ctx.gscale
        return (
            grad_x.to(grad.dtype),
            grad_alpha.reshape(alpha.shape).to(alpha.dtype),
            grad_beta.reshape(beta.shape).to(beta.dtype),
            None,
        )


def elastic_step_binarize(
    x: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(b, α') with α'·b = :func:`elastic_step`, value and gradients (b ∈ {0, 1})."""
    gscale = x.numel() ** -0.5
    return _ElasticUnitStep.apply(x, alpha, beta, gscale), scale_grad(alpha, gscale)


def elastic_step(x: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """BiT's elastic binarizer for non-negative activations (two-set binarization), to {0, α}.

    forward:  q = α · round(clip((x − β)/α, 0, 1)) = α · 1{x − (β + α/2) > 0}
              (computed as the second form, the op's ``act_unsigned`` bits with threshold
              t = β + α/2; round(½) = 0, so the boundary gives 0 in both)
    backward (BiT's unsigned elastic binarizer, the LSQ gradients with u = (x − β)/α):
        ∂q/∂x = 1{0 ≤ u ≤ 1}
        ∂q/∂α = 0 (u < 0),  round(u) − u (0 ≤ u ≤ 1),  1 (u > 1)
        ∂q/∂β = −1{0 ≤ u ≤ 1}
    The α and β gradients are scaled by 1/sqrt(numel(x)) as in :func:`elastic_sign`.
    Liu et al. 2022, "BiT", sec. 3.2 (two-set binarization).
    """
    bits, a = elastic_step_binarize(x, alpha, beta)
    return bits * a.to(bits.dtype)


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


def center_rows(w: torch.Tensor) -> torch.Tensor:
    """W − μ with μ_n = mean_k W[n, k] (differentiable): BiT's centred weights, whose signs and
    scale the layer, the export and the packed bits all take from this one function."""
    return w - w.mean(dim=-1, keepdim=True)


def centered_scaled_sign(w: torch.Tensor, clip: float = 1.0) -> torch.Tensor:
    """:func:`scaled_sign` of the centred weights (BiT, Liu et al. 2022, sec. 3.1):

    forward:  Q[n, k] = α_n · sign(W[n, k] − μ_n),  μ_n = mean_k W[n, k],  α_n = mean_k |W − μ|
    backward: the derivative of that expression with sign → :func:`ste_sign`, i.e. the gradient
              of :func:`scaled_sign` at V = W − μ, projected by ∂V/∂W = I − 1/K per row
              (the row mean of the gradient is removed).
    """
    return scaled_sign(center_rows(w), clip)


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

    def __init__(self, clip: float = 1.0, *, unsigned: bool = False) -> None:
        super().__init__()
        self.clip = float(clip)
        self.unsigned = bool(unsigned)  # {0, 1} bits (:func:`ste_step`), the op's act_unsigned

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.binarize(x)[0]

    def binarize(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        return (ste_step if self.unsigned else ste_sign)(x, self.clip), None

    def threshold(self) -> float:
        return 0.0

    def scale(self) -> float:
        return 0.0

    def extra_repr(self) -> str:
        return f"clip={self.clip}" + (", unsigned=True" if self.unsigned else "")


class ApproxSign(SteSign):
    """Module form of :func:`approx_sign` (:func:`approx_step` when ``unsigned``); the layer adds
    the per-row mean scale."""

    def binarize(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        return (approx_step if self.unsigned else approx_sign)(x, self.clip), None


class ElasticSign(nn.Module):
    """Module form of :func:`elastic_sign`, parameters ``alpha`` (scale) and ``beta`` (threshold).

    Initialisation: β = 0 and, on the first forward in training mode, α = mean |x − β| over that
    batch — the scale that minimises ‖x − α·sign(x − β)‖² for the given signs (XNOR-Net's closed
    form), averaged over ranks under torch.distributed so replicas stay identical. Until then (a
    model evaluated before any training step) α = ``init_alpha``. The ``initialized`` buffer is
    saved with the model, so a resumed or reloaded student is not re-initialised.

    The forward uses |α|, so an optimiser step can never flip the output's sign; export reads the
    same |α| (and refuses α = 0, which the op would read as "per-row mean").

    ``unsigned=True``: :func:`elastic_step`, q ∈ {0, α}, threshold t = β + α/2 (``threshold()``,
    the op's act_threshold). Initialisation on the first training batch: threshold 0, so the bits
    are the ReLU's own on/off pattern, α = mean of the inputs above 0 (the level minimising
    ‖x − α·b‖² for those bits) and β = −α/2: the bits the signed quantizer starts from after a
    GELU (GELU(x) > 0 ⇔ x > 0). With a ReLU student, Lloyd's fixed point (threshold α/2) measured
    better in the 300-step ablation (0.2135 vs 0.2019 top-1, one seed; benchmarks/ablation).
    """

    learned_scale = True

    def __init__(self, init_alpha: float = 1.0, *, unsigned: bool = False) -> None:
        super().__init__()
        self.unsigned = bool(unsigned)
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
        if self.unsigned:
            return elastic_step_binarize(x, self.alpha.abs(), self.beta)
        return elastic_binarize(x, self.alpha.abs(), self.beta)

    @torch.no_grad()
    def _init_from(self, x: torch.Tensor) -> None:
        value = (x.float() - self.beta).abs().mean()
        if self.unsigned:  # the level of the inputs above 0, the bits the ReLU itself sets
            xf = x.float()
            above = xf > 0
            value = xf[above].mean() if bool(above.any()) else value
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(value)
            value /= torch.distributed.get_world_size()
        self.alpha.copy_(value.clamp_min(1e-6))
        if self.unsigned:  # threshold β + α/2 = 0
            self.beta.copy_(-self.alpha / 2)
        self.initialized.fill_(True)
        self._initialized = True

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:  # noqa: ANN001
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._initialized = bool(self.initialized)

    def threshold(self) -> float:
        """The op's act_threshold: β, or β + |α|/2 when unsigned."""
        if self.unsigned:
            return float(elastic_step_threshold(self.alpha.abs(), self.beta))
        return float(self.beta.detach())

    def scale(self) -> float:
        return float(self.alpha.detach().abs())

    def extra_repr(self) -> str:
        kind = ", unsigned=True" if self.unsigned else ""
        return f"alpha={self.scale():.4g}, beta={float(self.beta.detach()):.4g}{kind}"


class ScaledSign(nn.Module):
    """Module form of :func:`scaled_sign` (weights), or :func:`centered_scaled_sign` (``center``).

    ``binarize(w) -> (signs, α)``: ±1 signs with the STE and α_n ``[N]`` (differentiable), so the
    layer can scale the exact ±1 dot product afterwards; ``export(w) -> (v, α)`` gives the tensor
    whose signs are the packed bits (W, or W − μ) and α_n, computed as the forward computes them.
    """

    def __init__(self, clip: float = 1.0, *, center: bool = False) -> None:
        super().__init__()
        self.clip = float(clip)
        self.center = bool(center)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return (centered_scaled_sign if self.center else scaled_sign)(w, self.clip)

    def binarize(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        v = center_rows(w) if self.center else w
        return ste_sign(v, self.clip), weight_scale(v).squeeze(-1)

    def export(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(v, α_n): float32 ``[N, K]`` whose signs are the weight bits, and ``[N]`` float32."""
        v = w.detach().float()
        v = center_rows(v) if self.center else v
        return v, weight_scale(v).squeeze(-1)

    def scale(self, w: torch.Tensor) -> torch.Tensor:
        """α_n as ``[N]`` float32."""
        return self.export(w)[1]

    def extra_repr(self) -> str:
        return f"clip={self.clip}" + (", center=True" if self.center else "")


ACTIVATION_QUANTIZERS: dict[str, type[nn.Module]] = {
    "ste": SteSign,
    "approx_sign": ApproxSign,
    "elastic": ElasticSign,
}
WEIGHT_QUANTIZERS: dict[str, type[nn.Module]] = {"scaled_sign": ScaledSign}


def make_activation_quantizer(name: str, clip: float = 1.0, *, unsigned: bool = False) -> nn.Module:
    """The activation quantizer module called ``name`` (keys of :data:`ACTIVATION_QUANTIZERS`);
    ``unsigned``: to {0, 1} (two-set binarization) instead of ±1."""
    if name not in ACTIVATION_QUANTIZERS:
        raise KeyError(f"unknown activation quantizer {name!r}")
    if name == "elastic":
        return ElasticSign(unsigned=unsigned)
    return ACTIVATION_QUANTIZERS[name](clip, unsigned=unsigned)


def make_weight_quantizer(name: str, clip: float = 1.0, *, center: bool = False) -> nn.Module:
    """The weight quantizer module called ``name`` (keys of :data:`WEIGHT_QUANTIZERS`);
    ``center``: signs of W − row mean (BiT)."""
    if name not in WEIGHT_QUANTIZERS:
        raise KeyError(f"unknown weight quantizer {name!r}")
    return WEIGHT_QUANTIZERS[name](clip, center=center)
