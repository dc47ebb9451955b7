r"""Free bits (Kingma et al., 2016) [1]: a floor :math:`\lambda` on the KL of each latent
dimension.

.. math::

    \widetilde{\mathcal{L}}_\lambda = \sum_{n=1}^{N} \mathbb{E}_{q(z \mid x_n)}
        [\log p(x_n \mid z)]
        - N \sum_{d=1}^{D} \max\left(\lambda,\ \frac{1}{N} \sum_{n=1}^{N}
        \mathrm{KL}\big(q(z_d \mid x_n) \,\|\, p(z_d)\big)\right).

As in [1] (appendix C.8), the KL of each dimension is averaged over the minibatch before
the floor is applied: a dimension whose average KL is below :math:`\lambda` nats gets no
gradient pushing it further towards the prior, so it is free to carry information. With
:math:`\lambda = 0` and an analytic KL (non-negative per dimension) this is exactly the
ELBO of :class:`~pyro.infer.TraceMeanField_ELBO`.

1. D. P. Kingma, T. Salimans, R. Jozefowicz, X. Chen, I. Sutskever, M. Welling,
   *Improved variational inference with inverse autoregressive flow*, NeurIPS 2016.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from pyro import distributions as dist
from pyro.distributions.util import scale_and_mask
from pyro.infer import TraceMeanField_ELBO
from pyro.infer.util import torch_item
from torch.distributions import kl_divergence

__all__ = ["FreeBitsELBO"]


def _per_dim(d: dist.Distribution, site: str, role: str) -> dist.Distribution:
    """The factor distribution over single dimensions of a factorized latent."""
    if isinstance(d, dist.Independent) and d.reinterpreted_batch_ndims == 1:
        base = d.base_dist
        if base.event_shape == ():
            return base
    raise ValueError(
        f"Free bits needs a latent with independent dimensions, but the {role} of site "
        f"{site!r} is a {type(d).__name__} with event shape {tuple(d.event_shape)}. Use a "  # type: ignore[attr-defined]
        "factorized prior and guide, e.g. StandardNormalPrior / LearnedNormalPrior with "
        "DiagonalNormalGuide (dist.Normal(loc, scale).to_event(1))."
    )


class FreeBitsELBO(TraceMeanField_ELBO):
    r"""The free-bits objective :math:`\widetilde{\mathcal{L}}_\lambda`, a
    :class:`~pyro.infer.TraceMeanField_ELBO` whose KL term is floored per dimension.

    Every latent site must factorize over its last dimension in both model and guide
    (``Normal(...).to_event(1)``). The per-dimension KL is analytic where
    :func:`~torch.distributions.kl_divergence` has a formula for the factors, otherwise
    the one-sample Monte Carlo :math:`\log q(z_d) - \log p(z_d)` (then even
    :math:`\lambda = 0` differs from the ELBO, because the floor clips negative
    estimates). The floor counts examples with the site's scale, so ``poutine.scale`` and
    :class:`~pyro_vae.objectives.BetaELBO` weight it like the KL itself. The reported
    loss is :math:`-\widetilde{\mathcal{L}}_\lambda`, not the negative ELBO.

    :param free_bits: the floor :math:`\lambda \ge 0`, in nats per latent dimension.
    :param num_particles: samples of ``z`` per example.
    :param vectorize_particles: draw them in one vectorized pass.
    """

    def __init__(
        self, free_bits: float, num_particles: int = 1, vectorize_particles: bool = False
    ) -> None:
        if isinstance(free_bits, bool) or not isinstance(free_bits, (int, float)):
            raise ValueError(
                f"free_bits must be a number >= 0 (nats per dimension), got {free_bits!r}."
            )
        if not (free_bits >= 0 and math.isfinite(free_bits)):
            raise ValueError(
                f"free_bits must be a number >= 0 (nats per dimension), got {free_bits!r}."
            )
        super().__init__(num_particles=num_particles, vectorize_particles=vectorize_particles)
        self.free_bits = float(free_bits)

    def _differentiable_loss_particle(self, model_trace: Any, guide_trace: Any) -> Any:
        elbo: torch.Tensor | float = 0.0
        for name, model_site in model_trace.nodes.items():
            if model_site["type"] != "sample":
                continue
            if model_site["is_observed"]:
                elbo = elbo + model_site["log_prob_sum"]
                continue
            guide_site = guide_trace.nodes.get(name)
            if guide_site is None or guide_site["type"] != "sample":
                raise ValueError(
                    f"The model's latent site {name!r} has no guide site; free bits needs "
                    "q and p for every latent."
                )
            elbo = elbo - self._floored_kl(name, guide_site, model_site)
        for name, guide_site in guide_trace.nodes.items():
            if guide_site["type"] == "sample" and name not in model_trace.nodes:
                raise ValueError(
                    f"The guide samples {name!r}, which the model does not; free bits needs "
                    "matching latent sites in model and guide."
                )
        return -torch_item(elbo), -elbo

    def _floored_kl(self, name: str, guide_site: Any, model_site: Any) -> torch.Tensor:
        if not guide_site["fn"].has_rsample:
            raise ValueError(
                f"Free bits needs a reparameterized guide, but site {name!r} is not; drop "
                "the score-function switch or the free-bits floor."
            )
        q = _per_dim(guide_site["fn"], name, "guide")
        p = _per_dim(model_site["fn"], name, "prior")
        try:
            kl = kl_divergence(q, p)  # type: ignore[arg-type]
        except NotImplementedError:
            z = guide_site["value"]
            kl = q.log_prob(z) - p.log_prob(z)
        batch_shape = guide_site["fn"].batch_shape
        kl = kl.expand(*batch_shape, kl.shape[-1])
        weight = scale_and_mask(kl.new_ones(batch_shape), guide_site["scale"], guide_site["mask"])
        weight = weight.expand(batch_shape)
        kl_per_dim = (kl * weight.unsqueeze(-1)).reshape(-1, kl.shape[-1]).sum(0)
        floor = self.free_bits * weight.sum()
        return torch.maximum(kl_per_dim, floor).sum()
