r"""Evaluation of any model/guide pair that follows the site conventions.

The terms are computed from Pyro traces (the model replayed on a guide sample), so they
hold for any prior, likelihood and guide, not only Gaussians:

- :func:`elbo_terms`: the ELBO and its two terms per example;
- :func:`~pyro_vae.check.loglik.log_likelihood`: the importance-sampled :math:`\log p(x)` (the
  IWAE bound's estimate) with its Monte Carlo standard error and the Pareto :math:`\hat k`
  diagnostic of the importance weights;
- :func:`~pyro_vae.check.diagnostics.latent_diagnostics`: KL per dimension and active units;
- :func:`evaluate`: all of them in one report.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import torch
from pyro import poutine
from pyro.distributions import MaskedDistribution
from torch.distributions import kl_divergence

from pyro_vae.check.diagnostics import latent_diagnostics
from pyro_vae.check.loglik import PARETO_K_THRESHOLD, LogLikelihood, log_likelihood
from pyro_vae.inference.sites import label_kwargs, per_example
from pyro_vae.parts.distributions import DiscretizedLogistic

__all__ = ["elbo_terms", "evaluate", "is_discrete"]


def _terms_batch(
    model: Callable, guide: Callable, x: torch.Tensor, y: torch.Tensor | None
) -> dict[str, torch.Tensor]:
    n = x.shape[0]
    guide_tr = poutine.trace(guide).get_trace(x, **label_kwargs(guide, y))
    model_tr = poutine.trace(poutine.replay(model, trace=guide_tr)).get_trace(
        x, **label_kwargs(model, y)
    )
    model_tr.compute_log_prob()
    guide_tr.compute_log_prob()
    recon = x.new_zeros(n)
    kl = x.new_zeros(n)
    for name, site in model_tr.nodes.items():
        if site["type"] != "sample":
            continue
        if site["is_observed"]:
            recon = recon + per_example(site["log_prob"], site, n)
            continue
        q_site = guide_tr.nodes.get(name)
        if q_site is None or q_site["type"] != "sample":
            continue  # a model-only latent would be sampled from the prior: no KL term
        try:
            value = kl_divergence(q_site["fn"], site["fn"])  # type: ignore[arg-type]
        except NotImplementedError:
            value = q_site["log_prob"] - site["log_prob"]
        kl = kl + per_example(value, site, n)
    return {"elbo": recon - kl, "reconstruction": recon, "kl": kl}


@torch.no_grad()
def elbo_terms(
    model: Callable,
    guide: Callable,
    x: torch.Tensor,
    y: torch.Tensor | None = None,
    *,
    batch_size: int = 1000,
) -> dict[str, torch.Tensor]:
    r"""Per-example ELBO and its two terms, from one sample :math:`z \sim q(z \mid x)`:

    .. math::

        \mathrm{ELBO}(x) = \underbrace{\mathbb{E}_q[\log p(x \mid z)]}_{\texttt{reconstruction}}
        - \underbrace{\mathrm{KL}(q(z \mid x) \,\|\, p(z))}_{\texttt{kl}}.

    The KL is computed in closed form with :func:`torch.distributions.kl_divergence` where
    a formula is registered for the pair of distributions, and by Monte Carlo
    (:math:`\log q(z) - \log p(z)`) otherwise.

    :param model: Pyro model with observed site ``"x"`` in plate ``"data"``.
    :param guide: the matching guide.
    :param x: data ``(N, ...)``.
    :param y: optional labels, passed to a model/guide that takes ``y``.
    :param batch_size: examples per forward pass.
    :returns: ``{"elbo", "reconstruction", "kl"}``, each of shape ``(N,)``, in nats.
    """
    if x.shape[0] == 0:
        raise ValueError("elbo_terms needs at least one example; x is empty.")
    chunks: dict[str, list[torch.Tensor]] = {"elbo": [], "reconstruction": [], "kl": []}
    for start in range(0, x.shape[0], batch_size):
        yb = None if y is None else y[start : start + batch_size]
        terms = _terms_batch(model, guide, x[start : start + batch_size], yb)
        for k, v in terms.items():
            chunks[k].append(v)
    return {k: torch.cat(v) for k, v in chunks.items()}


def is_discrete(model: Callable, x: torch.Tensor, y: torch.Tensor | None = None) -> bool:
    r"""Whether the distribution at the observed site ``"x"`` is discrete (e.g. Bernoulli),
    so that :math:`-\log p(x)` is a code length and bits per dimension are meaningful."""
    trace = poutine.trace(poutine.uncondition(model)).get_trace(
        x[:1], **label_kwargs(model, None if y is None else y[:1])
    )
    if "x" not in trace.nodes:
        raise ValueError('The model has no site "x"; name the observed site "x".')
    fn = trace.nodes["x"]["fn"]
    while isinstance(fn, torch.distributions.Independent | MaskedDistribution):
        fn = fn.base_dist
    # the discretized logistic is a probability mass on a grid in [0, 1]
    return bool(fn.support.is_discrete) or isinstance(fn, DiscretizedLogistic)  # type: ignore[attr-defined]


def _pareto_summary(ll: LogLikelihood) -> dict[str, float | None]:
    k = ll.pareto_k[~torch.isnan(ll.pareto_k)]
    return {
        "pareto_k_max": ll.pareto_k_max,
        "pareto_k_median": k.median().item() if k.numel() else None,
        "pareto_k_frac_above_0_7": ll.pareto_k_fraction_above(PARETO_K_THRESHOLD),
    }


@torch.no_grad()
def evaluate(
    model: Callable,
    guide: Callable,
    x: torch.Tensor,
    y: torch.Tensor | None = None,
    *,
    num_samples: int = 5000,
    batch_size: int = 100,
    particle_chunk: int = 100,
    shard: bool = True,
) -> dict[str, Any]:
    r"""The evaluation report of a model/guide pair on data ``x``, all in nats per example:

    - ``elbo``, ``reconstruction``, ``kl``: dataset means of :func:`elbo_terms`;
    - ``nll``, ``nll_stderr``: :math:`-\widehat{\log p}(x)` from
      :func:`~pyro_vae.check.loglik.log_likelihood` with ``num_samples`` importance samples, and
      the Monte Carlo standard error of that dataset mean given the data (its spread over
      reruns on the same examples; it does not include the estimator's bias, which makes
      ``nll`` too large: :math:`\mathbb{E}[\widehat{\log p}] \le \log p`);
    - ``pareto_k_max``, ``pareto_k_median``, ``pareto_k_frac_above_0_7``: the largest and
      the median Pareto :math:`\hat k` of the examples' importance weights, and the
      fraction of examples above 0.7, where the estimate is unreliable (``None`` when
      :math:`K < 21`); :func:`~pyro_vae.check.loglik.log_likelihood` warns when that
      fraction exceeds 5%;
    - ``bits_per_dim``: ``nll / (D ln 2)`` when the likelihood of ``"x"`` is discrete
      (:func:`is_discrete`), else ``None`` (a density is not a code length);
    - ``active_units``, ``latent_dim``, ``activity``, ``kl_per_dim`` (``None`` if the guide
      or prior does not factorize): :func:`~pyro_vae.check.diagnostics.latent_diagnostics`, which
      warns on posterior collapse;
    - ``num_examples``, ``num_samples``, ``seconds_log_likelihood``.

    :param model: Pyro model with observed site ``"x"`` and latent ``"z"`` in plate ``"data"``.
    :param guide: the matching guide.
    :param x: data ``(N, ...)``, ``N >= 2``.
    :param y: optional labels.
    :param num_samples: importance samples :math:`K` per example.
    :param batch_size: examples per forward pass of the importance sampler.
    :param particle_chunk: particles per forward pass.
    :param shard: under :mod:`torch.distributed`, split the importance sampling over the
        ranks (every rank must call); ``False`` evaluates on this rank alone.
    """
    if x.shape[0] < 2:
        raise ValueError("evaluate needs at least 2 examples (active units are a variance).")
    terms = elbo_terms(model, guide, x, y)
    started = time.perf_counter()
    ll = log_likelihood(
        model,
        guide,
        x,
        y,
        num_samples=num_samples,
        batch_size=batch_size,
        particle_chunk=particle_chunk,
        shard=shard,
    )
    seconds = time.perf_counter() - started
    diag = latent_diagnostics(model, guide, x, y)
    nll = -ll.mean
    dims = x[0].numel()
    return {
        "num_examples": int(x.shape[0]),
        "num_samples": int(num_samples),
        "elbo": terms["elbo"].mean().item(),
        "reconstruction": terms["reconstruction"].mean().item(),
        "kl": terms["kl"].mean().item(),
        "nll": nll,
        "nll_stderr": ll.mean_stderr,
        **_pareto_summary(ll),
        "bits_per_dim": nll / (dims * math.log(2)) if is_discrete(model, x, y) else None,
        "active_units": diag.num_active,
        "latent_dim": diag.latent_dim,
        "activity": diag.activity.tolist(),
        "kl_per_dim": None if diag.kl_per_dim is None else diag.kl_per_dim.tolist(),
        "seconds_log_likelihood": seconds,
    }
