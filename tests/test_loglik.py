"""Importance-sampled log p(x) against closed forms (probabilistic PCA), flows, conditional
models and chunking."""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.distributions import transforms as T
from pyro.nn import PyroModule

from pyro_vae import (
    VAE,
    BernoulliLikelihood,
    DiagonalNormalGuide,
    StandardNormalPrior,
    elbo_terms,
)
from pyro_vae.check.loglik import LogLikelihood, _LogMeanExp, log_likelihood

# ---------------------------------------------------------------- probabilistic PCA
# p(z) = N(0, I), p(x | z) = N(W z + b, σ² I)  =>  p(x) = N(b, W Wᵀ + σ² I) and
# p(z | x) = N(M⁻¹ Wᵀ (x - b), σ² M⁻¹) with M = Wᵀ W + σ² I (Tipping & Bishop, 1999).

X_DIM, Z_DIM, SIGMA = 6, 2, 0.5


@pytest.fixture
def ppca():
    gen = torch.Generator().manual_seed(0)
    W = torch.randn(X_DIM, Z_DIM, generator=gen)
    b = torch.randn(X_DIM, generator=gen)
    marginal = dist.MultivariateNormal(b, W @ W.T + SIGMA**2 * torch.eye(X_DIM))
    x = marginal.sample((24,))
    M_inv = torch.linalg.inv(W.T @ W + SIGMA**2 * torch.eye(Z_DIM))

    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(Z_DIM), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z @ W.T + b, SIGMA).to_event(1), obs=x)

    def posterior(x):
        return (x - b) @ W @ M_inv.T, SIGMA**2 * M_inv

    def gaussian_guide(shift, inflate):
        def guide(x):
            loc, cov = posterior(x)
            with pyro.plate("data", x.shape[0]):
                pyro.sample(
                    "z", dist.Normal(loc + shift, cov.diagonal().sqrt() * inflate).to_event(1)
                )

        return guide

    def exact_guide(x):
        loc, cov = posterior(x)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.MultivariateNormal(loc, covariance_matrix=cov))

    return {
        "model": model,
        "x": x,
        "log_px": marginal.log_prob(x),
        "exact": exact_guide,
        "gaussian": gaussian_guide,
    }


def test_matches_the_exact_marginal_with_a_gaussian_guide(ppca):
    # mean-field, shifted by 0.2 and 1.3x too wide: off, but a reasonable proposal
    guide = ppca["gaussian"](0.2, 1.3)
    ll = log_likelihood(ppca["model"], guide, ppca["x"], num_samples=2000, particle_chunk=500)
    assert isinstance(ll, LogLikelihood) and ll.estimate.shape == (24,)
    err = ll.estimate - ppca["log_px"].double()
    assert err.abs().mean() < 0.05, err
    # the standard error is calibrated: every example within 4 s.e. (+ float32 slack)
    assert (err.abs() < 4 * ll.stderr + 1e-3).all(), (err, ll.stderr)
    assert 0 < ll.mean_stderr < ll.stderr.max()


def test_exact_posterior_guide_gives_log_px_with_zero_variance(ppca):
    model, x, log_px = ppca["model"], ppca["x"], ppca["log_px"]
    # log p(x, z) - log q(z | x) = log p(x) for every z when q is the posterior, so the
    # one-sample ELBO (K = 1) is exact, and elbo_terms (analytic KL) agrees on average
    one = log_likelihood(model, ppca["exact"], x, num_samples=1).estimate
    torch.testing.assert_close(one, log_px.double(), rtol=0, atol=1e-4)
    terms = elbo_terms(model, ppca["exact"], x.repeat(200, 1))["elbo"].reshape(200, -1)
    se = terms.std(0) / math.sqrt(200)
    assert ((terms.mean(0) - log_px).abs() < 4 * se + 1e-4).all()
    ll = log_likelihood(model, ppca["exact"], x, num_samples=50)
    assert torch.allclose(ll.estimate, log_px.double(), atol=1e-4)
    assert ll.stderr.max() < 1e-5  # every weight is p(x): no Monte Carlo spread


def test_poor_guide_orders_elbo_below_iwae_bounds(ppca):
    model, x, log_px = ppca["model"], ppca["x"], ppca["log_px"].double()
    guide = ppca["gaussian"](0.5, 2.0)
    elbo = elbo_terms(model, guide, x)["elbo"].double().mean()
    iwae10 = log_likelihood(model, guide, x, num_samples=10).mean
    iwae1000 = log_likelihood(model, guide, x, num_samples=1000, particle_chunk=250)
    assert elbo < iwae10 - 0.3 < iwae1000.mean - 0.3
    assert iwae1000.mean == pytest.approx(log_px.mean().item(), abs=0.05)
    assert iwae1000.mean <= log_px.mean().item() + 4 * iwae1000.mean_stderr


def test_single_sample_is_an_unbiased_elbo_estimate_with_infinite_stderr(ppca):
    guide = ppca["gaussian"](0.2, 1.3)
    x = ppca["x"].repeat(50, 1)  # 1200 single-sample draws
    ll = log_likelihood(ppca["model"], guide, x, num_samples=1)
    elbo = elbo_terms(ppca["model"], guide, x)["elbo"]
    assert torch.isinf(ll.stderr).all()
    se = math.hypot(ll.estimate.std().item(), elbo.std().item()) / math.sqrt(len(x))
    assert abs(ll.mean - elbo.mean().item()) < 4 * se


# ---------------------------------------------------------------- chunking


def test_streaming_log_mean_exp_is_exact_for_any_chunking():
    gen = torch.Generator().manual_seed(3)
    log_w = torch.randn(997, 5, generator=gen, dtype=torch.float64) * 30 - 500
    log_w[:, 4] = -math.inf  # an example whose weights are all zero
    log_w[13, 4] = -1e4
    ref = torch.logsumexp(log_w, 0) - math.log(997)
    w = (log_w - log_w.max(0).values).exp()
    ref_se = (w.std(0) / w.mean(0)) / math.sqrt(997)
    for chunk in (1, 7, 100, 997):
        acc = _LogMeanExp(5, torch.device("cpu"))
        for start in range(0, 997, chunk):
            acc.update(log_w[start : start + chunk])
        est, se = acc.result()
        torch.testing.assert_close(est, ref, rtol=1e-12, atol=1e-10)
        torch.testing.assert_close(se, ref_se, rtol=1e-9, atol=1e-12)


def test_chunk_sizes_agree_within_standard_error(ppca):
    guide = ppca["gaussian"](0.3, 1.5)
    runs = [
        log_likelihood(ppca["model"], guide, ppca["x"], num_samples=600, **kw)
        for kw in (
            {"batch_size": 24, "particle_chunk": 600},
            {"batch_size": 5, "particle_chunk": 37},
        )
    ]
    diff = (runs[0].estimate - runs[1].estimate).abs()
    se = (runs[0].stderr.square() + runs[1].stderr.square()).sqrt()
    assert (diff < 5 * se + 1e-6).all()
    # with the exact posterior as proposal, chunking cannot change anything
    exact = [
        log_likelihood(ppca["model"], ppca["exact"], ppca["x"], num_samples=60, **kw).estimate
        for kw in (
            {"batch_size": 24, "particle_chunk": 60},
            {"batch_size": 7, "particle_chunk": 11},
        )
    ]
    torch.testing.assert_close(exact[0], exact[1], rtol=0, atol=1e-5)


# ---------------------------------------------------------------- other programs


@pytest.fixture
def binary_x(bundled):
    return torch.bernoulli(
        bundled["test"].tensors[0][:12], generator=torch.Generator().manual_seed(1)
    )


class AffineARGuide(PyroModule):
    """q(z | x): a diagonal Gaussian from an MLP encoder, then an affine autoregressive
    transform (a one-layer IAF)."""

    def __init__(self, latent_dim: int) -> None:
        super().__init__()
        self.base = DiagonalNormalGuide.mlp((1, 28, 28), latent_dim, (32,))
        self.flow = T.affine_autoregressive(latent_dim, hidden_dims=[16])

    def __call__(self, x, y=None):
        pyro.module("flow", self.flow)
        with pyro.plate("data", x.shape[0]):
            base = self.base.dist(x)
            pyro.sample("z", dist.TransformedDistribution(base, [self.flow]))


def test_flow_guide_gives_finite_estimates_above_the_elbo(binary_x):
    vae = VAE(
        StandardNormalPrior(4),
        BernoulliLikelihood.mlp(4, (1, 28, 28), (32,)),
        DiagonalNormalGuide.mlp((1, 28, 28), 4, (32,)),
    )
    guide = AffineARGuide(4)
    ll = log_likelihood(vae.model, guide, binary_x, num_samples=200)
    elbo = elbo_terms(vae.model, guide, binary_x)["elbo"]  # Monte Carlo KL for the flow
    assert torch.isfinite(ll.estimate).all() and torch.isfinite(ll.stderr).all()
    assert ll.mean >= elbo.mean().item() - 4 * ll.mean_stderr


def test_two_layer_plain_pyro_program(binary_x):
    """A user's program: z1 -> z2 -> x, with a guide over both layers."""
    torch.manual_seed(0)
    dec1, dec2 = torch.nn.Linear(2, 3), torch.nn.Linear(3, 784)
    enc1, enc2 = torch.nn.Linear(784, 4), torch.nn.Linear(3, 6)

    def model(x):
        with pyro.plate("data", x.shape[0]):
            z1 = pyro.sample("z1", dist.Normal(torch.zeros(2), 1.0).to_event(1))
            z2 = pyro.sample("z", dist.Normal(dec1(z1), 0.5).to_event(1))
            logits = dec2(z2).reshape(*z2.shape[:-1], 1, 28, 28)
            pyro.sample("x", dist.Bernoulli(logits=logits).to_event(3), obs=x)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            h = enc1(x.reshape(x.shape[0], -1))
            z2 = pyro.sample("z", dist.Normal(h[..., :3], 0.6).to_event(1))
            loc, raw = enc2(z2).split(3, -1)
            pyro.sample(
                "z1",
                dist.Normal(loc[..., :2], torch.nn.functional.softplus(raw[..., :2])).to_event(1),
            )

    ll = log_likelihood(model, guide, binary_x, num_samples=300, particle_chunk=64)
    elbo = elbo_terms(model, guide, binary_x)["elbo"]
    assert torch.isfinite(ll.estimate).all()
    assert ll.mean > elbo.mean().item()


def test_conditional_model_given_labels(bundled):
    """A conditional VAE p(x | z, y) with q(z | x, y): estimates of log p(x | y)."""
    x = torch.bernoulli(bundled["test"].tensors[0][:10], generator=torch.Generator().manual_seed(1))
    y = bundled["test"].tensors[1][:10]
    torch.manual_seed(0)
    embed = torch.nn.Embedding(10, 3)
    decoder = torch.nn.Linear(3 + 3, 784)
    encoder = torch.nn.Linear(784 + 3, 6)

    def model(x, y):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(3), 1.0).to_event(1))
            e = embed(y).expand(*z.shape[:-1], 3)
            logits = decoder(torch.cat([z, e], -1)).reshape(*z.shape[:-1], 1, 28, 28)
            pyro.sample("x", dist.Bernoulli(logits=logits).to_event(3), obs=x)

    def guide(x, y):
        with pyro.plate("data", x.shape[0]):
            loc, raw = encoder(torch.cat([x.reshape(len(x), -1), embed(y)], -1)).split(3, -1)
            pyro.sample("z", dist.Normal(loc, torch.nn.functional.softplus(raw)).to_event(1))

    ll = log_likelihood(model, guide, x, y, num_samples=300)
    elbo = elbo_terms(model, guide, x, y)["elbo"]
    assert torch.isfinite(ll.estimate).all()
    assert ll.mean >= elbo.mean().item() - 4 * ll.mean_stderr
    with pytest.raises(ValueError, match="pass matching y"):
        log_likelihood(model, guide, x, y[:3])


def test_bad_input_names_the_fix(ppca):
    model, guide, x = ppca["model"], ppca["exact"], ppca["x"]
    with pytest.raises(ValueError, match="num_samples must be a positive integer"):
        log_likelihood(model, guide, x, num_samples=0)
    with pytest.raises(ValueError, match="x is empty"):
        log_likelihood(model, guide, x[:0])

    def global_model(x):
        s = pyro.sample("s", dist.LogNormal(0.0, 1.0))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", dist.Normal(torch.zeros(X_DIM), s.unsqueeze(-1)).to_event(1), obs=x)

    def global_guide(x):
        pyro.sample("s", dist.LogNormal(0.0, 0.5))

    with pytest.raises(ValueError, match="outside plate 'data'"):
        log_likelihood(global_model, global_guide, x, num_samples=4)
