"""Count likelihoods: densities against hand computations, data checks, and training on
real counts (MNIST pixel intensities as counts 0..255 are not Poisson; the bundled
digits are used where the data matter)."""

from __future__ import annotations

import math

import pytest
import torch

from pyro_vae import VAE, DiagonalNormalGuide, StandardNormalPrior, fit
from pyro_vae.parts.likelihoods import (
    BinomialLikelihood,
    NegativeBinomialLikelihood,
    PoissonLikelihood,
    ZeroInflatedNegativeBinomialLikelihood,
)


def poisson_log_prob(x: torch.Tensor, rate: torch.Tensor) -> torch.Tensor:
    """log Poisson(x; rate) written out: x log(rate) - rate - log(x!)."""
    return (x * rate.log() - rate - torch.lgamma(x + 1)).sum(-1)


def test_poisson_log_prob_is_the_hand_computed_one():
    lik = PoissonLikelihood.mlp(3, (5,), (8,))
    z = torch.randn(4, 3)
    x = torch.tensor([[0, 1, 2, 3, 7]] * 4)
    rate = lik(z).exp()
    torch.testing.assert_close(lik.dist(z).log_prob(x), poisson_log_prob(x.float(), rate))
    assert lik.dist(z).event_shape == (5,) and lik.discrete


@pytest.mark.parametrize(
    ("x", "message"),
    [
        (torch.tensor([[0.5, 1.0]]), "whole numbers"),
        (torch.tensor([[-1, 2]]), ">= 0"),
        (torch.tensor([[True, False]]), "dtype torch.bool"),
    ],
)
def test_poisson_refuses_what_is_not_counts(x, message):
    with pytest.raises(ValueError, match=message):
        PoissonLikelihood.mlp(2, (2,), (4,)).check_data(x)


def test_a_poisson_vae_trains_on_integer_counts():
    gen = torch.Generator().manual_seed(0)
    rates = torch.tensor([0.5, 2.0, 8.0, 20.0])
    x = torch.poisson(rates.expand(400, 4), generator=gen).long()  # integer dtype
    vae = VAE(
        StandardNormalPrior(2),
        PoissonLikelihood.mlp(2, (4,), (16,)),
        DiagonalNormalGuide.mlp((4,), 2, (16,)),
    )
    history = fit(vae.model, vae.guide, x, epochs=30, batch_size=50, lr=1e-2, progress=False)
    first, last = history["train_elbo"][0], history["train_elbo"][-1]
    # the best the model can do is the Poisson entropy of the true rates
    entropy = -sum(
        float(
            torch.distributions.Poisson(r)
            .log_prob(torch.arange(200.0))
            .exp()
            .mul(torch.distributions.Poisson(r).log_prob(torch.arange(200.0)))
            .sum()
        )
        for r in rates
    )
    assert last > first + 5
    assert -last < entropy + 2.0 and -last > entropy - 0.5, (last, entropy)
    assert math.isfinite(last)


def nb_log_prob(x: torch.Tensor, mean: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """The negative binomial of mean mu and dispersion theta, written out (scVI's form)."""
    return (
        torch.lgamma(x + theta)
        - torch.lgamma(theta)
        - torch.lgamma(x + 1)
        + theta * (theta.log() - (theta + mean).log())
        + x * (mean.log() - (theta + mean).log())
    )


def test_negative_binomial_log_prob_mean_and_variance():
    lik = NegativeBinomialLikelihood.mlp(3, (4,), (8,), init_dispersion=2.5)
    z = torch.randn(6, 3)
    x = torch.tensor([[0, 1, 4, 9]] * 6)
    mean = lik(z).exp()
    theta = torch.full((4,), 2.5)
    expected = nb_log_prob(x.float(), mean, theta).sum(-1)
    torch.testing.assert_close(lik.dist(z).log_prob(x), expected, rtol=1e-5, atol=1e-4)
    d = lik.dist(z).base_dist
    torch.testing.assert_close(d.mean, mean, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(d.variance, mean + mean**2 / theta, rtol=1e-4, atol=1e-4)


def test_zero_inflated_negative_binomial_log_prob():
    lik = ZeroInflatedNegativeBinomialLikelihood.mlp(2, (3,), (8,), init_dispersion=1.5)
    z = torch.randn(5, 2)
    x = torch.tensor([[0, 2, 0]] * 5)
    log_mean, gate_logits = lik(z).unbind(-2)
    pi = torch.sigmoid(gate_logits)
    nb = nb_log_prob(x.float(), log_mean.exp(), torch.full((3,), 1.5))
    zero = torch.log(pi + (1 - pi) * nb.exp())
    positive = torch.log1p(-pi) + nb
    expected = torch.where(x == 0, zero, positive).sum(-1)
    torch.testing.assert_close(lik.dist(z).log_prob(x), expected, rtol=1e-5, atol=1e-4)


def test_binomial_log_prob_and_trials_check():
    lik = BinomialLikelihood.mlp(2, (3,), (8,), trials=16)
    z = torch.randn(4, 2)
    x = torch.tensor([[0, 7, 16]] * 4)
    p = torch.sigmoid(lik(z))
    n = torch.tensor(16.0)
    log_choose = torch.lgamma(n + 1) - torch.lgamma(x + 1.0) - torch.lgamma(n - x + 1)
    expected = (log_choose + x * p.log() + (n - x) * torch.log1p(-p)).sum(-1)
    torch.testing.assert_close(lik.dist(z).log_prob(x), expected, rtol=1e-5, atol=1e-4)
    with pytest.raises(ValueError, match="--trials 16 needs counts in \\[0, 16\\]"):
        lik.check_data(torch.tensor([[0, 17, 3]]))
