"""Count likelihoods: densities against hand computations, data checks, and training on
real counts (MNIST pixel intensities as counts 0..255 are not Poisson; the bundled
digits are used where the data matter)."""

from __future__ import annotations

import math

import pytest
import torch

from pyro_vae import VAE, DiagonalNormalGuide, StandardNormalPrior, fit
from pyro_vae.parts.likelihoods import PoissonLikelihood


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
