r"""Evaluation of any model/guide pair that follows the site conventions.

The terms are computed from Pyro traces (the model replayed on a guide sample), so they
hold for any prior, likelihood and guide, not only Gaussians.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from pyro import poutine
from torch.distributions import kl_divergence

from ._sites import label_kwargs, per_example

__all__ = ["elbo_terms"]


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
            value = kl_divergence(q_site["fn"], site["fn"])
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
