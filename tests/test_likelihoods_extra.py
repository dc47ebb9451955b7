"""The discretized logistic likelihood for 8-bit images: a proper distribution on 256 levels."""

from __future__ import annotations

import math

import pytest
import torch

from pyro_vae.parts.distributions import DiscretizedLogistic
from pyro_vae.parts.likelihoods import DiscretizedLogisticLikelihood, bits_per_dim

GRID = torch.arange(256) / 255
LOCS = torch.tensor([-3.0, 0.0, 0.2, 0.5, 0.97, 1.0, 4.0])
SCALES = torch.tensor([1e-3, 0.01, 0.1, 1.0, 30.0])


def _table() -> tuple[DiscretizedLogistic, torch.Tensor]:
    loc = LOCS[:, None].expand(-1, len(SCALES))
    scale = SCALES[None, :].expand(len(LOCS), -1)
    d = DiscretizedLogistic(loc, scale)
    return d, d.log_prob(GRID[:, None, None].expand(256, *loc.shape))


def test_probabilities_sum_to_one_over_the_256_bins():
    _, log_p = _table()
    assert torch.isfinite(log_p).all()
    total = torch.logsumexp(log_p.double(), dim=0)
    torch.testing.assert_close(total, torch.zeros_like(total), atol=2e-5, rtol=0)


def test_bins_are_logistic_cdf_differences_with_open_edge_bins():
    _, log_p = _table()
    loc, scale = LOCS[:, None].double(), SCALES[None, :].double()
    cdf = lambda v: torch.sigmoid((v - loc) / scale)  # noqa: E731
    h = 0.5 / 255
    p0, p255 = cdf(torch.tensor(h)), 1 - cdf(torch.tensor(1 - h))
    p_mid = cdf(torch.tensor(100 / 255 + h)) - cdf(torch.tensor(100 / 255 - h))
    exp = log_p.double().exp()
    torch.testing.assert_close(exp[0], p0, atol=1e-6, rtol=1e-4)
    torch.testing.assert_close(exp[255], p255, atol=1e-6, rtol=1e-4)
    torch.testing.assert_close(exp[100], p_mid, atol=1e-6, rtol=1e-4)
    # no cancellation: a bin 50 scales away from a sharp logistic keeps a finite log-mass
    far = DiscretizedLogistic(torch.tensor(0.5), torch.tensor(1e-3)).log_prob(torch.tensor(0.6))
    a, b = (0.1 + h) / 1e-3, (0.1 - h) / 1e-3  # log(sigma(-b) - sigma(-a)) ~ -b + log(1 - e^(b-a))
    assert far.item() == pytest.approx(-b + math.log1p(-math.exp(b - a)), rel=1e-4)


def test_mean_and_samples_match_the_bin_probabilities():
    d, log_p = _table()
    p = log_p.double().exp()
    mean = (GRID[:, None, None].double() * p).sum(0)
    torch.testing.assert_close(d.mean.double(), mean, atol=1e-5, rtol=1e-5)
    one = DiscretizedLogistic(torch.tensor(0.3), torch.tensor(0.02))
    x = one.sample((100_000,))
    assert torch.equal(x, torch.round(x * 255) / 255)
    freq = torch.bincount(torch.round(x * 255).long(), minlength=256).double() / 1e5
    probs = one.log_prob(GRID).double().exp()
    assert (freq - probs).abs().max() < 4 * math.sqrt(probs.max() / 1e5)


def test_likelihood_scores_8bit_images_and_reports_bits_per_dim(bundled):
    x = bundled["train"].tensors[0][:16]
    lik = DiscretizedLogisticLikelihood.mlp(4, (1, 28, 28), (16,))
    lik.check_data(x)
    assert lik(torch.randn(16, 4)).shape == (16, 2, 1, 28, 28)
    px = lik.dist(torch.randn(16, 4))
    assert px.event_shape == (1, 28, 28) and px.batch_shape == (16,)
    log_p = px.log_prob(x)
    assert torch.isfinite(log_p).all() and (log_p < 0).all()
    log_p.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in lik.parameters())
    # 784 pixels at 1 bit each
    assert bits_per_dim(torch.tensor(-784 * math.log(2)), (1, 28, 28)).item() == pytest.approx(1.0)
    # the uniform distribution over 256 levels costs exactly 8 bits/dim
    assert bits_per_dim(-784 * math.log(256), (1, 28, 28)) == pytest.approx(8.0)
    conv = DiscretizedLogisticLikelihood.conv(4)
    assert conv.dist(torch.randn(3, 4)).sample().shape == (3, 1, 28, 28)


def test_check_data_refuses_off_grid_and_out_of_range_values():
    lik = DiscretizedLogisticLikelihood.mlp(2, (4,), (8,))
    with pytest.raises(ValueError, match=r"grid k / 255.*torch.round\(x \* 255\) / 255"):
        lik.check_data(torch.tensor([[0.0, 0.5, 1.0, 0.2]]))
    with pytest.raises(ValueError, match=r"x / 255"):
        lik.check_data(torch.tensor([[0.0, 255.0, 1.0, 0.0]]))
    with pytest.raises(ValueError, match="floating-point"):
        lik.check_data(torch.tensor([[0, 255, 1, 0]]))
    lik.check_data(torch.tensor([[0.0, 128 / 255, 1.0, 3 / 255]]))
