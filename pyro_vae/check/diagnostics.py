r"""Latent diagnostics: KL per latent dimension, active units, posterior collapse.

A VAE whose guide ignores :math:`x` in some dimensions (:math:`q(z_d \mid x) \approx
p(z_d)`) pays no KL for them and uses them for nothing: *posterior collapse*
(Bowman et al., 2016, arXiv:1511.06349). Two views of it:

- the KL per dimension, :math:`\mathbb{E}_x\,\mathrm{KL}(q(z_d \mid x) \,\|\, p(z_d))`;
- the activity :math:`A_d = \mathrm{Cov}_x\big(\mathbb{E}_{q(z \mid x)}[z_d]\big)`, with the
  unit *active* when :math:`A_d > 0.01` (Burda, Grosse & Salakhutdinov, 2015,
  arXiv:1509.00519, §5.2).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
from pyro import distributions as dist
from pyro import poutine
from torch.distributions import kl_divergence

from pyro_vae.inference.particles import max_plate_nesting, particle_traces, per_example_values
from pyro_vae.inference.sites import label_kwargs, replayed_traces

__all__ = [
    "LatentDiagnostics",
    "PosteriorCollapseWarning",
    "active_units",
    "kl_per_dim",
    "latent_diagnostics",
    "posterior_means",
]


class PosteriorCollapseWarning(UserWarning):
    """Few latent units carry information about ``x``, or the KL is near zero."""


def _factors(d: dist.Distribution) -> dist.Distribution | None:
    """The per-dimension factors of a factorized distribution over a vector (its
    :class:`~torch.distributions.Independent` base with batch shape ``(..., D)``), or
    ``None`` if the distribution does not factorize that way."""
    while isinstance(d, dist.MaskedDistribution):
        d = d.base_dist
    if isinstance(d, torch.distributions.Independent) and d.reinterpreted_batch_ndims == 1:
        base = d.base_dist
        if base.event_shape == () and not isinstance(
            base, torch.distributions.TransformedDistribution
        ):
            return base
    return None


def _site_pair(
    model: Callable, guide: Callable, x: torch.Tensor, y: torch.Tensor | None, site: str
) -> tuple[dict, dict]:
    model_tr, guide_tr = replayed_traces(model, guide, x, y)
    for tr, who in ((guide_tr, "guide"), (model_tr, "model")):
        if site not in tr.nodes or tr.nodes[site]["type"] != "sample":
            raise ValueError(f"The {who} has no sample site {site!r}; pass site=<its name>.")
    return model_tr.nodes[site], guide_tr.nodes[site]


@torch.no_grad()
def kl_per_dim(
    model: Callable,
    guide: Callable,
    x: torch.Tensor,
    y: torch.Tensor | None = None,
    *,
    site: str = "z",
    num_samples: int = 100,
    batch_size: int = 1000,
) -> torch.Tensor:
    r"""Per-example, per-dimension :math:`\mathrm{KL}(q(z_d \mid x) \,\|\, p(z_d))`.

    Both :math:`q` and :math:`p` must factorize over the dimensions of ``site`` (e.g.
    ``Normal(loc, scale).to_event(1)``); the dimensions then sum to the total KL. The KL is
    analytic where :func:`torch.distributions.kl_divergence` has a formula for the pair of
    factors, and a Monte Carlo average of :math:`\log q(z_d) - \log p(z_d)` over
    ``num_samples`` draws otherwise.

    :param model: Pyro model; ``site`` is a latent of it.
    :param guide: the matching guide.
    :param x: data ``(N, ...)``.
    :param y: optional labels.
    :param site: the latent site, ``"z"`` by default.
    :param num_samples: draws for the Monte Carlo fallback.
    :param batch_size: examples per forward pass.
    :returns: ``(N, D)`` in nats.
    :raises ValueError: if ``q`` or ``p`` does not factorize over the dimensions (a flow or
        a full-covariance Gaussian); use :func:`~pyro_vae.check.evaluate.elbo_terms` for its
        total KL.
    """
    if x.shape[0] == 0:
        raise ValueError("kl_per_dim needs at least one example; x is empty.")
    out = []
    for start in range(0, x.shape[0], batch_size):
        xb = x[start : start + batch_size]
        yb = None if y is None else y[start : start + batch_size]
        p_site, q_site = _site_pair(model, guide, xb, yb, site)
        q, p = _factors(q_site["fn"]), _factors(p_site["fn"])
        if q is None or p is None:
            who, bad = ("guide", q_site) if q is None else ("prior", p_site)
            raise ValueError(
                f"The {who} at site {site!r} ({type(bad['fn']).__name__}) does not "
                "factorize over the latent dimensions, so a KL per "
                "dimension is not defined; use elbo_terms(...)['kl'] for the total KL."
            )
        try:
            kl = kl_divergence(q, p)  # type: ignore[arg-type]
        except NotImplementedError:
            z = q.sample((num_samples,))
            kl = (q.log_prob(z) - p.log_prob(z)).mean(0)
        out.append(kl.expand(xb.shape[0], kl.shape[-1]))
    return torch.cat(out)


@torch.no_grad()
def posterior_means(
    guide: Callable,
    x: torch.Tensor,
    y: torch.Tensor | None = None,
    *,
    site: str = "z",
    num_samples: int = 100,
    batch_size: int = 1000,
) -> torch.Tensor:
    r""":math:`\mathbb{E}_{q(z \mid x)}[z]` per example, ``(N, D)``: the guide
    distribution's ``mean`` where it has one, else the average of ``num_samples`` draws
    (e.g. for a normalizing-flow guide)."""
    if x.shape[0] == 0:
        raise ValueError("posterior_means needs at least one example; x is empty.")
    out = []
    nesting = None
    for start in range(0, x.shape[0], batch_size):
        xb = x[start : start + batch_size]
        yb = None if y is None else y[start : start + batch_size]
        tr = poutine.trace(guide).get_trace(xb, **label_kwargs(guide, yb))
        if site not in tr.nodes:
            raise ValueError(f"The guide has no sample site {site!r}; pass site=<its name>.")
        try:
            mean = tr.nodes[site]["fn"].mean  # type: ignore[attr-defined]
        except NotImplementedError:
            if nesting is None:
                nesting = max_plate_nesting(guide, guide, xb, yb)
            # Only the guide is needed: replay the guide on itself with K particles.
            _, g_tr = particle_traces(guide, guide, xb, yb, num_samples, nesting)
            mean = per_example_values(g_tr.nodes[site]["value"], g_tr.nodes[site], nesting).mean(0)  # type: ignore[arg-type]
        out.append(mean.expand(xb.shape[0], *mean.shape[-1:]).reshape(xb.shape[0], -1))
    return torch.cat(out)


def active_units(means: torch.Tensor, threshold: float = 0.01) -> torch.Tensor:
    r"""Activity :math:`A_d = \mathrm{Cov}_x(\mathbb{E}_q[z_d])` of each unit, from the
    ``(N, D)`` posterior means (:func:`posterior_means`); unit ``d`` is active when
    :math:`A_d >` ``threshold`` (0.01 in Burda et al., 2015).

    :returns: the boolean mask of active units, ``(D,)``; ``means.var(0)`` is the activity.
    """
    if means.dim() != 2 or means.shape[0] < 2:
        raise ValueError(
            f"active_units needs posterior means of shape (N, D) with N >= 2, got "
            f"{tuple(means.shape)}; compute them with posterior_means(guide, x)."
        )
    return means.var(0) > threshold


@dataclass(frozen=True)
class LatentDiagnostics:
    """Summary of how the latent code is used, from :func:`latent_diagnostics`.

    :ivar kl_per_dim: ``(D,)`` mean KL per dimension over the data (nats); ``None`` when the
        guide or prior does not factorize.
    :ivar activity: ``(D,)`` :math:`\\mathrm{Cov}_x(\\mathbb{E}_q[z_d])`.
    :ivar active: ``(D,)`` boolean mask, ``activity > threshold``.
    :ivar threshold: the activity threshold.
    """

    kl_per_dim: torch.Tensor | None
    activity: torch.Tensor
    active: torch.Tensor
    threshold: float

    @property
    def num_active(self) -> int:
        return int(self.active.sum())

    @property
    def latent_dim(self) -> int:
        return self.active.numel()


@torch.no_grad()
def latent_diagnostics(
    model: Callable,
    guide: Callable,
    x: torch.Tensor,
    y: torch.Tensor | None = None,
    *,
    site: str = "z",
    threshold: float = 0.01,
    min_active_fraction: float = 0.1,
    min_kl: float = 0.1,
    num_samples: int = 100,
    batch_size: int = 1000,
    warn: bool = True,
) -> LatentDiagnostics:
    r"""KL per dimension, activity and active units of latent ``site``, and a
    :class:`PosteriorCollapseWarning` when the code is barely used.

    The warning fires when fewer than ``min_active_fraction`` of the units (and at least
    one) are active, or when the total KL averaged over the data is below ``min_kl``
    nats. Its advice: anneal the KL weight from ~0 to 1, use free bits (Kingma et al., 2016),
    or weaken the decoder.

    :param model: Pyro model.
    :param guide: the matching guide.
    :param x: data ``(N, ...)``, ``N >= 2``.
    :param y: optional labels.
    :param site: the latent site.
    :param threshold: activity threshold of an active unit.
    :param min_active_fraction: warn below this fraction of active units.
    :param min_kl: warn below this mean total KL (nats per example).
    :param num_samples: Monte Carlo draws where no closed form exists.
    :param batch_size: examples per forward pass.
    :param warn: issue the warning (set ``False`` to only compute).
    """
    means = posterior_means(guide, x, y, site=site, num_samples=num_samples, batch_size=batch_size)
    active = active_units(means, threshold)
    try:
        kl = kl_per_dim(
            model, guide, x, y, site=site, num_samples=num_samples, batch_size=batch_size
        ).mean(0)
    except ValueError as e:
        if "does not factorize" not in str(e):
            raise
        kl = None
    result = LatentDiagnostics(kl, means.var(0), active, float(threshold))
    if warn:
        few = result.num_active < max(1, math.ceil(min_active_fraction * result.latent_dim))
        tiny_kl = kl is not None and kl.sum().item() < min_kl
        if few or tiny_kl:
            what = (
                f"{result.num_active} of {result.latent_dim} latent units are active "
                f"(Cov_x E_q[z_d] > {threshold:g})"
            )
            if kl is not None:
                what += f" and the KL is {kl.sum().item():.3g} nats per example"
            warnings.warn(
                f"Posterior collapse: {what}, so the guide barely depends on x. Remedies: "
                "anneal the KL weight from near 0 up to 1 over the first epochs, use free "
                "bits (a KL floor per dimension), or weaken the decoder (smaller, or "
                "less autoregressive).",
                PosteriorCollapseWarning,
                stacklevel=2,
            )
    return result
