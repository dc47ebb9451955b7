# Tutorial 9 (percent script; `python tutorials/build.py 09` makes the notebook). Edit this
# file, not the .ipynb.
# ruff: noqa: E402 (the first cell starts a timer and filters a warning before imports)

# %% [markdown]
# # 9. Your own model
#
# Nothing in pyro-vae's training and evaluation functions is tied to the `VAE` class:
# `fit`, `elbo_terms`, `log_likelihood`, `latent_diagnostics`, `posterior_predictive`
# and the `viz` functions take **any** Pyro model and guide that follow the site
# conventions: the observed site is `"x"`, and every sample site sits inside
# `pyro.plate("data")`. Here we write a new variant from scratch, a VAE with two layers
# of latent variables, as a plain Pyro program, then train, evaluate and check it with
# the library, next to a one-layer VAE built from the library's parts.
#
# *Runtime:* the last cell prints this notebook's wall time; the full-mode time on 2 CPU
# cores is listed in `tutorials/README.md`. `PYRO_VAE_SMOKE=1` runs a quick version.

# %%
import os
import time
import warnings

START = time.perf_counter()
SMOKE = os.environ.get("PYRO_VAE_SMOKE") == "1"
warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm in a notebook

import matplotlib.pyplot as plt
import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.nn import PyroModule
from torch.nn.functional import softplus
from torchvision.utils import make_grid

from pyro_vae import (
    MLP,
    VAE,
    BernoulliLikelihood,
    DiagonalNormalGuide,
    StandardNormalPrior,
    binarize,
    elbo_terms,
    fit,
    load_bundled_mnist,
)
from pyro_vae.check.diagnostics import PosteriorCollapseWarning, latent_diagnostics
from pyro_vae.check.loglik import log_likelihood
from pyro_vae.check.ppc import bayesian_p_values, image_ink, mean_intensity, posterior_predictive
from pyro_vae.check.viz import as_images, prior_means, reconstruction_means
from pyro_vae.objectives import FreeBitsELBO

plt.rcParams.update({"figure.dpi": 72, "savefig.dpi": 72, "figure.figsize": (6, 3.5)})
pyro.enable_validation(True)
pyro.set_rng_seed(0)
print("smoke mode" if SMOKE else "full mode")

# %% [markdown]
# ## A two-layer latent hierarchy
#
# A single Gaussian code has to carry both the coarse identity of a digit and its fine
# details. A hierarchy (Rezende et al., 2014; Sønderby et al., 2016, *Ladder VAEs*) puts
# a small top code $z_2$ above a larger code $z_1$:
#
# $$
# z_2 \sim \mathcal{N}(0, I), \qquad
# z_1 \mid z_2 \sim \mathcal{N}\big(\mu_\theta(z_2),\ \mathrm{diag}\,\sigma^2_\theta(z_2)\big),
# \qquad x \mid z_1 \sim \mathrm{Bernoulli}\big(\sigma(f_\theta(z_1))\big),
# $$
#
# so the prior of $z_1$ is learned, a continuous mixture of Gaussians. For the guide we
# take the *top-down* factorization $q_\phi(z_2, z_1 \mid x) = q_\phi(z_2 \mid x)\,
# q_\phi(z_1 \mid x, z_2)$, in the same order as the model (as in Ladder VAEs), with a
# shared encoder $h(x)$. The ELBO is the usual one with two latent sites,
#
# $$
# \mathrm{ELBO} = \mathbb{E}_{q}\big[\log p_\theta(x \mid z_1)\big]
# - \mathbb{E}_{q(z_2 \mid x)}\Big[\mathrm{KL}\big(q_\phi(z_1 \mid x, z_2) \,\|\,
#     p_\theta(z_1 \mid z_2)\big)\Big]
# - \mathrm{KL}\big(q_\phi(z_2 \mid x) \,\|\, p(z_2)\big),
# $$
#
# and Pyro derives it from the two programs below: nothing about the hierarchy has to be
# written into the objective. The order matters for one thing: with the guide sampling
# $z_2$ first, each KL term above is a closed-form Gaussian KL *given the sampled parent*
# $z_2$, which is what `TraceMeanField_ELBO` and `elbo_terms` compute site by site. (A
# bottom-up guide $q(z_1 \mid x)\, q(z_2 \mid z_1)$ would draw $z_2$ after, and
# dependent on, $z_1$; a per-site closed-form KL for $z_1$ given that $z_2$ is then not
# the ELBO's term, and Pyro warns that the mean-field restriction cannot be verified.)
# Each conditional Gaussian is a small module, a `pyro_vae.MLP` that outputs a location
# and a raw scale.


# %%
class GaussianLayer(PyroModule):
    """A diagonal Gaussian whose parameters an MLP computes from its input."""

    def __init__(self, in_shape, out_dim, hidden_dims=(256,)):
        super().__init__()
        self.out_dim = out_dim
        self.net = MLP(in_shape, hidden_dims, 2 * out_dim)

    def forward(self, inputs):
        loc, raw_scale = self.net(inputs).split(self.out_dim, dim=-1)
        return dist.Normal(loc, softplus(raw_scale) + 1e-4).to_event(1)


class TwoLayerVAE(PyroModule):
    """p(z2) p(z1 | z2) p(x | z1) with the top-down guide q(z2 | x) q(z1 | x, z2)."""

    def __init__(self, name, x_shape=(1, 28, 28), z1_dim=20, z2_dim=8, h_dim=256):
        super().__init__(name=name)  # parameters are stored in Pyro's param store by name
        self.z2_dim = z2_dim
        # generative model
        self.p_z1 = GaussianLayer(z2_dim, z1_dim, (256,))
        self.p_x = BernoulliLikelihood.mlp(z1_dim, x_shape, hidden_dims=(400,))
        # guide: a shared encoder h(x), then q(z2 | h) and q(z1 | h, z2)
        self.encoder = MLP(x_shape, (400,), h_dim)
        self.q_z2 = GaussianLayer(h_dim, z2_dim, (128,))
        self.q_z1 = GaussianLayer(h_dim + z2_dim, z1_dim, (256,))

    def model(self, x):
        with pyro.plate("data", x.shape[0], device=x.device):
            z2 = pyro.sample("z2", dist.Normal(x.new_zeros(self.z2_dim), 1.0).to_event(1))
            z1 = pyro.sample("z1", self.p_z1(z2))
            return pyro.sample("x", self.p_x.dist(z1), obs=x)

    def guide(self, x):
        with pyro.plate("data", x.shape[0], device=x.device):
            h = softplus(self.encoder(x))
            z2 = pyro.sample("z2", self.q_z2(h))
            # z2 may carry extra leading dims (vectorized particles): broadcast h to it
            h = h.expand(*z2.shape[:-1], h.shape[-1])
            pyro.sample("z1", self.q_z1(torch.cat([h, z2], dim=-1)))


# %% [markdown]
# The likelihood reuses the library's `BernoulliLikelihood` (an MLP decoder with a
# Bernoulli head and its data check); everything else is plain Pyro. One Pyro detail:
# a `PyroModule`'s parameters live in Pyro's global param store under its name, so two
# instances with the same name would share (and overwrite) their weights. Give every
# instance its own `name`, as the library's `VAE` does automatically. Before training,
# check the program's shapes: every site has the example dimension of the plate on the
# left of the bar and its event on the right.

# %%
mnist = load_bundled_mnist()
n_train, n_eval = (256, 200) if SMOKE else (len(mnist["train"]), len(mnist["test"]))
x_train = binarize(mnist["train"].tensors[0][:n_train], seed=0)
x_valid = binarize(mnist["valid"].tensors[0][:n_eval], seed=1)
x_test = binarize(mnist["test"].tensors[0][:n_eval], seed=2)

pyro.set_rng_seed(0)
hvae = TwoLayerVAE(name="two_layer")
guide_trace = poutine.trace(hvae.guide).get_trace(x_test[:4])
model_trace = poutine.trace(poutine.replay(hvae.model, trace=guide_trace)).get_trace(x_test[:4])
model_trace.compute_log_prob()
print(model_trace.format_shapes(title="Model", last_site="x"))

# %% [markdown]
# ## Train with `pyro_vae.fit`, next to a one-layer VAE
#
# `fit` takes the two bound methods. The baseline is the library's `VAE` with a
# standard normal prior over a code of the same size as $z_1$ and the same encoder and
# decoder widths; both get the same data, epochs, optimizer and seed. We use
# `TraceMeanField_ELBO` (`objective="meanfield"`): it uses the closed-form KL where a
# pair of Gaussians allows it, here for both sites.

# %%
pyro.set_rng_seed(0)
flat = VAE(
    StandardNormalPrior(20),
    BernoulliLikelihood.mlp(20, (1, 28, 28), hidden_dims=(400,)),
    DiagonalNormalGuide.mlp((1, 28, 28), 20, hidden_dims=(400,)),
)
models = {"two-layer (z2: 8, z1: 20)": hvae, "one-layer VAE (z: 20)": flat}
epochs = 1 if SMOKE else 15
histories = {}
for name, m in models.items():
    started = time.perf_counter()
    histories[name] = fit(
        m.model,
        m.guide,
        x_train,
        objective="meanfield",
        epochs=epochs,
        batch_size=128,
        lr=1e-3,
        validation_data=x_valid,
        seed=0,
        progress=False,
    )
    print(
        f"{name:>26}: {epochs} epochs in {time.perf_counter() - started:.0f} s, "
        f"validation ELBO {histories[name].last['val_elbo']:.2f}"
    )

fig, ax = plt.subplots()
for name, history in histories.items():
    ax.plot(history["epoch"], history["val_elbo"], marker="o", label=name)
ax.set_xlabel("epoch")
ax.set_ylabel("validation ELBO (nats per image)")
ax.legend()
plt.show()

# %% [markdown]
# ## Evaluate with the library's functions
#
# - `elbo_terms`: the ELBO per example and its reconstruction and KL terms (the KL here
#   sums both layers, each in closed form given the sampled parent $z_2$);
# - `log_likelihood`: the importance-sampled $\log p(x)$ with $K$ samples from the guide,
#   an upper estimate that is still a lower bound in expectation (IWAE), with its
#   standard error;
# - `latent_diagnostics(latent_sites=...)`: KL per dimension and active units of one latent site.

# %%
num_samples = 5 if SMOKE else 200
table = {}
for name, m in models.items():
    pyro.set_rng_seed(0)
    terms = elbo_terms(m.model, m.guide, x_test)
    ll = log_likelihood(
        m.model, m.guide, x_test, num_samples=num_samples, batch_size=100, particle_chunk=100
    )
    table[name] = (terms, ll)
    print(
        f"{name:>26}: ELBO {terms['elbo'].mean():8.2f} | reconstruction "
        f"{terms['reconstruction'].mean():8.2f} | KL {terms['kl'].mean():6.2f} | "
        f"log p(x) ≈ {ll.mean:8.2f} ± {ll.mean_stderr:.2f} (K = {num_samples})"
    )
    gap = (ll.estimate - terms["elbo"].double()).mean()
    print(f"{'':>26}  IS estimate − ELBO = {gap:.2f} nats (≥ 0 up to Monte Carlo error)")

# %% [markdown]
# Now the two latent layers of the hierarchy separately. A known difficulty of deep
# latent hierarchies is that the top layer goes unused: if the bottom code and its
# learned prior already explain the data, $q(z_2 \mid x)$ can match $p(z_2)$ at no
# cost. `latent_diagnostics` measures it and warns (`PosteriorCollapseWarning`) when
# few units are active or the KL is tiny:

# %%
for site in ("z1", "z2"):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", PosteriorCollapseWarning)
        diag = latent_diagnostics(hvae.model, hvae.guide, x_test, latent_sites=site)
    print(
        f"{site}: {diag.num_active} of {diag.latent_dim} units active, KL per dim "
        f"(nats): {diag.kl_per_dim.numpy().round(2)}"
    )
    for w in caught:
        print(f"    {w.category.__name__}: {str(w.message)[:120]}...")

# %% [markdown]
# Read the output: the top layer's KL per dimension is tiny and the collapse warning
# fires for `z2`, while `z1` carries the information. The hierarchy trained to a model
# that is, in effect, a one-layer VAE with a learned prior.
#
# ## Acting on the check: free bits
#
# The diagnostics' advice includes free bits (Kingma et al., 2016): floor the KL of each
# latent dimension at $\lambda$ nats (averaged over the minibatch), so that a dimension
# below the floor gets no gradient pushing it towards its prior. `FreeBitsELBO` needs
# only that every latent site factorizes over its dimensions, which both of ours do, so
# it applies to the hierarchy as it is. We train a fresh two-layer VAE with
# $\lambda = 0.25$ nats per dimension and measure it with the same functions.

# %%
pyro.set_rng_seed(0)
hvae_fb = TwoLayerVAE(name="two_layer_free_bits")
started = time.perf_counter()
history_fb = fit(
    hvae_fb.model,
    hvae_fb.guide,
    x_train,
    objective=FreeBitsELBO(0.25),
    epochs=epochs,
    batch_size=128,
    lr=1e-3,
    validation_data=x_valid,
    seed=0,
    progress=False,
)
print(f"two-layer + free bits: {epochs} epochs in {time.perf_counter() - started:.0f} s")
pyro.set_rng_seed(0)
terms = elbo_terms(hvae_fb.model, hvae_fb.guide, x_test)
ll = log_likelihood(
    hvae_fb.model,
    hvae_fb.guide,
    x_test,
    num_samples=num_samples,
    batch_size=100,
    particle_chunk=100,
)
table["two-layer + free bits"] = (terms, ll)
for name, (terms, ll) in table.items():
    print(
        f"{name:>26}: test ELBO {terms['elbo'].mean():8.2f} | log p(x) ≈ {ll.mean:8.2f} "
        f"± {ll.mean_stderr:.2f}"
    )
for site in ("z1", "z2"):
    diag = latent_diagnostics(hvae_fb.model, hvae_fb.guide, x_test, latent_sites=site, warn=False)
    print(
        f"free bits, {site}: {diag.num_active} of {diag.latent_dim} units active, "
        f"total KL {diag.kl_per_dim.sum():.2f} nats"
    )

# %% [markdown]
# In this run the floor does what it promises: every unit of `z2` is now active and the
# top layer carries a few nats per image. But the log-likelihood is lower than without
# it, and both two-layer models stay below the one-layer VAE (compare the three rows).
# A latent layer that is used is not the same as a layer that is needed. Deep
# hierarchies usually pay off only with longer training, wider layers and further tricks
# (batch normalization, KL warm-up; Sønderby et al., 2016); measuring, as here, is how
# to find out.
#
# ## Check: posterior predictive replicates
#
# A model that fits should generate data like the data it was trained on. For each test
# image, `posterior_predictive` draws $(z_1, z_2) \sim q$ and a replicate
# $x^{\mathrm{rep}} \sim p(x \mid z_1)$, and returns ArviZ `InferenceData`. A test
# statistic $T$ then gives a Bayesian p-value
# $p_B = \Pr(T(x^{\mathrm{rep}}) \ge T(x))$: values near 0 or 1 flag a misfit. We use
# the ink of each image (its number of lit pixels) and the mean intensity of the whole
# test set.

# %%
n_check = 100 if SMOKE else 500
pyro.set_rng_seed(0)
idata = posterior_predictive(hvae.model, hvae.guide, x_test[:n_check], num_samples=20)
print(idata)
p_ink = bayesian_p_values(idata, image_ink)
p_mean = bayesian_p_values(idata, mean_intensity)
replicated_mean = mean_intensity(idata.posterior_predictive["x"])
print(
    f"mean intensity: test images {float(mean_intensity(idata.observed_data['x'])):.4f}, "
    f"replicates {float(replicated_mean.mean()):.4f} ± {float(replicated_mean.std()):.4f} "
    f"(over {replicated_mean.size} replicated test sets); p_B = {float(p_mean):.3f}"
)
print(
    f"per-image ink: p_B below 0.05 for {(p_ink < 0.05).mean().item():.1%} and above "
    f"0.95 for {(p_ink > 0.95).mean().item():.1%} of {n_check} images"
)

observed_ink = image_ink(idata.observed_data["x"]).values
replicated_ink = image_ink(idata.posterior_predictive["x"]).values.reshape(-1)
fig, ax = plt.subplots()
ax.hist(observed_ink, bins=30, density=True, alpha=0.6, label="test images")
ax.hist(replicated_ink, bins=30, density=True, alpha=0.6, label="posterior replicates")
ax.set_xlabel("ink (lit pixels per image)")
ax.legend()
plt.show()

# %% [markdown]
# The per-image ink p-values are spread out, with few images in either tail, and the
# histograms of ink overlap: image by image, the replicates have the right amount of
# ink. The dataset-level statistic is sharper: averaged over many images and replicates,
# the mean intensity is estimated so precisely that the small excess of ink in the
# replicates printed above puts $p_B$ at the top of its range. A Bernoulli decoder with
# blurred pixel probabilities lights a few too many pixels around the strokes. A check
# with a tiny p-value is not automatically a reason to change the model; here it
# measures a bias of about the size of the printed difference.

# %% [markdown]
# ## Samples and reconstructions
#
# `prior_means` runs the model unconditioned ($z_2 \to z_1 \to$ pixel probabilities)
# and `reconstruction_means` replays it on the guide's $(z_1, z_2)$: both only read the
# site `"x"`, so they work unchanged on the hierarchy.


# %%
def show_grid(images, title, nrow=8):
    grid = make_grid(as_images(images).clamp(0, 1), nrow=nrow, padding=2, pad_value=1)
    _, ax = plt.subplots(figsize=(nrow * 0.8, grid.shape[1] / grid.shape[2] * nrow * 0.8))
    ax.imshow(grid[0], cmap="gray", vmin=0, vmax=1)
    ax.set_title(title)
    ax.axis("off")
    plt.show()


pyro.set_rng_seed(0)
show_grid(prior_means(hvae.model, x_test[:32]), "two-layer VAE: samples E[x | z1], z2 → z1")
recon = reconstruction_means(hvae.model, hvae.guide, x_test[:16])
show_grid(
    torch.cat([x_test[:8], recon[:8], x_test[8:16], recon[8:]]),
    "rows 1, 3: test images; rows 2, 4: reconstructions",
)

# %% [markdown]
# ## Summary
#
# - A new VAE variant is two Pyro functions with sites inside `plate("data")` and the
#   observed site `"x"`. Reusing the library's parts (here the Bernoulli likelihood and
#   `MLP`) is optional.
# - `fit` trains it; `elbo_terms`, `log_likelihood`, `latent_diagnostics(latent_sites=...)`,
#   `posterior_predictive` with `bayesian_p_values`, and the `viz` functions evaluate and
#   check it without any change, and compare it with a library-built VAE on equal terms.
# - The per-layer diagnostics showed the top layer collapsing; free bits revived it, and
#   the log-likelihood table showed that at this training budget neither two-layer
#   model beats the one-layer VAE.

# %%
print(
    f"wall time of this notebook ({'smoke' if SMOKE else 'full'} mode): "
    f"{time.perf_counter() - START:.0f} s"
)
