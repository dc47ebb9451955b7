r"""Vectorized particles for any model/guide pair that follows the site conventions. Internal.

Like Pyro's vectorized ELBOs, ``K`` samples :math:`z_k \sim q(z \mid x)` are drawn in one
pass by running the guide inside an extra plate of particles, placed to the left of every
plate the program uses; the model is then replayed on that guide trace. Every site's
log-density then has the particles at dimension ``-(max_plate_nesting + 1)`` and the
examples at the ``"data"`` plate's dimension.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import pyro
import torch
from pyro import poutine
from pyro.distributions.util import scale_and_mask
from pyro.poutine.util import prune_subsample_sites

from pyro_vae.inference.sites import DATA_PLATE, label_kwargs, replayed_traces

PARTICLE_PLATE = "_pyro_vae_particles"


def max_plate_nesting(
    model: Callable, guide: Callable, x: torch.Tensor, y: torch.Tensor | None
) -> int:
    """The number of vectorized plate dimensions the pair uses (one un-vectorized run)."""
    with poutine.block():
        model_tr, guide_tr = replayed_traces(model, guide, x, y)
    dims = [
        frame.dim
        for tr in (prune_subsample_sites(model_tr), prune_subsample_sites(guide_tr))
        for site in tr.nodes.values()
        if site["type"] == "sample"
        for frame in site["cond_indep_stack"]
        if frame.vectorized
    ]
    return -min(dims) if dims else 0  # type: ignore[operator, type-var]


def _in_particles(
    fn: Callable, num_particles: int, dim: int, device: torch.device | None = None
) -> Callable:
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        with pyro.plate(PARTICLE_PLATE, num_particles, dim=dim, device=device):  # type: ignore[arg-type]
            return fn(*args, **kwargs)

    return wrapped


def particle_traces(
    model: Callable,
    guide: Callable,
    x: torch.Tensor,
    y: torch.Tensor | None,
    num_particles: int,
    nesting: int,
    *,
    uncondition: bool = False,
) -> tuple[poutine.Trace, poutine.Trace]:
    """Guide trace with ``num_particles`` vectorized draws, and the model replayed on it
    (unconditioned if asked, so that its observed sites are sampled)."""
    dim = -(nesting + 1)
    guide_tr = poutine.trace(_in_particles(guide, num_particles, dim, x.device)).get_trace(
        x, **label_kwargs(guide, y)
    )
    run = poutine.uncondition(model) if uncondition else model
    model_tr = poutine.trace(
        poutine.replay(_in_particles(run, num_particles, dim, x.device), trace=guide_tr)
    ).get_trace(x, **label_kwargs(model, y))
    return prune_subsample_sites(model_tr), prune_subsample_sites(guide_tr)


def _data_frame(site: Mapping[str, Any]) -> Any:
    return next((f for f in site["cond_indep_stack"] if f.name == DATA_PLATE), None)


def per_example_particles(
    value: torch.Tensor, site: Mapping[str, Any], num_examples: int, nesting: int
) -> torch.Tensor:
    """Reduce a batch-shaped tensor of a site (a log-density) to ``(K, N)``: particles by
    examples, summing every other dimension (nested plates)."""
    frame = _data_frame(site)
    if frame is None:
        raise ValueError(
            f"Site {site['name']!r} is outside plate {DATA_PLATE!r}: a global random variable "
            "is shared by all examples, so per-example log-likelihoods are not defined. Put "
            f"every sample site inside `with pyro.plate({DATA_PLATE!r}, len(x))`, or make the "
            "global variable a pyro.param."
        )
    ndim = nesting + 1
    while value.dim() < ndim:
        value = value.unsqueeze(0)
    first = value.dim() - ndim  # the particle dimension
    value = value.movedim((first, value.dim() + frame.dim), (0, 1))
    value = value.reshape(value.shape[0], value.shape[1], -1).sum(-1)
    return value.expand(value.shape[0], num_examples)


def per_example_values(value: torch.Tensor, site: Mapping[str, Any], nesting: int) -> torch.Tensor:
    """A site's sampled value as ``(K, N, *rest)``: particles, examples, then the other
    plate dimensions and the event dimensions."""
    frame = _data_frame(site)
    if frame is None:
        raise ValueError(
            f"Site {site['name']!r} is outside plate {DATA_PLATE!r}; only per-example "
            "sites can be reported per example."
        )
    event_dim = len(site["fn"].event_shape)
    ndim = nesting + 1 + event_dim
    while value.dim() < ndim:
        value = value.unsqueeze(0)
    first = value.dim() - ndim
    data = value.dim() - event_dim + frame.dim
    return value.movedim((first, data), (0, 1))


def log_density(site: Mapping[str, Any]) -> torch.Tensor:
    """The site's log-density with its mask applied but not its scale: per-example
    log-likelihoods are not rescaled by subsampling or annealing."""
    lp = site["fn"].log_prob(site["value"], *site["args"], **site["kwargs"])
    return scale_and_mask(lp, 1.0, site["mask"])


def log_weights(
    model_tr: poutine.Trace, guide_tr: poutine.Trace, num_examples: int, nesting: int
) -> torch.Tensor:
    r"""Importance log-weights :math:`\log p(x, z_k) - \log q(z_k \mid x)` as ``(K, N)``.

    Every observed site of the model counts. A model latent that the guide does not sample
    was drawn from its prior by the replay, so it is its own proposal and cancels.
    """
    total: torch.Tensor | float = 0.0
    observed = False
    for name, site in model_tr.nodes.items():
        if site["type"] != "sample":
            continue
        if site["is_observed"]:
            observed = True
            total = total + per_example_particles(log_density(site), site, num_examples, nesting)
            continue
        q_site = guide_tr.nodes.get(name)
        if q_site is None or q_site["type"] != "sample":
            continue
        diff = per_example_particles(log_density(site), site, num_examples, nesting)
        diff = diff - per_example_particles(log_density(q_site), q_site, num_examples, nesting)
        total = total + diff
    if not observed:
        raise ValueError(
            "The model has no observed site: pass the data as obs, e.g. "
            'pyro.sample("x", likelihood, obs=x).'
        )
    for name, site in guide_tr.nodes.items():
        if site["type"] != "sample" or site["is_observed"] or name == PARTICLE_PLATE:
            continue
        if name not in model_tr.nodes:
            raise ValueError(
                f"The guide samples {name!r}, which the model does not: an importance weight "
                "needs p(z) for every guide site. Rename the guide site to match the model."
            )
    return total  # type: ignore[return-value]
