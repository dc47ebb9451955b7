# Tutorial 1 (percent script; `python tutorials/build.py 01_vae_is_a_pyro_program` makes the
# notebook). Edit this file, not the .ipynb.
# ruff: noqa: E402 (the first cell starts a timer and filters a warning before imports)

# %% [markdown]
# # 1. A VAE is a Pyro program
#
# A variational autoencoder (VAE) is two probabilistic programs: a **model** that says how
# data is generated from a latent code, and a **guide** that says how to guess the code
# from the data. Pyro runs both, and stochastic variational inference (SVI) fits their
# parameters by maximising the evidence lower bound (ELBO). This notebook builds the
# model and guide, explains plates and `to_event`, compares two Monte Carlo estimators of
# the same ELBO by the variance of their gradients, trains on the bundled MNIST subset
# with `pyro_vae.fit`, and looks at samples and reconstructions.
#
# *Runtime:* the last cell prints this notebook's wall time. The full-mode time on 2 CPU
# cores is listed in `tutorials/README.md`. Set `PYRO_VAE_SMOKE=1` for a quick run on
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
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO
from torchvision.utils import make_grid

import pyro_vae
from pyro_vae import (
    VAE,
    BernoulliLikelihood,
    DiagonalNormalGuide,
    StandardNormalPrior,
    binarize,
    elbo_terms,
    fit,
    load_bundled_mnist,
)
from pyro_vae.check.viz import as_images, prior_means, reconstruction_means

plt.rcParams.update({"figure.dpi": 72, "savefig.dpi": 72, "figure.figsize": (6, 3.5)})
pyro.enable_validation(True)
pyro.set_rng_seed(0)
print("pyro-vae", pyro_vae.__version__, "| pyro", pyro.__version__, "| torch", torch.__version__)
print("smoke mode" if SMOKE else "full mode")

# %% [markdown]
# ## The generative model
#
# A latent code $z \in \mathbb{R}^d$ is drawn from a prior, and an image $x$ from a
# likelihood whose parameters a neural network (the *decoder* $f_\theta$) computes from
# $z$. For binary $28 \times 28$ images:
#
# $$
# z \sim \mathcal{N}(0, I_d), \qquad
# x_i \mid z \sim \mathrm{Bernoulli}\big(\sigma(f_\theta(z)_i)\big),\ i = 1..784,
# \qquad p_\theta(x, z) = p(z)\, p_\theta(x \mid z).
# $$
#
# What we would like is the posterior $p_\theta(z \mid x) = p_\theta(x, z) / p_\theta(x)$
# and the *evidence* $p_\theta(x) = \int p(z)\, p_\theta(x \mid z)\, dz$ for learning
# $\theta$ by maximum likelihood. With a neural network inside, that integral has no
# closed form.
#
# In Pyro the model is a Python function; each `pyro.sample` statement is a random
# variable. A dataset of $N$ independent examples is a `pyro.plate`:
#
# ```python
# def model(x):
#     with pyro.plate("data", x.shape[0]):                      # N independent examples
#         z = pyro.sample("z", dist.Normal(0., 1.).expand([d]).to_event(1))
#         pyro.sample("x", dist.Bernoulli(logits=decoder(z)).to_event(3), obs=x)
# ```
#
# `pyro_vae.VAE` is exactly this program, with the prior, the likelihood and the guide
# as plug-in parts (`vae.model`, `vae.guide`).

# %%
latent_dim = 20
x_shape = (1, 28, 28)
vae = VAE(
    StandardNormalPrior(latent_dim),
    BernoulliLikelihood.mlp(latent_dim, x_shape, hidden_dims=(400,)),
    DiagonalNormalGuide.mlp(x_shape, latent_dim, hidden_dims=(400,)),
)
mnist = load_bundled_mnist()
n_train, n_eval = (256, 200) if SMOKE else (len(mnist["train"]), len(mnist["test"]))
x_train = binarize(mnist["train"].tensors[0][:n_train], seed=0)
x_valid = binarize(mnist["valid"].tensors[0][:n_eval], seed=1)
x_test = binarize(mnist["test"].tensors[0][:n_eval], seed=2)
print("train", tuple(x_train.shape), "valid", tuple(x_valid.shape), "test", tuple(x_test.shape))

# %% [markdown]
# ## Plates and `to_event`: batch shape versus event shape
#
# Every Pyro distribution has a **batch shape** (independent copies) and an **event
# shape** (the dimensions of one draw, whose `log_prob` is a single number). The plate
# `"data"` claims the rightmost batch dimension for the examples. An image is one event:
# `Bernoulli(logits)` with logits of shape `(N, 1, 28, 28)` has batch shape
# `(N, 1, 28, 28)`, and `.to_event(3)` moves the three pixel dimensions into the event,
# so that
#
# $$
# \log p(x \mid z) = \sum_{c,h,w} \log \mathrm{Bernoulli}(x_{chw} \mid \sigma(f_\theta(z)_{chw}))
# $$
#
# is one number per example. Pyro's trace shows the shapes of each site as
# `batch | event`:

# %%
x_batch = x_test[:8]
trace = poutine.trace(vae.model).get_trace(x_batch)
trace.compute_log_prob()
print(trace.format_shapes())

# %% [markdown]
# Forget `to_event` and the likelihood's batch shape ends in the 28 pixel columns, which
# collides with the plate of 8 examples at the rightmost dimension. With validation on,
# Pyro refuses:


# %%
def model_without_to_event(x):
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", vae.prior.dist())
        logits = vae.likelihood(z)
        pyro.sample("x", dist.Bernoulli(logits=logits), obs=x)  # no .to_event(3)


try:
    poutine.trace(model_without_to_event).get_trace(x_batch)
except ValueError as error:
    print("ValueError:", error)

# %% [markdown]
# ## The guide and the ELBO
#
# Variational inference replaces the intractable posterior by a distribution we can
# sample, the **guide**. An *amortized* guide computes it with a second network, the
# encoder $g_\phi$: $q_\phi(z \mid x) = \mathcal{N}(z;\ \mu_\phi(x),\ \mathrm{diag}\,
# \sigma^2_\phi(x))$. In Pyro the guide is another program with a `"z"` site in the same
# plate and no `"x"` site.
#
# For any $q$, Jensen's inequality gives a lower bound on the log evidence:
#
# $$
# \log p_\theta(x) = \log \mathbb{E}_{q_\phi(z \mid x)}
#     \left[\frac{p_\theta(x, z)}{q_\phi(z \mid x)}\right]
# \;\ge\; \mathbb{E}_{q_\phi(z \mid x)}\left[\log p_\theta(x, z) - \log q_\phi(z \mid x)\right]
# = \mathrm{ELBO}(\theta, \phi; x),
# $$
#
# and the gap is exactly $\mathrm{KL}(q_\phi(z \mid x) \,\|\, p_\theta(z \mid x))$
# (tutorial 2 measures it). Splitting $\log p_\theta(x, z) = \log p_\theta(x \mid z) +
# \log p(z)$ gives the form every VAE paper writes:
#
# $$
# \mathrm{ELBO} = \underbrace{\mathbb{E}_{q}[\log p_\theta(x \mid z)]}_{\text{reconstruction}}
#   - \underbrace{\mathrm{KL}(q_\phi(z \mid x) \,\|\, p(z))}_{\text{closed form for two Gaussians}}.
# $$
#
# `pyro_vae.elbo_terms` reports both terms per example (from one $z$ per example, with
# the KL in closed form):

# %%
terms = elbo_terms(vae.model, vae.guide, x_test)
for key, value in terms.items():
    print(f"untrained {key:>15}: {value.mean():9.2f} nats per example")

# %% [markdown]
# ## Two estimators of the same ELBO
#
# SVI maximises the ELBO by stochastic gradient ascent. The gradient comes from a Monte
# Carlo estimate with $z = \mu_\phi(x) + \sigma_\phi(x) \odot \varepsilon$,
# $\varepsilon \sim \mathcal{N}(0, I)$ (the reparameterization trick, tutorial 3):
#
# - `Trace_ELBO` estimates the whole integrand:
#   $\widehat{\mathrm{ELBO}} = \log p_\theta(x \mid z) + \log p(z) - \log q_\phi(z \mid x)$;
# - `TraceMeanField_ELBO` uses the closed-form KL where one exists:
#   $\widehat{\mathrm{ELBO}} = \log p_\theta(x \mid z) - \mathrm{KL}(q_\phi \,\|\, p)$.
#
# Both are unbiased for the same ELBO, so they have the same expectation and the same
# expected gradient. The second replaces a random term by its mean, so its gradient with
# respect to the encoder's parameters $\phi$ should vary less. The decoder's gradient
# comes from $\log p_\theta(x \mid z)$ alone, in both. We measure this: at fixed
# parameters, evaluate each loss and its gradient many times on the same batch of 100
# test images, and compute the mean and the total variance $\sum_j \mathrm{Var}[\hat g_j]$
# of the gradient over the repeats.


# %%
def gradient_statistics(elbo, x, num_repeats):
    """Mean loss (per example) with its standard error, and the mean and total variance
    of the gradient for the encoder's and the decoder's parameters, over repeated
    evaluations at fixed parameters."""
    loss_fn = elbo(vae.model, vae.guide)
    groups = {
        "encoder": list(vae.posterior.parameters()),
        "decoder": list(vae.likelihood.parameters()),
    }
    params = [p for group in groups.values() for p in group]
    sizes = [sum(p.numel() for p in group) for group in groups.values()]
    total = torch.zeros(sum(sizes), dtype=torch.float64)
    total_sq = torch.zeros_like(total)
    losses = []
    for _ in range(num_repeats):
        loss = loss_fn(x) / x.shape[0]
        grads = torch.autograd.grad(loss, params)
        g = torch.cat([t.flatten() for t in grads]).double()
        total += g
        total_sq += g * g
        losses.append(loss.item())
    mean = total / num_repeats
    var = (total_sq / num_repeats - mean**2) * num_repeats / (num_repeats - 1)
    losses = torch.tensor(losses)
    out = {"loss": losses.mean().item(), "loss_se": (losses.std() / num_repeats**0.5).item()}
    for (name, _), mean_part, var_part in zip(
        groups.items(), mean.split(sizes), var.split(sizes), strict=True
    ):
        out[f"{name}_mean"] = mean_part
        out[f"{name}_var"] = var_part.sum().item()
    return out


def compare_estimators(label, num_repeats):
    x = x_test[:100]
    pyro.set_rng_seed(1)
    mc = gradient_statistics(Trace_ELBO(), x, num_repeats)
    pyro.set_rng_seed(1)
    mf = gradient_statistics(TraceMeanField_ELBO(), x, num_repeats)
    print(f"--- {label}: {num_repeats} repeats on 100 test images")
    for name, s in (("Trace_ELBO", mc), ("TraceMeanField_ELBO", mf)):
        print(
            f"{name:>20}: loss {s['loss']:9.3f} ± {s['loss_se']:.3f} | gradient variance "
            f"encoder {s['encoder_var']:.4g}, decoder {s['decoder_var']:.4g}"
        )
    difference = mc["loss"] - mf["loss"]
    combined_se = (mc["loss_se"] ** 2 + mf["loss_se"] ** 2) ** 0.5
    print(
        f"difference of the mean losses: {difference:.3f} = "
        f"{difference / combined_se:.2f} combined standard errors"
    )
    cosine = torch.nn.functional.cosine_similarity(mc["encoder_mean"], mf["encoder_mean"], dim=0)
    ratio_enc = mc["encoder_var"] / mf["encoder_var"]
    ratio_dec = mc["decoder_var"] / mf["decoder_var"]
    print(f"cosine similarity of the two mean encoder gradients: {cosine:.4f}")
    print(
        f"variance ratio Trace_ELBO / TraceMeanField_ELBO: encoder {ratio_enc:.2f}, "
        f"decoder {ratio_dec:.2f}"
    )
    return ratio_enc, ratio_dec


num_repeats = 10 if SMOKE else 300
ratios = {"at initialization": compare_estimators("at initialization", num_repeats)}

# %% [markdown]
# Read the output above: the difference of the two mean losses, in standard errors, says
# whether they estimate the same number, and the cosine similarity whether the mean
# encoder gradients point the same way. The encoder's variance ratio is the factor by
# which the analytic KL reduces the gradient noise. Both runs start from the same seed,
# so they draw the same $z$; the decoder's gradient is the same function of $z$ in both
# estimators, hence its identical variance (ratio 1.00). We measure again after
# training below.
#
# ## Training with `pyro_vae.fit`
#
# `fit(model, guide, data, objective=...)` runs SVI: Pyro's ELBO used as a
# differentiable loss, minimised with Adam over every parameter of the pair. We train two
# copies of the same initial VAE, one per estimator, with the same seed, and record the
# validation ELBO after each epoch.

# %%
epochs = 1 if SMOKE else 12
initial_state = {k: v.clone() for k, v in vae.state_dict().items()}
histories = {}
for name, objective in (("Trace_ELBO", "elbo"), ("TraceMeanField_ELBO", "meanfield")):
    vae.load_state_dict(initial_state)
    started = time.perf_counter()
    histories[name] = fit(
        vae.model,
        vae.guide,
        x_train,
        objective=objective,
        epochs=epochs,
        batch_size=128,
        lr=1e-3,
        validation_data=x_valid,
        seed=0,
        progress=False,
    )
    last = histories[name].last
    print(
        f"{name:>20}: {epochs} epochs in {time.perf_counter() - started:.0f} s, "
        f"final validation ELBO {last['val_elbo']:.2f} (KL {last['val_kl']:.2f})"
    )

fig, ax = plt.subplots()
for name, history in histories.items():
    ax.plot(history["epoch"], history["val_elbo"], marker="o", label=name)
ax.set_xlabel("epoch")
ax.set_ylabel("validation ELBO (nats per image)")
ax.set_title("SVI on binarized MNIST-8k")
ax.legend()
plt.show()

# %% [markdown]
# Same objective, so the two curves track each other; compare the final validation ELBOs
# printed above the plot. The VAE kept below is the one trained with
# `TraceMeanField_ELBO` (the last loop iteration). At trained parameters the posterior
# is narrower and the KL larger. We measure the gradient variances again:

# %%
ratios["after training"] = compare_estimators("after training", num_repeats)

# %% [markdown]
# Compare the two printed encoder ratios (they are collected again at the end). The
# analytic KL removes the noise of $\log p(z) - \log q_\phi(z \mid x)$ only. At
# initialization that term is a large part of the encoder's gradient noise. After
# training, most of it comes from the reconstruction term $\log p_\theta(x \mid z)$
# through $z$, which both estimators share, so the ratio moves towards 1: the closed-form
# KL always helps, by how much depends on where training is.
#
# ## Samples and reconstructions
#
# Samples: $z \sim p(z)$, then the mean of $p_\theta(x \mid z)$, i.e. the pixel
# probabilities $\sigma(f_\theta(z))$ (`pyro_vae.check.viz.prior_means`). Reconstructions:
# $z \sim q_\phi(z \mid x)$, then the same mean (`pyro_vae.check.viz.reconstruction_means`).


# %%
def show_grid(images, title, nrow=8):
    grid = make_grid(as_images(images).clamp(0, 1), nrow=nrow, padding=2, pad_value=1)
    _, ax = plt.subplots(figsize=(nrow * 0.8, grid.shape[1] / grid.shape[2] * nrow * 0.8))
    ax.imshow(grid[0], cmap="gray", vmin=0, vmax=1)
    ax.set_title(title)
    ax.axis("off")
    plt.show()


pyro.set_rng_seed(0)
show_grid(prior_means(vae.model, x_test[:32]), "samples: E[x | z], z ~ p(z)")
originals = x_test[:16]
recon = reconstruction_means(vae.model, vae.guide, originals)
show_grid(
    torch.cat([originals[:8], recon[:8], originals[8:], recon[8:]]),
    "rows 1, 3: test images; rows 2, 4: reconstructions",
)

terms = elbo_terms(vae.model, vae.guide, x_test)
for key, value in terms.items():
    print(f"trained {key:>15}: {value.mean():9.2f} nats per test image")

# %% [markdown]
# ## Summary
#
# - A VAE in Pyro is a model (`z` then `x`, inside `plate("data")`, the pixels of an
#   image one event via `to_event`) and a guide (`z` given `x`).
# - `Trace_ELBO` and `TraceMeanField_ELBO` estimate the same ELBO; with a closed-form
#   KL the encoder's gradient variance drops by the ratios printed below (most at
#   initialization), while the decoder's is unchanged.
# - `pyro_vae.fit` trains any such pair; `pyro_vae.check.viz` draws samples and
#   reconstructions; `pyro_vae.elbo_terms` splits the ELBO into its two terms.

# %%
for when, (enc, dec) in ratios.items():
    print(
        f"gradient variance ratio Trace_ELBO / TraceMeanField_ELBO {when}: "
        f"encoder {enc:.2f}, decoder {dec:.2f}"
    )
print(
    f"wall time of this notebook ({'smoke' if SMOKE else 'full'} mode): "
    f"{time.perf_counter() - START:.0f} s"
)
