"""Quantizers: forward values (sign(0) = +1) and surrogate gradients against analytic references."""

from __future__ import annotations

import pytest
import torch

from bitmaps.core.config import BinarizeConfig
from bitmaps.train import quantizers as Q


def _grid(dtype: torch.dtype = torch.float64) -> torch.Tensor:
    # values on both sides of and exactly on the window edges, plus zero
    edges = torch.tensor([-2.0, -1.0, -0.5, -1e-3, 0.0, 1e-3, 0.5, 1.0, 2.0], dtype=dtype)
    return torch.cat([edges, torch.randn(200, dtype=dtype) * 1.5])


def _grad_of(fn, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    x = x.clone().requires_grad_(True)
    fn(x).backward(g)
    return x.grad


def test_binary_sign_convention() -> None:
    x = torch.tensor([-2.0, -0.0, 0.0, 1e-30, -1e-30, 3.0])
    # -0.0 < 0 is False: the bit layout also stores +1 for it
    assert Q.binary_sign(x).tolist() == [-1.0, 1.0, 1.0, 1.0, -1.0, 1.0]


@pytest.mark.parametrize("clip", [1.0, 0.5, 2.0])
def test_ste_sign_forward_and_clipped_identity_gradient(clip: float) -> None:
    x = _grid()
    g = torch.randn_like(x)
    assert torch.equal(Q.ste_sign(x, clip), torch.where(x < 0, -1.0, 1.0).double())
    expected = g * (x.abs() < clip).double()  # the boundary |x| = clip gets 0
    assert torch.equal(_grad_of(lambda t: Q.ste_sign(t, clip), x, g), expected)


@pytest.mark.parametrize("clip", [1.0, 0.7])
def test_approx_sign_gradient_is_bireal_polynomial(clip: float) -> None:
    x = _grid()
    g = torch.randn_like(x)
    assert torch.equal(Q.approx_sign(x, clip), Q.binary_sign(x))
    expected = g * torch.where(x.abs() <= clip, 2 / clip - 2 * x.abs() / clip**2, 0.0)
    torch.testing.assert_close(_grad_of(lambda t: Q.approx_sign(t, clip), x, g), expected)


def test_approx_sign_gradient_is_derivative_of_smooth_surrogate() -> None:
    # Bi-Real's F(x) = sign(x)(2|x| − x²) on [−1, 1], ±1 outside: its autograd derivative is
    # the surrogate; gradcheck first confirms F's own autograd derivative is right.
    def smooth(t: torch.Tensor) -> torch.Tensor:
        inside = torch.sign(t) * (2 * t.abs() - t * t)
        return torch.where(t.abs() <= 1, inside, torch.sign(t))

    x = torch.cat([torch.linspace(-1.5, -0.01, 40), torch.linspace(0.01, 1.5, 40)]).double()
    x = x[(x.abs() - 1).abs() > 1e-3]  # gradcheck's finite differences need smooth neighbourhoods
    assert torch.autograd.gradcheck(smooth, (x.clone().requires_grad_(True),))
    g = torch.randn_like(x)
    torch.testing.assert_close(_grad_of(Q.approx_sign, x, g), _grad_of(smooth, x, g))


@pytest.mark.parametrize("beta", [0.0, 0.3])
def test_elastic_sign_forward_and_bit_gradients(beta: float) -> None:
    x = _grid()
    g = torch.randn_like(x)
    alpha = torch.tensor(0.8, dtype=torch.float64, requires_grad=True)
    b = torch.tensor(beta, dtype=torch.float64, requires_grad=True)
    xr = x.clone().requires_grad_(True)
    out = Q.elastic_sign(xr, alpha, b)
    shifted = x - beta
    sign = torch.where(shifted < 0, -1.0, 1.0).double()
    torch.testing.assert_close(out, 0.8 * sign)
    out.backward(g)
    inside = (shifted.abs() <= 0.8).double()
    gscale = x.numel() ** -0.5  # LSQ gradient scale, documented in elastic_sign
    torch.testing.assert_close(xr.grad, g * inside)
    torch.testing.assert_close(alpha.grad, (g * sign).sum() * gscale)
    torch.testing.assert_close(b.grad, -(g * inside).sum() * gscale)


def test_elastic_alpha_gradient_matches_finite_difference() -> None:
    # α's gradient is the true derivative of α·sign(x − β) (times the LSQ scale), so central
    # differences must agree with it once the scale is divided out.
    x = torch.randn(64, dtype=torch.float64)
    g = torch.randn_like(x)
    beta = torch.tensor(0.1, dtype=torch.float64)
    alpha = torch.tensor(0.6, dtype=torch.float64, requires_grad=True)
    (Q.elastic_sign(x, alpha, beta) * g).sum().backward()
    h = 1e-6
    f = lambda a: float((Q.elastic_sign(x, torch.tensor(a, dtype=torch.float64), beta) * g).sum())  # noqa: E731
    numeric = (f(0.6 + h) - f(0.6 - h)) / (2 * h)
    assert abs(float(alpha.grad) / x.numel() ** -0.5 - numeric) < 1e-6


def test_scaled_sign_forward_and_xnor_gradient() -> None:
    w = torch.randn(7, 33, dtype=torch.float64) * 0.8
    w[0, 0] = 0.0  # sign(0) = +1
    g = torch.randn_like(w)
    alpha = w.abs().mean(-1, keepdim=True)
    sign = torch.where(w < 0, -1.0, 1.0).double()
    torch.testing.assert_close(Q.scaled_sign(w), alpha * sign)
    grad = _grad_of(Q.scaled_sign, w, g)
    k = w.shape[-1]
    expected = alpha * (w.abs() < 1.0) * g + torch.sign(w) / k * (g * sign).sum(-1, keepdim=True)
    torch.testing.assert_close(grad, expected)


def test_weight_scale_gradcheck() -> None:
    w = (torch.rand(4, 9, dtype=torch.float64) + 0.1) * torch.where(torch.rand(4, 9) < 0.5, -1, 1)
    assert torch.autograd.gradcheck(Q.weight_scale, (w.requires_grad_(True),))


def test_registries_match_config_names() -> None:
    assert tuple(Q.ACTIVATION_QUANTIZERS) == BinarizeConfig.ACTIVATION_QUANTIZERS
    assert tuple(Q.WEIGHT_QUANTIZERS) == BinarizeConfig.WEIGHT_QUANTIZERS
    for name in BinarizeConfig.ACTIVATION_QUANTIZERS:
        assert isinstance(Q.make_activation_quantizer(name, 0.5), torch.nn.Module)
    with pytest.raises(KeyError):
        Q.make_activation_quantizer("nope")


def test_elastic_module_initialises_alpha_from_first_training_batch() -> None:
    q = Q.ElasticSign()
    x = torch.randn(16, 32) * 3
    q.eval()
    q(x)
    assert float(q.alpha.detach()) == 1.0 and not bool(q.initialized)  # eval never initialises
    q.train()
    q(x)
    torch.testing.assert_close(float(q.alpha.detach()), float(x.abs().mean()))
    assert bool(q.initialized)
    q(x * 10)  # only the first training batch
    torch.testing.assert_close(float(q.alpha.detach()), float(x.abs().mean()))
    fresh = Q.ElasticSign()
    fresh.load_state_dict(q.state_dict())
    fresh.train()
    fresh(x * 10)  # a reloaded quantizer is not re-initialised
    assert float(fresh.alpha.detach()) == float(q.alpha.detach())


# --------------------------------------------------------------------------- two-set (unsigned)


@pytest.mark.parametrize("clip", [1.0, 0.5])
def test_ste_step_forward_is_strict_and_gradient_is_half_ste(clip: float) -> None:
    x = _grid()
    g = torch.randn_like(x)
    bits = Q.ste_step(x, clip)
    assert torch.equal(bits, (x > 0).double())  # step(0) = 0: the op's abits = (x − β > 0)
    assert Q.ste_step(torch.tensor([0.0, -0.0, 1e-30]), clip).tolist() == [0.0, 0.0, 1.0]
    # b = (1 + sign(x))/2 with sign → clipped STE: ∂b/∂x = ½·1{|x| < clip}
    torch.testing.assert_close(
        _grad_of(lambda t: Q.ste_step(t, clip), x, g), 0.5 * g * (x.abs() < clip).double()
    )


@pytest.mark.parametrize("clip", [1.0, 0.7])
def test_approx_step_gradient_is_half_bireal(clip: float) -> None:
    x = _grid()
    g = torch.randn_like(x)
    assert torch.equal(Q.approx_step(x, clip), Q.binary_step(x))
    expected = 0.5 * g * torch.where(x.abs() <= clip, 2 / clip - 2 * x.abs() / clip**2, 0.0)
    torch.testing.assert_close(_grad_of(lambda t: Q.approx_step(t, clip), x, g), expected)


@pytest.mark.parametrize("beta", [0.0, -0.2, 0.3])
def test_elastic_step_forward_and_bit_gradients(beta: float) -> None:
    a = 0.8
    x = torch.cat([_grid(), torch.tensor([beta + a / 2, beta, beta + a], dtype=torch.float64)])
    g = torch.randn_like(x)
    alpha = torch.tensor(a, dtype=torch.float64, requires_grad=True)
    b = torch.tensor(beta, dtype=torch.float64, requires_grad=True)
    xr = x.clone().requires_grad_(True)
    out = Q.elastic_step(xr, alpha, b)
    # BiT's two-set forward: α·round(clip((x − β)/α, 0, 1)), round(½) = 0
    u = (x - beta) / a
    assert torch.equal(out.detach(), a * torch.round(u.clamp(0, 1)))
    assert torch.equal(out.detach() > 0, x - (beta + a / 2) > 0)
    out.backward(g)
    middle = ((u >= 0) & (u <= 1)).double()
    gscale = x.numel() ** -0.5
    d_alpha = torch.where(u < 0, 0.0, torch.where(u > 1, 1.0, torch.round(u) - u))
    torch.testing.assert_close(xr.grad, g * middle)
    torch.testing.assert_close(alpha.grad, (g * d_alpha).sum() * gscale)
    torch.testing.assert_close(b.grad, -(g * middle).sum() * gscale)


def test_elastic_step_module_threshold_and_init() -> None:
    q = Q.ElasticSign(unsigned=True)
    x = torch.relu(torch.randn(32, 64))
    q.train()
    bits, alpha = q.binarize(x)
    # initialised to threshold 0 (the ReLU's own pattern) and α = mean of the positive inputs
    assert torch.equal(bits, (x > 0).float())
    level = float(alpha.detach())
    assert level == pytest.approx(float(x[x > 0].mean()), rel=1e-6)
    assert q.threshold() == pytest.approx(0.0, abs=1e-7)
    with torch.no_grad():
        q.beta.fill_(-0.1)
    t = q.threshold()
    assert t == pytest.approx(-0.1 + level / 2, abs=1e-7)
    assert torch.equal(q.binarize(x)[0], (x - torch.tensor(t, dtype=torch.float32) > 0).float())
    assert not Q.ElasticSign().unsigned and Q.ElasticSign().threshold() == 0.0


@pytest.mark.parametrize("name", BinarizeConfig.ACTIVATION_QUANTIZERS)
def test_unsigned_quantizers_give_bits_and_reach_the_input(name: str) -> None:
    q = Q.make_activation_quantizer(name, 1.0, unsigned=True).train()
    x = (torch.randn(4, 40) * 0.5).requires_grad_(True)
    bits, _ = q.binarize(x)
    assert set(bits.unique().tolist()) <= {0.0, 1.0} and q.unsigned
    assert torch.equal(bits.detach(), (x.detach() - q.threshold() > 0).float())
    bits.sum().backward()
    assert x.grad.abs().sum() > 0


def test_centered_scaled_sign_forward_and_gradient() -> None:
    w = torch.randn(6, 33, dtype=torch.float64) * 0.5 + 0.3  # a row mean far from 0
    g = torch.randn_like(w)
    v = w - w.mean(-1, keepdim=True)
    alpha = v.abs().mean(-1, keepdim=True)
    sign = torch.where(v < 0, -1.0, 1.0).double()
    torch.testing.assert_close(Q.centered_scaled_sign(w), alpha * sign)
    assert not torch.equal(sign, torch.where(w < 0, -1.0, 1.0).double())
    # the scaled_sign gradient at V, with its row mean removed (∂V/∂W = I − 1/K)
    k = w.shape[-1]
    at_v = alpha * (v.abs() < 1.0) * g + torch.sign(v) / k * (g * sign).sum(-1, keepdim=True)
    expected = at_v - at_v.mean(-1, keepdim=True)
    torch.testing.assert_close(_grad_of(Q.centered_scaled_sign, w, g), expected)
    module = Q.make_weight_quantizer("scaled_sign", center=True)
    signs, scale = module.binarize(w)
    torch.testing.assert_close(signs * scale[:, None], alpha * sign)
    exported, exported_scale = module.export(w.float())
    assert torch.equal(torch.where(exported < 0, -1.0, 1.0), sign.float())
    torch.testing.assert_close(exported_scale, alpha.squeeze(-1).float())
