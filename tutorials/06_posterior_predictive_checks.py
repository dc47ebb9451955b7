# Tutorial 6 (percent script; `python tutorials/build.py 06_posterior_predictive_checks` makes
# the notebook). Edit this file, not the .ipynb.
# ruff: noqa: E402 (the first cell starts a timer and filters a warning before imports)

# %% [markdown]
# # 6. Posterior predictive checks with ArviZ
#
# A higher ELBO says a model is better than another; it does not say in which way a
# model is wrong. A **posterior predictive check** does: draw replicated data from the
# fitted model, compute a statistic on the replicates and on the real data, and see
# whether the real value is typical. This notebook builds ArviZ `InferenceData` from a
# trained VAE with `pyro_vae.check.ppc`, plots checks with `az.plot_ppc` and `az.plot_bpv`,
# computes Bayesian p-values, and uses them to compare three likelihoods: Bernoulli on
# binarized MNIST, and Gaussian and continuous Bernoulli on grayscale MNIST.
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

import arviz as az
import matplotlib.pyplot as plt
import pyro

from pyro_vae import (
    VAE,
    BernoulliLikelihood,
    ContinuousBernoulliLikelihood,
    DiagonalNormalGuide,
    NormalLikelihood,
    StandardNormalPrior,
    binarize,
    elbo_terms,
    fit,
    load_bundled_mnist,
)
from pyro_vae.check.ppc import (
    bayesian_p_values,
    image_ink,
    mean_intensity,
    posterior_predictive,
    statistic_data,
)

plt.rcParams.update({"figure.dpi": 72, "savefig.dpi": 72, "figure.figsize": (6, 3.5)})
pyro.enable_validation(True)
pyro.set_rng_seed(0)
print("smoke mode" if SMOKE else "full mode")

# %% [markdown]
# ## Replicated data and Bayesian p-values
#
# For an observed image $x_n$, the posterior predictive distribution is
#
# $$
# p(x^{\mathrm{rep}} \mid x_n) = \int p_\theta(x^{\mathrm{rep}} \mid z)\,
#     p_\theta(z \mid x_n)\, dz
# \;\approx\; \int p_\theta(x^{\mathrm{rep}} \mid z)\, q_\phi(z \mid x_n)\, dz,
# $$
#
# with the guide standing in for the posterior. We sample it in two steps,
# $z_s \sim q_\phi(z \mid x_n)$ then $x^{\mathrm{rep}}_s \sim p_\theta(x \mid z_s)$:
# real draws from the likelihood, not its mean. For a test statistic $T$ (a number
# computed from an image or a dataset), the **Bayesian p-value** (Gelman, Meng & Stern,
# 1996) is
#
# $$
# p_B = \Pr\big(T(x^{\mathrm{rep}}) > T(x) \mid x\big)
#   \quad (+\tfrac12 \Pr(T(x^{\mathrm{rep}}) = T(x)) \text{ for ties}).
# $$
#
# If the model reproduces the aspect of the data that $T$ measures, $p_B$ is moderate;
# values near 0 or 1 mean the real data is extreme among the replicates, a misfit. For a
# per-image statistic we get one $p_B$ per image; if the model fits, these should not
# pile up at 0 and 1.
#
# ## Three likelihoods
#
# The pixels of MNIST are grayscale values in $[0, 1]$, most of them exactly 0. Three
# common choices of $p_\theta(x \mid z)$:
#
# - **Bernoulli**, after binarizing each pixel at random with its intensity as the
#   probability: a correct likelihood for the binarized data.
# - **Gaussian** $\mathcal{N}(x; f_\theta(z), \sigma^2)$ with a fixed $\sigma = 0.1$,
#   the "mean squared error" VAE: it puts mass outside $[0, 1]$.
# - **Continuous Bernoulli** (Loaiza-Ganem & Cunningham, 2019), a proper density on
#   $[0, 1]$: $p(x \mid \lambda) \propto \lambda^x (1 - \lambda)^{1 - x}$.
#
# The Bernoulli likelihood *on grayscale data* is not on the list: it is not a density
# for non-binary values, and pyro-vae refuses it with a message that names the fixes.

# %%
x_shape, latent_dim, hidden = (1, 28, 28), 16, (256,)
mnist = load_bundled_mnist()
n_train, n_eval = (128, 40) if SMOKE else (len(mnist["train"]), 200)
gray_train = mnist["train"].tensors[0][:n_train]
gray_test = mnist["test"].tensors[0][:n_eval]
data = {
    "Bernoulli, binarized": (binarize(gray_train, seed=0), binarize(gray_test, seed=2)),
    "Gaussian (sigma 0.1), grayscale": (gray_train, gray_test),
    "continuous Bernoulli, grayscale": (gray_train, gray_test),
}
likelihoods = {
    "Bernoulli, binarized": BernoulliLikelihood.mlp(latent_dim, x_shape, hidden),
    "Gaussian (sigma 0.1), grayscale": NormalLikelihood.mlp(latent_dim, x_shape, hidden, scale=0.1),
    "continuous Bernoulli, grayscale": ContinuousBernoulliLikelihood.mlp(
        latent_dim, x_shape, hidden
    ),
}
try:
    BernoulliLikelihood.mlp(latent_dim, x_shape, hidden).check_data(gray_train)
except ValueError as error:
    print("Bernoulli on grayscale -> ValueError:", error)
print(f"fraction of grayscale test pixels exactly 0: {(gray_test == 0).double().mean():.3f}")

# %% [markdown]
# We train one VAE per likelihood, with the same encoder, decoder body, latent size and
# budget.

# %%
vaes = {}
for name, likelihood in likelihoods.items():
    pyro.set_rng_seed(0)
    vae = VAE(
        StandardNormalPrior(latent_dim),
        likelihood,
        DiagonalNormalGuide.mlp(x_shape, latent_dim, hidden),
    )
    x_train, x_test = data[name]
    fit(
        vae.model,
        vae.guide,
        x_train,
        objective="meanfield",
        epochs=1 if SMOKE else 8,
        batch_size=128,
        seed=0,
        progress=False,
        capture=not SMOKE,  # recording the step as a graph pays off only in long runs
    )
    vaes[name] = vae
    terms = elbo_terms(vae.model, vae.guide, x_test)
    print(f"{name:>32}: test ELBO {terms['elbo'].mean():9.2f} nats per image")

# %% [markdown]
# The three ELBOs are not comparable: the Bernoulli one is a log-probability of binary
# images, the other two log-densities of grayscale images (which can be positive). The
# predictive checks below compare each model with its own data instead.
#
# ## InferenceData from a VAE
#
# `pyro_vae.check.ppc.posterior_predictive` runs the guide and the model unconditioned
# (Pyro's `Predictive` would return the observed site unchanged) and packs the draws as
# ArviZ `InferenceData`: `posterior` ($z$), `posterior_predictive` ($x^{\mathrm{rep}}$),
# `log_likelihood` ($\log p_\theta(x_n \mid z_s)$) and `observed_data`, with one chain
# and named dimensions.

# %%
num_draws = 20 if SMOKE else 100
idatas = {}
for name, vae in vaes.items():
    pyro.set_rng_seed(0)
    idatas[name] = posterior_predictive(vae.model, vae.guide, data[name][1], num_samples=num_draws)
idata = idatas["continuous Bernoulli, grayscale"]
print(idata)
print(idata.posterior_predictive["x"].sizes)

# %% [markdown]
# ## `az.plot_ppc`: a per-image statistic
#
# The amount of ink, $T(x) = \sum_i x_i$, per image (`pyro_vae.check.ppc.image_ink`).
# `statistic_data` computes it for the observed and the replicated images and returns
# `InferenceData` that ArviZ's plots take directly. `az.plot_ppc` overlays the
# distribution of the observed values over the test images (black) on that of many
# replicated datasets (blue), and `az.plot_bpv` with `kind="u_value"` shows the
# density of the per-image p-values against the uniform band. A model that fits gives
# p-values spread over $(0, 1)$, not piled up at 0 or 1. They need not be uniform:
# posterior predictive p-values are conservative, drawn towards 0.5 even for a correct
# model (Meng, 1994), because the same image was used to fit the replicates.

# %%
fig, axes = plt.subplots(2, 3, figsize=(14, 7), constrained_layout=True)
for column, (name, idata) in enumerate(idatas.items()):
    ink = statistic_data(idata, image_ink, name="ink")
    az.plot_ppc(ink, num_pp_samples=min(50, num_draws), random_seed=0, ax=axes[0, column])
    axes[0, column].set_title(f"{name}\nink per image")
    az.plot_bpv(ink, kind="u_value", ax=axes[1, column])
    axes[1, column].set_title("per-image p-values (pile-up at 0 or 1: misfit)")
plt.show()

# %% [markdown]
# ## Which statistics expose which likelihood
#
# A check is only as sharp as its statistic. Four, each chosen to probe one property of
# the real images:
#
# - **ink** $\sum_i x_i$ per image: the overall brightness;
# - **dark fraction**, the share of pixels below 0.05 per image: MNIST's large exactly
#   black background;
# - **out of range**, the share of pixels outside $[0, 1]$ per image: impossible values;
# - **mean intensity** of the whole test set: one number per replicated dataset.
#
# For each per-image statistic the table prints the share of images with an extreme
# p-value ($p_B < 0.025$ or $> 0.975$) and the median $p_B$; for the dataset statistic
# the single $p_B$. A model whose replicates look like the data in that respect has few
# extreme p-values; the `misfit` column marks more than half of the images extreme (or
# an extreme dataset p-value).

# %%
pixel_dims = ["channel", "row", "column"]
statistics = {
    "ink": image_ink,
    "dark fraction": lambda x: (x < 0.05).mean(pixel_dims),
    "out of range": lambda x: ((x < 0) | (x > 1)).mean(pixel_dims),
    "mean intensity": mean_intensity,
}
header = f"{'likelihood':>32} | {'statistic':>14} | {'extreme p_B':>11} | {'median p_B':>10} |"
print(header)
print("-" * (len(header) + 8))
p_values = {}
for name, idata in idatas.items():
    for stat_name, statistic in statistics.items():
        p = bayesian_p_values(idata, statistic)
        p_values[name, stat_name] = p
        extreme = ((p < 0.025) | (p > 0.975)).mean().item()
        flag = "misfit" if extreme > 0.5 else ""
        print(
            f"{name:>32} | {stat_name:>14} | {extreme:11.2f} | {p.median().item():10.3f} | {flag}"
        )

# %% [markdown]
# Read the table row by row (for the dataset-level mean intensity, "extreme" is 0 or 1).
# The binarized Bernoulli model can only produce values in $\{0, 1\}$, the values its
# data has, and the checks test how often it draws ink where the data has it. The
# Gaussian model's replicates add noise of standard deviation $\sigma$ to every pixel,
# the black background included, so they leave $[0, 1]$ and fill in the exact zeros
# of the real images: look at its out-of-range and dark-fraction rows. The continuous
# Bernoulli never leaves $[0, 1]$, but its density is smooth on the whole interval, so
# how much mass it keeps near 0 (the dark-fraction row) and how bright its images are
# on average (the ink rows) are what its checks test. The misfit column and the plot
# below say which of these failures occurred in this run.

# %%
fig, axes = plt.subplots(1, 3, figsize=(14, 3.5), constrained_layout=True)
for ax, name in zip(axes, idatas, strict=True):
    for stat_name in ("ink", "dark fraction", "out of range"):
        ax.hist(
            p_values[name, stat_name].values.ravel(),
            bins=20,
            range=(0, 1),
            alpha=0.5,
            label=stat_name,
        )
    ax.set_title(name)
    ax.set_xlabel("per-image Bayesian p-value")
axes[0].legend()
plt.show()

# %% [markdown]
# ## What the replicates look like
#
# The checks are easier to believe after looking at single draws. Row by row: a test
# image, then three replicates $x^{\mathrm{rep}} \sim p_\theta(x \mid z_s)$, for each
# likelihood (the Gaussian replicates clipped to $[0, 1]$ for display).

# %%
fig, axes = plt.subplots(3, 4, figsize=(6, 4.8), constrained_layout=True)
for row, (name, idata) in enumerate(idatas.items()):
    images = [idata.observed_data["x"].values[0, 0]]
    images += [idata.posterior_predictive["x"].values[0, s, 0, 0] for s in range(3)]
    for col, image in enumerate(images):
        axes[row, col].imshow(image.clip(0, 1), cmap="gray", vmin=0, vmax=1)
        axes[row, col].set_xticks([])
        axes[row, col].set_yticks([])
    axes[row, 0].set_ylabel(name.split(",")[0], fontsize=8)
axes[0, 0].set_title("data", fontsize=9)
for col in range(1, 4):
    axes[0, col].set_title(f"replicate {col}", fontsize=9)
plt.show()

# %% [markdown]
# The Bernoulli replicates are speckled versions of the data, far from the smooth means
# that sample grids usually show, and yet no statistic in the table flagged them: a
# check tests only the property its statistic measures. Choose statistics for what
# matters to the use of the model.

# %% [markdown]
# ## Summary
#
# - `pyro_vae.check.ppc.posterior_predictive` gives ArviZ `InferenceData` for any VAE;
#   `statistic_data` feeds a statistic to `az.plot_ppc` and `az.plot_bpv`, and
#   `bayesian_p_values` computes $p_B$ per image or per dataset.
# - The ELBOs of likelihoods on different data are not comparable; predictive checks
#   are, and they say *what* is wrong: the table above lists which statistics each
#   likelihood fails.

# %%
for name in idatas:
    failed = [
        s
        for s in statistics
        if ((p_values[name, s] < 0.025) | (p_values[name, s] > 0.975)).mean() > 0.5
    ]
    print(f"{name}: misfit in {failed or 'none of the statistics'}")
print(
    f"wall time of this notebook ({'smoke' if SMOKE else 'full'} mode): "
    f"{time.perf_counter() - START:.0f} s"
)
