r"""Latent diagnostics: KL per latent dimension, active units, posterior collapse.

A VAE whose guide ignores :math:`x` in some dimensions (:math:`q(z_d \mid x) \approx
p(z_d)`) pays no KL for them and uses them for nothing: *posterior collapse*
(Bowman et al., 2016, arXiv:1511.06349). Two views of it:

- the KL per dimension, :math:`K_d = \mathbb{E}_x\,\mathrm{KL}(q(z_d \mid x) \,\|\, p(z_d))`;
  a unit is *KL-active* when :math:`K_d >` ``kl_threshold`` (0.1 nats by default);
- the activity :math:`A_d = \mathrm{Cov}_x\big(\mathbb{E}_{q(z \mid x)}[z_d]\big)`, with the
  unit *active* when :math:`A_d > 0.01` (Burda, Grosse & Salakhutdinov, 2015,
  arXiv:1509.00519, §5.2).

A unit is *used* when both hold; the collapse warning counts used units. The two views
measure different things, and neither implies the other at these thresholds:

- :math:`K_d = I_q(x; z_d) + \mathrm{KL}(\bar q(z_d) \,\|\, p(z_d))`, with
  :math:`\bar q(z_d) = \mathbb{E}_x\, q(z_d \mid x)` the aggregate posterior and :math:`x`
  drawn from the data: the KL bounds the information a unit carries about :math:`x`
  from above, and also counts a mismatch between :math:`\bar q` and the prior.
- For a Gaussian guide and a prior :math:`\mathcal{N}(m_d, s_d^2)` that depends on no
  other latent, :math:`\mathrm{KL} = \tfrac12\big[\sigma^2/s^2 - 1 - \log(\sigma^2/s^2)\big]
  + \tfrac12 (\mu - m)^2/s^2` and the bracket is :math:`\ge 0`, so
  :math:`K_d \ge A_d / (2 s_d^2)` (with :math:`A_d` the population variance; the reported
  activity uses :math:`N - 1` and is :math:`N/(N-1)` times larger). A unit with a small KL
  is therefore inactive, but an active unit may carry almost nothing: at
  :math:`A_d = 0.02` under :math:`\mathcal{N}(0, 1)` its posterior mean moves by a
  seventh of the prior's spread and its KL can be 0.01 nats.
- The converse fails: a guide whose mean ignores :math:`x` (:math:`A_d = 0`) but differs
  from the prior pays a KL for no information.
- With a prior that depends on another latent (a hierarchy, :math:`p(z_1 \mid z_2)`),
  :math:`\mathbb{E}_q[z_{1,d}]` can follow :math:`z_2` (active) at zero KL: activity then
  says nothing about what :math:`z_1` adds.

Both are reported for every latent site of the guide (any names, any number of sites; the
dimensions of a site are its per-example elements), read from a trace by
:func:`~pyro_vae.inference.program.read_program`; ``latent_sites=`` selects some of them.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from pyro import distributions as dist
from torch.distributions import kl_divergence

from pyro_vae._checks import check_number
from pyro_vae.inference.particles import draw_particles, per_example_values, warn_if_looping
from pyro_vae.inference.program import Program, read_program, to_examples, trace_sites

__all__ = [
    "LatentDiagnostics",
    "PosteriorCollapseWarning",
    "active_units",
    "kl_per_dim",
    "latent_diagnostics",
    "posterior_means",
]

LatentSites = str | Sequence[str] | None


class PosteriorCollapseWarning(UserWarning):
    """Few latent units carry information about ``x``, or the KL is near zero."""


def _factors(d: Any) -> dist.Distribution | None:
    """The per-element factors of a distribution that factorizes over its event (an
    :class:`~torch.distributions.Independent` of a scalar distribution, or a scalar
    distribution itself), or ``None`` if it does not factorize that way."""
    while isinstance(d, dist.MaskedDistribution):
        d = d.base_dist
    if isinstance(d, torch.distributions.Independent):
        d = d.base_dist
        while isinstance(d, dist.MaskedDistribution):
            d = d.base_dist
    if d.event_shape == () and not isinstance(d, torch.distributions.TransformedDistribution):
        return d
    return None


def _rows(t: torch.Tensor, n: int) -> torch.Tensor:
    """``(n, *rest)`` as ``(n, D)``, broadcasting a shared value over the examples."""
    return t.expand(n, *t.shape[1:]).reshape(n, -1)


def _batches(x: torch.Tensor, y: torch.Tensor | None, batch_size: int):  # type: ignore[no-untyped-def]
    for start in range(0, x.shape[0], batch_size):
        yield x[start : start + batch_size], None if y is None else y[start : start + batch_size]


def _site_kl(
    program: Program, xb: torch.Tensor, yb: torch.Tensor | None, num_samples: int, strict: bool
) -> dict[str, torch.Tensor | None]:
    """KL per example and element of each latent site, ``(n, D)``, from one replay (a
    site's prior may depend on other latents: it is taken at the guide's draw of them);
    ``None`` for a site that does not factorize, unless ``strict`` (then it raises)."""
    model_tr, guide_tr = program.traces(xb, yb)
    out: dict[str, torch.Tensor | None] = {}
    for site in program.latent_sites:
        q_site, p_site = trace_sites(guide_tr)[site], trace_sites(model_tr).get(site)
        if p_site is None or p_site["type"] != "sample":
            raise ValueError(
                f"The guide samples {site!r} but the model has no sample site {site!r}, so "
                "it has no KL; leave it out with latent_sites=."
            )
        q, p = _factors(q_site["fn"]), _factors(p_site["fn"])
        if (q is None or p is None) and not strict:
            out[site] = None
            continue
        if q is None or p is None:
            who, bad = ("guide", q_site) if q is None else ("prior", p_site)
            raise ValueError(
                f"The {who} at site {site!r} ({type(bad['fn']).__name__}) does not "
                "factorize over the latent dimensions, so a KL per dimension is not "
                "defined; use elbo_terms(...)['kl'] for the total KL, or leave the site "
                "out with latent_sites=."
            )
        try:
            kl = kl_divergence(q, p)  # type: ignore[arg-type]
        except NotImplementedError:
            z = q.sample((num_samples,))
            kl = (q.log_prob(z) - p.log_prob(z)).mean(0)
        event_dim = len(q_site["fn"].event_shape)
        out[site] = _rows(to_examples(kl, q_site, program.plate, event_dim), xb.shape[0])
    return out


@torch.no_grad()
def kl_per_dim(
    model: Callable,
    guide: Callable,
    x: torch.Tensor,
    y: torch.Tensor | None = None,
    *,
    latent_sites: LatentSites = None,
    obs_site: str | None = None,
    num_samples: int = 100,
    batch_size: int = 1000,
) -> torch.Tensor:
    r"""Per-example, per-dimension :math:`\mathrm{KL}(q(z_d \mid x) \,\|\, p(z_d))` of the
    latent sites, their dimensions side by side in the order of ``latent_sites``.

    Both :math:`q` and :math:`p` must factorize over the dimensions of each site (e.g.
    ``Normal(loc, scale).to_event(1)``); the dimensions then sum to the total KL. The KL is
    analytic where :func:`torch.distributions.kl_divergence` has a formula for the pair of
    factors, and a Monte Carlo average of :math:`\log q(z_d) - \log p(z_d)` over
    ``num_samples`` draws otherwise. A site whose prior depends on another latent (a
    hierarchy) is scored at the guide's draw of that latent.

    :param model: Pyro model.
    :param guide: the matching guide.
    :param x: data ``(N, ...)``.
    :param y: optional second argument (labels), passed as the program takes it.
    :param latent_sites: the latent sites (a name or names); default every latent site of
        the guide.
    :param obs_site: the data site, where the model observes several.
    :param num_samples: draws for the Monte Carlo fallback.
    :param batch_size: examples per forward pass.
    :returns: ``(N, D)`` in nats, ``D`` the total of the sites' dimensions.
    :raises ValueError: if ``q`` or ``p`` does not factorize over the dimensions of a site
        (a flow or a full-covariance Gaussian); use
        :func:`~pyro_vae.check.evaluate.elbo_terms` for its total KL.
    """
    program = read_program(
        model, guide, x, y, obs_site=obs_site, latent_sites=latent_sites, num_examples=batch_size
    )
    per_site = _kl_by_site(program, x, y, num_samples, batch_size, strict=True)
    return torch.cat(list(per_site.values()), dim=1)  # type: ignore[arg-type]


def _kl_by_site(
    program: Program,
    x: torch.Tensor,
    y: torch.Tensor | None,
    num_samples: int,
    batch_size: int,
    strict: bool,
) -> dict[str, torch.Tensor | None]:
    chunks: dict[str, list[torch.Tensor | None]] = {s: [] for s in program.latent_sites}
    for xb, yb in _batches(x, y, batch_size):
        for site, kl in _site_kl(program, xb, yb, num_samples, strict).items():
            chunks[site].append(kl)
    out: dict[str, torch.Tensor | None] = {}
    for site, parts in chunks.items():
        tensors = [c for c in parts if c is not None]
        out[site] = torch.cat(tensors) if len(tensors) == len(parts) else None
    return out


def _has_upstream(trace_nodes: dict[str, Any], site: str) -> bool:
    """Whether a latent is sampled before ``site`` in the guide (its distribution may
    then depend on that draw)."""
    for name, node in trace_nodes.items():
        if name == site:
            return False
        if node["type"] == "sample" and not node["is_observed"]:
            return True
    return False


def _means_batch(
    program: Program, xb: torch.Tensor, yb: torch.Tensor | None, num_samples: int
) -> dict[str, torch.Tensor]:
    r""":math:`\mathbb{E}_q[z]` of each latent site, ``(n, D)``: the distribution's mean
    for a site sampled first; otherwise (it depends on earlier draws, or has no mean) the
    average over ``num_samples`` particles of the mean given the draws, or of the draws."""
    n = xb.shape[0]
    model_tr, guide_tr = program.traces(xb, yb, run_model=False)
    nodes = trace_sites(program.latent_trace(guide_tr, model_tr))
    out: dict[str, torch.Tensor] = {}
    sampled = []
    for site in program.latent_sites:
        node = nodes[site]
        if not _has_upstream(nodes, site):
            try:
                mean = node["fn"].mean
                out[site] = _rows(to_examples(mean, node, program.plate), n)
                continue
            except NotImplementedError:
                pass
        sampled.append(site)
    if sampled:
        sums: dict[str, torch.Tensor] = {}
        nesting = program.max_plate_nesting
        for m_tr, g_tr in draw_particles(program, xb, yb, num_samples, run_model=False):
            nodes = trace_sites(program.latent_trace(g_tr, m_tr))
            for site in sampled:
                node = nodes[site]
                try:
                    value = node["fn"].mean
                except NotImplementedError:
                    value = node["value"]
                shape = torch.Size(node["fn"].batch_shape) + torch.Size(node["fn"].event_shape)
                value = value.expand(torch.broadcast_shapes(value.shape, shape))
                draws = per_example_values(value, node, nesting, program.plate)
                sums[site] = sums.get(site, 0) + draws.sum(0)  # type: ignore[operator]
        for site in sampled:
            out[site] = _rows(sums[site] / num_samples, n)
    return {site: out[site] for site in program.latent_sites}


def _means_by_site(
    program: Program, x: torch.Tensor, y: torch.Tensor | None, num_samples: int, batch_size: int
) -> dict[str, torch.Tensor]:
    chunks: dict[str, list[torch.Tensor]] = {s: [] for s in program.latent_sites}
    for xb, yb in _batches(x, y, batch_size):
        for site, mean in _means_batch(program, xb, yb, num_samples).items():
            chunks[site].append(mean)
    return {site: torch.cat(v) for site, v in chunks.items()}


@torch.no_grad()
def posterior_means(
    guide: Callable,
    x: torch.Tensor,
    y: torch.Tensor | None = None,
    *,
    latent_sites: LatentSites = None,
    num_samples: int = 100,
    batch_size: int = 1000,
) -> torch.Tensor:
    r""":math:`\mathbb{E}_{q(z \mid x)}[z]` per example, ``(N, D)``, the latent sites'
    dimensions side by side: the guide distribution's ``mean`` for a site sampled first,
    else (a site that depends on earlier draws, or a distribution without a mean, e.g. a
    normalizing flow) the average over ``num_samples`` particles.

    :param guide: the Pyro guide.
    :param x: data ``(N, ...)``.
    :param y: optional second argument, passed as the guide takes it.
    :param latent_sites: the latent sites (a name or names); default all of the guide's.
    :param num_samples: particles for the Monte Carlo mean.
    :param batch_size: examples per forward pass.
    """
    program = read_program(
        None, guide, x, y, latent_sites=latent_sites, particles=True, num_examples=batch_size
    )
    warn_if_looping(program, num_samples, "posterior_means")
    means = _means_by_site(program, x, y, num_samples, batch_size)
    return torch.cat(list(means.values()), dim=1)


def active_units(means: torch.Tensor, threshold: float = 0.01) -> torch.Tensor:
    r"""Activity :math:`A_d = \mathrm{Cov}_x(\mathbb{E}_q[z_d])` of each unit, from the
    ``(N, D)`` posterior means (:func:`posterior_means`); unit ``d`` is active when
    :math:`A_d >` ``threshold`` (0.01 in Burda et al., 2015).

    Activity alone can call a unit active that carries a hundredth of a nat; compare it
    with :func:`kl_per_dim`, or use :func:`latent_diagnostics`, which reports both.

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
    r"""Summary of how the latent code is used, from :func:`latent_diagnostics`; the
    dimensions of all latent sites side by side, in the order of :attr:`site_dims`.

    Three masks per unit (see the module docstring for how they relate): :attr:`active`
    (activity above :attr:`threshold`), :attr:`kl_active` (KL above
    :attr:`kl_threshold`) and :attr:`used` (both).

    :ivar kl_per_dim: ``(D,)`` mean KL per dimension over the data (nats); ``None`` when a
        site's guide or prior does not factorize.
    :ivar activity: ``(D,)`` :math:`\mathrm{Cov}_x(\mathbb{E}_q[z_d])`.
    :ivar active: ``(D,)`` boolean mask, ``activity > threshold``.
    :ivar threshold: the activity threshold.
    :ivar site_dims: ``(site, number of dimensions)`` of each latent site, in order.
    :ivar kl_threshold: the KL threshold of a KL-active unit (nats per example).
    """

    kl_per_dim: torch.Tensor | None
    activity: torch.Tensor
    active: torch.Tensor
    threshold: float
    site_dims: tuple[tuple[str, int], ...] = field(default=())
    site_kl: dict[str, torch.Tensor | None] = field(default_factory=dict, repr=False)
    kl_threshold: float = 0.1

    @property
    def num_active(self) -> int:
        """Units whose activity exceeds :attr:`threshold` (Burda et al.'s count)."""
        return int(self.active.sum())

    @property
    def kl_active(self) -> torch.Tensor | None:
        """``(D,)`` mask of the units whose mean KL exceeds :attr:`kl_threshold`; ``None``
        without a KL per dimension."""
        return None if self.kl_per_dim is None else self.kl_per_dim > self.kl_threshold

    @property
    def num_kl_active(self) -> int | None:
        """Units whose mean KL exceeds :attr:`kl_threshold`; ``None`` without a KL per
        dimension."""
        mask = self.kl_active
        return None if mask is None else int(mask.sum())

    @property
    def used(self) -> torch.Tensor:
        """``(D,)`` mask of the units that are both active and KL-active (only active
        where there is no KL per dimension): the count the collapse warning uses."""
        mask = self.kl_active
        return self.active if mask is None else self.active & mask

    @property
    def num_used(self) -> int:
        return int(self.used.sum())

    @property
    def latent_dim(self) -> int:
        return self.active.numel()

    @property
    def sites(self) -> dict[str, LatentDiagnostics]:
        """The diagnostics of each latent site alone."""
        out, start = {}, 0
        for name, dim in self.site_dims:
            part = slice(start, start + dim)
            kl = self.site_kl.get(name) if self.site_kl else None
            if kl is None and self.kl_per_dim is not None:
                kl = self.kl_per_dim[part]
            out[name] = LatentDiagnostics(
                kl,
                self.activity[part],
                self.active[part],
                self.threshold,
                ((name, dim),),
                kl_threshold=self.kl_threshold,
            )
            start += dim
        return out

    def summary(self) -> str:
        """One line per site: active units, KL-active units, used units and the KL."""
        lines = []
        for name, d in self.sites.items():
            line = (
                f"{name}: {d.num_active} of {d.latent_dim} units active "
                f"(Cov_x E_q[z_d] > {d.threshold:g})"
            )
            if d.kl_per_dim is not None:
                line += (
                    f", {d.num_kl_active} with KL > {d.kl_threshold:g} nats, {d.num_used} "
                    f"both; KL {d.kl_per_dim.sum().item():.3g} nats per example"
                )
            lines.append(line)
        return "\n".join(lines)


@torch.no_grad()
def latent_diagnostics(
    model: Callable,
    guide: Callable,
    x: torch.Tensor,
    y: torch.Tensor | None = None,
    *,
    latent_sites: LatentSites = None,
    obs_site: str | None = None,
    threshold: float = 0.01,
    kl_threshold: float = 0.1,
    min_active_fraction: float = 0.1,
    min_kl: float = 0.1,
    num_samples: int = 100,
    batch_size: int = 1000,
    warn: bool = True,
) -> LatentDiagnostics:
    r"""KL per dimension, activity and active units of every latent site (or those of
    ``latent_sites``), and a :class:`PosteriorCollapseWarning` naming each site whose
    code is barely used.

    A unit is *used* when it is active (activity above ``threshold``) and its KL
    averaged over the data exceeds ``kl_threshold`` nats; the module docstring explains
    why one test alone misleads (an active unit can carry a hundredth of a nat; a unit
    can pay KL without its mean depending on ``x``). Without a KL per dimension (a guide
    or prior that does not factorize) a used unit is an active one. The warning fires for
    a site when fewer than ``min_active_fraction`` of its units (and at least one) are
    used, or when its KL averaged over the data is below ``min_kl`` nats; it states the
    three counts and advises to anneal the KL weight from ~0 to 1, use free bits (Kingma
    et al., 2016), or weaken the decoder. :attr:`LatentDiagnostics.sites` splits the
    result by site and :meth:`LatentDiagnostics.summary` prints it.

    :param model: Pyro model.
    :param guide: the matching guide.
    :param x: data ``(N, ...)``, ``N >= 2``.
    :param y: optional second argument (labels), passed as the program takes it.
    :param latent_sites: the latent sites (a name or names); default every latent site of
        the guide.
    :param obs_site: the data site, where the model observes several.
    :param threshold: activity threshold of an active unit.
    :param kl_threshold: KL threshold of a KL-active unit (nats per example).
    :param min_active_fraction: warn below this fraction of used units of a site.
    :param min_kl: warn below this mean KL of a site (nats per example).
    :param num_samples: Monte Carlo draws where no closed form exists.
    :param batch_size: examples per forward pass.
    :param warn: issue the warning (set ``False`` to only compute).
    """
    for name, value in (
        ("threshold", threshold),
        ("kl_threshold", kl_threshold),
        ("min_active_fraction", min_active_fraction),
        ("min_kl", min_kl),
    ):
        check_number(name, value, minimum=0)
    program = read_program(
        model,
        guide,
        x,
        y,
        obs_site=obs_site,
        latent_sites=latent_sites,
        particles=True,
        num_examples=batch_size,
    )
    warn_if_looping(program, num_samples, "latent_diagnostics")
    means = _means_by_site(program, x, y, num_samples, batch_size)
    site_kl = {
        site: None if kl is None else kl.mean(0)
        for site, kl in _kl_by_site(program, x, y, num_samples, batch_size, False).items()
    }
    all_means = torch.cat(list(means.values()), dim=1)
    active = active_units(all_means, threshold)
    kls = list(site_kl.values())
    kl_total = None if any(k is None for k in kls) else torch.cat(kls)  # type: ignore[arg-type]
    dims = tuple((site, means[site].shape[1]) for site in program.latent_sites)
    result = LatentDiagnostics(
        kl_total,
        all_means.var(0),
        active,
        float(threshold),
        dims,
        site_kl,
        kl_threshold=float(kl_threshold),
    )
    if warn:
        _warn_collapse(result, min_active_fraction, min_kl)
    return result


def _warn_collapse(result: LatentDiagnostics, min_active_fraction: float, min_kl: float) -> None:
    findings = []
    for name, diag in result.sites.items():
        few = diag.num_used < max(1, math.ceil(min_active_fraction * diag.latent_dim))
        kl = diag.kl_per_dim
        tiny_kl = kl is not None and kl.sum().item() < min_kl
        if few or tiny_kl:
            what = (
                f"at site {name!r}, {diag.num_active} of {diag.latent_dim} latent units are "
                f"active (Cov_x E_q[z_d] > {diag.threshold:g})"
            )
            if kl is not None:
                what += (
                    f", {diag.num_kl_active} have a KL above {diag.kl_threshold:g} nats, "
                    f"{diag.num_used} both, and the KL is {kl.sum().item():.3g} nats per "
                    "example"
                )
            findings.append(what)
    if findings:
        warnings.warn(
            f"Posterior collapse: {'; '.join(findings)}, so the guide barely depends on x "
            "there. Remedies: anneal the KL weight from near 0 up to 1 over the first "
            "epochs, use free bits (a KL floor per dimension), or weaken the decoder "
            "(smaller, or less autoregressive).",
            PosteriorCollapseWarning,
            stacklevel=3,
        )
