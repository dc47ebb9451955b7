# Tutorial 2 (percent script; `python tutorials/build.py 02_elbo_and_its_gap` makes the
# notebook). Edit this file, not the .ipynb.
# ruff: noqa: E402 (the first cell starts a timer and filters a warning before imports)

# %% [markdown]
# # 2. The ELBO and its gap
#
# In a VAE the evidence $\log p(x)$ is intractable, so we can never see how loose the
# ELBO is. Here we pick a model where $\log p(x)$ **is** exact, a linear-Gaussian latent
# variable model (probabilistic PCA), and measure everything the theory says:
#
# 1. $\mathrm{ELBO} \le \log p(x)$ for every guide, with the gap equal to
#    $\mathrm{KL}(q(z \mid x) \,\|\, p(z \mid x))$, computed two ways;
# 2. the bound is tight when $q$ is the exact posterior, and SVI finds the tight guide
#    when its family contains the posterior (and a predictable gap when it does not);
# 3. the importance weighted (IWAE) bound tightens with the number of samples $K$;
# 4. the importance sampling estimate of $\log p(x)$ converges to the exact value.
#
# The ELBO and the importance sampling estimate come from the library's evaluation
# functions (`pyro_vae.elbo_terms`, `pyro_vae.check.loglik.log_likelihood`), which work for any
# Pyro model/guide pair, so this notebook also checks them against closed forms.
#
# *Runtime:* the last cell prints this notebook's wall time; the full-mode time on 2 CPU
# cores is listed in `tutorials/README.md`. `PYRO_VAE_SMOKE=1` runs a quick version.

# %%
import math
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
from pyro.nn import PyroModule, PyroParam
from torch import nn
from torch.distributions import kl_divergence

from pyro_vae import elbo_terms, fit
from pyro_vae.check.loglik import log_likelihood

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
# strongly correlated; a diagonal (mean-field) Gaussian cannot represent it.

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


def exact_posterior(x):
    loc = (x - b) @ W @ post_cov / sigma**2  # Σ Wᵀ(x − b)/σ², row by row (Σ is symmetric)
    return dist.MultivariateNormal(loc, scale_tril=post_scale_tril.expand(len(x), -1, -1))


def model(x):
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(torch.zeros(z_dim), 1.0).to_event(1))
        return pyro.sample("x", dist.Normal(z @ W.T + b, sigma).to_event(1), obs=x)


num_data = 200 if SMOKE else 2000
pyro.set_rng_seed(0)
x_train = pyro.poutine.uncondition(model)(torch.zeros(num_data, x_dim))  # samples of the model
x_test = pyro.poutine.uncondition(model)(torch.zeros(num_data, x_dim))
log_px = marginal.log_prob(x_test)  # exact, per example
correlation = post_cov[0, 1] / (post_cov[0, 0] * post_cov[1, 1]).sqrt()
print(f"exact mean log p(x) on {num_data} test points: {log_px.mean():.4f} nats")
print(f"posterior correlation of z1 and z2: {correlation:.3f}")

# %% [markdown]
# ## The ELBO and its gap, two ways
#
# For any $q(z \mid x)$, since $p(x, z) = p(z \mid x)\, p(x)$:
#
# $$
# \mathrm{ELBO}(q; x) = \mathbb{E}_{q}\big[\log p(x, z) - \log q(z \mid x)\big]
# = \log p(x) - \mathbb{E}_q\left[\log \frac{q(z \mid x)}{p(z \mid x)}\right]
# = \log p(x) - \mathrm{KL}\big(q(z \mid x) \,\|\, p(z \mid x)\big).
# $$
#
# A KL divergence is $\ge 0$ and is $0$ only when the two distributions are equal, so
# $\mathrm{ELBO} \le \log p(x)$ with equality iff $q$ is the exact posterior. We check
# this identity with two independent computations of the gap for several guides:
#
# - **way 1**: $\log p(x) - \mathrm{ELBO}$, with the exact $\log p(x)$ and the ELBO
#   from `elbo_terms` (a Monte Carlo reconstruction term and the closed-form
#   $\mathrm{KL}(q \,\|\, p(z))$), averaged over many draws of $z$;
# - **way 2**: $\mathrm{KL}(q(z \mid x) \,\|\, p(z \mid x))$ in closed form against the
#   exact posterior, with `torch.distributions.kl_divergence`.
#
# A guide is a Pyro program with a site `"z"` in the plate `"data"`. We write each one
# as a small module with a `dist(x)` method (for the closed-form KL) and a `forward(x)`
# that is the Pyro guide. A `PyroModule`'s parameters live in Pyro's global param store
# under its name, so each trainable instance needs its own `name` (the library's `VAE`
# numbers its instances for this reason). The two trainable ones are *amortized* and linear,
# $q(z \mid x) = \mathcal{N}(A x + c,\ L L^\top)$: with a full lower-triangular $L$ the
# family contains the exact posterior; with a diagonal $L$ it does not.


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
        "gap_2": kl_posterior.mean().item(),
        "difference": difference.mean().item(),
        "difference_se": difference.std().item() / math.sqrt(len(x)),
    }


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


gaps = print_gaps(guides)

# %% [markdown]
# Each row's two gap columns are two computations of the same number: one is a Monte
# Carlo average of the ELBO subtracted from the exact evidence, the other a closed-form
# KL that never samples. The last column is their difference with its Monte Carlo
# standard error, to judge the agreement. The rows run from the prior (which ignores $x$)
# to the exact posterior, and the ELBO stays below $\log p(x)$ (within Monte Carlo error
# for the exact posterior, whose true gap is zero). With the exact posterior the gap
# vanishes, and more than that: every single draw of the full integrand
# gives $\log p(x, z) - \log p(z \mid x) = \log p(x)$, so that estimator has no
# variance at all. (`elbo_terms` uses the closed-form $\mathrm{KL}(q \,\|\, p(z))$ and
# a one-draw reconstruction term, which do vary.) A one-sample `log_likelihood` is
# exactly the single-draw integrand $\log p(x, z) - \log q(z \mid x)$:

# %%
pyro.set_rng_seed(0)
one_draw = log_likelihood(model, guides["exact posterior"], x_test, num_samples=1).estimate
one_draw_terms = elbo_terms(model, guides["exact posterior"], x_test)["elbo"]
print(
    f"largest |log p(x, z) − log q(z|x) − log p(x)| over {num_data} examples, one draw "
    f"each: {(one_draw - log_px).abs().max():.2e} nats"
)
print(
    f"standard deviation of the one-draw elbo_terms estimate (analytic KL): "
    f"{(one_draw_terms - log_px).std():.3f} nats"
)

# %% [markdown]
# ## SVI finds the tightest guide in its family
#
# Maximising the ELBO over the guide's parameters $\phi$ is the same as minimising
# $\mathrm{KL}(q_\phi \,\|\, p(z \mid x))$, since $\log p(x)$ does not depend on $\phi$.
# We train the two linear guides with `pyro_vae.fit` (SVI with `Trace_ELBO`), keeping the
# model fixed. The posterior is strongly correlated, which makes the problem
# ill-conditioned, so we take large Adam steps at first and shrink them by 3% after every
# epoch (`fit` accepts an optimizer factory and calls `callbacks` after each epoch):
# with a constant step size, stochastic gradients keep the parameters jittering around
# the optimum. The full-covariance family contains the posterior, so its gap should go
# to zero. The diagonal family does not; the best diagonal Gaussian
# $q = \prod_i \mathcal{N}(z_i; m_i, s_i^2)$ for a Gaussian posterior with precision
# $\Lambda = \Sigma^{-1}$ has the exact mean and variances $s_i^2 = 1/\Lambda_{ii}$, and
# its gap is
#
# $$
# \min_{q\ \text{diagonal}} \mathrm{KL}(q \,\|\, p(z \mid x))
# = \tfrac12 \Big( \textstyle\sum_i \log \Lambda_{ii} - \log \det \Lambda \Big),
# $$
#
# the same for every $x$ (for two coordinates, $-\tfrac12 \log(1 - \rho^2)$ with $\rho$
# the posterior correlation). Setting $\partial\, \mathrm{KL} / \partial s_i^2 = 0$ gives
# $s_i^2 = 1/\Lambda_{ii}$, which is *smaller* than the marginal variance $\Sigma_{ii}$:
# the reverse KL makes mean-field guides under-dispersed.

# %%
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
gaps.update(print_gaps(trained))
diagonal = trained["SVI-trained diagonal"]
print(
    "trained diagonal variances:",
    diagonal.log_scale.exp().pow(2).detach().numpy().round(4),
    "| 1/Λ_ii:",
    (1 / post_precision.diagonal()).numpy().round(4),
    "| Σ_ii:",
    post_cov.diagonal().numpy().round(4),
)

# %% [markdown]
# Compare the table with the predictions: the trained full-covariance guide's gap is
# close to zero, the trained diagonal guide's gap is close to the predicted minimum
# printed above, and its variances are close to $1/\Lambda_{ii}$, far below the
# posterior marginals $\Sigma_{ii}$. The two gap columns agree for the trained guides
# too.
#
# ## The importance weighted bound tightens with $K$
#
# Averaging $K$ importance weights inside the logarithm gives a family of tighter bounds
# (Burda et al., 2016):
#
# $$
# \mathcal{L}_K(x) = \mathbb{E}_{z_{1:K} \sim q}\left[\log \frac1K \sum_{k=1}^K
#     \frac{p(x, z_k)}{q(z_k \mid x)}\right], \qquad
# \mathcal{L}_1 = \mathrm{ELBO} \le \mathcal{L}_K \le \mathcal{L}_{2K} \le \log p(x),
# $$
#
# by Jensen's inequality again, since the average of $K$ weights is an unbiased estimate
# of $p(x)$ whose spread shrinks as $K$ grows. `log_likelihood(model, guide, x,
# num_samples=K)` returns one draw of the bracket per example; its mean over the test set
# estimates $\mathcal{L}_K$. The poorer the proposal $q$, the more samples it takes.

# %%
Ks = [1, 4, 16, 64] if SMOKE else [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024]
proposals = {
    "SVI-trained diagonal": trained["SVI-trained diagonal"],
    "exact mean, unit variance": guides["exact mean, unit variance"],
    "prior p(z)": guides["prior p(z) (ignores x)"],
}
bounds = {name: [] for name in proposals}
pyro.set_rng_seed(0)
for name, guide in proposals.items():
    for K in Ks:
        bounds[name].append(
            log_likelihood(
                model, guide, x_test, num_samples=K, batch_size=500, particle_chunk=256
            ).mean
        )
    print(
        f"{name:>28}: L_1 = {bounds[name][0]:.4f}, L_{Ks[-1]} = {bounds[name][-1]:.4f} "
        f"(exact log p(x) = {log_px.mean():.4f})"
    )

fig, ax = plt.subplots()
for name, values in bounds.items():
    ax.plot(Ks, values, marker="o", label=f"q = {name}")
ax.axhline(log_px.mean().item(), color="k", ls="--", label="exact log p(x)")
ax.set_xscale("log", base=2)
ax.set_xlabel("K (importance samples)")
ax.set_ylabel("mean IWAE bound $\\mathcal{L}_K$ (nats)")
ax.legend()
ax.set_title("IWAE bounds on the test set")
plt.show()

# %% [markdown]
# Every curve rises towards the dashed line and none crosses it (beyond Monte Carlo
# noise). The order changes on the way: the SVI-trained diagonal guide starts highest
# (it has the best ELBO of the three) but climbs slowest, and at the largest $K$ the two
# broader proposals end closer to $\log p(x)$ (compare the printed $\mathcal{L}_{K}$).
# The reverse KL made the mean-field guide *narrower* than the posterior along its
# correlated direction, so its samples almost never land where the posterior has mass
# that $q$ lacks, and averaging more of them helps little. A proposal for importance
# sampling should be broad; a guide trained on the ELBO is not.
#
# ## The importance sampling estimate converges
#
# For one data point, the estimate $\log \frac1K \sum_k w_k$ is consistent: as
# $K \to \infty$ it converges to $\log p(x)$, and `log_likelihood` reports a
# delta-method standard error $\hat\sigma_w / (\sqrt{K}\, \bar w)$ with it. We repeat the
# estimate 20 times independently at each $K$, for the trained diagonal guide and for
# the prior as proposal, on the first test point.

# %%
x0 = x_test[:1]
Ks_single = [1, 10, 100, 1000] if SMOKE else [1, 3, 10, 30, 100, 300, 1000, 3000, 10000, 30000]
fig, axes = plt.subplots(1, 2, figsize=(10, 3.5), sharey=True)
exact = log_px[0].item()
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
        if k == Ks_single[-1]:
            print(
                f"{name:>22}, K = {k}: estimates {result.estimate.mean():.4f} "
                f"± {result.estimate.std():.4f} (spread over 20 runs), "
                f"reported s.e. {result.stderr.mean():.4f}; exact {log_px[0]:.4f}"
            )
    ax.axhline(0.0, color="k", ls="--", label="exact log p(x)")
    ax.set_xscale("log")
    ax.set_yscale("symlog", linthresh=0.1)
    ax.set_xlabel("K")
    ax.set_title(f"proposal: {name}")
    ax.legend()
axes[0].set_ylabel("IS estimate − log p(x) (nats)")
plt.show()

# %% [markdown]
# Each dot is one estimate minus the exact value (a symmetric-log axis, so both the large
# early errors and the small late ones show). With the prior as proposal, which is
# broader than the posterior, the estimates start far below $\log p(x)$ at small $K$ and
# then converge onto it, and at the largest $K$ the printed spread of the 20 runs and the
# reported standard error agree. With the SVI-trained mean-field guide, narrower than
# the posterior, the importance weights are heavy-tailed: compare the printed mean with
# the exact value, and the spread with the reported standard error at the largest $K$.
# The estimator is still consistent, but the rare large weights that would correct it
# have not been drawn yet, and the delta-method standard error cannot see weights that
# were never drawn. This is why an importance-sampled $\log p(x)$ for a VAE is, in
# practice, a lower bound too.
#
# ## Summary
#
# - $\log p(x) = \mathrm{ELBO} + \mathrm{KL}(q \,\|\, p(z \mid x))$, checked to the
#   printed precision for every guide, including ones trained by SVI.
# - The gap is zero for the exact posterior (with zero-variance estimates); SVI reaches
#   it when the guide family contains the posterior, and otherwise stops at the best
#   member of its family, a gap predicted in closed form.
# - The IWAE bound $\mathcal{L}_K$ climbs to $\log p(x)$ with $K$, and the importance
#   sampling estimate converges with a standard error that `log_likelihood` reports.

# %%
print(
    f"wall time of this notebook ({'smoke' if SMOKE else 'full'} mode): "
    f"{time.perf_counter() - START:.0f} s"
)
