# Tutorial 5 (percent script; `python tutorials/build.py 05_conditional_vaes` makes the
# notebook). Edit this file, not the .ipynb.
# ruff: noqa: E402 (the first cell starts a timer and filters a warning before imports)

# %% [markdown]
# # 5. Conditional VAEs
#
# When every image comes with a label, the label can enter the model: a **conditional
# VAE** (CVAE) learns $p_\theta(x \mid y)$ and generates a digit of our choosing. When
# only a few images are labelled, the label becomes a latent variable that is observed
# sometimes: the **M2** model of Kingma et al. (2014) learns a classifier from the
# unlabelled images too. This notebook trains both on the bundled MNIST subset with
# `pyro_vae.parts.conditional` and `pyro_vae.models.semisupervised`.
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
from pyro import poutine
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
from pyro_vae.check.diagnostics import posterior_means
from pyro_vae.check.loglik import log_likelihood
from pyro_vae.check.viz import as_images, decode_means, samples_by_label
from pyro_vae.models.semisupervised import SemiSupervisedVAE, classification_accuracy
from pyro_vae.models.vae import conditional_vae
from pyro_vae.parts.conditional import conditional_guide, conditional_likelihood
from pyro_vae.train.semisupervised import fit_semisupervised

plt.rcParams.update({"figure.dpi": 72, "savefig.dpi": 72, "figure.figsize": (6, 3.5)})
pyro.enable_validation(True)
pyro.set_rng_seed(0)
print("smoke mode" if SMOKE else "full mode")

# %% [markdown]
# ## The conditional ELBO
#
# The CVAE (Sohn, Lee & Yan, 2015) conditions every part on the label $y$:
#
# $$
# p_\theta(x, z \mid y) = p_\theta(z \mid y)\, p_\theta(x \mid z, y), \qquad
# q_\phi(z \mid x, y).
# $$
#
# The derivation of the ELBO goes through unchanged with $y$ held fixed, giving a bound
# on the conditional evidence:
#
# $$
# \log p_\theta(x \mid y) \;\ge\;
# \mathbb{E}_{q_\phi(z \mid x, y)}[\log p_\theta(x \mid z, y)]
# - \mathrm{KL}\big(q_\phi(z \mid x, y) \,\|\, p_\theta(z \mid y)\big)
# = \mathcal{L}(x, y).
# $$
#
# In pyro-vae the same `VAE` class runs it: `vae.model(x, y)` and `vae.guide(x, y)` hand
# $y$ to each part. `conditional_likelihood` and `conditional_guide` build a decoder
# $p_\theta(x \mid z, y)$ and an encoder $q_\phi(z \mid x, y)$ whose first layer also
# takes the one-hot label (`ConditionalNet`), and `fit` passes the labels along whenever
# the data is a pair `(x, y)`. The prior is again one argument, and here it matters. We
# train two CVAEs that differ only in it:
#
# - $p(z \mid y) = p(z) = \mathcal{N}(0, I)$: the label enters the decoder only;
# - $p_\theta(z \mid y) = \mathcal{N}(m_y, \mathrm{diag}\, s_y^2)$, a learned Gaussian
#   per class (`ConditionalNormalPrior`), what `conditional_vae(...)` builds.

# %%
x_shape, latent_dim, hidden = (1, 28, 28), 16, (256,)
mnist = load_bundled_mnist()
n_train, n_eval = (128, 100) if SMOKE else (len(mnist["train"]), len(mnist["test"]))
x_train = binarize(mnist["train"].tensors[0][:n_train], seed=0)
y_train = mnist["train"].tensors[1][:n_train]
x_valid = binarize(mnist["valid"].tensors[0][:n_eval], seed=1)
y_valid = mnist["valid"].tensors[1][:n_eval]
x_test = binarize(mnist["test"].tensors[0][:n_eval], seed=2)
y_test = mnist["test"].tensors[1][:n_eval]

pyro.set_rng_seed(0)
cvaes = {
    "p(z|y) = N(0, I)": VAE(
        StandardNormalPrior(latent_dim),
        conditional_likelihood(BernoulliLikelihood, latent_dim, x_shape, 10, hidden),
        conditional_guide(DiagonalNormalGuide, x_shape, latent_dim, 10, hidden),
    ),
    "learned p(z|y) per class": conditional_vae(10, latent_dim, x_shape, hidden_dims=hidden),
}
for name, cvae in cvaes.items():
    history = fit(
        cvae.model,
        cvae.guide,
        (x_train, y_train),
        objective="meanfield",
        epochs=1 if SMOKE else 10,
        batch_size=128,
        validation_data=(x_valid, y_valid),
        seed=0,
        progress=False,
        capture=not SMOKE,  # recording the step as a graph pays off only in long runs
    )
    print(f"{name}: validation conditional ELBO by epoch")
    print("   ", " ".join(f"{v:.1f}" for v in history["val_elbo"]))

# %% [markdown]
# ## Generating a chosen digit
#
# To generate a digit $c$, run the model with no data and labels $y = c$: $z \sim
# p(z \mid y = c)$, then the mean of $p_\theta(x \mid z, y = c)$.
# `pyro_vae.check.viz.samples_by_label` does this for each label in turn; row $c$ of each grid
# holds ten samples of digit $c$.


# %%
def show_grid(images, title, nrow, ax=None):
    grid = make_grid(as_images(images).clamp(0, 1), nrow=nrow, padding=2, pad_value=1)
    if ax is None:
        _, ax = plt.subplots(figsize=(nrow * 0.6, grid.shape[1] / grid.shape[2] * nrow * 0.6))
    ax.imshow(grid[0], cmap="gray", vmin=0, vmax=1)
    ax.set_title(title)
    ax.axis("off")


fig, axes = plt.subplots(1, 2, figsize=(12, 6.3), constrained_layout=True)
for ax, (name, cvae) in zip(axes, cvaes.items(), strict=True):
    pyro.set_rng_seed(0)
    samples = samples_by_label(cvae.model, x_test[:1], range(10), per_label=10)
    show_grid(samples, f"{name}\nrow c: samples with y = c", nrow=10, ax=ax)
plt.show()

# %% [markdown]
# ## Style and content
#
# If the decoder uses $y$, the code $z$ need not say which digit it is and is free to
# encode *how* it is written (slant, thickness, size). Test it: encode a test image with
# its true label, keep its code $\mathbb{E}_q[z \mid x, y]$, and decode it with each of
# the ten labels (`pyro_vae.check.viz.decode_means`). Each row is one test image (left column)
# rewritten as 0, 1, ..., 9. We also measure how much the label moves the decoder's
# output at a fixed code: the mean absolute change of the pixel probabilities when the
# true label is replaced by the next one, over the test images.

# %%
fig, axes = plt.subplots(1, 2, figsize=(13, 4.2), constrained_layout=True)
label_effect = {}
for ax, (name, cvae) in zip(axes, cvaes.items(), strict=True):
    codes = posterior_means(cvae.guide, x_test, y_test)
    rows = []
    for code, original in zip(codes[:6], x_test[:6], strict=True):
        decoded = decode_means(cvae.model, code.expand(10, -1), x_test[:1], torch.arange(10))
        rows += [original.unsqueeze(0), decoded]
    show_grid(torch.cat(rows), f"{name}\nleft: test image; its code decoded as 0..9", 11, ax)
    true = decode_means(cvae.model, codes, x_test[:1], y_test)
    other = decode_means(cvae.model, codes, x_test[:1], (y_test + 1) % 10)
    label_effect[name] = (true - other).abs().mean().item()
plt.show()
for name, effect in label_effect.items():
    print(f"{name:>26}: mean |change of pixel probability| when y -> y+1: {effect:.4f}")

# %% [markdown]
# Compare the two grids and the two printed numbers. With the standard normal prior the
# KL term charges for any information in $z$, including the digit's identity, which the
# decoder gets for free from $y$; so the decoder learns to read the class from $y$ and
# $z$ keeps the style. With a learned prior per class, the class can also be stored in
# $z$ at little KL cost (the prior of class $c$ moves to where the codes of class $c$
# are), and then nothing forces the decoder to use $y$ at all. The prior decides what
# the code means.
#
# ## Measuring the conditional ELBO
#
# $\mathcal{L}(x, y)$ bounds $\log p_\theta(x \mid y)$, so evaluating it at a **wrong**
# label asks how well the model explains the image as another digit. With a uniform
# $p(y)$, Bayes' rule turns a CVAE into a classifier,
# $p(y \mid x) \propto p_\theta(x \mid y)$, which we approximate by
# $\hat y(x) = \arg\max_c \widehat{\log p}_\theta(x \mid y = c)$ with the importance
# sampled estimate (`log_likelihood` with labels gives $\log p(x \mid y)$). Nothing in
# training asked the models to classify.

# %%
num_is = 5 if SMOKE else 50
cvae_accuracy = {}
for name, cvae in cvaes.items():
    terms_true = elbo_terms(cvae.model, cvae.guide, x_test, y_test)
    terms_wrong = elbo_terms(cvae.model, cvae.guide, x_test, (y_test + 1) % 10)
    pyro.set_rng_seed(0)
    scores = torch.stack(
        [
            log_likelihood(
                cvae.model, cvae.guide, x_test, torch.full_like(y_test, c), num_samples=num_is
            ).estimate
            for c in range(10)
        ],
        dim=1,
    )
    cvae_accuracy[name] = (scores.argmax(1) == y_test).double().mean().item()
    print(f"{name}:")
    print(
        f"    test conditional ELBO, true labels:      {terms_true['elbo'].mean():8.2f} "
        f"(KL {terms_true['kl'].mean():.2f})"
    )
    print(
        f"    test conditional ELBO, labels y+1:       {terms_wrong['elbo'].mean():8.2f} "
        f"(KL {terms_wrong['kl'].mean():.2f})"
    )
    print(f"    classifier argmax_c log p(x|y=c), K={num_is}: accuracy {cvae_accuracy[name]:.3f}")

# %% [markdown]
# Compare, for each model, the ELBO with the true and with the wrong labels: the gap is
# how much the model's explanation of an image depends on being told the right digit,
# and it is paid in the reconstruction term, the KL term, or both (the printed KLs say
# which). The printed accuracies are those of classifiers obtained for free from models
# trained with all 8,000 labels. The next part asks the opposite question: with only a
# few labels, can a VAE help a classifier?
# classifier?
#
# ## Semi-supervised learning: M2
#
# In M2 (Kingma, Rezende, Mohamed & Welling, 2014) the label is a latent variable:
#
# $$
# p_\theta(x, y, z) = p(y)\, p(z)\, p_\theta(x \mid y, z), \qquad
# q_\phi(y, z \mid x) = q_\phi(y \mid x)\, q_\phi(z \mid x, y),
# $$
#
# with uniform $p(y)$ and a classifier network $q_\phi(y \mid x)$. A labelled image
# contributes the conditional ELBO $\mathcal{L}(x, y)$ above (plus $\log p(y)$); an
# unlabelled one the ELBO with $y$ marginalized by the guide,
#
# $$
# \mathcal{U}(x) = \sum_{c} q_\phi(c \mid x)\, \mathcal{L}(x, c)
#   + \mathcal{H}\big(q_\phi(y \mid x)\big) \le \log p_\theta(x),
# $$
#
# where the sum over the ten classes is computed exactly: Pyro's `TraceEnum_ELBO`
# enumerates the guide's `"y"` site in parallel. The classifier learns from
# $\mathcal{U}$ only through the unlabelled data, so a classification term
# $\alpha \log q_\phi(y \mid x)$ on the labelled images is added (eq. 9 of the paper):
#
# $$
# \mathcal{J}^\alpha = \sum_{(x, y)\ \text{labelled}}
#   \big[\mathcal{L}(x, y) + \alpha \log q_\phi(y \mid x)\big]
#   + \sum_{x\ \text{unlabelled}} \mathcal{U}(x).
# $$
#
# We keep 10 labels per digit (100 in all) and hide the other labels. As a baseline, the
# same classifier network is trained on the 100 labelled images alone, by cross-entropy.

# %%
per_class = 2 if SMOKE else 10
labelled_idx = torch.cat([torch.nonzero(y_train == c)[:per_class, 0] for c in range(10)])
unlabelled = torch.ones(len(y_train), dtype=torch.bool)
unlabelled[labelled_idx] = False
x_lab, y_lab, x_unlab = x_train[labelled_idx], y_train[labelled_idx], x_train[unlabelled]
print(f"labelled: {len(x_lab)}, unlabelled: {len(x_unlab)}")

pyro.set_rng_seed(0)
m2 = SemiSupervisedVAE.mlp(10, latent_dim, x_shape, hidden_dims=hidden)
m2_epochs = 1 if SMOKE else 10
m2_history = fit_semisupervised(
    m2,
    (x_lab, y_lab),
    x_unlab,
    epochs=m2_epochs,
    batch_size=200,
    aux_weight=50.0,
    validation_data=(x_valid, y_valid),
    seed=0,
)
for record in m2_history.records:
    print(
        f"M2 epoch {record['epoch']:2d}: validation accuracy {record['val_accuracy']:.3f} "
        f"({record['seconds']:.0f} s)"
    )

# %%
torch.manual_seed(0)
baseline = MLP(x_shape, hidden, 10)
optimizer = torch.optim.Adam(baseline.parameters(), lr=1e-3)
baseline_curve = []
for step in range(20 if SMOKE else 500):
    loss = torch.nn.functional.cross_entropy(baseline(x_lab), y_lab)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    if (step + 1) % (10 if SMOKE else 50) == 0:
        with torch.no_grad():
            accuracy = (baseline(x_valid).argmax(-1) == y_valid).double().mean().item()
        baseline_curve.append((step + 1, accuracy))
print("supervised-only baseline, validation accuracy by step:", baseline_curve)

with torch.no_grad():
    baseline_test = (baseline(x_test).argmax(-1) == y_test).double().mean().item()
m2_test = classification_accuracy(m2, x_test, y_test)
print(f"\ntest accuracy with {len(x_lab)} labels:")
print(f"  classifier trained on the labelled images only: {baseline_test:.3f}")
print(f"  M2 classifier q(y | x), labelled + {len(x_unlab)} unlabelled: {m2_test:.3f}")
print(f"  difference M2 - baseline: {m2_test - baseline_test:+.3f} on {len(x_test)} test images")

fig, ax = plt.subplots()
ax.plot(m2_history["epoch"], m2_history["val_accuracy"], marker="o", label="M2")
ax.axhline(baseline_curve[-1][1], color="k", linestyle="--", label="labelled images only")
ax.set_xlabel("M2 epoch (one pass over the unlabelled images)")
ax.set_ylabel("validation accuracy")
ax.set_title(f"{len(x_lab)} labels")
ax.legend()
plt.show()

# %% [markdown]
# The two printed test accuracies compare the same classifier network trained with and
# without the unlabelled images, and their printed difference says whether the
# unlabelled images paid off within this budget; the plot shows M2's validation
# accuracy per epoch against the baseline's final one. The unlabelled images reach the
# classifier only through $\mathcal{U}(x)$, by way of the decoder's preference for one
# label over another, a slow signal: Pyro's own SS-VAE example reports about 0.93 test
# accuracy with 100 labels after long training on all 60,000 MNIST images, which this
# 8,000-image subset and a budget of minutes do not attempt.
#
# A trained M2 is also a conditional generator: its decoder takes $(z, y)$.

# %%
pyro.set_rng_seed(0)
labels = torch.arange(10).repeat_interleave(8)
generated = poutine.trace(m2.model).get_trace(None, labels)  # x=None: x is sampled
show_grid(generated.nodes["x"]["fn"].mean, "M2: row c, samples with y = c", nrow=8)

# %% [markdown]
# ## Summary
#
# - A CVAE is the VAE with $y$ handed to prior, decoder and encoder; its ELBO bounds
#   $\log p(x \mid y)$, and the model generates a chosen digit.
# - Given the label, $z$ carries the style: one code decoded with ten labels writes ten
#   digits in the same hand.
# - M2 treats the label as a latent variable, enumerated exactly for unlabelled images,
#   and trains its classifier on both; the accuracies above are measured on the test set.

# %%
print(
    f"CVAE generative classifiers {cvae_accuracy}; with {len(x_lab)} labels: "
    f"baseline {baseline_test:.3f}, M2 {m2_test:.3f}"
)
print(
    f"wall time of this notebook ({'smoke' if SMOKE else 'full'} mode): "
    f"{time.perf_counter() - START:.0f} s"
)
