# Tutorial 7 (percent script; `python tutorials/build.py 07_posterior_collapse` makes the
# notebook). Edit this file, not the .ipynb.
# ruff: noqa: E402 (the first cell starts a timer and filters a warning before imports)

# %% [markdown]
# # 7. Posterior collapse
#
# A VAE may learn to ignore part of its latent code: for some dimensions the guide
# returns the prior whatever the input, $q_\phi(z_d \mid x) \approx p(z_d)$. Those
# dimensions cost no KL and carry no information. This is **posterior collapse**
# (Bowman et al., 2016). This notebook shows how to see it with
# `pyro_vae.check.diagnostics` (KL per dimension, active units) and measures what three
# common remedies do to it: the KL weight $\beta$, KL annealing and free bits.
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
from pyro_vae.check.diagnostics import PosteriorCollapseWarning, latent_diagnostics
from pyro_vae.check.loglik import log_likelihood
from pyro_vae.objectives import BetaELBO, FreeBitsELBO

plt.rcParams.update({"figure.dpi": 72, "savefig.dpi": 72, "figure.figsize": (6, 3.5)})
pyro.enable_validation(True)
pyro.set_rng_seed(0)
print("smoke mode" if SMOKE else "full mode")

# %% [markdown]
# ## Why the ELBO allows collapse
#
# With a factorized guide and prior, the KL term of the ELBO is a sum over dimensions:
#
# $$
# \mathrm{ELBO}(x) = \mathbb{E}_{q_\phi(z \mid x)}[\log p_\theta(x \mid z)]
#   - \sum_{d=1}^{D} \mathrm{KL}\big(q_\phi(z_d \mid x) \,\|\, p(z_d)\big).
# $$
#
# A dimension pays its KL for every image. It is worth using only if it improves the
# reconstruction by more than it costs. Early in training the decoder cannot yet use
# $z$, so the gradient of the KL term, which pushes every $q_\phi(z_d \mid x)$ to the
# prior, wins; once a dimension sits at the prior it carries no signal the decoder
# could learn from. Two measurements show it (Burda et al., 2015, §5.2):
#
# - the **KL per dimension** $\mathbb{E}_x\,\mathrm{KL}(q_\phi(z_d \mid x) \,\|\,
#   p(z_d))$, near 0 for a collapsed unit;
# - the **activity** $A_d = \mathrm{Cov}_x\big(\mathbb{E}_{q_\phi}[z_d \mid x]\big)$;
#   a unit is **active** if $A_d > 0.01$: its posterior mean moves with the input.
#
# The remedies change the objective:
#
# - **β-VAE** (Higgins et al., 2017): weight the KL by $\beta$. $\beta > 1$ trades
#   reconstruction for a simpler code and collapses more units; $\beta < 1$ the reverse.
# - **KL annealing** (Bowman et al., 2016): start with $\beta_t \approx 0$ and raise it
#   linearly to 1 over the first $T$ steps, so the decoder learns to use $z$ before the
#   KL bites.
# - **Free bits** (Kingma et al., 2016): charge each dimension at least $\lambda$ nats,
#   $\sum_d \max\big(\lambda, \mathbb{E}_{x \in \text{batch}}\,\mathrm{KL}_d\big)$,
#   so pushing a dimension's KL below $\lambda$ gains nothing.
#
# In pyro-vae each is an objective passed to `fit`: `BetaELBO(beta=...)`,
# `BetaELBO(warmup_steps=...)` and `FreeBitsELBO(free_bits)`. All are evaluated with the
# plain ELBO.

# %%
x_shape, latent_dim, hidden = (1, 28, 28), 32, (256,)
mnist = load_bundled_mnist()
n_train, n_eval = (128, 100) if SMOKE else (len(mnist["train"]), len(mnist["test"]))
x_train = binarize(mnist["train"].tensors[0][:n_train], seed=0)
x_valid = binarize(mnist["valid"].tensors[0][:n_eval], seed=1)
x_test = binarize(mnist["test"].tensors[0][:n_eval], seed=2)
epochs, batch_size = (1, 128) if SMOKE else (10, 128)
steps = epochs * -(-len(x_train) // batch_size)
warmup_steps = max(1, steps // 2)
objectives = {
    "ELBO": "meanfield",
    "beta = 4": BetaELBO(beta=4.0),
    "beta = 0.25": BetaELBO(beta=0.25),
    f"KL annealing ({warmup_steps} steps)": BetaELBO(warmup_steps=warmup_steps),
    "free bits 0.25 nats/dim": FreeBitsELBO(0.25),
}
print(f"{len(x_train)} training images, {epochs} epochs = {steps} steps per run")

# %% [markdown]
# Five runs from the same initialization and data order, one per objective; `fit`
# reports the validation KL (of the plain ELBO) after every epoch.

# %%
vaes, histories = {}, {}
for name, objective in objectives.items():
    pyro.set_rng_seed(0)
    vae = VAE(
        StandardNormalPrior(latent_dim),
        BernoulliLikelihood.mlp(latent_dim, x_shape, hidden),
        DiagonalNormalGuide.mlp(x_shape, latent_dim, hidden),
    )
    started = time.perf_counter()
    histories[name] = fit(
        vae.model,
        vae.guide,
        x_train,
        objective=objective,
        epochs=epochs,
        batch_size=batch_size,
        validation_data=x_valid,
        seed=0,
        progress=False,
        capture=not SMOKE,  # recording the step as a graph pays off only in long runs
    )
    vaes[name] = vae
    last = histories[name].last
    print(
        f"{name:>28}: {time.perf_counter() - started:5.1f} s, validation ELBO "
        f"{last['val_elbo']:8.2f}, KL {last['val_kl']:6.2f}"
    )

# %% [markdown]
# ## How collapse shows
#
# `latent_diagnostics` computes the KL per dimension, the activity of every unit and the
# active units on the test images, and warns with a `PosteriorCollapseWarning` when
# fewer than 10% of the units are active or the KL is near zero. First the plain ELBO
# run: each point is one latent dimension.

# %%
diagnostics = {}
for name, vae in vaes.items():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", PosteriorCollapseWarning)
        diagnostics[name] = latent_diagnostics(vae.model, vae.guide, x_test)
    for w in caught:
        if issubclass(w.category, PosteriorCollapseWarning):
            print(f"{name}: PosteriorCollapseWarning: {str(w.message)[:160]}...")

d = diagnostics["ELBO"]
fig, ax = plt.subplots(figsize=(5.5, 3.8))
ax.scatter(d.activity, d.kl_per_dim, c=["C0" if a else "C3" for a in d.active])
ax.axvline(d.threshold, color="k", linestyle=":", label=f"activity threshold {d.threshold}")
ax.set_xscale("log")
ax.set_xlabel(r"activity $A_d = \mathrm{Var}_x\, E_q[z_d]$")
ax.set_ylabel("KL of dimension d (nats)")
ax.set_title(f"plain ELBO: {d.num_active} of {d.latent_dim} units active")
ax.legend()
plt.show()

# %% [markdown]
# The two measurements agree: units in the lower left have an activity below the
# threshold (red) and a KL near 0 (collapsed), the others carry several nats each. The
# title gives the count for this run.
#
# ## What β, annealing and free bits do
#
# The table: per run, on the test images, the ELBO, its KL, the importance-sampled
# $\log p(x)$ (`log_likelihood`, $K$ samples, with its Monte Carlo standard error), the
# number of active units and the number of units with more than 0.1 nats of KL.

# %%
num_is = 10 if SMOKE else 200
rows = {}
for name, vae in vaes.items():
    pyro.set_rng_seed(1)
    ll = log_likelihood(vae.model, vae.guide, x_test, num_samples=num_is)
    rows[name] = (ll, diagnostics[name], elbo_terms(vae.model, vae.guide, x_test)["elbo"].mean())
print(f"test images: {len(x_test)}, K = {num_is}\n")
header = (
    f"{'objective':>28} | {'ELBO':>8} | {'KL':>6} | {'log p(x)':>16} | "
    f"{'active':>6} | {'KL>0.1':>6}"
)
print(header)
print("-" * len(header))
for name, (ll, d, elbo) in rows.items():
    kl = d.kl_per_dim
    print(
        f"{name:>28} | {elbo:8.2f} | {kl.sum().item():6.2f} | "
        f"{ll.mean:8.2f} ± {ll.mean_stderr:5.3f} | {d.num_active:>3}/{d.latent_dim} | "
        f"{int((kl > 0.1).sum()):>3}/{d.latent_dim}"
    )

# %%
fig, axes = plt.subplots(1, 2, figsize=(13, 4), constrained_layout=True)
for name, (_, d, _) in rows.items():
    axes[0].plot(d.kl_per_dim.sort(descending=True).values, marker=".", label=name)
    axes[1].plot(histories[name]["epoch"], histories[name]["val_kl"], marker="o", label=name)
axes[0].set_xlabel("latent dimension, sorted by KL")
axes[0].set_ylabel("KL per dimension (nats)")
axes[0].axhline(0.25, color="k", linestyle=":", linewidth=1)
axes[0].set_title("KL per dimension (dotted: the free-bits floor)")
axes[1].set_xlabel("epoch")
axes[1].set_ylabel("validation KL (nats)")
axes[1].set_title("total KL during training")
axes[0].legend(fontsize=8)
plt.show()

# %% [markdown]
# Read the table and the left plot together. A larger $\beta$ shortens the sorted KL
# curve (fewer dimensions above 0) and lowers the total KL, and a smaller $\beta$
# lengthens it; neither optimizes the ELBO itself, and the ELBO and $\log p(x)$ columns
# show what each cost or gained. Annealing ends at the same objective as the plain ELBO
# ($\beta = 1$ after the warm-up), so any difference in its row comes from the path:
# the right plot shows its KL climbing high while $\beta_t$ is small and falling as
# $\beta_t$ reaches 1. Free bits lift every dimension that would sit below the floor up
# towards it (dotted line), which shows as more units above 0.1 nats, but such a
# dimension may still carry little information, hence both columns. What is measured
# here is one short budget and one seed per objective.
#
# ## Summary
#
# - Collapse is visible in two numbers per dimension, its KL and its activity, both from
#   `pyro_vae.check.diagnostics.latent_diagnostics`, which also warns when few units are used.
# - $\beta$ moves the trade-off between KL and reconstruction; annealing and free bits
#   keep the ELBO as the target and change how dimensions get there. The table above
#   gives the measured effect of each on the KL, the active units and $\log p(x)$.

# %%
for name, (ll, d, _) in rows.items():
    print(f"{name:>28}: {d.num_active:2d} active units, log p(x) {ll.mean:8.2f}")
print(
    f"wall time of this notebook ({'smoke' if SMOKE else 'full'} mode): "
    f"{time.perf_counter() - START:.0f} s"
)
