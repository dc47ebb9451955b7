# Tutorial 6 (percent script; `python tutorials/build.py 06_posterior_predictive_checks` makes
# the notebook). Edit this file, not the .ipynb.
# ruff: noqa: E402 (the first cell starts a timer and filters a warning before imports)

# %% [markdown]
# # 6. Posterior predictive checks with ArviZ
#
# **Learning goals**
#
# - Draw replicated data from a trained VAE's posterior predictive distribution and
#   store it as ArviZ `InferenceData`.
# - Compute and read Bayesian p-values of a statistic, per image and per dataset, and
#   know why posterior predictive p-values pile up near 0.5 when a model fits.
# - Plot a check with `az.plot_ppc` and `az.plot_bpv`.
# - Choose statistics that expose a specific failure of a likelihood, here a Gaussian and
#   a continuous Bernoulli on grayscale MNIST.
# - Tell the decoder's mean from a draw of $p_\theta(x \mid z)$: why means look blurry
#   and samples noisy.
#
# A higher ELBO says a model is better than another; it does not say in which way a
# model is wrong. A **posterior predictive check** does: draw replicated data from the
# fitted model, compute a statistic on the replicates and on the real data, and see
# whether the real value is typical. This notebook builds ArviZ `InferenceData` from a
# trained VAE with `pyro_vae.check.ppc`, plots checks with `az.plot_ppc` and `az.plot_bpv`,
# computes Bayesian p-values, and uses them to compare three likelihoods: Bernoulli on
# binarized MNIST, and Gaussian and continuous Bernoulli on grayscale MNIST. Every
# conclusion in the text is checked by a `claim(...)` in the cell that computes it: a ✓
# line in the output, and in full mode a failed check stops the notebook.
#
# *Runtime:* the last cell prints this notebook's wall time; the full-mode time on 2 CPU
# cores is listed in `tutorials/README.md`. `PYRO_VAE_SMOKE=1` runs a quick version on
# tiny data (the numbers then mean nothing, and the claims are only reported).

# %%
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

import arviz as az
import matplotlib.pyplot as plt
import numpy as np
import pyro
import pyro.distributions as dist
import torch

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
from pyro_vae.check.diagnostics import posterior_means
from pyro_vae.check.ppc import (
    bayesian_p_values,
    image_ink,
    mean_intensity,
    posterior_predictive,
    statistic_data,
)
from pyro_vae.check.viz import decode_means

IMPORTED = time.perf_counter()
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
    refused = False
except ValueError as error:
    refused = True
    print("Bernoulli on grayscale -> ValueError:", error)
zero_share = (gray_test == 0).double().mean().item()
print(f"fraction of grayscale test pixels exactly 0: {zero_share:.3f}")
claim(refused, "pyro-vae refuses a Bernoulli likelihood on grayscale pixels")
claim(zero_share > 0.5, "most pixels of the grayscale test images are exactly 0")

# %% [markdown]
# We train one VAE per likelihood, with the same encoder, decoder body, latent size and
# budget.

# %%
vaes, test_elbo = {}, {}
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
    test_elbo[name] = elbo_terms(vae.model, vae.guide, x_test)["elbo"].mean().item()
    print(f"{name:>32}: test ELBO {test_elbo[name]:9.2f} nats per image")
claim(
    test_elbo["continuous Bernoulli, grayscale"] > 0,
    "the continuous Bernoulli's test ELBO is positive: a log-density, not a log-probability",
)

# %% [markdown]
# The three ELBOs are not comparable: the Bernoulli one is a log-probability of binary
# images, the other two are log-densities of grayscale images, and a density can exceed
# 1, so its logarithm can be positive, as the continuous Bernoulli's is. The predictive
# checks below compare each model with its own data instead.
#
# ## InferenceData from a VAE
#
# `pyro_vae.check.ppc.posterior_predictive` runs the guide and the model unconditioned
# (Pyro's `Predictive` would return the observed site unchanged) and packs the draws as
# ArviZ `InferenceData`: `posterior` ($z$), `posterior_predictive` ($x^{\mathrm{rep}}$),
# `log_likelihood` ($\log p_\theta(x_n \mid z_s)$) and `observed_data`, with one chain
# and named dimensions. The replicates are draws: for the Bernoulli model, binary images
# that change from draw to draw.

# %%
num_draws = 20 if SMOKE else 100
idatas = {}
for name, vae in vaes.items():
    pyro.set_rng_seed(0)
    idatas[name] = posterior_predictive(vae.model, vae.guide, data[name][1], num_samples=num_draws)
idata = idatas["continuous Bernoulli, grayscale"]
print(idata)
print(idata.posterior_predictive["x"].sizes)
bernoulli_rep = idatas["Bernoulli, binarized"].posterior_predictive["x"].values[0]
print("values in the Bernoulli replicates:", np.unique(bernoulli_rep))
claim(
    set(np.unique(bernoulli_rep)) <= {0.0, 1.0} and (bernoulli_rep[0] != bernoulli_rep[1]).any(),
    "the Bernoulli replicates are binary images that differ between draws, not probabilities",
)

# %% [markdown]
# ## `az.plot_ppc` and `az.plot_bpv`: a per-image statistic
#
# The amount of ink, $T(x) = \sum_i x_i$, per image (`pyro_vae.check.ppc.image_ink`).
# `statistic_data` computes it for the observed and the replicated images and returns
# `InferenceData` that ArviZ's plots take directly. In the top row, `az.plot_ppc`
# overlays the distribution of the ink over the test images (black) on that of many
# replicated test sets (blue). In the bottom row, `az.plot_bpv` with `kind="t_stat"`
# reduces each replicated test set to its mean ink and shows how those means spread
# (the curve) and where the real test set's mean lies (the dot); the title gives $p_B$
# of the mean intensity, the same statistic up to the factor 784.

# %%
fig, axes = plt.subplots(2, 3, figsize=(14, 7), constrained_layout=True)
for column, (name, idata) in enumerate(idatas.items()):
    ink = statistic_data(idata, image_ink, name="ink")
    az.plot_ppc(ink, num_pp_samples=min(50, num_draws), random_seed=0, ax=axes[0, column])
    axes[0, column].set_title(f"{name}\nink per image", fontsize=11)
    axes[0, column].set_xlabel("ink per image (sum of pixel values)", fontsize=10)
    axes[0, column].set_ylabel("density over test images", fontsize=10)
    az.plot_bpv(ink, kind="t_stat", t_stat="mean", bpv=False, ax=axes[1, column])
    p_mean = bayesian_p_values(idata, mean_intensity).item()
    axes[1, column].set_title(f"mean ink of a test set: $p_B$ = {p_mean:.2f}", fontsize=11)
    axes[1, column].set_xlabel("mean ink per image (dot: the real test set)", fontsize=10)
    axes[1, column].set_ylabel("density over replicated test sets", fontsize=10)
for ax in axes.flat:
    ax.tick_params(labelsize=9)
plt.show()

# %% [markdown]
# The continuous Bernoulli's replicated ink sits to the right of the data: its
# replicates carry more ink than the real images. The reason is its shape. With
# $\lambda$ near 0 its density on $[0, 1]$ decays like an exponential of rate about
# $\log\frac{1-\lambda}{\lambda}$, so the mean pixel value falls only like one over the
# logit, while the Bernoulli's falls like $\lambda$ itself. A background pixel that
# the decoder wants dark still draws values well above 0:

# %%
logit = torch.tensor(-10.0)
cb_mean = dist.ContinuousBernoulli(logits=logit).mean.item()
bern_mean = dist.Bernoulli(logits=logit).mean.item()
print(f"mean at logit -10: continuous Bernoulli {cb_mean:.4f}, Bernoulli {bern_mean:.2e}")
claim(
    abs(cb_mean - 1 / 10) < 0.01 and bern_mean < 1e-4,
    "at logit -10 the continuous Bernoulli's mean is about 1/10 (one over the logit), "
    "the Bernoulli's below 1e-4",
)
cb_p_ink = bayesian_p_values(idatas["continuous Bernoulli, grayscale"], image_ink)
cb_high = (cb_p_ink > 0.975).mean().item()
print(f"continuous Bernoulli: share of images with ink p_B > 0.975: {cb_high:.2f}")
claim(cb_high > 0.5, "the continuous Bernoulli's replicates carry more ink than most real images")

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
# the single $p_B$ (there "extreme" is 0 or 1). A model whose replicates look like the
# data in that respect has few extreme p-values; the `misfit` column marks more than
# half of the images extreme (or an extreme dataset p-value).

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
p_values, extreme = {}, {}
for name, idata in idatas.items():
    for stat_name, statistic in statistics.items():
        p = bayesian_p_values(idata, statistic)
        p_values[name, stat_name] = p
        extreme[name, stat_name] = ((p < 0.025) | (p > 0.975)).mean().item()
        flag = "misfit" if extreme[name, stat_name] > 0.5 else ""
        print(
            f"{name:>32} | {stat_name:>14} | {extreme[name, stat_name]:11.2f} | "
            f"{p.median().item():10.3f} | {flag}"
        )
bern, gauss, cb = idatas  # the three names, in order
claim(
    all(extreme[bern, s] < 0.05 for s in statistics),
    "no statistic flags the Bernoulli model: under 5% extreme p-values for each",
)
claim(
    extreme[gauss, "out of range"] > 0.5 and extreme[gauss, "dark fraction"] > 0.5,
    "the Gaussian fails the out-of-range and the dark-fraction checks (most images extreme)",
)
claim(
    extreme[cb, "out of range"] == 0 and extreme[cb, "dark fraction"] > 0.5,
    "the continuous Bernoulli never leaves [0, 1] but fails the dark-fraction check",
)
claim(
    extreme[cb, "ink"] > 0.5 and extreme[cb, "mean intensity"] == 1,
    "the continuous Bernoulli fails both ink checks, per image and for the test set",
)

# %% [markdown]
# Read the table row by row. The binarized Bernoulli model can only produce values in
# $\{0, 1\}$, the values its data has, and the checks test how often it draws ink where
# the data has it: it passes all four. The Gaussian model's replicates add noise of
# standard deviation $\sigma$ to every pixel, the black background included, so they
# leave $[0, 1]$ and fill in the exact zeros of the real images: it fails the
# out-of-range and dark-fraction checks. The continuous Bernoulli never leaves
# $[0, 1]$, but, as computed above, it cannot put its mass close enough to 0: it fails
# the dark-fraction check and, through the background, the ink checks.
#
# The histograms below show the per-image p-values behind the table. For a model that
# fits they spread over $(0, 1)$, not piled up at 0 or 1, but they need not be uniform
# (the dashed line): posterior predictive p-values are conservative, drawn towards 0.5
# even for a correct model (Meng, 1994), because the same image was used to fit the
# replicates. The Bernoulli model's ink p-values show it: fewer land beyond 0.025 and
# 0.975 than the 5% a uniform distribution would put there, and their spread is
# narrower than a uniform's.

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
    ax.axhline(n_eval / 20, color="k", linestyle="--", linewidth=1)
    ax.set_title(name)
    ax.set_xlabel("per-image Bayesian p-value")
    ax.set_ylabel(f"images (of {n_eval}) per bin")
axes[0].legend()
plt.show()
ink_p = p_values[bern, "ink"].values.ravel()
print(f"Bernoulli ink p-values: standard deviation {ink_p.std():.3f}; uniform: {12**-0.5:.3f}")
claim(
    extreme[bern, "ink"] < 0.05 and ink_p.std() < 12**-0.5,
    "the Bernoulli's ink p-values are conservative: under 5% extreme, narrower than uniform",
)

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
# The Bernoulli replicates are speckled versions of the data, far from the smooth
# images that sample grids usually show, and yet no statistic in the table flagged
# them: a check tests only the property its statistic measures. Choose statistics for
# what matters to the use of the model.
#
# ## Blurry means versus noisy samples
#
# Sample grids, including `pyro_vae.check.viz` and `pyro-vae sample`, show the **mean**
# of $p_\theta(x \mid z)$, for a Bernoulli likelihood the pixel probabilities; the
# replicates above are **draws**. The two look different for one reason: given $z$ the
# pixels are independent.
#
# - The mean is **blurry**. A code $z$ does not pin down exactly where a stroke runs, so
#   at a stroke's edge the decoder can only say "maybe": the pixel gets an intermediate
#   probability. The grey values sit next to the stroke, where its position is
#   uncertain.
# - A draw is **noisy**. Each pixel is flipped on with its own probability,
#   independently of its neighbours, so the uncertainty at the edges comes out as salt
#   and pepper. A real image that differs from the mean differs coherently: a whole
#   stroke is thicker or shifted, so neighbouring pixels deviate together.
#
# Below, for the Bernoulli VAE, each test image is encoded to its posterior mean code
# $\mathbb{E}_q[z \mid x]$, decoded to the probabilities $\mu(z)$, and two samples are
# drawn from $\mathrm{Bernoulli}(\mu(z))$. We measure the share of intermediate values,
# where they sit, and how much neighbouring pixels' deviations from $\mu$ move together
# (the correlation of $x_{ij} - \mu_{ij}$ with $x_{i,j+1} - \mu_{i,j+1}$, over pixels
# where $\mu$ is between 0.05 and 0.95), in the data and in the samples.

# %%
bern_vae = vaes[bern]
x_bin = data[bern][1]
codes = posterior_means(bern_vae.guide, x_bin)
means = decode_means(bern_vae.model, codes, x_bin)  # pixel probabilities, (N, 1, 28, 28)
gen = torch.Generator().manual_seed(0)
samples = [torch.bernoulli(means, generator=gen) for _ in range(2)]

intermediate = (means > 0.1) & (means < 0.9)
grey_means = intermediate.float().mean().item()
grey_samples = ((samples[0] > 0) & (samples[0] < 1)).float().mean().item()
inked = means >= 0.5
next_to_ink = torch.zeros_like(inked)
for shift, dim in ((1, -1), (-1, -1), (1, -2), (-1, -2)):
    next_to_ink |= torch.roll(inked, shift, dim)
edge_share = next_to_ink[intermediate].float().mean().item()


def neighbour_correlation(x, mu):
    """Correlation of the deviations x - mu of horizontally adjacent pixels, over the
    pairs whose probabilities are both between 0.05 and 0.95."""
    r, uncertain = x - mu, (mu > 0.05) & (mu < 0.95)
    keep = uncertain[..., :-1] & uncertain[..., 1:]
    pairs = torch.stack([r[..., :-1][keep], r[..., 1:][keep]])
    return torch.corrcoef(pairs)[0, 1].item()


corr_data = neighbour_correlation(x_bin, means)
corr_sample = neighbour_correlation(samples[0], means)
disagree = (samples[0] != samples[1]).float().mean().item()
expected = (2 * means * (1 - means)).mean().item()
print(f"share of pixels strictly between 0.1 and 0.9: means {grey_means:.3f}, ", end="")
print(f"samples {grey_samples:.3f}")
print(f"share of those grey mean pixels next to a pixel with p >= 0.5: {edge_share:.2f}")
print(f"neighbour correlation of deviations from the mean: data {corr_data:.3f}, ", end="")
print(f"samples {corr_sample:.3f}")
print(f"pixels where the two samples differ: {disagree:.4f}; average 2μ(1-μ): {expected:.4f}")
claim(
    grey_means > 0.1 and grey_samples == 0,
    "mean images have intermediate grey values (over 10% of pixels) while samples are binary",
)
claim(edge_share > 0.5, "most grey mean pixels sit next to a stroke (a pixel with p >= 0.5)")
claim(
    abs(disagree - expected) < 0.05 * expected,
    "two samples from the same code differ in the share of pixels 2μ(1-μ) predicts (within 5%)",
)
claim(
    corr_data > 0.1 and abs(corr_sample) < 0.05,
    "real images deviate from the mean coherently (neighbour correlation > 0.1), "
    "samples do not (< 0.05)",
)

fig, axes = plt.subplots(4, 6, figsize=(7.5, 5.4), constrained_layout=True)
titles = ["data", "mean μ(z)", "sample 1", "sample 2"]
for col in range(6):
    for row, image in enumerate((x_bin[col], means[col], samples[0][col], samples[1][col])):
        axes[row, col].imshow(image[0], cmap="gray", vmin=0, vmax=1)
        axes[row, col].set_xticks([])
        axes[row, col].set_yticks([])
for row, title in enumerate(titles):
    axes[row, 0].set_ylabel(title, fontsize=9)
plt.show()

# %% [markdown]
# The printed numbers back the two descriptions: the mean images hold grey values that
# no sample has, most of them at the edge of a stroke, and the samples' deviations
# from the mean are independent from pixel to pixel while the real images' are not.
# The amount of that noise is exactly what the likelihood says: two samples from the
# same code disagree in a share of pixels equal, up to Monte Carlo error, to the
# average of $2\mu(1-\mu)$, the probability that two independent Bernoulli draws
# differ. Neither picture is a bug: the blur is honest uncertainty about where the
# strokes are, and the noise is what a likelihood that factorizes over pixels does with
# that uncertainty.

# %% [markdown]
# **Try this:** write your own statistic and check the three models with it. A statistic
# is a function of an `xarray.DataArray` with dims `(chain, draw, example, channel, row,
# column)` that reduces the pixel dims (per image) or the pixel and example dims (per
# dataset). The one below counts the bright pixels (value above 0.5) per image; try the
# brightest pixel (`x.max(pixel_dims)`), or the ink in the top half of the image
# (`x.isel(row=slice(0, 14)).sum(pixel_dims)`), and see which likelihood it flags.


# %%
def my_statistic(x):
    """The number of bright pixels per image."""
    return (x > 0.5).sum(pixel_dims)


for name, idata in idatas.items():
    p = bayesian_p_values(idata, my_statistic)
    share = ((p < 0.025) | (p > 0.975)).mean().item()
    print(
        f"{name:>32}: extreme p_B for {share:.0%} of the images, median p_B {p.median().item():.3f}"
    )

# %% [markdown]
# ## Summary
#
# - `pyro_vae.check.ppc.posterior_predictive` gives ArviZ `InferenceData` for any VAE;
#   `statistic_data` feeds a statistic to `az.plot_ppc` and `az.plot_bpv`, and
#   `bayesian_p_values` computes $p_B$ per image or per dataset.
# - The ELBOs of likelihoods on different data are not comparable; predictive checks
#   are, and they say *what* is wrong: the Gaussian leaves $[0, 1]$ and fills in the
#   black background, the continuous Bernoulli cannot make pixels dark enough, the
#   Bernoulli on binarized images passes every statistic here.
# - Posterior predictive p-values are conservative: a model that fits gives fewer
#   extreme values than a uniform distribution would.
# - Decoded means are blurry where $z$ leaves the strokes uncertain; draws from a
#   likelihood that factorizes over pixels turn that uncertainty into independent
#   pixel noise.
# - For tables and counts, `pyro_vae.check.ppc.feature_checks` runs the same check per
#   feature (mean, variance, fraction of zeros, variance / mean, largest value), and
#   `pyro-vae ppc` reports it for such data.

# %%
for name in idatas:
    failed = [s for s in statistics if extreme[name, s] > 0.5]
    print(f"{name}: misfit in {failed or 'none of the statistics'}")
now = time.perf_counter()
print(
    f"wall time of this notebook ({'smoke' if SMOKE else 'full'} mode): {now - START:.1f} s, "
    f"{now - IMPORTED:.1f} s after the imports"
)
