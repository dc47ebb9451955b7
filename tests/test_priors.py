"""Priors: exact densities, parameter sharing, training, and TraceMeanField_ELBO with each."""

from __future__ import annotations

import math

import pyro
import pytest
import torch
from pyro import poutine
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO
from torch.autograd.functional import jacobian

from pyro_vae.check.evaluate import elbo_terms
from pyro_vae.models.vae import VAE
from pyro_vae.parts.guides import (
    DiagonalNormalGuide,
    FullCovarianceNormalGuide,
    IAFGuide,
    PowerSphericalGuide,
)
from pyro_vae.parts.likelihoods import BernoulliLikelihood
from pyro_vae.parts.priors import (
    FlowPrior,
    LearnedNormalPrior,
    MixtureOfGaussiansPrior,
    StandardNormalPrior,
    UniformSpherePrior,
    VampPrior,
)

X_SHAPE = (1, 28, 28)


def test_mog_log_prob_is_the_hand_written_mixture():
    prior = MixtureOfGaussiansPrior(3, num_components=4)
    with torch.no_grad():
        prior.logits.copy_(torch.tensor([0.3, -1.0, 2.0, 0.0]))
        prior.locs.copy_(torch.randn(4, 3) * 2)
        prior.scales_unconstrained.copy_(torch.randn(4, 3) * 0.5)
    z = torch.randn(7, 3) * 2
    weights = torch.softmax(prior.logits, 0)
    locs, scales = prior.locs, prior.scales
    # sum_k pi_k prod_i N(z_i; m_ki, s_ki), written out
    dens = torch.zeros(7, dtype=torch.float64)
    for k in range(4):
        comp = torch.ones(7, dtype=torch.float64)
        for i in range(3):
            s = scales[k, i].double()
            u = (z[:, i].double() - locs[k, i].double()) / s
            comp = comp * torch.exp(-0.5 * u**2) / (s * math.sqrt(2 * math.pi))
        dens = dens + weights[k].double() * comp
    got = prior.dist().log_prob(z)
    assert got.shape == (7,)
    torch.testing.assert_close(got.double(), dens.log(), atol=1e-5, rtol=1e-5)


def test_learned_normal_kl_is_analytic_and_closed_form():
    prior = LearnedNormalPrior(3)
    with torch.no_grad():
        prior.loc.copy_(torch.tensor([0.5, -1.0, 0.0]))
        prior.scale_unconstrained.copy_(torch.log(torch.tensor([0.5, 2.0, 1.0])))
    assert torch.allclose(prior.scale, torch.tensor([0.5, 2.0, 1.0]))
    q = pyro.distributions.Normal(torch.tensor([0.1, 0.2, 0.3]), torch.tensor([1.0, 0.3, 2.0]))
    kl = torch.distributions.kl_divergence(q.to_event(1), prior.dist())
    m, s = prior.loc, prior.scale
    hand = (torch.log(s / q.scale) + (q.scale**2 + (q.loc - m) ** 2) / (2 * s**2) - 0.5).sum()
    torch.testing.assert_close(kl, hand)


def test_vamp_prior_is_the_mixture_of_guide_posteriors_and_shares_the_encoder():
    guide = DiagonalNormalGuide.mlp(X_SHAPE, 3, (16,))
    prior = VampPrior(guide, 5, X_SHAPE)
    vae = VAE(prior, BernoulliLikelihood.mlp(3, X_SHAPE, (16,)), guide)
    z = torch.randn(6, 3)
    per_component = guide.dist(prior.pseudo_inputs).log_prob(z.unsqueeze(1))  # (6, 5)
    hand = torch.logsumexp(per_component, -1) - math.log(5)
    torch.testing.assert_close(prior.dist().log_prob(z), hand)
    # the guide is registered once, as vae.posterior: no duplicate keys or parameters
    keys = list(vae.state_dict())
    assert not any(k.startswith("prior.guide") for k in keys)
    assert "prior.pseudo_inputs" in keys
    n_params = sum(1 for _ in vae.parameters())
    assert n_params == len({id(p) for p in vae.parameters()})
    assert n_params == 1 + sum(1 for _ in guide.parameters()) + sum(
        1 for _ in vae.likelihood.parameters()
    )
    with pytest.raises(ValueError, match="init has shape"):
        VampPrior(guide, 5, X_SHAPE, init=torch.rand(4, *X_SHAPE))
    with pytest.raises(ValueError, match="guide part"):
        VampPrior(torch.nn.Linear(2, 2), 5, X_SHAPE)
    with pytest.raises(ValueError, match="cannot mix flow posteriors"):
        VampPrior(IAFGuide.mlp(X_SHAPE, 3, (16,)), 5, X_SHAPE).dist()


def test_flow_prior_log_prob_is_change_of_variables():
    prior = FlowPrior.mlp(3, num_flows=2, hidden_dims=(8,))
    with torch.no_grad():  # make the layers clearly non-identity
        for p in prior.parameters():
            p.add_(0.3 * torch.randn_like(p))

    def normalize(z):  # f = f_2 o f_1, the normalizing direction
        for t in prior.transforms:
            z = t(z)
        return z

    z = torch.randn(4, 3)
    base = torch.distributions.Normal(0.0, 1.0)
    expected = torch.stack(
        [
            base.log_prob(normalize(zi)).sum() + torch.linalg.slogdet(jacobian(normalize, zi))[1]
            for zi in z
        ]
    )
    torch.testing.assert_close(prior.dist().log_prob(z), expected, atol=1e-5, rtol=1e-5)
    # sampling inverts the flow: the normalized samples are standard normal
    eps = normalize(prior.dist().sample((4000,)))
    assert eps.mean(0).abs().max() < 0.1 and (eps.std(0) - 1).abs().max() < 0.1


def test_uniform_sphere_prior_density_and_dimension():
    prior = UniformSpherePrior(3)
    z = prior.dist().sample((100,))
    torch.testing.assert_close(z.norm(dim=-1), torch.ones(100))
    torch.testing.assert_close(prior.dist().log_prob(z), torch.full((100,), -math.log(4 * math.pi)))
    # circle: 2 pi; S^63: 2 pi^32 / Gamma(32)
    assert UniformSpherePrior(2).dist().log_prob(torch.tensor([1.0, 0.0])).item() == pytest.approx(
        -math.log(2 * math.pi)
    )
    log_area = math.log(2) + 32 * math.log(math.pi) - math.lgamma(32)
    assert UniformSpherePrior(64).dist().entropy().item() == pytest.approx(log_area, rel=1e-6)
    for bad in (1, 0):
        with pytest.raises(ValueError, match=">= 2"):
            UniformSpherePrior(bad)
        with pytest.raises(ValueError, match=">= 2"):
            PowerSphericalGuide.mlp(X_SHAPE, bad)


def _vae(prior_name: str, guide_name: str) -> VAE:
    d = 3
    guide_cls = {
        "diagonal": DiagonalNormalGuide,
        "fullcov": FullCovarianceNormalGuide,
        "iaf": IAFGuide,
        "powerspherical": PowerSphericalGuide,
    }[guide_name]
    guide = guide_cls.mlp(X_SHAPE, d, (16,))
    prior = {
        "normal": lambda: StandardNormalPrior(d),
        "learned": lambda: LearnedNormalPrior(d),
        "mog": lambda: MixtureOfGaussiansPrior(d, 3),
        "vamp": lambda: VampPrior(guide, 3, X_SHAPE),
        "flow": lambda: FlowPrior.mlp(d, 2, (8,)),
        "sphere": lambda: UniformSpherePrior(d),
    }[prior_name]()
    return VAE(prior, BernoulliLikelihood.mlp(d, X_SHAPE, (16,)), guide)


# (prior, guide) -> analytic KL?  The table in pyro_vae.parts.priors' docstring.
ANALYTIC = {
    ("normal", "diagonal"): True,
    ("learned", "diagonal"): True,
    ("mog", "diagonal"): False,
    ("vamp", "diagonal"): False,
    ("flow", "diagonal"): False,
    ("sphere", "powerspherical"): True,
    ("normal", "fullcov"): True,
    ("learned", "fullcov"): True,
    ("mog", "fullcov"): False,
    ("vamp", "fullcov"): False,
    ("flow", "fullcov"): False,
    ("normal", "iaf"): False,
    ("learned", "iaf"): False,
    ("mog", "iaf"): False,
    ("flow", "iaf"): False,
    ("vamp", "powerspherical"): False,
}


@pytest.mark.parametrize(("prior_name", "guide_name"), list(ANALYTIC))
def test_mean_field_elbo_works_with_every_prior(prior_name, guide_name):
    """Analytic KL where registered (then TraceMeanField matches elbo_terms' closed-form
    KL), else the Monte Carlo fallback (then it equals Trace_ELBO on the same sample)."""
    vae = _vae(prior_name, guide_name)
    x = torch.bernoulli(torch.full((8, *X_SHAPE), 0.3))
    guide_trace = poutine.trace(vae.guide).get_trace(x)
    model_trace = poutine.trace(poutine.replay(vae.model, trace=guide_trace)).get_trace(x)
    q, p = guide_trace.nodes["z"]["fn"], model_trace.nodes["z"]["fn"]
    try:
        torch.distributions.kl_divergence(q, p)
        analytic = True
    except NotImplementedError:
        analytic = False
    assert analytic == ANALYTIC[prior_name, guide_name]

    pyro.set_rng_seed(3)
    mean_field = TraceMeanField_ELBO().differentiable_loss(vae.model, vae.guide, x)
    assert torch.isfinite(mean_field)
    pyro.set_rng_seed(3)
    if analytic:
        reference = -elbo_terms(vae.model, vae.guide, x)["elbo"].sum()
    else:
        reference = Trace_ELBO().differentiable_loss(vae.model, vae.guide, x)
    torch.testing.assert_close(mean_field, reference, atol=1e-3, rtol=1e-5)
    mean_field.backward()
    prior_grads = [p.grad for p in vae.prior.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in prior_grads)
