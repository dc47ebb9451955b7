# Tutorial 2 (percent script; `python tutorials/build.py 02_elbo_and_its_gap` makes the
# notebook). Edit this file, not the .ipynb.
# ruff: noqa: E402 (the first cell starts a timer and filters a warning before imports)

# %% [markdown]
# # 2. The ELBO and its gap
#
# **Learning goals**
#
# - Derive the ELBO two ways, by Jensen's inequality and by the decomposition
#   $\log p(x) = \mathrm{ELBO} + \mathrm{KL}(q \,\|\, p(z \mid x))$, and check both
#   numerically on a model whose $\log p(x)$ is exact.
# - Derive the closed-form KL between a diagonal Gaussian and $\mathcal{N}(0, I)$ that
#   every VAE uses, and check it against `torch.distributions.kl_divergence`.
# - See SVI find the tightest guide of its family, and predict the gap of a mean-field
#   guide in closed form.
# - Watch the importance weighted (IWAE) bound close the gap as the number of samples
#   $K$ grows, and learn why a guide trained on the ELBO is a poor proposal for it.
# - Read the standard error and the Pareto $\hat k$ that `log_likelihood` reports.
#
# In a VAE the evidence $\log p(x)$ is intractable, so we can never see how loose the
# ELBO is. Here we pick a model where $\log p(x)$ **is** exact, a linear-Gaussian latent
# variable model (probabilistic PCA), and measure everything the theory says. The ELBO
# and the importance sampling estimate come from the library's evaluation functions
# (`pyro_vae.elbo_terms`, `pyro_vae.log_likelihood`), which work for any Pyro
# model/guide pair, so this notebook also checks them against closed forms. Every
# conclusion in the text is checked by a `claim(...)` in the cell that computes it.
#
# *Runtime:* the last cell prints this notebook's wall time; the full-mode time on 2 CPU
# cores is listed in `tutorials/README.md`. `PYRO_VAE_SMOKE=1` runs a quick version
# (its numbers mean nothing, and its claims are only reported).

# %%
import math
import os
import time
import warnings

START = time.perf_counter()
SMOKE = os.environ.get("PYRO_VAE_SMOKE") == "1"


def claim(ok, text):
    """Check a statement the prose makes: it must hold in full mode; smoke mode only reports it."""
    print(f"{'✓' if ok else '✗'} {text}")
    assert ok or SMOKE, f"The prose claims: {text}"


warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm in a notebook

import matplotlib.pyplot as plt
import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule, PyroParam
from torch import nn
from torch.distributions import kl_divergence

from pyro_vae import elbo_terms, fit, log_likelihood
from pyro_vae.check.loglik import ImportanceWeightWarning

IMPORTED = time.perf_counter()
# log_likelihood warns when Pareto k̂ > 0.7; this notebook prints and checks k̂ itself
warnings.filterwarnings("ignore", category=ImportanceWeightWarning)
plt.rcParams.update({"figure.dpi": 72, "savefig.dpi": 72, "figure.figsize": (6, 3.5)})
pyro.enable_validation(True)
pyro.set_rng_seed(0)
print("smoke mode" if SMOKE else "full mode")

# %% [markdown]
# ## A model with an exact evidence
#
# $$
# z \sim \mathcal{N}(0, I_d), \qquad x \mid z \sim \mathcal{N}(W z + b,\ \sigma^2 I_D).
# $$
#
# $x$ is a linear function of Gaussians plus Gaussian noise, so it is Gaussian:
#
# $$
# p(x) = \mathcal{N}\big(x;\ b,\ W W^\top + \sigma^2 I_D\big).
# $$
#
# Bayes' rule, $p(z \mid x) = p(x \mid z)\,p(z) / p(x)$, with both factors Gaussian in
# $z$: completing the square in $\log p(x \mid z) + \log p(z)$ gives the exact posterior
#
# $$
# p(z \mid x) = \mathcal{N}\big(z;\ \mu(x),\ \Sigma\big), \qquad
# \Sigma = \big(I_d + W^\top W / \sigma^2\big)^{-1}, \qquad
# \mu(x) = \Sigma W^\top (x - b) / \sigma^2 .
# $$
#
# The posterior covariance does not depend on $x$ and the posterior mean is linear in
# $x$. We take $d = 2$, $D = 5$, and two columns of $W$ that are nearly parallel, so
# the two latent coordinates explain the data in almost the same way and the posterior is
# strongly correlated (the check asks for a correlation beyond $\pm 0.9$); a diagonal
# (mean-field) Gaussian cannot represent it. A second check confirms the three closed
# forms together: Bayes' rule $\log p(x \mid z) + \log p(z) - \log p(z \mid x) =
# \log p(x)$ must hold for any $z$ (we draw $z$ far and wide, and ask for float32
# precision relative to the size of the terms).

# %%
z_dim, x_dim, sigma = 2, 5, 0.5
generator = torch.Generator().manual_seed(0)
w1 = torch.randn(x_dim, generator=generator)
W = torch.stack([w1, w1 + 0.3 * torch.randn(x_dim, generator=generator)], dim=1)
b = torch.randn(x_dim, generator=generator)

marginal = dist.MultivariateNormal(b, covariance_matrix=W @ W.T + sigma**2 * torch.eye(x_dim))
post_precision = torch.eye(z_dim) + W.T @ W / sigma**2
post_cov = torch.linalg.inv(post_precision)
post_scale_tril = torch.linalg.cholesky(post_cov)
prior = dist.Normal(torch.zeros(z_dim), 1.0).to_event(1)


def exact_posterior(x):
    loc = (x - b) @ W @ post_cov / sigma**2  # Σ Wᵀ(x − b)/σ², row by row (Σ is symmetric)
    return dist.MultivariateNormal(loc, scale_tril=post_scale_tril.expand(len(x), -1, -1))


def likelihood(z):
    return dist.Normal(z @ W.T + b, sigma).to_event(1)


def model(x):
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", prior)
        return pyro.sample("x", likelihood(z), obs=x)


num_data = 200 if SMOKE else 2000
pyro.set_rng_seed(0)
x_train = pyro.poutine.uncondition(model)(torch.zeros(num_data, x_dim))  # samples of the model
x_test = pyro.poutine.uncondition(model)(torch.zeros(num_data, x_dim))
log_px = marginal.log_prob(x_test)  # exact, per example
correlation = post_cov[0, 1] / (post_cov[0, 0] * post_cov[1, 1]).sqrt()
print(f"exact mean log p(x) on {num_data} test points: {log_px.mean():.4f} nats")
print(f"posterior correlation of z1 and z2: {correlation:.3f}")
z_any = 2 * torch.randn(num_data, z_dim)  # any z at all, not only likely ones
log_post = exact_posterior(x_test).log_prob(z_any)
bayes = likelihood(z_any).log_prob(x_test) + prior.log_prob(z_any) - log_post
relative = ((bayes - log_px).abs().max() / log_post.abs().max()).item()
print(f"largest |log p(x|z) + log p(z) - log p(z|x) - log p(x)| / |log p(z|x)|: {relative:.1e}")
claim(abs(correlation) > 0.9, "the posterior correlation is beyond ±0.9")
claim(relative < 1e-5, "Bayes' rule holds with the closed forms (to float32 precision, 1e-5)")

# %% [markdown]
# ## The ELBO, derived two ways
#
# **By Jensen's inequality.** For any $q(z \mid x)$ that is positive where the posterior
# is, the evidence is an expectation under $q$ of the *importance weight*
# $w(z) = p(x, z) / q(z \mid x)$:
#
# $$
# p(x) = \int p(x, z)\, dz = \int q(z \mid x)\, \frac{p(x, z)}{q(z \mid x)}\, dz
# = \mathbb{E}_{q}[w(z)].
# $$
#
# The logarithm is concave, so for any random variable $\log \mathbb{E}[w] \ge
# \mathbb{E}[\log w]$ (Jensen's inequality), with equality only if $w$ is constant:
#
# $$
# \log p(x) = \log \mathbb{E}_q[w(z)] \;\ge\; \mathbb{E}_q[\log w(z)]
# = \mathbb{E}_{q}\big[\log p(x, z) - \log q(z \mid x)\big] = \mathrm{ELBO}(q; x).
# $$
#
# This derivation says *that* the ELBO is a lower bound, not by how much.
#
# **By the KL decomposition.** Write $p(x, z) = p(z \mid x)\, p(x)$ inside the ELBO:
#
# $$
# \mathrm{ELBO}(q; x) = \mathbb{E}_{q}\big[\log p(x) + \log p(z \mid x) - \log q(z \mid x)\big]
# = \log p(x) - \mathrm{KL}\big(q(z \mid x) \,\|\, p(z \mid x)\big).
# $$
#
# This one gives the gap exactly. A KL divergence is $\ge 0$ and is $0$ only when the
# two distributions are equal, so again $\mathrm{ELBO} \le \log p(x)$, with equality iff
# $q$ is the exact posterior (and then $w(z) = p(x)$ is indeed constant).
#
# We check both on four fixed guides, from the prior (which ignores $x$) to the exact
# posterior. A guide is a Pyro program with a site `"z"` in the plate `"data"`; we write
# each one as a small module with a `dist(x)` method and a `forward(x)` that is the
# guide.
#
# - **Jensen:** the average of many importance weights estimates $p(x)$, so the log of
#   that average (`log_likelihood` with $K$ samples) must match the exact $\log p(x)$
#   (within four of its reported standard errors) and lie above the ELBO, the average of
#   $\log w$. We use the two guides whose weights are bounded (their covariance $I$ is
#   wider than the posterior's in every direction), so the average converges quickly.
# - **KL decomposition:** $\log p(x) - \mathrm{ELBO}$, with the ELBO from `elbo_terms`
#   averaged over many draws of $z$, must equal the closed-form
#   $\mathrm{KL}(q(z \mid x) \,\|\, p(z \mid x))$ from `kl_divergence` (within three
#   Monte Carlo standard errors) for every guide, and the ELBO must be below
#   $\log p(x)$ by more than three standard errors, except for the exact posterior,
#   whose gap must be zero within three.
#
# **The closed-form KL inside the ELBO.** `elbo_terms` computes
# $\mathrm{ELBO} = \mathbb{E}_q[\log p(x \mid z)] - \mathrm{KL}(q(z \mid x) \,\|\, p(z))$,
# the reconstruction term by Monte Carlo and the KL in closed form. For a diagonal
# Gaussian $q = \prod_i \mathcal{N}(z_i; \mu_i, \sigma_i^2)$ and the prior
# $\mathcal{N}(0, I)$, one coordinate gives
#
# $$
# \log q(z_i) - \log p(z_i) = -\log \sigma_i - \frac{(z_i - \mu_i)^2}{2 \sigma_i^2}
# + \frac{z_i^2}{2},
# $$
#
# (the $\log 2\pi$ terms cancel), and with $\mathbb{E}_q (z_i - \mu_i)^2 = \sigma_i^2$
# and $\mathbb{E}_q z_i^2 = \mu_i^2 + \sigma_i^2$, summing over the independent
# coordinates,
#
# $$
# \mathrm{KL}\big(\mathcal{N}(\mu, \mathrm{diag}\, \sigma^2) \,\|\, \mathcal{N}(0, I)\big)
# = \frac12 \sum_i \big(\mu_i^2 + \sigma_i^2 - 1 - \log \sigma_i^2\big).
# $$
#
# It is zero only at $\mu = 0$, $\sigma = 1$: each term $\sigma^2 - 1 - \log \sigma^2 \ge
# 0$. We check the formula against `kl_divergence` (to $10^{-4}$ nats) and against a
# Monte Carlo average of $\log q - \log p$ (within four standard errors).


# %%
class Guide(PyroModule):
    """q(z | x) as a Pyro guide; subclasses define dist(x)."""

    def forward(self, x):
        with pyro.plate("data", x.shape[0]):
            return pyro.sample("z", self.dist(x))


class FixedGuide(Guide):
    def __init__(self, make_dist):
        super().__init__()
        self.make_dist = make_dist

    def dist(self, x):
        return self.make_dist(x)


def gaussian_kl_to_standard(loc, scale):
    """KL(N(loc, diag scale²) ‖ N(0, I)) = ½ Σ (μ² + σ² − 1 − log σ²), per example."""
    var = scale**2
    return 0.5 * (loc**2 + var - 1 - var.log()).sum(-1)


guides = {
    "prior p(z) (ignores x)": FixedGuide(
        lambda x: dist.Normal(torch.zeros(len(x), z_dim), 1.0).to_event(1)
    ),
    "exact mean, unit variance": FixedGuide(
        lambda x: dist.Normal(exact_posterior(x).mean, 1.0).to_event(1)
    ),
    "exact mean, posterior marginal variances": FixedGuide(
        lambda x: dist.Normal(exact_posterior(x).mean, post_cov.diagonal().sqrt()).to_event(1)
    ),
    "exact posterior": FixedGuide(exact_posterior),
}

pyro.set_rng_seed(1)
worst_torch, worst_mc = 0.0, 0.0
for name, guide in list(guides.items())[1:3]:  # the diagonal guides that depend on x
    q = guide.dist(x_test)
    formula = gaussian_kl_to_standard(q.mean, q.stddev)
    z = q.sample((100,))
    monte_carlo = (q.log_prob(z) - prior.log_prob(z)).mean(0)  # 100 draws per example
    mc_error = (formula - monte_carlo).mean() / ((formula - monte_carlo).std() / num_data**0.5)
    worst_torch = max(worst_torch, (formula - kl_divergence(q, prior)).abs().max().item())
    worst_mc = max(worst_mc, mc_error.abs().item())
    print(
        f"{name:>42}: mean KL(q || p(z)) formula {formula.mean():.4f}, kl_divergence "
        f"{kl_divergence(q, prior).mean():.4f}, Monte Carlo {monte_carlo.mean():.4f}"
    )
claim(worst_torch < 1e-4, "½Σ(μ² + σ² − 1 − log σ²) equals kl_divergence to 1e-4 nats")
claim(worst_mc < 4, "the formula agrees with a Monte Carlo KL within 4 standard errors")


def as_mvn(d):
    """A diagonal Normal(...).to_event(1) as a MultivariateNormal, for kl_divergence."""
    if isinstance(d, dist.MultivariateNormal):
        return d
    return dist.MultivariateNormal(d.mean, scale_tril=torch.diag_embed(d.stddev))


def gap_both_ways(guide, x, num_draws):
    """Mean ELBO, mean log p(x) − ELBO, mean closed-form KL(q ‖ p(z|x)) over the examples
    of x, and the mean difference of the two gaps with its Monte Carlo standard error."""
    with torch.no_grad():
        repeated = x.repeat(num_draws, 1)  # num_draws independent z per example
        elbo = elbo_terms(model, guide, repeated, batch_size=50_000)["elbo"]
        elbo = elbo.reshape(num_draws, len(x)).mean(0)  # per example
        kl_posterior = kl_divergence(as_mvn(guide.dist(x)), exact_posterior(x))
    exact = marginal.log_prob(x)
    difference = (exact - elbo) - kl_posterior  # Monte Carlo error only, per example
    return {
        "elbo": elbo.mean().item(),
        "gap_1": (exact - elbo).mean().item(),
        "gap_1_se": (exact - elbo).std().item() / math.sqrt(len(x)),
        "gap_2": kl_posterior.mean().item(),
        "difference": difference.mean().item(),
        "difference_se": difference.std().item() / math.sqrt(len(x)),
    }


num_draws = 10 if SMOKE else 200


def print_gaps(guides):
    print(
        f"{'guide':>42} | {'ELBO':>9} | {'log p(x) - ELBO':>15} | {'KL(q || p(z|x))':>15} "
        f"| difference ± s.e."
    )
    results = {}
    for name, guide in guides.items():
        r = gap_both_ways(guide, x_test, num_draws)
        results[name] = r
        print(
            f"{name:>42} | {r['elbo']:9.4f} | {r['gap_1']:15.4f} | {r['gap_2']:15.4f} "
            f"| {r['difference']:+.4f} ± {r['difference_se']:.4f}"
        )
    print(f"{'exact log p(x)':>42} | {log_px.mean():9.4f} |")
    return results


pyro.set_rng_seed(0)
gaps = print_gaps(guides)
claim(
    all(abs(r["difference"]) < 3 * r["difference_se"] for r in gaps.values()),
    "for every guide, log p(x) − ELBO equals KL(q ‖ p(z|x)) within 3 standard errors",
)
claim(
    all(r["gap_1"] > 3 * r["gap_1_se"] for n, r in gaps.items() if n != "exact posterior"),
    "every other guide's ELBO is below log p(x) by more than 3 standard errors",
)
claim(
    abs(gaps["exact posterior"]["gap_1"]) < 3 * gaps["exact posterior"]["gap_1_se"],
    "the exact posterior's gap is zero within 3 standard errors",
)

num_weights = 100 if SMOKE else 10_000
pyro.set_rng_seed(2)
for name in ("prior p(z) (ignores x)", "exact mean, unit variance"):
    x_few = x_test[:200]
    is_estimate = log_likelihood(
        model, guides[name], x_few, num_samples=num_weights, batch_size=200, particle_chunk=1000
    )
    error = (is_estimate.estimate - log_px[:200]).mean().item()
    print(
        f"{name:>26}: log of the mean of {num_weights} weights − log p(x) = {error:+.4f} "
        f"± {is_estimate.mean_stderr:.4f}; mean log w (ELBO) − log p(x) = "
        f"{-gaps[name]['gap_1']:.4f}"
    )
    claim(
        abs(error) < 4 * is_estimate.mean_stderr and -gaps[name]["gap_1"] < error,
        f"{name}: log E_q[w] matches log p(x) and E_q[log w] lies below it (Jensen)",
    )

# %% [markdown]
# Each row's two gap columns are two computations of the same number: one is a Monte
# Carlo average of the ELBO subtracted from the exact evidence, the other a closed-form
# KL that never samples. The last column is their difference with its Monte Carlo
# standard error. The Jensen check adds the other half of the picture: averaging the
# weights *before* taking the logarithm recovers $\log p(x)$, averaging the logarithms
# gives the ELBO, and the difference between the two is the KL in the table.
#
# With the exact posterior the gap vanishes, and more than that: every single draw of the
# full integrand gives $\log p(x, z) - \log p(z \mid x) = \log p(x)$, so that estimator
# has no variance at all (the check asks for $10^{-3}$ nats). `elbo_terms` uses the
# closed-form $\mathrm{KL}(q \,\|\, p(z))$ and a one-draw reconstruction term, which do
# vary (the check asks for a standard deviation above $0.1$ nats). A one-sample
# `log_likelihood` is exactly the single-draw integrand
# $\log p(x, z) - \log q(z \mid x)$:

# %%
pyro.set_rng_seed(0)
one_draw = log_likelihood(model, guides["exact posterior"], x_test, num_samples=1).estimate
one_draw_terms = elbo_terms(model, guides["exact posterior"], x_test)["elbo"]
largest = (one_draw - log_px).abs().max().item()
spread_terms = (one_draw_terms - log_px).std().item()
print(
    f"largest |log p(x, z) − log q(z|x) − log p(x)| over {num_data} examples, one draw "
    f"each: {largest:.2e} nats"
)
print(f"standard deviation of the one-draw elbo_terms estimate (analytic KL): {spread_terms:.3f}")
claim(largest < 1e-3, "with the exact posterior, every single draw gives log p(x)")
claim(spread_terms > 0.1, "the analytic-KL estimate still varies from draw to draw")

# %% [markdown]
# ## SVI finds the tightest guide in its family
#
# Maximising the ELBO over the guide's parameters $\phi$ is the same as minimising
# $\mathrm{KL}(q_\phi \,\|\, p(z \mid x))$, since $\log p(x)$ does not depend on $\phi$.
# We train two *amortized* linear guides $q(z \mid x) = \mathcal{N}(A x + c,\ L
# L^\top)$ with `pyro_vae.fit` (SVI with `Trace_ELBO`), keeping the model fixed: with a
# full lower-triangular $L$ the family contains the exact posterior; with a diagonal $L$
# it does not. A `PyroModule`'s parameters live in Pyro's global param store under its
# name, so each trainable instance needs its own `name` (the library's `VAE` numbers
# its instances for this reason).
#
# The posterior is strongly correlated, which makes the problem ill-conditioned, so we
# take large Adam steps at first and shrink them by 3% after every epoch (`fit` accepts
# an optimizer factory and calls `callbacks` after each epoch): with a constant step
# size, stochastic gradients keep the parameters jittering around the optimum.
#
# The best diagonal Gaussian $q = \prod_i \mathcal{N}(z_i; m_i, s_i^2)$ for a Gaussian
# posterior with precision $\Lambda = \Sigma^{-1}$ has the exact mean and variances
# $s_i^2 = 1/\Lambda_{ii}$ (set $\partial\, \mathrm{KL} / \partial s_i^2 = 0$), and its
# gap is
#
# $$
# \min_{q\ \text{diagonal}} \mathrm{KL}(q \,\|\, p(z \mid x))
# = \tfrac12 \Big( \textstyle\sum_i \log \Lambda_{ii} - \log \det \Lambda \Big),
# $$
#
# the same for every $x$ (for two coordinates, $-\tfrac12 \log(1 - \rho^2)$ with $\rho$
# the posterior correlation). The variances $1/\Lambda_{ii}$ are *smaller* than the
# marginal variances $\Sigma_{ii}$: the reverse KL makes mean-field guides
# under-dispersed. The checks: the trained full-covariance guide's gap is below 0.02
# nats; the trained diagonal guide's gap is within 0.05 nats of the predicted minimum and
# its variances within 5% of $1/\Lambda_{ii}$, each less than a fifth of $\Sigma_{ii}$.


# %%
class LinearGaussianGuide(Guide):
    """q(z | x) = N(A x + c, L Lᵀ), L lower-triangular (full_covariance) or diagonal."""

    def __init__(self, full_covariance, name):
        super().__init__(name=name)  # a unique name: its own entries in Pyro's param store
        self.full_covariance = full_covariance
        self.loc = PyroModule[nn.Linear](x_dim, z_dim)
        self.log_scale = PyroParam(torch.zeros(z_dim))
        self.off_diagonal = PyroParam(torch.zeros(z_dim, z_dim))

    def dist(self, x):
        loc, scale = self.loc(x), self.log_scale.exp()
        if not self.full_covariance:
            return dist.Normal(loc, scale).to_event(1)
        tril = torch.tril(self.off_diagonal, diagonal=-1) + torch.diag(scale)
        return dist.MultivariateNormal(loc, scale_tril=tril.expand(len(x), -1, -1))


min_diagonal_gap = 0.5 * (post_precision.diagonal().log().sum() - torch.logdet(post_precision))
print(f"predicted smallest gap of a diagonal guide: {min_diagonal_gap:.4f} nats")


def decaying_adam(lr, decay):
    """An optimizer factory for fit, and a callback that multiplies the step size by
    decay after every epoch (fit calls its callbacks with each epoch's record)."""
    optimizers = []

    def factory(params):
        optimizers.append(torch.optim.Adam(params, lr=lr))
        return optimizers[-1]

    def callback(record):
        for group in optimizers[-1].param_groups:
            group["lr"] *= decay

    return factory, callback


epochs = 3 if SMOKE else 100
trained, curves = {}, {}
for name, full in (("diagonal", False), ("full covariance", True)):
    pyro.set_rng_seed(0)
    guide = LinearGaussianGuide(full_covariance=full, name=f"{name} guide")
    optimizer, decay_step_size = decaying_adam(lr=0.1, decay=0.97)
    history = fit(
        model,
        guide,
        x_train,
        objective="elbo",
        epochs=epochs,
        batch_size=100,
        optimizer=optimizer,
        callbacks=[decay_step_size],
        validation_data=x_test,
        seed=0,
        progress=False,
    )
    trained[f"SVI-trained {name}"] = guide
    curves[name] = history["val_elbo"]

fig, ax = plt.subplots()
for name, curve in curves.items():
    ax.plot(range(1, len(curve) + 1), curve, label=f"{name} guide")
ax.axhline(log_px.mean().item(), color="k", ls="--", label="exact log p(x)")
ax.axhline(
    log_px.mean().item() - min_diagonal_gap.item(),
    color="gray",
    ls=":",
    label="log p(x) − best diagonal gap",
)
ax.set_xlabel("epoch")
ax.set_ylabel("test ELBO (nats per example)")
ax.set_ylim(log_px.mean().item() - 3 * min_diagonal_gap.item() - 0.5, log_px.mean().item() + 0.3)
ax.legend()
ax.set_title("SVI on the linear-Gaussian model")
plt.show()
pyro.set_rng_seed(0)
gaps.update(print_gaps(trained))
diagonal = trained["SVI-trained diagonal"]
trained_var = diagonal.log_scale.exp().pow(2).detach()
best_var = 1 / post_precision.diagonal()
print(
    "trained diagonal variances:",
    trained_var.numpy().round(4),
    "| 1/Λ_ii:",
    best_var.numpy().round(4),
    "| Σ_ii:",
    post_cov.diagonal().numpy().round(4),
)
claim(gaps["SVI-trained full covariance"]["gap_2"] < 0.02, "the full-covariance gap is < 0.02 nats")
claim(
    abs(gaps["SVI-trained diagonal"]["gap_2"] - min_diagonal_gap) < 0.05,
    "the diagonal guide's gap is within 0.05 nats of the predicted minimum",
)
claim(
    bool(((trained_var / best_var - 1).abs() < 0.05).all()),
    "the diagonal variances are within 5% of 1/Λ_ii",
)
claim(
    bool((trained_var < post_cov.diagonal() / 5).all()),
    "the diagonal variances are less than a fifth of the posterior marginals Σ_ii",
)
claim(
    all(abs(gaps[n]["difference"]) < 3 * gaps[n]["difference_se"] for n in trained),
    "for the trained guides too, the two gaps agree within 3 standard errors",
)

# %% [markdown]
# The table and the printed variances meet the predictions: the trained full-covariance
# guide's gap is close to zero, the trained diagonal guide stops at the best gap its
# family allows, with variances at $1/\Lambda_{ii}$, far below the posterior marginals
# $\Sigma_{ii}$. The two gap columns agree for the trained guides too.
#
# ## The importance weighted bound tightens with $K$
#
# Apply Jensen's inequality to an average of $K$ weights instead of one (Burda et al.,
# 2016):
#
# $$
# \mathcal{L}_K(x) = \mathbb{E}_{z_{1:K} \sim q}\left[\log \frac1K \sum_{k=1}^K
#     \frac{p(x, z_k)}{q(z_k \mid x)}\right], \qquad
# \mathcal{L}_1 = \mathrm{ELBO} \le \mathcal{L}_K \le \mathcal{L}_{2K} \le \log p(x).
# $$
#
# The average of $K$ weights is still an unbiased estimate of $p(x)$, and its spread
# shrinks as $K$ grows, so Jensen's gap shrinks. For large $K$ a second-order
# expansion of the logarithm gives $\log p(x) - \mathcal{L}_K \approx
# \mathrm{Var}_q[w] / (2 K p(x)^2)$: a gap falling like $1/K$, **if the weights have a
# finite variance**. For a Gaussian posterior $\mathcal{N}(\mu, \Sigma)$ and a Gaussian
# proposal $\mathcal{N}(\mu, S)$, $\mathbb{E}_q[w^2] \propto \int p^2 / q\, dz$ is finite
# only if $2\Sigma^{-1} - S^{-1}$ is positive definite. With $S = I$ (the prior, or the
# exact mean with unit variance) it always is, since $\Sigma \preceq I$. With the best
# diagonal guide, $S = \mathrm{diag}(1/\Lambda_{ii})$, and $2\Lambda -
# \mathrm{diag}(\Lambda_{ii})$ has determinant $\Lambda_{11}\Lambda_{22}(1 - 4\rho^2)$:
# negative for our $|\rho| > 1/2$, so that guide's weights have an infinite variance.
#
# `log_likelihood(model, guide, x, num_samples=K)` returns one draw of the bracket per
# example; its mean over the test set estimates $\mathcal{L}_K$, and subtracting it
# from the exact $\log p(x)$ estimates the gap. At large $K$ that plain estimate drowns
# in its own noise: per example, $\log \bar r_K$ with $\bar r_K = \frac1K \sum_k w_k /
# p(x)$ fluctuates by about $\sqrt{\mathrm{Var}[w] / K}/p(x)$, far more than the gap
# $\mathrm{Var}[w] / (2K p(x)^2)$. Because we know $p(x)$, we can remove that noise
# with a *control variate*: $\mathbb{E}[\bar r_K] = 1$ exactly (the average weight is
# unbiased), so $\bar r_K - 1 - \log \bar r_K$ has the same expectation as $-\log \bar
# r_K$, each term is $\ge 0$ (since $\log u \le u - 1$), and its noise is of second order
# in $\bar r_K - 1$. The trick needs $\bar r_K$ to have a finite variance, so we use it
# for the two broad proposals and keep the plain estimate for the diagonal guide, whose
# gap is large enough to measure directly.
#
# We plot the gaps on logarithmic axes, with two standard errors (over the test set) as
# error bars. The checks: the mean of $\bar r_K - 1$ is zero within four standard errors
# at every $K$ for the broad proposals (the average weight estimates $p(x)$ without
# bias, so the control variate is valid); the diagonal guide's plain gap is positive at
# every $K$; the broad proposals' gaps fall with a log-log slope between $-1.3$ and
# $-0.7$ over the last factor of 16 in $K$, the diagonal guide's with a slope above
# $-0.5$; the diagonal guide has the smallest gap at $K = 1$ (it has the best ELBO) and
# the largest at the largest $K$: the curves cross. Its share of examples with Pareto
# $\hat k > 0.7$ (an unreliable estimate) must also be the largest of the three.

# %%
condition = 2 * post_precision - torch.diag(post_precision.diagonal())
print(f"smallest eigenvalue of 2Λ − diag(Λ_ii): {torch.linalg.eigvalsh(condition).min():.3f}")
claim(
    torch.linalg.eigvalsh(condition).min() < 0,
    "the best diagonal guide's importance weights have an infinite variance",
)
Ks = [1, 4, 16, 64] if SMOKE else [2**i for i in range(13)]  # up to 4096
proposals = {
    "SVI-trained diagonal": trained["SVI-trained diagonal"],
    "exact mean, unit variance": guides["exact mean, unit variance"],
    "prior p(z)": guides["prior p(z) (ignores x)"],
}
broad = ("exact mean, unit variance", "prior p(z)")


def mean_and_se(values):
    return values.mean().item(), values.std().item() / len(values) ** 0.5


bound_gaps = {name: [] for name in proposals}  # (mean gap, its s.e.) per K
weight_bias_z, pareto_share = 0.0, {}
pyro.set_rng_seed(0)
for name, guide in proposals.items():
    for K in Ks:
        result = log_likelihood(
            model, guide, x_test, num_samples=K, batch_size=500, particle_chunk=256
        )
        log_r = (result.estimate - log_px).double()  # log of the mean weight over p(x)
        if name in broad:
            bound_gaps[name].append(mean_and_se(log_r.exp() - 1 - log_r))  # control variate
            mean, se = mean_and_se(log_r.exp() - 1)
            weight_bias_z = max(weight_bias_z, abs(mean) / se)
        else:
            bound_gaps[name].append(mean_and_se(-log_r))  # plain
    pareto_share[name] = (result.pareto_k > 0.7).double().mean().item()
    print(
        f"{name:>26}: log p(x) − L_1 = {bound_gaps[name][0][0]:.4f}, log p(x) − L_{Ks[-1]} = "
        f"{bound_gaps[name][-1][0]:.5f} ± {bound_gaps[name][-1][1]:.5f}; share of examples "
        f"with Pareto k̂ > 0.7 at K = {Ks[-1]}: {pareto_share[name]:.2f}"
    )
print(f"largest |mean of r̄_K − 1| over the broad proposals and all K: {weight_bias_z:.2f} s.e.")

fig, ax = plt.subplots()
for name, values in bound_gaps.items():
    mean, se = zip(*values, strict=True)
    how = "control variate" if name in broad else "plain"
    ax.errorbar(
        Ks, mean, yerr=[2 * s for s in se], marker="o", ms=4, capsize=2, label=f"q = {name} ({how})"
    )
ax.plot(Ks, [bound_gaps["prior p(z)"][0][0] / K for K in Ks], "k:", lw=1, label="slope −1")
ax.set_xscale("log", base=2)
ax.set_yscale("log")
ax.set_xlabel("K (importance samples)")
ax.set_ylabel(r"$\log p(x) - \mathcal{L}_K$ (nats, mean over test set)")
ax.legend(fontsize=8)
ax.set_title("How far the IWAE bound is below the exact log p(x)")
plt.show()

claim(weight_bias_z < 4, "the average weight estimates p(x) without bias (within 4 s.e.)")
claim(
    all(m > 0 for m, _ in bound_gaps["SVI-trained diagonal"]),
    "the diagonal guide's IWAE bounds are all below log p(x)",
)
slopes = {}
start = Ks.index(Ks[-1] // 16)  # the last factor of 16 in K
for name, values in bound_gaps.items():
    (g_a, _), (g_b, _) = values[start], values[-1]
    slopes[name] = math.log(g_b / g_a) / math.log(Ks[-1] / Ks[start])
    print(
        f"{name:>26}: log-log slope of the gap from K = {Ks[start]} to {Ks[-1]}: {slopes[name]:.2f}"
    )
for name in broad:
    claim(-1.3 < slopes[name] < -0.7, f"{name}: the gap falls like 1/K")
claim(slopes["SVI-trained diagonal"] > -0.5, "the diagonal guide's gap falls far more slowly")
first = {name: values[0][0] for name, values in bound_gaps.items()}
last = {name: values[-1][0] for name, values in bound_gaps.items()}
claim(
    min(first, key=first.get) == "SVI-trained diagonal",
    "at K = 1 the trained diagonal guide has the smallest gap",
)
claim(
    max(last, key=last.get) == "SVI-trained diagonal",
    "at the largest K the trained diagonal guide has the largest gap (the curves cross)",
)
claim(
    max(pareto_share, key=pareto_share.get) == "SVI-trained diagonal",
    "the diagonal guide has the largest share of unreliable (k̂ > 0.7) estimates",
)

# %% [markdown]
# The log axis shows what a linear one hides: the two broad proposals start tens of nats
# below $\log p(x)$ but then close the gap like $1/K$ (parallel to the dotted line),
# while the trained diagonal guide starts closest and improves slowly, so it crosses
# both and ends furthest away. The reverse KL made the mean-field guide *narrower* than
# the posterior along its correlated direction, so its samples almost never land where
# the posterior has mass that $q$ lacks; its weights have an infinite variance and the
# $1/K$ rate does not apply. A proposal for importance sampling should be broad; a guide
# trained on the ELBO is not. The printed Pareto $\hat k$ shares say the same from the
# weights alone.
#
# ## The importance sampling estimate converges
#
# For one data point, the estimate $\log \frac1K \sum_k w_k$ is consistent: as
# $K \to \infty$ it converges to $\log p(x)$. `log_likelihood` reports a Monte Carlo
# standard error with it (from resampling the Pareto-smoothed weights), and the Pareto
# $\hat k$ of the weights. We repeat the estimate 20 times independently at each $K$,
# for the trained diagonal guide and for the prior as proposal, on the first test point.
# The checks, at the largest $K$: with the prior as proposal, the 20 estimates average
# to the exact value within three standard errors of their mean, and their spread is
# within a factor 1.5 of the reported standard error; with the diagonal guide, the
# average is *below* the exact value by more than three standard errors, and the median
# $\hat k$ is above 0.7.

# %%
x0 = x_test[:1]
Ks_single = [1, 10, 100, 1000] if SMOKE else [1, 3, 10, 30, 100, 300, 1000, 3000, 10000, 30000]
fig, axes = plt.subplots(1, 2, figsize=(10, 3.5), sharey=True)
exact = log_px[0].item()
final = {}
for ax, name in zip(axes, ["SVI-trained diagonal", "prior p(z)"], strict=True):
    for k in Ks_single:
        result = log_likelihood(
            model,
            proposals[name],
            x0.expand(20, -1),
            num_samples=k,
            batch_size=20,
            particle_chunk=1000,
        )
        ax.scatter([k] * 20, result.estimate - exact, s=6, color="C0", alpha=0.5)
    final[name] = result
    print(
        f"{name:>22}, K = {k}: estimates {result.estimate.mean():.4f} "
        f"± {result.estimate.std():.4f} (spread over 20 runs), reported s.e. "
        f"{result.stderr.mean():.4f}, median Pareto k̂ {result.pareto_k.median():.2f}; "
        f"exact {exact:.4f}"
    )
    ax.axhline(0.0, color="k", ls="--", label="exact log p(x)")
    ax.set_xscale("log")
    ax.set_yscale("symlog", linthresh=0.1)
    ax.set_xlabel("K")
    ax.set_title(f"proposal: {name}")
    ax.legend()
axes[0].set_ylabel("IS estimate − log p(x) (nats)")
plt.show()


def summary(result):
    spread = result.estimate.std().item()
    bias_z = (result.estimate.mean().item() - exact) / (spread / 20**0.5)
    return bias_z, spread / result.stderr.mean().item(), result.pareto_k.median().item()


bias_z, spread_ratio, _ = summary(final["prior p(z)"])
claim(abs(bias_z) < 3, "prior as proposal: the estimates average to log p(x) (within 3 s.e.)")
claim(1 / 1.5 < spread_ratio < 1.5, "prior as proposal: the reported s.e. matches the spread")
bias_z, _, k_hat = summary(final["SVI-trained diagonal"])
claim(bias_z < -3, "diagonal guide: the estimates are still below log p(x) (by > 3 s.e.)")
claim(k_hat > 0.7, "diagonal guide: Pareto k̂ > 0.7 flags the estimate as unreliable")

# %% [markdown]
# Each dot is one estimate minus the exact value (a symmetric-log axis, so both the large
# early errors and the small late ones show). With the prior as proposal, which is
# broader than the posterior, the estimates start far below $\log p(x)$ at small $K$ and
# then converge onto it, with a standard error that describes their spread. With the
# SVI-trained mean-field guide, narrower than the posterior, the importance weights are
# heavy-tailed: the rare large weights that would correct the estimate have not been
# drawn yet, so even at the largest $K$ the estimates sit below the exact value. Any
# error estimate computed from the weights that *were* drawn is guesswork about the
# ones that were not; $\hat k > 0.7$ is the warning that says so. The estimator is
# still consistent, but it is only reliable where $\hat k$ says so. This is why an
# importance-sampled $\log p(x)$ for a VAE is, in practice, a lower bound too, and why
# its $\hat k$ should be reported with it.
#
# **Try this:** the cell below takes a 2-D Gaussian posterior with unit variances and
# correlation `rho`, builds the best diagonal guide for it, and prints the gap
# $-\tfrac12 \log(1 - \rho^2)$ and the IWAE gaps at a few $K$ (plain torch, no
# training). Change `rho`: below $|\rho| = 1/2$ the weights have a finite variance and the
# gap falls like $1/K$; above it, it falls more slowly.

# %%
rho = 0.8
torch.manual_seed(5)
posterior_2d = dist.MultivariateNormal(torch.zeros(2), torch.tensor([[1.0, rho], [rho, 1.0]]))
best_diagonal = dist.Normal(torch.zeros(2), (1 - rho**2) ** 0.5).to_event(1)  # s_i² = 1/Λ_ii
print(f"rho = {rho}: best diagonal gap −½ log(1 − rho²) = {-0.5 * math.log(1 - rho**2):.4f}")
print(f"kl_divergence says: {kl_divergence(as_mvn(best_diagonal), posterior_2d):.4f}")
for K in (1, 10, 100, 1000):
    z = best_diagonal.sample((K, 2000))  # 2000 independent bounds per K
    log_w = posterior_2d.log_prob(z) - best_diagonal.log_prob(z)  # log p(x) = 0 here
    gap = -(torch.logsumexp(log_w, 0) - math.log(K)).mean()
    print(f"K = {K:4d}: log p(x) − L_K ≈ {gap:.4f}")

# %% [markdown]
# ## Summary
#
# - Jensen's inequality says the ELBO is a lower bound; the decomposition
#   $\log p(x) = \mathrm{ELBO} + \mathrm{KL}(q \,\|\, p(z \mid x))$ says by how much;
#   both were checked for every guide, including ones trained by SVI.
# - $\mathrm{KL}(\mathcal{N}(\mu, \sigma^2) \,\|\, \mathcal{N}(0, 1)) = \tfrac12 \sum
#   (\mu^2 + \sigma^2 - 1 - \log \sigma^2)$, the closed form inside every VAE's ELBO.
# - The gap is zero for the exact posterior (with zero-variance estimates); SVI reaches
#   it when the guide family contains the posterior, and otherwise stops at the best
#   member of its family, a gap predicted in closed form.
# - The IWAE bound $\mathcal{L}_K$ climbs to $\log p(x)$ with $K$, like $1/K$ for a
#   broad proposal and more slowly for an under-dispersed one; the importance sampling
#   estimate converges, with a standard error and a Pareto $\hat k$ that tell whether
#   to trust it.

# %%
now = time.perf_counter()
print(
    f"wall time of this notebook ({'smoke' if SMOKE else 'full'} mode): {now - START:.1f} s, "
    f"{now - IMPORTED:.1f} s after the imports"
)
