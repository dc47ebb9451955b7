"""Importance-sampled log p(x) against closed forms (probabilistic PCA), flows, conditional
models and chunking; its standard error against the spread over reruns, and the Pareto k-hat
diagnostic against ArviZ and a known tail."""

from __future__ import annotations

import math
import warnings

import arviz as az
import numpy as np
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
    binarize,
    elbo_terms,
    evaluate,
    fit,
)
from pyro_vae.check.loglik import (
    ImportanceWeightWarning,
    LogLikelihood,
    _LogMeanExp,
    log_likelihood,
)

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
    nan = torch.tensor([math.nan], dtype=torch.float64)
    ref_sd = torch.cat([log_w[:, :4].std(0), nan])
    below_tail = log_w[:, :4].sort(0, descending=True).values[96:]  # all but the M + 1 largest
    ref_body_sd = torch.cat([below_tail.std(0), nan])
    tails = []
    for chunk in (1, 7, 100, 997):
        acc = _LogMeanExp(5, torch.device("cpu"), 997)
        for start in range(0, 997, chunk):
            acc.update(log_w[start : start + chunk])
        torch.testing.assert_close(acc.estimate(), ref, rtol=1e-12, atol=1e-10)
        torch.testing.assert_close(acc.delta_stderr(), ref_se, rtol=1e-9, atol=1e-12)
        sd = acc.log_weight_sd(below_tail=False)
        torch.testing.assert_close(sd, ref_sd, rtol=1e-9, atol=0, equal_nan=True)
        torch.testing.assert_close(
            acc.log_weight_sd(), ref_body_sd, rtol=1e-9, atol=0, equal_nan=True
        )
        # only the M + 1 largest log-weights are kept: M = ceil(min(K/5, 3 sqrt(K))) = 95
        assert acc.top.shape == (96, 5)
        tails.append(acc.pareto_tail())
    for tail in tails[1:]:
        for name, value in tail.items():
            torch.testing.assert_close(value, tails[0][name], rtol=1e-12, atol=0, equal_nan=True)
    # the example with one non-zero weight: a handful of weights carry all the mass
    assert tails[0]["shape"][4] == math.inf


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


# ---------------------------------------------------------------- Pareto k-hat


def test_pareto_k_matches_arviz_psislw():
    """The streamed tail fit gives ArviZ's k-hat (PSIS, Vehtari et al. 2024) to rounding,
    from light to heavy tails and for a tail shortened by ties at the cutoff."""
    gen = torch.Generator().manual_seed(0)
    for num_samples in (30, 1000, 5000):
        cols = [
            torch.randn(num_samples, 8, generator=gen, dtype=torch.float64) * 2.0,  # lognormal
            # Pareto weights with k = 0.9: log w = 0.9 * Exp(1)
            torch.empty(num_samples, 8, dtype=torch.float64).exponential_(generator=gen) * 0.9,
            -torch.rand(num_samples, 8, generator=gen, dtype=torch.float64),  # bounded
        ]
        log_w = torch.cat(cols, 1) - 300.0
        log_w[: num_samples // 2, -1] = log_w[:, -1].max()  # half the weights tied at the top
        log_w[0, -1] += 1.0  # ... but for one above them
        log_w[1:8, -1] = log_w[1:8, -1] + torch.arange(1, 8, dtype=torch.float64) * 1e-3
        acc = _LogMeanExp(24, torch.device("cpu"), num_samples)
        for start in range(0, num_samples, 64):
            acc.update(log_w[start : start + 64])
        k = acc.pareto_tail()["shape"]
        _, k_arviz = az.psislw(log_w.T.numpy().copy())
        np.testing.assert_allclose(k.numpy(), k_arviz, rtol=1e-9, atol=1e-9)
        assert acc.top.shape[0] == math.ceil(min(num_samples / 5, 3 * math.sqrt(num_samples))) + 1
    assert k[8:16].median() == pytest.approx(0.9, abs=0.1) and (k[16:23] < 0.0).all()


def test_pareto_k_of_constant_weights_is_minus_infinity():
    # ArviZ returns +inf when fewer than 5 weights lie above the cutoff; a flat top (every
    # weight equal, as with the exact posterior in exact arithmetic) is the lightest tail
    log_w = torch.full((200, 3), -7.0, dtype=torch.float64)
    log_w[:3, 1] = torch.tensor([5.0, 4.0, 3.0])  # three weights dominate the rest
    log_w[:, 2] = torch.linspace(-9, -7, 200, dtype=torch.float64)  # distinct: fitted
    acc = _LogMeanExp(3, torch.device("cpu"), 200)
    acc.update(log_w)
    k = acc.pareto_tail()["shape"]
    assert k[0] == -math.inf and k[1] == math.inf and math.isfinite(k[2])
    assert acc.delta_stderr()[0] == 0.0


# p(z) = N(0, 1), p(x | z) = N(z, 1)  =>  p(x) = N(0, 2), p(z | x) = N(x/2, 1/2). A Gaussian
# guide with the posterior's mean and scale s * sqrt(1/2) has log-weights
# c + (1 - s^2) chi2_1 / 2, so for s < 1 the weights have a Pareto tail of shape
# k = 1 - s^2; for s = 1 they are constant; for s > 1 they are bounded (k < 0).


def _normal_normal(n: int, seed: int = 0):
    x = torch.randn(n, 1, generator=torch.Generator().manual_seed(seed)) * math.sqrt(2.0)

    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(1), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z, 1.0).to_event(1), obs=x)

    def guide_with_width(s):
        def guide(x):
            with pyro.plate("data", x.shape[0]):
                pyro.sample("z", dist.Normal(x / 2, s * math.sqrt(0.5)).to_event(1))

        return guide

    return x, model, guide_with_width


def test_pareto_k_of_a_known_tail_and_the_warning():
    x, model, guide_with_width = _normal_normal(40)
    narrow = guide_with_width(0.4)  # k = 1 - 0.16 = 0.84
    with pytest.warns(ImportanceWeightWarning, match="more samples K.*richer guide.*train") as w:
        ll = log_likelihood(model, narrow, x, num_samples=4000, particle_chunk=1000)
    assert w[0].filename == __file__  # the warning points at the caller, not at torch
    assert 0.7 < ll.pareto_k.median().item() < 0.95, ll.pareto_k
    assert ll.pareto_k_fraction_above(0.7) > 0.5
    assert ll.pareto_k_max == ll.pareto_k.max().item()

    with warnings.catch_warnings():
        warnings.simplefilter("error", ImportanceWeightWarning)
        exact = log_likelihood(model, guide_with_width(1.0), x, num_samples=4000)
        wide = log_likelihood(model, guide_with_width(1.5), x, num_samples=4000)
    # constant weights up to float32 rounding: no tail to speak of, and no spread
    assert (exact.pareto_k < 0.3).all(), exact.pareto_k
    assert exact.pareto_k_fraction_above(0.7) == 0.0 and exact.mean_stderr < 1e-5
    log_px = dist.Normal(0.0, math.sqrt(2.0)).log_prob(x[:, 0]).double()
    torch.testing.assert_close(exact.estimate, log_px, rtol=0, atol=1e-4)
    assert (wide.pareto_k < 0.0).all(), wide.pareto_k  # bounded weights

    # K < 21: too few weights to fit a tail
    few = log_likelihood(model, narrow, x, num_samples=20)
    assert torch.isnan(few.pareto_k).all() and few.pareto_k_max is None
    assert torch.isfinite(few.stderr).all()  # the delta-method error


def test_evaluate_reports_the_pareto_diagnostics():
    x, model, guide_with_width = _normal_normal(40)
    with pytest.warns(ImportanceWeightWarning):
        report = evaluate(model, guide_with_width(0.4), x, num_samples=2000)
    assert report["pareto_k_frac_above_0_7"] > 0.5
    assert 0.7 < report["pareto_k_median"] <= report["pareto_k_max"]
    assert 0 < report["nll_stderr"] < 0.5
    with warnings.catch_warnings():
        warnings.simplefilter("error", ImportanceWeightWarning)
        report = evaluate(model, guide_with_width(1.0), x, num_samples=100)
    assert report["pareto_k_frac_above_0_7"] == 0.0 and report["pareto_k_max"] < 0.5
    assert evaluate(model, guide_with_width(1.0), x, num_samples=10)["pareto_k_max"] is None


# ---------------------------------------------------------------- standard error calibration


def _spread_over_reruns(model, guide, x, num_samples: int, reruns: int):
    """Reruns with seeds 0, 1, ...: the standard deviation of the dataset means, the same
    computed from the examples' own spreads, and the mean reported standard error."""
    estimates, reported = [], []
    for seed in range(reruns):
        pyro.set_rng_seed(seed)
        ll = log_likelihood(
            model, guide, x, num_samples=num_samples, particle_chunk=min(num_samples, 500)
        )
        estimates.append(ll.estimate)
        reported.append(ll.mean_stderr)
    estimates = torch.stack(estimates)
    # The examples' samples are independent, so Var(mean) = sum_n Var(estimate_n) / N^2:
    # from the per-example spreads this is far less noisy than the standard deviation of
    # `reruns` dataset means, which estimates the same number (both squares are unbiased).
    pooled = estimates.var(0).sum().sqrt().item() / x.shape[0]
    return estimates.mean(1).std().item(), pooled, sum(reported) / reruns


def test_standard_error_matches_the_spread_over_reruns_with_heavy_tails():
    """Examples from light tails (k = 0.19) to heavy ones (k = 0.88), which dominate the
    spread: the shapes pooled across examples must not flatten that difference."""
    torch.set_num_threads(1)  # small tensors: threads only contend (reset by conftest)
    x, model, _ = _normal_normal(50)
    width = torch.linspace(0.35, 0.9, 50).unsqueeze(-1)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(x / 2, width * math.sqrt(0.5)).to_event(1))

    for num_samples in (100, 1000):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ImportanceWeightWarning)
            _, pooled, reported = _spread_over_reruns(model, guide, x, num_samples, 60)
        assert reported == pytest.approx(pooled, rel=0.25), (num_samples, reported, pooled)


def test_standard_error_is_calibrated_on_a_trained_mnist_vae(bundled):
    """A 784-200-10 VAE (MLP encoder and decoder) trained for one epoch on the bundled
    MNIST: its importance weights are heavy-tailed, and the delta-method error falls well
    short of the spread. The reported s.e. of the dataset mean must match the spread of
    the dataset mean over independent reruns on 100 test images, at K = 100 and K = 1000."""
    torch.set_num_threads(1)  # sized for one core (reset by conftest)
    x_train = binarize(bundled["train"].tensors[0], seed=0)
    x_test = binarize(bundled["test"].tensors[0][:100], seed=1)
    vae = VAE(
        StandardNormalPrior(10),
        BernoulliLikelihood.mlp(10, (1, 28, 28), (200,)),
        DiagonalNormalGuide.mlp((1, 28, 28), 10, (200,)),
    )
    fit(vae.model, vae.guide, x_train, epochs=1, batch_size=100, progress=False, seed=0)
    for num_samples, reruns in ((100, 20), (1000, 10)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ImportanceWeightWarning)
            plain, pooled, reported = _spread_over_reruns(
                vae.model, vae.guide, x_test, num_samples, reruns
            )
        assert reported == pytest.approx(pooled, rel=0.25), (num_samples, reported, pooled)
        # the plain standard deviation of 10-20 dataset means is itself uncertain by a
        # quarter or more with heavy tails (usually too low, now and then far too high)
        assert reported == pytest.approx(plain, rel=0.5), (num_samples, reported, plain)


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
    with pytest.raises(ValueError, match="num_samples must be an integer >= 1"):
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
