# Tutorial 7 (percent script; `python tutorials/build.py 07_posterior_collapse` makes the
# notebook). Edit this file, not the .ipynb.
# ruff: noqa: E402 (the first cell starts a timer and filters a warning before imports)

# %% [markdown]
# # 7. Posterior collapse
#
# A VAE may learn to ignore its latent code: the guide returns the prior whatever the
# input, $q_\phi(z_d \mid x) \approx p(z_d)$, and the decoder explains the data without
# $z$. This is **posterior collapse** (Bowman et al., 2016). This notebook makes it happen
# with a decoder strong enough to model the images alone, shows how
# `pyro_vae.check.diagnostics` detects it, and measures what three common remedies do
# about it: a KL weight $\beta < 1$, KL annealing and free bits.
#
# **Learning goals**
#
# - Read posterior collapse from two numbers per latent unit, its KL and its activity,
#   and know why the two can disagree and which units count as *used*.
# - See why the ELBO itself prefers to ignore $z$ when the decoder can model $x$ without
#   it.
# - Measure what $\beta < 1$, KL annealing and free bits change in the latent code, and
#   what they cost in ELBO and $\log p(x)$.
#
# *Runtime:* the last cell prints this notebook's wall time; the full-mode time on 2 CPU
# cores is listed in `tutorials/README.md`. `PYRO_VAE_SMOKE=1` runs a quick version on
# tiny data (the numbers then mean nothing, and the claims are only reported).

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
import torch
from pyro.distributions import TorchDistribution, constraints
from torch import nn
from torch.nn import functional as F

from pyro_vae import (
    MLP,
    VAE,
    BernoulliLikelihood,
    BetaELBO,
    DiagonalNormalGuide,
    FreeBitsELBO,
    Likelihood,
    PosteriorCollapseWarning,
    StandardNormalPrior,
    binarize,
    elbo_terms,
    fit,
    latent_diagnostics,
    load_bundled_mnist,
    log_likelihood,
)
from pyro_vae.check.loglik import ImportanceWeightWarning

IMPORTED = time.perf_counter()
plt.rcParams.update({"figure.dpi": 72, "savefig.dpi": 72, "figure.figsize": (6, 3.5)})
pyro.enable_validation(True)
pyro.set_rng_seed(0)
print("smoke mode" if SMOKE else "full mode")

# %% [markdown]
# ## Why the ELBO allows collapse
#
# Average the ELBO over the data. Its KL term splits into two parts (Hoffman & Johnson,
# 2016):
#
# $$
# \mathbb{E}_{x}\,\mathrm{KL}\big(q_\phi(z \mid x) \,\|\, p(z)\big)
#   = I_q(x; z) + \mathrm{KL}\big(\bar q_\phi(z) \,\|\, p(z)\big),
# \qquad \bar q_\phi(z) = \mathbb{E}_x\, q_\phi(z \mid x),
# $$
#
# the mutual information between an image and its code under the guide, and the mismatch
# between the aggregate posterior $\bar q$ and the prior. Every nat of information that
# $z$ carries about $x$ is paid for in the KL. It is worth paying only if the
# reconstruction term $\mathbb{E}_q[\log p_\theta(x \mid z)]$ gains more. A decoder whose
# pixels are independent given $z$ cannot draw a digit without being told which one, so
# it gains a lot. A decoder that models the pixels one after another,
# $p_\theta(x \mid z) = \prod_i p_\theta(x_i \mid x_{<i}, z)$, can draw a plausible digit
# from $x_{<i}$ alone; $z$ then has little left to add, and the ELBO's optimum may be
# $I_q(x; z) = 0$ (Chen et al., 2017, *Variational lossy autoencoder*). Optimization
# makes it likelier still: early in training the decoder cannot use $z$ yet, the KL
# gradient pulls every $q_\phi(z_d \mid x)$ to the prior, and a unit at the prior sends
# the decoder no signal to learn from (Bowman et al., 2016; He et al., 2019).
#
# ## Two measurements per unit, and how they relate
#
# - The **KL per dimension** $K_d = \mathbb{E}_x\,\mathrm{KL}(q_\phi(z_d \mid x) \,\|\,
#   p(z_d))$. It bounds the information unit $d$ carries from above. We call a unit
#   *KL-active* when $K_d > 0.1$ nats.
# - The **activity** $A_d = \mathrm{Var}_x\big(\mathbb{E}_{q_\phi}[z_d \mid x]\big)$: how
#   much the posterior mean moves with the input. Burda et al. (2015, §5.2) call a unit
#   **active** when $A_d > 0.01$.
#
# For a Gaussian guide $\mathcal{N}(\mu, \sigma^2)$ and the prior $\mathcal{N}(0, 1)$,
# $\mathrm{KL} = \tfrac12(\sigma^2 - 1 - \log \sigma^2) + \tfrac12 \mu^2 \ge \tfrac12 \mu^2$,
# so averaging over the data gives $K_d \ge A_d / 2$. A unit with a small KL is therefore
# inactive. The converse fails twice: an active unit with $A_d = 0.02$ has a posterior
# mean that moves by a seventh of the prior's spread and may cost only $0.01$ nats, and a
# guide whose mean ignores $x$ but sits away from the prior pays a KL for no information.
# `latent_diagnostics` reports both counts and calls a unit **used** when both tests
# pass. Its `PosteriorCollapseWarning` fires when fewer than 10% of a site's units are
# used, or its KL is below 0.1 nats.
#
# ## The remedies
#
# - **β < 1** (the β-VAE objective of Higgins et al., 2017, with a small weight): the KL
#   costs less, so information in $z$ is cheaper. The target is no longer the ELBO.
# - **KL annealing** (Bowman et al., 2016): start with $\beta_t \approx 0$ and raise it
#   linearly to 1 over the first $T$ steps, so the decoder learns to use $z$ before the
#   KL bites. The target at the end is the ELBO again.
# - **Free bits** (Kingma et al., 2016): charge each dimension at least $\lambda$ nats,
#   $\sum_d \max\big(\lambda, \mathbb{E}_{x \in \text{batch}}\,\mathrm{KL}_d\big)$, so
#   pushing a dimension's KL below $\lambda$ gains nothing.
#
# In pyro-vae each is an objective passed to `fit`: `BetaELBO(beta=...)`,
# `BetaELBO(warmup_steps=...)` and `FreeBitsELBO(free_bits)`. All runs are evaluated with
# the plain ELBO.

# %%
x_shape, latent_dim, hidden = (1, 28, 28), 128, (256,)
mnist = load_bundled_mnist()
n_train, n_eval = (128, 100) if SMOKE else (len(mnist["train"]), len(mnist["test"]))
x_train = binarize(mnist["train"].tensors[0][:n_train], seed=0)
x_valid = binarize(mnist["valid"].tensors[0][:n_eval], seed=1)
x_test = binarize(mnist["test"].tensors[0][:n_eval], seed=2)
epochs, batch_size = (1, 128) if SMOKE else (10, 128)
steps = epochs * -(-len(x_train) // batch_size)
warmup_steps = max(1, steps // 2)
print(f"{len(x_train)} training images, {epochs} epochs = {steps} steps per run")

# %% [markdown]
# ## A decoder that can model $x$ without $z$
#
# The autoregressive decoder is a MADE (Germain et al., 2015): one hidden layer whose
# weight masks let the logit of pixel $i$ see only the pixels before it in raster order,
# plus a direct masked linear path from $x_{<i}$ to pixel $i$. The code $z$ enters
# through an MLP that adds a context vector to the hidden layer. The distribution's
# `log_prob` runs the network once on the observed image, so training and evaluation
# cost one pass, like the independent-pixel decoder. We leave sampling out (it needs 784
# passes). It plugs into `VAE` as a `Likelihood`, whose `decoder` maps $z$ to the context.


# %%
class MaskedLinear(nn.Linear):
    """A linear layer whose weight is multiplied by a fixed 0/1 mask (out, in)."""

    def __init__(self, mask):
        super().__init__(mask.shape[1], mask.shape[0])
        self.register_buffer("mask", mask.float())

    def forward(self, inputs):
        return F.linear(inputs, self.weight * self.mask, self.bias)


class MADE(nn.Module):
    """Logits of p(x_i | x_<i, context) for flat binary x, pixels in raster order."""

    def __init__(self, num_pixels, hidden_dim):
        super().__init__()
        order = torch.arange(1, num_pixels + 1)
        degree = torch.arange(hidden_dim) % (num_pixels - 1) + 1  # hidden unit k sees x_≤degree
        self.inp = MaskedLinear(degree[:, None] >= order[None, :])
        self.out = MaskedLinear(order[:, None] > degree[None, :])
        self.direct = MaskedLinear(order[:, None] > order[None, :])

    def forward(self, x_flat, context):
        hidden = F.softplus(self.inp(x_flat) + context)
        return self.out(hidden) + self.direct(x_flat)


class AutoregressiveBernoulli(TorchDistribution):
    """p(x | z) = prod_i Bernoulli(x_i | sigmoid(MADE(x_<i, context(z)))); log_prob only."""

    arg_constraints: dict = {}  # noqa: RUF012 (a torch Distribution class attribute)
    support = constraints.independent(constraints.boolean, 3)

    def __init__(self, made, context, event_shape):
        self.made, self.context = made, context
        super().__init__(context.shape[:-1], torch.Size(event_shape), validate_args=False)

    def expand(self, batch_shape, _instance=None):
        context = self.context.expand(*batch_shape, self.context.shape[-1])
        return AutoregressiveBernoulli(self.made, context, self.event_shape)

    def log_prob(self, x):
        flat = x.reshape(*x.shape[: x.dim() - len(self.event_shape)], -1)
        flat = flat.expand(*torch.broadcast_shapes(flat.shape[:-1], self.batch_shape), -1)
        logits = self.made(flat, self.context)
        return -F.binary_cross_entropy_with_logits(logits, flat, reduction="none").sum(-1)


class AutoregressiveBernoulliLikelihood(Likelihood):
    """An MLP from z to the MADE's context vector, then the autoregressive Bernoulli."""

    def __init__(self, latent_dim, x_shape, hidden_dim=500, context_hidden=(256,)):
        super().__init__(MLP(latent_dim, context_hidden, hidden_dim), x_shape)
        self.made = MADE(math.prod(x_shape), hidden_dim)

    def make_dist(self, context):
        return AutoregressiveBernoulli(self.made, context, self.x_shape)

    check_data = BernoulliLikelihood.check_data  # binary pixels only


def make_vae(autoregressive):
    likelihood = (
        AutoregressiveBernoulliLikelihood(latent_dim, x_shape)
        if autoregressive
        else BernoulliLikelihood.mlp(latent_dim, x_shape, hidden)
    )
    return VAE(
        StandardNormalPrior(latent_dim),
        likelihood,
        DiagonalNormalGuide.mlp(x_shape, latent_dim, hidden),
    )


# %% [markdown]
# ## Five runs
#
# The same encoder, data, data order and seed for all: the independent-pixel decoder
# with the ELBO as the reference, then the autoregressive decoder with the ELBO and with
# each remedy. Every run has 128 latent units, more than the images need, as is common
# in practice: unused units are then expected, and the question is how many are used.
# `fit` reports the validation ELBO and its KL (of the plain ELBO) after every epoch.

# %%
runs = {
    "independent, ELBO": (False, "meanfield"),
    "autoregressive, ELBO": (True, "meanfield"),
    "autoregressive, beta = 0.25": (True, BetaELBO(beta=0.25)),
    f"autoregressive, annealing {warmup_steps} steps": (True, BetaELBO(warmup_steps=warmup_steps)),
    "autoregressive, free bits 0.25": (True, FreeBitsELBO(0.25)),
}
vaes, histories = {}, {}
for name, (autoregressive, objective) in runs.items():
    pyro.set_rng_seed(0)
    vae = make_vae(autoregressive)
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
        f"{name:>40}: {time.perf_counter() - started:5.1f} s, validation ELBO "
        f"{last['val_elbo']:8.2f}, KL {last['val_kl']:6.2f}"
    )

# %% [markdown]
# ## The collapse, seen by the diagnostics
#
# `latent_diagnostics` computes the KL per dimension, the activity of every unit and the
# three counts on the test images, and warns when the code is barely used. Here for the
# two runs trained on the ELBO itself; the warnings are printed whole.

# %%
plain, collapsed = "independent, ELBO", "autoregressive, ELBO"
diagnostics, warned = {}, {}
for name, vae in vaes.items():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", PosteriorCollapseWarning)
        diagnostics[name] = latent_diagnostics(vae.model, vae.guide, x_test)
    messages = [str(w.message) for w in caught if w.category is PosteriorCollapseWarning]
    warned[name] = bool(messages)
    if name in (plain, collapsed):
        print(f"{name}:\n  {diagnostics[name].summary()}")
        for message in messages:
            print(f"  PosteriorCollapseWarning: {message}")
d_plain, d_ar = diagnostics[plain], diagnostics[collapsed]
claim(
    not warned[plain] and d_plain.num_used >= d_plain.latent_dim / 4,
    "with independent pixels, at least a quarter of the units are used and no warning fires",
)
claim(
    warned[collapsed] and d_ar.num_used < 0.1 * d_ar.latent_dim,
    "with the autoregressive decoder, fewer than 10% of the units are used and the "
    "collapse warning fires",
)
claim(
    d_ar.num_active > d_ar.num_used,
    "activity alone counts more units of the collapsed run as active than are used",
)

# %% [markdown]
# Each point below is one latent unit. The dashed line is the bound $K_d = A_d / 2$; no
# unit can fall below it. The dotted lines are the two thresholds: used units sit in the
# upper right.

# %%
fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True, constrained_layout=True)
n = len(x_test)
grid = torch.logspace(-5, 1, 50)
for ax, name in zip(axes, (plain, collapsed), strict=True):
    d = diagnostics[name]
    ax.scatter(d.activity, d.kl_per_dim.clamp(min=1e-5), c=["C0" if u else "C3" for u in d.used])
    ax.plot(grid, grid / 2, "k--", linewidth=1, label=r"$K_d = A_d / 2$")
    ax.axvline(d.threshold, color="k", linestyle=":", linewidth=1)
    ax.axhline(d.kl_threshold, color="k", linestyle=":", linewidth=1)
    ax.set(xscale="log", yscale="log", xlim=(1e-5, 10), ylim=(1e-5, 10))
    ax.set_xlabel(r"activity $A_d = \mathrm{Var}_x\, E_q[z_d]$")
    ax.set_title(f"{name}: {d.num_used} of {d.latent_dim} used (blue)")
axes[0].set_ylabel("KL of unit d (nats)")
axes[0].legend(loc="lower right")
plt.show()
bound_holds = all(
    (d.kl_per_dim >= d.activity * (n - 1) / n / 2 - 1e-6).all() for d in diagnostics.values()
)
claim(bound_holds, "every unit of every run lies on or above K_d = A_d / 2")

# %% [markdown]
# With independent pixels at least a quarter of the units sit in the upper right: their
# mean moves with the image and they cost more than a tenth of a nat each. With the
# autoregressive decoder fewer than 10% do; the rest sit near the prior. Many of those
# are *active* by Burda's test, right of the dotted vertical line, but cost less than a
# tenth of a nat each, so they carry almost nothing. The counts printed above and the
# warning's text say the same in numbers: counting active units alone would have
# understated this collapse.
#
# ## What β, annealing and free bits do
#
# The table: per run, on the test images, the ELBO and its KL, the importance-sampled
# $\log p(x)$ (`log_likelihood`, $K$ samples, with its Monte Carlo standard error), and
# the three counts.

# %%
num_is = 10 if SMOKE else 50
rows, heavy = {}, {}
for name, vae in vaes.items():
    pyro.set_rng_seed(1)
    with warnings.catch_warnings():  # reported below as the fraction of k-hat > 0.7
        warnings.simplefilter("ignore", ImportanceWeightWarning)
        ll = log_likelihood(vae.model, vae.guide, x_test, num_samples=num_is, particle_chunk=50)
    elbo = elbo_terms(vae.model, vae.guide, x_test)["elbo"].mean().item()
    rows[name] = (elbo, ll, diagnostics[name])
    fraction = ll.pareto_k_fraction_above()  # None below K = 21 (smoke mode)
    heavy[name] = "n/a" if fraction is None else f"{fraction:.0%}"
print(f"test images: {len(x_test)}, K = {num_is}\n")
header = (
    f"{'run':>40} | {'ELBO':>8} | {'KL':>6} | {'log p(x)':>16} | "
    f"{'active':>7} | {'KL>0.1':>7} | {'used':>7} | warns | k-hat>0.7"
)
print(header)
print("-" * len(header))
for name, (elbo, ll, d) in rows.items():
    print(
        f"{name:>40} | {elbo:8.2f} | {d.kl_per_dim.sum().item():6.2f} | "
        f"{ll.mean:8.2f} ± {ll.mean_stderr:5.3f} | {d.num_active:>3}/{d.latent_dim} | "
        f"{d.num_kl_active:>3}/{d.latent_dim} | {d.num_used:>3}/{d.latent_dim} | "
        f"{'yes' if warned[name] else 'no':>5} | {heavy[name]}"
    )


def higher_estimate(a, b):
    """Whether the IS estimate of run a exceeds that of run b by more than 3 s.e."""
    (_, ll_a, _), (_, ll_b, _) = rows[a], rows[b]
    return ll_a.mean - ll_b.mean > 3 * math.hypot(ll_a.mean_stderr, ll_b.mean_stderr)


beta_run, anneal_run, free_run = list(runs)[2:]
elbo = {name: row[0] for name, row in rows.items()}
kl_total = {name: d.kl_per_dim.sum().item() for name, (_, _, d) in rows.items()}
heavy_fraction = {name: ll.pareto_k_fraction_above() or 0.0 for name, (_, ll, _) in rows.items()}
claim(
    elbo[collapsed] > elbo[plain] + 5,
    "the collapsed autoregressive run has a test ELBO more than 5 nats above the "
    "independent-pixel run",
)
claim(
    all(diagnostics[r].num_used > d_ar.num_used for r in (beta_run, anneal_run, free_run)),
    "each remedy leaves more units used than the plain ELBO with the same decoder",
)
claim(
    warned[anneal_run]
    and diagnostics[anneal_run].num_used < 0.1 * latent_dim
    and abs(elbo[anneal_run] - elbo[collapsed]) < 2,
    "annealing leaves the code collapsed (the warning still fires) and ends within 2 nats "
    "of the plain run's test ELBO",
)
claim(
    higher_estimate(anneal_run, collapsed) and elbo[anneal_run] < elbo[collapsed],
    "annealing has the higher IS estimate (by more than 3 s.e.) but the lower ELBO",
)
claim(
    all(kl_total[r] > 5 * kl_total[collapsed] for r in (beta_run, free_run))
    and all(elbo[r] < elbo[collapsed] - 5 for r in (beta_run, free_run)),
    "beta = 0.25 and free bits each raise the KL more than fivefold and lower the test "
    "ELBO by more than 5 nats",
)
claim(
    all(heavy_fraction[r] < 0.2 for r in (collapsed, anneal_run))
    and all(heavy_fraction[r] > 0.5 for r in (plain, beta_run, free_run)),
    "k-hat > 0.7 for fewer than 20% of the images in the two collapsed runs, and for more "
    "than half in the three others",
)

# %%
fig, axes = plt.subplots(1, 2, figsize=(13, 4), constrained_layout=True)
for name, (_, _, d) in rows.items():
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
free_kl = diagnostics[free_run].kl_per_dim
claim(
    diagnostics[free_run].num_kl_active == latent_dim and free_kl.median() < 2 * 0.25,
    "with free bits every unit passes the 0.1-nat test, and half of them carry less "
    "than twice the floor of 0.25 nats",
)

# %% [markdown]
# Read the table and the two plots together.
#
# - The autoregressive decoder beats the independent-pixel one on the ELBO by more than
#   5 nats while using almost no code: ignoring $z$ goes together with a much better fit.
# - All three remedies leave more units used, but not equally. Annealing, at this
#   budget, does not undo the collapse: the warning still fires, and the run ends within
#   2 nats of the plain run's ELBO. Its importance-sampled estimate is slightly higher
#   while its ELBO is slightly lower, so the two bounds order these two runs differently.
# - $\beta = 0.25$ and free bits give a used code, with a KL more than five times
#   larger, and pay for it with more than 5 nats of test ELBO. Both optimize another
#   objective than the ELBO. With many units free bits is costly by design: it charges
#   every unit at least $\lambda$ nats, `latent_dim` × $\lambda$ in all.
# - Free bits also empties the count of used units of meaning: its floor of 0.25 nats
#   per unit lies above the 0.1-nat threshold, so a unit parked at the floor passes. Here
#   every unit passes, and half of them carry less than twice the floor (left plot).
#   Judge a remedy by the bounds on $\log p(x)$ and by what the code is used for, not by
#   the count.
# - The last column of the table says how far to trust each importance-sampled estimate.
#   A collapsed code has a posterior close to the prior, which the guide matches, so few
#   images have heavy-tailed weights ($\hat k > 0.7$). With a used code the diagonal
#   Gaussian guide misses part of the posterior for most images; the estimate is then a
#   stochastic lower bound (on average still above the ELBO) whose error exceeds its
#   printed standard error, so a difference between two such runs needs more samples or
#   a better proposal before it can be trusted.
#
# This is one budget (ten epochs) and one seed per objective.
#
# ## Summary
#
# - Posterior collapse shows in two numbers per unit, its KL and its activity, both from
#   `latent_diagnostics`. The KL is never below half the activity, but an active unit
#   may still carry nothing; the library counts a unit as used only when it passes both
#   tests, and warns when few units are used.
# - A decoder that can model $x$ alone lets the ELBO reach a good fit with almost no code:
#   the autoregressive run kept under a tenth of its units in use (the count and its KL
#   are printed above).
# - $\beta < 1$ and free bits buy a used code at a cost in ELBO; annealing, at this
#   budget, left the code collapsed. The table gives each one's ELBO, KL and
#   importance-sampled $\log p(x)$.
#
# **Try this:** re-count the units of the collapsed run with other thresholds, e.g. an
# activity threshold of 0.1 or a KL threshold of 0.01 nats, and see which count moves.

# %%
threshold, kl_threshold = 0.01, 0.1  # Burda's activity threshold, the KL threshold in nats
d = latent_diagnostics(
    vaes[collapsed].model,
    vaes[collapsed].guide,
    x_test,
    threshold=threshold,
    kl_threshold=kl_threshold,
    warn=False,
)
print(d.summary())

# %%
print(
    f"wall time of this notebook ({'smoke' if SMOKE else 'full'} mode): "
    f"{time.perf_counter() - START:.0f} s, after imports {time.perf_counter() - IMPORTED:.0f} s"
)
