"""Latent diagnostics: KL per dimension, active units and the collapse warning."""

from __future__ import annotations

import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch

from pyro_vae import (
    VAE,
    BernoulliLikelihood,
    DiagonalNormalGuide,
    StandardNormalPrior,
    elbo_terms,
)
from pyro_vae.check.diagnostics import (
    PosteriorCollapseWarning,
    active_units,
    kl_per_dim,
    latent_diagnostics,
    posterior_means,
)

D = 4
# the guide's mean is A x: units 0 and 1 copy x (variance 1 over the data), unit 2 is
# 0.05 x (variance 0.0025 < 0.01), unit 3 ignores x
A = torch.diag(torch.tensor([1.0, 1.0, 0.05, 0.0]))


def model(x):
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(torch.zeros(D), 1.0).to_event(1))
        pyro.sample("x", dist.Normal(z, 1.0).to_event(1), obs=x)


def normal_guide(x):
    with pyro.plate("data", x.shape[0]):
        pyro.sample("z", dist.Normal(x @ A.T, 0.5).to_event(1))


def flow_guide(x):
    """No closed-form mean: z = A x + 0.3 ε, written as a transformed distribution."""
    with pyro.plate("data", x.shape[0]):
        base = dist.Normal(torch.zeros(x.shape[0], D), 1.0).to_event(1)
        shift = dist.transforms.AffineTransform(x @ A.T, 0.3, event_dim=1)
        pyro.sample("z", dist.TransformedDistribution(base, [shift]))


@pytest.fixture
def x():
    return torch.randn(2000, D, generator=torch.Generator().manual_seed(0))


def test_active_units_on_a_constructed_guide(x):
    means = posterior_means(normal_guide, x)
    torch.testing.assert_close(means, x @ A.T)
    activity = means.var(0)
    torch.testing.assert_close(activity, x.var(0) * A.diagonal() ** 2)
    assert active_units(means).tolist() == [True, True, False, False]
    # the same answer by Monte Carlo when the guide has no closed-form mean
    mc = posterior_means(flow_guide, x[:200], num_samples=200)
    assert (mc - x[:200] @ A.T).abs().max() < 0.1  # 0.3 / sqrt(200) per entry, < 5 s.e.
    assert active_units(mc).tolist() == [True, True, False, False]
    with pytest.raises(ValueError, match=r"shape \(N, D\) with N >= 2"):
        active_units(means[:1])


def test_kl_per_dim_is_the_closed_form_and_sums_to_the_total(bundled):
    vae = VAE(
        StandardNormalPrior(5),
        BernoulliLikelihood.mlp(5, (1, 28, 28), (32,)),
        DiagonalNormalGuide.mlp((1, 28, 28), 5, (32,)),
    )
    xb = torch.bernoulli(
        bundled["test"].tensors[0][:20], generator=torch.Generator().manual_seed(1)
    )
    kl = kl_per_dim(vae.model, vae.guide, xb, batch_size=7)
    assert kl.shape == (20, 5)
    loc, scale = (t.detach() for t in vae.posterior(xb))
    torch.testing.assert_close(kl, 0.5 * (scale**2 + loc**2 - 1) - scale.log())
    total = elbo_terms(vae.model, vae.guide, xb)["kl"]
    torch.testing.assert_close(kl.sum(-1), total, rtol=1e-5, atol=1e-5)


def test_kl_per_dim_falls_back_to_monte_carlo_without_a_formula():
    """q = StudentT(5, m, s) per dim against p = N(0, 1): no registered KL; the Monte Carlo
    value matches a quadrature of ∫ q (log q - log p)."""
    m, s = torch.tensor([0.0, 1.0]), torch.tensor([0.5, 2.0])

    def t_guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.StudentT(5.0, m, s).expand([x.shape[0], 2]).to_event(1))

    def two_dim_model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z, 1.0).to_event(1), obs=x)

    kl = kl_per_dim(two_dim_model, t_guide, torch.zeros(3, 2), num_samples=100_000)
    grid = torch.linspace(-60, 60, 400_001, dtype=torch.float64).unsqueeze(-1)
    q = torch.distributions.StudentT(5.0, m.double(), s.double())
    lq = q.log_prob(grid)
    lp = torch.distributions.Normal(0.0, 1.0).log_prob(grid)
    exact = torch.trapezoid(lq.exp() * (lq - lp), grid.squeeze(-1), dim=0)
    torch.testing.assert_close(kl[0].double(), exact, rtol=0.03, atol=0.01)


def test_non_factorized_guide_has_no_kl_per_dim(x):
    def mvn_guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.MultivariateNormal(x @ A.T, torch.eye(D) * 0.25))

    with pytest.raises(ValueError, match=r"does not factorize.*elbo_terms"):
        kl_per_dim(model, mvn_guide, x[:10])
    diag = latent_diagnostics(model, mvn_guide, x[:200], warn=False)
    assert diag.kl_per_dim is None and diag.num_active == 2


def test_collapse_warning_only_for_a_collapsed_guide(x):
    def prior_guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(torch.zeros(x.shape[0], D), 1.0).to_event(1))

    with pytest.warns(PosteriorCollapseWarning, match=r"anneal.*free bits.*weaken the decoder"):
        diag = latent_diagnostics(model, prior_guide, x[:300])
    assert diag.num_active == 0 and diag.kl_per_dim.abs().max() < 1e-6
    with warnings.catch_warnings():
        warnings.simplefilter("error", PosteriorCollapseWarning)
        healthy = latent_diagnostics(model, normal_guide, x[:300])
    assert healthy.num_active == 2 and healthy.latent_dim == D
    # KL of N(A x, 0.5²) from N(0, 1), averaged over x ~ N(0, I): dims 0, 1 > dims 2, 3
    assert (healthy.kl_per_dim[:2] > healthy.kl_per_dim[2:].max() + 0.3).all()


def test_active_units_and_kl_per_dim_are_reported_side_by_side(x):
    """Exact cases for the two views of a unit (module docstring of diagnostics):

    - units 0, 1: mean x_d (activity 1), scale 0.5: active, KL well above 0.1;
    - unit 2: mean 0.2 x_d, scale 0.98: activity 0.04 > 0.01 (active), but its KL is
      ½(0.98² + 0.04 - 1) - log 0.98 ≈ 0.0004 + 0.02, far below 0.1: active, not used;
    - unit 3: mean 2 whatever x, scale 1: activity 0 (inactive) and KL ½ · 2² = 2 nats,
      paid for no information.

    The KL is the closed form of N(m, s²) from N(0, 1) averaged over the data, and it is
    never below half the activity (population variance) for this standard normal prior.
    """
    scale = torch.tensor([0.5, 0.5, 0.98, 1.0])

    def mixed_guide(x):
        loc = torch.stack([x[:, 0], x[:, 1], 0.2 * x[:, 2], torch.full_like(x[:, 3], 2.0)], -1)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))

    with pytest.warns(PosteriorCollapseWarning) as caught:
        diag = latent_diagnostics(model, mixed_guide, x, min_active_fraction=0.9)
    loc = torch.stack([x[:, 0], x[:, 1], 0.2 * x[:, 2], torch.full_like(x[:, 3], 2.0)], -1)
    closed = (0.5 * (scale**2 + loc**2 - 1) - scale.log()).mean(0)
    torch.testing.assert_close(diag.kl_per_dim, closed)
    torch.testing.assert_close(diag.activity, loc.var(0))
    assert (diag.kl_per_dim >= loc.var(0, unbiased=False) / 2).all()
    assert diag.active.tolist() == [True, True, True, False]
    assert diag.kl_active.tolist() == [True, True, False, True]
    assert diag.used.tolist() == [True, True, False, False]
    assert (diag.num_active, diag.num_kl_active, diag.num_used) == (3, 3, 2)
    # 2 used < 0.9 · 4: the warning states all three counts and the remedies, in full
    message = str(caught[0].message)
    assert "3 of 4 latent units are active" in message
    assert "3 have a KL above 0.1 nats, 2 both" in message
    assert message.endswith("(smaller, or less autoregressive).")
    assert diag.summary() == (
        "z: 3 of 4 units active (Cov_x E_q[z_d] > 0.01), 3 with KL > 0.1 nats, 2 both; "
        f"KL {closed.sum().item():.3g} nats per example"
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error", PosteriorCollapseWarning)
        latent_diagnostics(model, mixed_guide, x, min_active_fraction=0.5)  # 2 of 4 used


def test_a_guide_whose_mean_ignores_x_has_no_used_unit_whatever_its_kl(x):
    """q(z | x) = N(loc, s²) with loc and s fixed: activity exactly 0, KL the closed form
    ½(s² + loc² - 1) - log s per dimension; the warning fires although the KL is large."""
    loc, scale = torch.tensor([0.0, 1.0, -3.0, 0.5]), torch.tensor([1.0, 0.2, 1.0, 2.0])

    def constant_guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(loc, scale).expand([x.shape[0], D]).to_event(1))

    with pytest.warns(PosteriorCollapseWarning, match=r"0 of 4 latent units are active"):
        diag = latent_diagnostics(model, constant_guide, x[:300])
    torch.testing.assert_close(diag.kl_per_dim, 0.5 * (scale**2 + loc**2 - 1) - scale.log())
    assert diag.activity.abs().max() == 0 and diag.num_active == diag.num_used == 0
    assert diag.num_kl_active == 3  # dimensions 1, 2, 3 pay KL for nothing


def test_hierarchical_prior_makes_a_unit_active_at_zero_kl(x):
    """z2 ~ N(0, 1) and z1 | z2 ~ N(z2, 1); a guide with q(z2 | x) = N(x_0, 0.5²) and
    q(z1 | z2) = the prior p(z1 | z2): z1 follows z2 (activity 1, active) at KL 0."""

    def two_level_model(x):
        with pyro.plate("data", x.shape[0]):
            z2 = pyro.sample("z2", dist.Normal(0.0, 1.0))
            z1 = pyro.sample("z1", dist.Normal(z2, 1.0))
            pyro.sample("x", dist.Normal(z1.unsqueeze(-1), 1.0).to_event(1), obs=x)

    def two_level_guide(x):
        with pyro.plate("data", x.shape[0]):
            z2 = pyro.sample("z2", dist.Normal(x[:, 0], 0.5))
            pyro.sample("z1", dist.Normal(z2, 1.0))

    with pytest.warns(PosteriorCollapseWarning, match=r"at site 'z1'") as caught:
        diag = latent_diagnostics(two_level_model, two_level_guide, x[:500], num_samples=400)
    assert "'z2'" not in str(caught[0].message)
    z1 = diag.sites["z1"]
    assert z1.num_active == 1 and z1.kl_per_dim.abs().max() < 1e-6 and z1.num_used == 0
    assert diag.sites["z2"].num_used == 1


def test_latent_diagnostics_refuses_bad_thresholds(x):
    with pytest.raises(ValueError, match="kl_threshold must be a number >= 0"):
        latent_diagnostics(model, normal_guide, x[:10], kl_threshold=-0.1)
