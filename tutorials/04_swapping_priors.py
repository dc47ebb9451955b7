# Tutorial 4 (percent script; `python tutorials/build.py 04_swapping_priors` makes the
# notebook). Edit this file, not the .ipynb.
# ruff: noqa: E402 (the first cell starts a timer and filters a warning before imports)

# %% [markdown]
# # 4. Swapping and learning priors
#
# The prior $p(z)$ is one argument of `VAE(prior, likelihood, guide)`. This notebook
# trains the same encoder and decoder with six priors, from the standard normal to
# priors that are themselves learned, for the same short budget on the bundled MNIST
# subset, and compares them by an importance-sampled negative log-likelihood and by
# where each one puts the test images in a 2-D latent space.
#
# *Runtime:* the last cell prints this notebook's wall time; the full-mode time on 2 CPU
# cores is listed in `tutorials/README.md`. `PYRO_VAE_SMOKE=1` runs a quick version on
# tiny data (the numbers then mean nothing).

# %%
import os
import time
import warnings

START = time.perf_counter()
SMOKE = os.environ.get("PYRO_VAE_SMOKE") == "1"
warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm in a notebook

import matplotlib.pyplot as plt
import pyro
import torch

from pyro_vae import VAE, BernoulliLikelihood, binarize, elbo_terms, fit, load_bundled_mnist
from pyro_vae.check.diagnostics import posterior_means
from pyro_vae.check.loglik import log_likelihood
from pyro_vae.parts.guides import DiagonalNormalGuide, PowerSphericalGuide
from pyro_vae.parts.priors import (
    FlowPrior,
    LearnedNormalPrior,
    MixtureOfGaussiansPrior,
    StandardNormalPrior,
    UniformSpherePrior,
    VampPrior,
)

plt.rcParams.update({"figure.dpi": 72, "savefig.dpi": 72, "figure.figsize": (6, 3.5)})
pyro.enable_validation(True)
pyro.set_rng_seed(0)
print("smoke mode" if SMOKE else "full mode")

# %% [markdown]
# ## The prior inside the ELBO
#
# The ELBO of one example splits into a reconstruction term and a KL to the prior,
#
# $$
# \mathrm{ELBO}(x) = \mathbb{E}_{q_\phi(z \mid x)}[\log p_\theta(x \mid z)]
#   - \mathrm{KL}\big(q_\phi(z \mid x) \,\|\, p_\lambda(z)\big).
# $$
#
# Averaged over the data, the KL term decomposes (Hoffman & Johnson, 2016, *ELBO
# surgery*) into the mutual information between $x$ and $z$ under $q$ plus
# $\mathrm{KL}(q_\phi(z) \,\|\, p_\lambda(z))$, where
# $q_\phi(z) = \frac1N \sum_n q_\phi(z \mid x_n)$ is the **aggregate posterior**. With a
# fixed $\mathcal{N}(0, I)$ prior the second term pulls every code towards one Gaussian
# blob; a learned prior $p_\lambda$ can instead move towards $q_\phi(z)$ and stop
# charging for it. The priors here, all in `pyro_vae.parts.priors`:
#
# | prior | $p_\lambda(z)$ | learned |
# |---|---|---|
# | `StandardNormalPrior` | $\mathcal{N}(0, I)$ | nothing |
# | `LearnedNormalPrior` | $\mathcal{N}(m, \mathrm{diag}\, s^2)$ | $m, s$ |
# | `MixtureOfGaussiansPrior` | $\sum_k \pi_k \mathcal{N}(m_k, \mathrm{diag}\, s_k^2)$ | all |
# | `VampPrior` [1] | $\frac1K \sum_k q_\phi(z \mid u_k)$ | inputs $u_k$ |
# | `FlowPrior` (MAF) | $\mathcal{N}(f(z); 0, I)\, \lvert\det \partial f / \partial z\rvert$ | $f$ |
# | `UniformSpherePrior` [2] | uniform on the sphere $S^{d-1}$ | nothing |
#
# [1] Tomczak & Welling, 2018. [2] Davidson et al., 2018.
#
# The first five are densities on $\mathbb{R}^d$ and share the Gaussian guide. The
# hyperspherical VAE changes the latent space itself, so its guide changes too: a Power
# Spherical distribution on the sphere (De Cao & Aziz, 2020), whose KL to the uniform
# prior is in closed form. Only the standard and learned normal priors have an analytic
# KL with the Gaussian guide; for the others `TraceMeanField_ELBO` (objective
# `"meanfield"`) falls back to the one-sample Monte Carlo estimate
# $\log q_\phi(z \mid x) - \log p_\lambda(z)$, which is still unbiased.
#
# We use a 2-D latent space so that the codes can be plotted without projection. (On the
# sphere $S^1$, a 2-D code is an angle: one degree of freedom.)

# %%
latent_dim, x_shape, hidden = 2, (1, 28, 28), (256,)
mnist = load_bundled_mnist()
n_train, n_eval = (128, 100) if SMOKE else (len(mnist["train"]), len(mnist["test"]))
x_train = binarize(mnist["train"].tensors[0][:n_train], seed=0)
x_test = binarize(mnist["test"].tensors[0][:n_eval], seed=2)
y_test = mnist["test"].tensors[1][:n_eval]
epochs = 1 if SMOKE else 6
num_is_samples = 20 if SMOKE else 200
print(f"train {tuple(x_train.shape)}, test {tuple(x_test.shape)}, {epochs} epochs per prior")


def gaussian_guide():
    return DiagonalNormalGuide.mlp(x_shape, latent_dim, hidden)


def decoder():
    return BernoulliLikelihood.mlp(latent_dim, x_shape, hidden)


# %% [markdown]
# ## Six VAEs, one argument apart
#
# Each entry below builds a `VAE`; only the prior differs (and, for the sphere, the guide
# that lives on it). The VampPrior reuses the guide's encoder on its pseudo-inputs, so it
# takes the guide as an argument; its pseudo-inputs start at 50 training images.


# %%
def vamp_vae():
    guide = gaussian_guide()  # the prior and the VAE share this guide
    return VAE(VampPrior(guide, 50, x_shape, init=x_train[:50]), decoder(), guide)


builders = {
    "standard normal": lambda: VAE(StandardNormalPrior(latent_dim), decoder(), gaussian_guide()),
    "learned normal": lambda: VAE(LearnedNormalPrior(latent_dim), decoder(), gaussian_guide()),
    "mixture of 10 Gaussians": lambda: VAE(
        MixtureOfGaussiansPrior(latent_dim, num_components=10), decoder(), gaussian_guide()
    ),
    "VampPrior (50)": vamp_vae,
    "flow (MAF, 4 layers)": lambda: VAE(
        FlowPrior.mlp(latent_dim, num_flows=4), decoder(), gaussian_guide()
    ),
    "hyperspherical": lambda: VAE(
        UniformSpherePrior(latent_dim),
        decoder(),
        PowerSphericalGuide.mlp(x_shape, latent_dim, hidden),
    ),
}

vaes, histories = {}, {}
for name, build in builders.items():
    pyro.set_rng_seed(0)
    vae = build()
    started = time.perf_counter()
    histories[name] = fit(
        vae.model,
        vae.guide,
        x_train,
        objective="meanfield",
        epochs=epochs,
        batch_size=128,
        lr=1e-3,
        seed=0,
        progress=False,
        capture=not SMOKE,  # recording the step as a graph pays off only in long runs
    )
    vaes[name] = vae
    last = histories[name].last
    print(
        f"{name:>24}: {time.perf_counter() - started:5.1f} s, final train ELBO "
        f"{last['train_elbo']:8.2f} (KL {last['train_kl']:.2f})"
    )

# %% [markdown]
# ## Negative log-likelihood
#
# The ELBO is a bound, and how loose it is depends on the pair $(q, p)$, so comparing
# priors by ELBO alone can mislead. The importance-sampled estimate
#
# $$
# \widehat{\log p}(x) = \log \frac1K \sum_{k=1}^K
#     \frac{p_\theta(x \mid z_k)\, p_\lambda(z_k)}{q_\phi(z_k \mid x)},
#     \qquad z_k \sim q_\phi(z \mid x),
# $$
#
# (`pyro_vae.check.loglik.log_likelihood`, Burda et al., 2015) is the IWAE bound
# $\mathcal{L}_K$, which rises to $\log p(x)$ as $K$ grows; we report
# $\mathrm{NLL} = -\widehat{\log p}(x)$ averaged over the test images, with two
# standard errors: the Monte Carlo error of the estimate (from the $K$ samples) and the
# spread over the test images. The models are compared on the **same** test images, so
# the difference to the standard normal prior gets a paired standard error, which is
# much smaller than the spread of either NLL.

# %%
results = {}
for name, vae in vaes.items():
    pyro.set_rng_seed(1)
    ll = log_likelihood(vae.model, vae.guide, x_test, num_samples=num_is_samples)
    terms = elbo_terms(vae.model, vae.guide, x_test)
    results[name] = {"ll": ll, "elbo": terms["elbo"].double(), "kl": terms["kl"].mean().item()}

reference = results["standard normal"]["ll"].estimate
n = len(x_test)
print(f"test images: {n}, importance samples K = {num_is_samples}\n")
header = (
    f"{'prior':>24} | {'NLL':>7} | {'MC s.e.':>7} | {'s.e. over x':>11} | "
    f"{'-ELBO':>7} | {'KL':>5} | {'NLL - NLL(std normal)':>22}"
)
print(header)
print("-" * len(header))
for name, r in results.items():
    ll = r["ll"]
    diff = -(ll.estimate - reference)
    paired = diff.std().item() / n**0.5 if name != "standard normal" else 0.0
    print(
        f"{name:>24} | {-ll.mean:7.2f} | {ll.mean_stderr:7.3f} | "
        f"{ll.estimate.std().item() / n**0.5:11.2f} | {-r['elbo'].mean().item():7.2f} | "
        f"{r['kl']:5.2f} | {diff.mean().item():+13.2f} ± {paired:.2f}"
    )

# %% [markdown]
# Read the last column: a negative difference means the prior gives the test images a
# higher likelihood than the standard normal does, by more than its paired standard
# error if the magnitude exceeds it. The gap between the $-\mathrm{ELBO}$ and NLL
# columns is the looseness of the ELBO for each pair. Note that the flow, mixture and
# VampPrior rows pay their KL term through a Monte Carlo estimate during training, which
# costs extra gradient noise, and that the budget is short: the ranking is a measurement
# of this budget, not a verdict on the priors.
#
# ## Where the codes go
#
# Each panel shows the posterior means $\mathbb{E}_{q_\phi}[z \mid x]$ of the test images
# (`pyro_vae.check.diagnostics.posterior_means`, the coordinates that
# `pyro_vae.check.viz.latent_scatter` plots), coloured by digit, over grey samples from
# the trained prior $p_\lambda(z)$.
# Where the colours leave gaps that the grey fills, the prior puts mass where no data
# goes: samples drawn from there decode to blurry non-digits.

# %%
fig, axes = plt.subplots(2, 3, figsize=(13, 9), constrained_layout=True)
for ax, (name, vae) in zip(axes.flat, vaes.items(), strict=True):
    with torch.no_grad():
        prior_draws = vae.prior.dist().sample((2000,))
        codes = posterior_means(vae.guide, x_test)
    ax.scatter(prior_draws[:, 0], prior_draws[:, 1], s=2, c="0.75", alpha=0.5)
    points = ax.scatter(codes[:, 0], codes[:, 1], s=5, c=y_test, cmap="tab10", vmin=-0.5, vmax=9.5)
    ax.set_title(f"{name}\nNLL {-results[name]['ll'].mean:.1f}")
    ax.set_aspect("equal", adjustable="datalim")
fig.colorbar(points, ax=axes, ticks=range(10), label="digit", shrink=0.6)
plt.show()

# %% [markdown]
# The standard normal squeezes the ten digit classes into one round blob. The learned
# normal can only shift and stretch that blob. The mixture, the VampPrior and the flow
# can follow clusters of codes, and the grey prior draws show how closely each did so in
# this budget. The hyperspherical codes lie on the unit circle, with the uniform prior
# spread around it. On $S^1$ a code is a single angle, one degree of freedom instead of
# two, which is one likely reason for the hyperspherical row of the NLL table: a
# hyperspherical latent is meant for more than two dimensions.
#
# ## Samples from each prior
#
# The same comparison seen from the generative side: decode 16 draws $z \sim p_\lambda(z)$
# from each trained prior (the means of $p_\theta(x \mid z)$).

# %%
fig, axes = plt.subplots(1, 6, figsize=(14, 2.8))
for ax, (name, vae) in zip(axes, vaes.items(), strict=True):
    pyro.set_rng_seed(3)
    with torch.no_grad():
        z = vae.prior.dist().sample((16,))
        images = vae.likelihood.dist(z).mean.reshape(4, 4, 28, 28)
    grid = images.permute(0, 2, 1, 3).reshape(4 * 28, 4 * 28)
    ax.imshow(grid, cmap="gray", vmin=0, vmax=1)
    ax.set_title(name, fontsize=9)
    ax.axis("off")
plt.show()

# %% [markdown]
# ## Summary
#
# - A prior is one argument of `VAE(...)`; the hyperspherical VAE changes the guide
#   along with it, because its codes live on a sphere.
# - Learned priors can match the aggregate posterior and so stop charging KL for it; the
#   NLL table above measures what that bought in this budget, with Monte Carlo and
#   paired standard errors.
# - Priors without an analytic KL train with a Monte Carlo KL estimate, automatically.

# %%
best = min(results, key=lambda k: -results[k]["ll"].mean)
print(f"lowest test NLL in this run: {best} ({-results[best]['ll'].mean:.2f} nats)")
print(
    f"wall time of this notebook ({'smoke' if SMOKE else 'full'} mode): "
    f"{time.perf_counter() - START:.0f} s"
)
