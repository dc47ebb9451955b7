r"""Score-function (REINFORCE) gradients for a guide that is normally reparameterized.

The two estimators of :math:`\nabla_\phi \mathbb{E}_{q_\phi(z)}[f(z)]`:

.. math::

    \underbrace{\mathbb{E}_{\varepsilon}\big[\nabla_\phi f(g_\phi(\varepsilon))\big]}
        _{\text{reparameterization}}
    \quad\text{and}\quad
    \underbrace{\mathbb{E}_{q_\phi(z)}\big[f(z)\, \nabla_\phi \log q_\phi(z)\big]}
        _{\text{score function}}

are both unbiased; the second needs no differentiable sampler but has far higher
variance (Williams, 1992 [1]; Mnih & Gregor, 2014 [2]). :func:`non_reparameterized` makes
every latent site of a guide sample without ``rsample``, and :class:`ScoreFunctionELBO`
trains with :class:`~pyro.infer.TraceGraph_ELBO`, which then uses the score function with
Rao-Blackwellized downstream costs (per example, inside the ``"data"`` plate), so the two
estimators can be compared on the same VAE.

1. R. J. Williams, *Simple statistical gradient-following algorithms for connectionist
   reinforcement learning*, Machine Learning 1992.
2. A. Mnih, K. Gregor, *Neural variational inference and learning in belief networks*,
   ICML 2014.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
from pyro import distributions as dist
from pyro.infer import TraceGraph_ELBO
from pyro.poutine.messenger import Messenger

__all__ = ["ScoreFunctionELBO", "non_reparameterized"]


def _without_rsample(d: dist.Distribution) -> dist.Distribution:
    """Turn off reparameterized sampling in place (through wrappers such as Independent,
    whose ``has_rsample`` is a read-only property of the base distribution)."""
    try:
        d.has_rsample_(False)
    except AttributeError:
        base = getattr(d, "base_dist", None)
        if base is None:
            raise
        _without_rsample(base)
    return d


class _NoRsampleMessenger(Messenger):
    def _pyro_sample(self, msg: Any) -> None:
        if not msg["is_observed"] and msg["fn"].has_rsample:
            msg["fn"] = _without_rsample(msg["fn"])


def non_reparameterized(guide: Callable) -> Callable:
    r"""Wrap a Pyro guide so that every latent site is sampled with ``sample()``, not
    ``rsample()``: ``site["fn"].has_rsample`` is ``False`` and no gradient flows through
    the sampled value. Gradient estimators then fall back to the score function."""

    @functools.wraps(guide)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        with _NoRsampleMessenger():
            return guide(*args, **kwargs)

    return wrapped


class ScoreFunctionELBO(TraceGraph_ELBO):
    r"""The ELBO with score-function gradients for the guide:
    :class:`~pyro.infer.TraceGraph_ELBO` on :func:`non_reparameterized` guides.

    Use it as ``fit(..., objective=ScoreFunctionELBO())``; compare with
    ``objective="elbo"`` (:class:`~pyro.infer.Trace_ELBO`, reparameterized). The KL is a
    Monte Carlo estimate, as in ``"elbo"``. ``differentiable_loss`` returns a tensor whose
    value is the negative ELBO and whose gradient is that of Pyro's surrogate loss.

    :param num_particles: samples of ``z`` per example.
    :param vectorize_particles: draw them in one vectorized pass.
    """

    def __init__(self, num_particles: int = 1, vectorize_particles: bool = False) -> None:
        super().__init__(num_particles=num_particles, vectorize_particles=vectorize_particles)

    def _get_trace(self, model: Callable, guide: Callable, args: Any, kwargs: Any) -> Any:
        return super()._get_trace(model, non_reparameterized(guide), args, kwargs)

    def differentiable_loss(
        self, model: Callable, guide: Callable, *args: Any, **kwargs: Any
    ) -> torch.Tensor:
        elbo, surrogate_loss = self._loss_and_surrogate_loss(model, guide, args, kwargs)
        return surrogate_loss + (-elbo - surrogate_loss).detach()
