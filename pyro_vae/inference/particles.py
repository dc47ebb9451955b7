r"""Particles for any model/guide pair: ``K`` draws :math:`z_k \sim q(z \mid x)` per example.

Like Pyro's vectorized ELBOs, the draws are made in one pass where the program allows it,
by running the guide inside an extra plate of particles placed to the left of every plate
the program uses; the model is then replayed on that guide trace. Every site's
log-density then has the particles at dimension ``-(max_plate_nesting + 1)`` and the
examples at the dimension of the plate over examples. A program that does not broadcast
over that extra dimension (it indexes ``x[:, 0]`` or reshapes with a fixed batch size) is
run once per particle instead (:func:`draw_particles`), with a
:class:`ParticleLoopWarning`. Internal.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from pyro import poutine
from pyro.distributions.util import scale_and_mask

from pyro_vae.inference.program import PARTICLE_PLATE, Program
from pyro_vae.inference.sites import DATA_PLATE

__all__ = [
    "PARTICLE_PLATE",
    "ParticleLoopWarning",
    "draw_particles",
    "log_density",
    "log_weights",
    "particle_log_weights",
    "per_example_particles",
    "per_example_values",
    "warn_if_looping",
]


class ParticleLoopWarning(UserWarning):
    """The program does not broadcast over a plate of particles, so its particles are
    drawn one run at a time (correct, and slower)."""


def warn_if_looping(program: Program, num_particles: int, what: str) -> None:
    """Warn once, for one call of ``what``, when ``program`` draws its particles in a
    loop: the cost is ``num_particles`` runs of model and guide per batch instead of one."""
    if program.vectorizes is not False or num_particles <= 1:
        return
    warnings.warn(
        f"{what}: the model/guide pair does not run inside a plate of particles on the "
        f"left of its plates ({program.vectorize_error}), so its {num_particles} particles "
        f"per example are drawn one run at a time: {num_particles} runs of model and guide "
        "per batch instead of one, and about as many times slower. To vectorise, write "
        "the program so that it broadcasts over extra dimensions on the left (index with "
        "x[..., i], reshape with z.shape[:-1] rather than a fixed batch size).",
        ParticleLoopWarning,
        stacklevel=3,
    )


def draw_particles(
    program: Program,
    x: torch.Tensor,
    y: torch.Tensor | None,
    num_particles: int,
    *,
    uncondition: bool = False,
    run_model: bool = True,
) -> Iterator[tuple[poutine.Trace, poutine.Trace]]:
    """``(model_trace, guide_trace)`` pairs holding ``num_particles`` draws in all: one
    vectorized pair where the program allows it (:attr:`Program.vectorizes`), else one
    un-vectorized pair per particle (its particle dimension is then implicit, of size 1:
    :func:`per_example_particles` and :func:`per_example_values` add it).

    :param uncondition: sample the data site (label sites stay observed).
    :param run_model: ``False``: guide traces alone.
    """
    kw = {"uncondition": uncondition, "run_model": run_model}
    if program.vectorizes is not False:
        yield program.traces(x, y, num_particles=num_particles, **kw)  # type: ignore[arg-type]
        return
    for _ in range(num_particles):
        yield program.traces(x, y, **kw)  # type: ignore[arg-type]


def particle_log_weights(
    program: Program, x: torch.Tensor, y: torch.Tensor | None, num_particles: int
) -> torch.Tensor:
    r"""Importance log-weights :math:`\log p(x, z_k) - \log q(z_k \mid x)`, ``(K, N)``."""
    nesting, n = program.max_plate_nesting, x.shape[0]
    return torch.cat(
        [
            log_weights(m_tr, g_tr, n, nesting, plate=program.plate)
            for m_tr, g_tr in draw_particles(program, x, y, num_particles)
        ]
    )


def _data_frame(site: Mapping[str, Any], plate: str = DATA_PLATE) -> Any:
    return next((f for f in site["cond_indep_stack"] if f.name == plate), None)


def per_example_particles(
    value: torch.Tensor,
    site: Mapping[str, Any],
    num_examples: int,
    nesting: int,
    plate: str = DATA_PLATE,
) -> torch.Tensor:
    """Reduce a batch-shaped tensor of a site (a log-density) to ``(K, N)``: particles by
    examples (the plate ``plate``), summing every other dimension (nested plates)."""
    frame = _data_frame(site, plate)
    if frame is None:
        raise ValueError(
            f"Site {site['name']!r} is outside plate {plate!r}, the plate over the examples: "
            "a global random variable is shared by all examples, so per-example "
            f"log-likelihoods are not defined. Put every sample site inside `with "
            f"pyro.plate({plate!r}, len(x))`, or make the global variable a pyro.param."
        )
    ndim = nesting + 1
    while value.dim() < ndim:
        value = value.unsqueeze(0)
    first = value.dim() - ndim  # the particle dimension
    value = value.movedim((first, value.dim() + frame.dim), (0, 1))
    value = value.reshape(value.shape[0], value.shape[1], -1).sum(-1)
    return value.expand(value.shape[0], num_examples)


def per_example_values(
    value: torch.Tensor,
    site: Mapping[str, Any],
    nesting: int,
    plate: str = DATA_PLATE,
    event_dim: int | None = None,
) -> torch.Tensor:
    """A site's sampled value (or any tensor shaped batch + ``event_dim`` trailing
    dimensions, by default the site's event dimensions) as ``(K, N, *rest)``: particles,
    examples, then the other plate dimensions and the event dimensions."""
    frame = _data_frame(site, plate)
    if frame is None:
        raise ValueError(
            f"Site {site['name']!r} is outside plate {plate!r}, the plate over the examples; "
            "only per-example sites can be reported per example."
        )
    if event_dim is None:
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
    model_tr: poutine.Trace,
    guide_tr: poutine.Trace,
    num_examples: int,
    nesting: int,
    plate: str = DATA_PLATE,
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
            lp = log_density(site)
            total = total + per_example_particles(lp, site, num_examples, nesting, plate)
            continue
        q_site = guide_tr.nodes.get(name)
        if q_site is None or q_site["type"] != "sample":
            continue
        diff = per_example_particles(log_density(site), site, num_examples, nesting, plate)
        diff = diff - per_example_particles(
            log_density(q_site), q_site, num_examples, nesting, plate
        )
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
