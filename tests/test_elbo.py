"""The ELBO and its terms against closed forms."""

from __future__ import annotations

import math

import pyro
import pytest
import torch
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO

from pyro_vae import (
    VAE,
    BernoulliLikelihood,
    DiagonalNormalGuide,
    StandardNormalPrior,
    elbo_terms,
    make_objective,
)


@pytest.fixture
def fixed_model(bundled):
    torch.manual_seed(0)
    vae = VAE(
        StandardNormalPrior(5),
        BernoulliLikelihood.mlp(5, (1, 28, 28), (32,)),
        DiagonalNormalGuide.mlp((1, 28, 28), 5, (32,)),
    )
    x = torch.bernoulli(
        bundled["train"].tensors[0][:16], generator=torch.Generator().manual_seed(1)
    )
    return vae, x


def test_kl_term_is_the_closed_form_gaussian_kl(fixed_model):
    vae, x = fixed_model
    loc, scale = vae.posterior(x)
    closed = 0.5 * (scale**2 + loc**2 - 1 - 2 * scale.log()).sum(-1)
    kl = elbo_terms(vae.model, vae.guide, x)["kl"]
    assert torch.allclose(kl, closed.detach(), rtol=1e-5, atol=1e-5)


def test_analytic_and_monte_carlo_kl_agree_within_standard_error(fixed_model):
    """TraceMeanField_ELBO (analytic KL) and Trace_ELBO (Monte Carlo KL) estimate the same
    ELBO; their means agree within 4 standard errors, and the analytic one varies less."""
    vae, x = fixed_model
    draws = {}
    for name, elbo in (("mc", Trace_ELBO()), ("analytic", TraceMeanField_ELBO())):
        pyro.set_rng_seed(2)
        draws[name] = torch.tensor([elbo.loss(vae.model, vae.guide, x) for _ in range(400)])
    se = math.sqrt(sum(d.var().item() / len(d) for d in draws.values()))
    diff = abs(draws["mc"].mean().item() - draws["analytic"].mean().item())
    assert diff < 4 * se, (diff, se)
    assert draws["analytic"].var() < draws["mc"].var()


def test_elbo_terms_add_up_and_bound(fixed_model):
    vae, x = fixed_model
    t = elbo_terms(vae.model, vae.guide, x, batch_size=5)  # chunked
    assert t["elbo"].shape == (16,)
    assert torch.allclose(t["elbo"], t["reconstruction"] - t["kl"])
    assert (t["kl"] >= 0).all()
    assert (t["reconstruction"] <= 0).all()  # Bernoulli log-probabilities


def test_make_objective():
    assert isinstance(make_objective("meanfield"), TraceMeanField_ELBO)
    elbo = make_objective("elbo", num_particles=4)
    assert elbo.num_particles == 4 and elbo.vectorize_particles
    custom = Trace_ELBO()
    assert make_objective(custom) is custom
    with pytest.raises(ValueError, match="Unknown objective 'iwea'"):
        make_objective("iwea")
    with pytest.raises(ValueError, match="num_particles"):
        make_objective("elbo", num_particles=0)
