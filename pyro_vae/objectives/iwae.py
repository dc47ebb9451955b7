r"""The importance weighted bound (IWAE) as a differentiable loss.

Burda, Grosse & Salakhutdinov (2016) [1] tighten the ELBO with :math:`K` importance samples
per example:

.. math::

    \mathcal{L}_K(x) = \mathbb{E}_{z_{1:K} \sim q(z \mid x)}
        \left[\log \frac{1}{K} \sum_{k=1}^K \frac{p(x, z_k)}{q(z_k \mid x)}\right],
    \qquad \mathcal{L}_1 = \mathrm{ELBO} \le \mathcal{L}_K \le \mathcal{L}_{K+1}
    \le \log p(x).

This is Pyro's :class:`~pyro.infer.RenyiELBO` with :math:`\alpha = 0` [2]. Pyro's class
only offers ``loss`` and ``loss_and_grads``; :class:`IWAE` adds the ``differentiable_loss``
that ``elbo(model, guide)`` (the ELBO used as an ``nn.Module``, as :func:`~pyro_vae.fit`
does) needs.

1. Y. Burda, R. Grosse, R. Salakhutdinov, *Importance Weighted Autoencoders*, ICLR 2016.
2. Y. Li, R. E. Turner, *Rényi Divergence Variational Inference*, NeurIPS 2016.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from pyro.infer import RenyiELBO
from pyro.infer.util import get_dependent_plate_dims, is_identically_zero, torch_sum

__all__ = ["IWAE"]


class IWAE(RenyiELBO):
    r"""The IWAE bound :math:`\mathcal{L}_K`: ``RenyiELBO(alpha=0)`` with a
    ``differentiable_loss``.

    The log-weights :math:`\log p(x, z_k) - \log q(z_k \mid x)` are kept per element of
    every plate that holds all sites (the ``"data"`` plate: one bound per example), and
    summed over the others, exactly as :class:`~pyro.infer.RenyiELBO` does. The gradient
    is the reparameterized IWAE gradient (normalized importance weights times the
    per-sample gradients), so the guide must be reparameterized.

    Scaling a site (``poutine.scale``, :class:`~pyro_vae.objectives.BetaELBO`, subsampling
    scale) multiplies its log-density *inside* the log-sum-exp, which is not a scaled
    bound; :class:`~pyro_vae.objectives.BetaELBO` therefore refuses to wrap it.

    :param num_particles: the number :math:`K` of importance samples per example.
    :param vectorize_particles: draw the :math:`K` samples in one vectorized pass.
    :param max_plate_nesting: as for every Pyro ELBO (guessed when left infinite).
    """

    def __init__(
        self,
        num_particles: int = 2,
        vectorize_particles: bool = True,
        max_plate_nesting: float = float("inf"),
    ) -> None:
        if not isinstance(num_particles, int) or isinstance(num_particles, bool):
            raise ValueError(f"num_particles must be an integer >= 1, got {num_particles!r}.")
        if num_particles < 1:
            raise ValueError(f"num_particles must be an integer >= 1, got {num_particles!r}.")
        super().__init__(
            alpha=0.0,
            num_particles=num_particles,
            max_plate_nesting=max_plate_nesting,
            vectorize_particles=vectorize_particles,
        )

    def log_weights(self, model: Any, guide: Any, *args: Any, **kwargs: Any) -> torch.Tensor:
        r"""The importance log-weights, shape ``(K, *plates)`` (``(K, N)`` for a VAE)."""
        particles = []
        for model_trace, guide_trace in self._get_traces(model, guide, args, kwargs):
            sum_dims = get_dependent_plate_dims(model_trace.nodes.values())
            log_w: torch.Tensor | float = 0.0
            for site in model_trace.nodes.values():
                if site["type"] == "sample":
                    log_w = log_w + torch_sum(site["log_prob"], sum_dims)
            for name, site in guide_trace.nodes.items():
                if site["type"] != "sample":
                    continue
                if not is_identically_zero(site["score_parts"].score_function):
                    raise ValueError(
                        f"IWAE needs a reparameterized guide, but site {name!r} is sampled "
                        "without rsample (a discrete or score-function site); use "
                        "objective='elbo' with ScoreFunctionELBO, or a reparameterized guide."
                    )
                log_w = log_w - torch_sum(site["log_prob"], sum_dims)
            particles.append(log_w)
        if self.vectorize_particles and self.num_particles > 1:
            return particles[0]  # type: ignore[return-value]
        return torch.stack(particles)  # type: ignore[arg-type]

    def differentiable_loss(
        self, model: Any, guide: Any, *args: Any, **kwargs: Any
    ) -> torch.Tensor:
        r""":math:`-\sum_n \log \frac{1}{K} \sum_k w_{k,n}`, differentiable."""
        log_w = self.log_weights(model, guide, *args, **kwargs)
        return -(torch.logsumexp(log_w, dim=0) - math.log(self.num_particles)).sum()
