r"""Evaluation of any model/guide pair.

The terms are computed from Pyro traces (the model replayed on a guide sample), so they
hold for any prior, likelihood and guide, not only Gaussians; the sites, the plate over
examples and the arguments are read from a trace too
(:func:`~pyro_vae.inference.program.read_program`), so they hold for any Pyro program:

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
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import torch
from pyro.distributions import MaskedDistribution
from torch.distributions import kl_divergence

from pyro_vae._checks import check_count
from pyro_vae.check.diagnostics import latent_diagnostics
from pyro_vae.check.loglik import PARETO_K_THRESHOLD, LogLikelihood, log_likelihood
from pyro_vae.inference.program import Program, read_program, to_examples
from pyro_vae.inference.sites import per_example
from pyro_vae.parts.distributions import DiscretizedLogistic

__all__ = ["elbo_terms", "evaluate", "is_discrete"]


def _terms_batch(
    program: Program, x: torch.Tensor, y: torch.Tensor | None
) -> dict[str, torch.Tensor]:
    n = x.shape[0]
    model_tr, guide_tr = program.traces(x, y)
    model_tr.compute_log_prob()
    guide_tr.compute_log_prob()
    recon = torch.zeros(n, dtype=program.dtype, device=x.device)
    kl = torch.zeros(n, dtype=program.dtype, device=x.device)
    per_site = {}
    for name, site in model_tr.nodes.items():
        if site["type"] != "sample":
            continue
        if site["is_observed"]:
            recon = recon + per_example(site["log_prob"], site, n, program.plate)
            continue
        q_site = guide_tr.nodes.get(name)
        if q_site is None or q_site["type"] != "sample":
            continue  # a model-only latent would be sampled from the prior: no KL term
        try:
            value = kl_divergence(q_site["fn"], site["fn"])  # type: ignore[arg-type]
        except NotImplementedError:
            value = q_site["log_prob"] - site["log_prob"]
        per_site[f"kl_{name}"] = per_example(value, site, n, program.plate)
        kl = kl + per_site[f"kl_{name}"]
    return {"elbo": recon - kl, "reconstruction": recon, "kl": kl, **per_site}


@torch.no_grad()
def elbo_terms(
    model: Callable,
    guide: Callable,
    x: torch.Tensor,
    y: torch.Tensor | None = None,
    *,
    batch_size: int = 1000,
) -> dict[str, torch.Tensor]:
    r"""Per-example ELBO, its two terms and the KL of each latent site, from one sample
    :math:`z \sim q(z \mid x)`:

    .. math::

        \mathrm{ELBO}(x) = \underbrace{\mathbb{E}_q[\log p(x \mid z)]}_{\texttt{reconstruction}}
        - \underbrace{\mathrm{KL}(q(z \mid x) \,\|\, p(z))}_{\texttt{kl}}.

    The KL is computed in closed form with :func:`torch.distributions.kl_divergence` where
    a formula is registered for the pair of distributions, and by Monte Carlo
    (:math:`\log q(z) - \log p(z)`) otherwise. The reconstruction term sums every observed
    site (labels observed at a sample site included); the KL sums every latent site of the
    guide that the model samples too, and ``kl_<site>`` holds each one's share.

    :param model: Pyro model (any site names; read from a trace).
    :param guide: the matching guide.
    :param x: data ``(N, ...)`` (the first argument); float64 is converted to the
        parameters' dtype.
    :param y: optional second argument (labels, targets), passed as
        :meth:`pyro.infer.SVI.step` would pass it: ``model(x, y)``.
    :param batch_size: examples per forward pass.
    :returns: ``{"elbo", "reconstruction", "kl", "kl_<site>" for each latent site}``, each
        of shape ``(N,)``, in nats.
    """
    if x.shape[0] == 0:
        raise ValueError("elbo_terms needs at least one example; x is empty.")
    check_count("batch_size", batch_size)
    program = read_program(model, guide, x, y, num_examples=batch_size)
    chunks: dict[str, list[torch.Tensor]] = {}
    for start in range(0, x.shape[0], batch_size):
        yb = None if y is None else y[start : start + batch_size]
        terms = _terms_batch(program, x[start : start + batch_size], yb)
        for k, v in terms.items():
            chunks.setdefault(k, []).append(v)
    return {k: torch.cat(v) for k, v in chunks.items()}


def is_discrete(
    model: Callable,
    x: torch.Tensor,
    y: torch.Tensor | None = None,
    *,
    obs_site: str | None = None,
) -> bool:
    r"""Whether the distribution at the data site (read from a trace; ``obs_site=`` where
    the model observes several) is discrete (e.g. Bernoulli), so that :math:`-\log p(x)`
    is a code length and bits per dimension are meaningful."""
    return _data_facts(read_program(model, None, x, y, obs_site=obs_site), x, y)[0]


def _data_facts(
    program: Program, x: torch.Tensor, y: torch.Tensor | None
) -> tuple[bool, tuple[int, ...]]:
    """Whether the data site's distribution is discrete, and its shape per example."""
    site = program.data_site()
    prior = replace(program, guide=None)  # the model alone, drawing its latents
    model_tr, _ = prior.traces(x[:1], None if y is None else y[:1], uncondition=True)
    node: Any = model_tr.nodes[site]
    shape = tuple(to_examples(node["value"], node, program.plate).shape[1:])
    fn = node["fn"]
    while isinstance(fn, torch.distributions.Independent | MaskedDistribution):
        fn = fn.base_dist
    # the discretized logistic is a probability mass on a grid in [0, 1]
    discrete = bool(fn.support.is_discrete) or isinstance(fn, DiscretizedLogistic)  # type: ignore[attr-defined]
    return discrete, shape


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
    obs_site: str | None = None,
    latent_sites: str | Sequence[str] | None = None,
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
    - ``bits_per_dim``: ``nll / (D ln 2)``, ``D`` the elements of the data site per example,
      when its likelihood is discrete (:func:`is_discrete`), else ``None`` (a density is not
      a code length);
    - ``nll_per_feature``: ``nll / D`` in nats, the code length per feature of discrete
      data (counts, tables of categories), else ``None``; ``num_features``: ``D``;
      ``data_shape``: the shape of the data site per example;
    - ``active_units``, ``latent_dim``, ``activity``, ``kl_per_dim`` (``None`` if the guide
      or prior does not factorize): :func:`~pyro_vae.check.diagnostics.latent_diagnostics`, which
      warns on posterior collapse, over the latent sites side by side;
    - ``kl_per_site``, ``active_units_per_site``, ``latent_dim_per_site``: the KL (from
      :func:`elbo_terms`), active units and dimensions of each latent site;
    - ``num_examples``, ``num_samples``, ``seconds_log_likelihood``.

    :param model: Pyro model (any site names; read from a trace).
    :param guide: the matching guide.
    :param x: data ``(N, ...)``, ``N >= 2`` (the first argument).
    :param y: optional second argument (labels, targets), passed as ``model(x, y)``.
    :param num_samples: importance samples :math:`K` per example.
    :param batch_size: examples per forward pass of the importance sampler.
    :param particle_chunk: particles per forward pass.
    :param shard: under :mod:`torch.distributed`, split the importance sampling over the
        ranks (every rank must call); ``False`` evaluates on this rank alone.
    :param obs_site: the data site (for ``bits_per_dim`` and ``nll_per_feature``), where
        the model observes several.
    :param latent_sites: the latent sites of the diagnostics; default every latent site.
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
    diag = latent_diagnostics(model, guide, x, y, obs_site=obs_site, latent_sites=latent_sites)
    program = read_program(model, guide, x, y, obs_site=obs_site, num_examples=batch_size)
    discrete, shape = _data_facts(program, x, y)
    dims = math.prod(shape)
    nll = -ll.mean
    return {
        "num_examples": int(x.shape[0]),
        "num_samples": int(num_samples),
        "elbo": terms["elbo"].mean().item(),
        "reconstruction": terms["reconstruction"].mean().item(),
        "kl": terms["kl"].mean().item(),
        "nll": nll,
        "nll_stderr": ll.mean_stderr,
        **_pareto_summary(ll),
        "bits_per_dim": nll / (dims * math.log(2)) if discrete else None,
        "nll_per_feature": nll / dims if discrete else None,
        "num_features": dims,
        "data_shape": list(shape),
        "active_units": diag.num_active,
        "latent_dim": diag.latent_dim,
        "activity": diag.activity.tolist(),
        "kl_per_dim": None if diag.kl_per_dim is None else diag.kl_per_dim.tolist(),
        "kl_per_site": {
            s: terms[f"kl_{s}"].mean().item() if f"kl_{s}" in terms else None for s in diag.sites
        },
        "active_units_per_site": {s: d.num_active for s, d in diag.sites.items()},
        "latent_dim_per_site": {s: d.latent_dim for s, d in diag.sites.items()},
        "seconds_log_likelihood": seconds,
    }
