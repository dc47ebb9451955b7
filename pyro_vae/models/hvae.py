r"""A two-level hierarchical VAE (the HVAE of Tomczak & Welling, 2018 [1]):

.. math::

    p(x, z_1, z_2) = p(z_2)\, p_\theta(z_1 \mid z_2)\, p_\theta(x \mid z_1), \qquad
    q_\phi(z_1, z_2 \mid x) = q_\phi(z_2 \mid x)\, q_\phi(z_1 \mid x, z_2).

The top prior :math:`p(z_2)` and the top guide :math:`q(z_2 \mid x)` are ordinary parts
(any registered prior and guide, so the VampPrior on the top level is
``VampPrior(top_guide, K, x_shape)``), and so is the likelihood :math:`p(x \mid z_1)`. The
two conditional Gaussians :math:`p(z_1 \mid z_2)` and :math:`q(z_1 \mid x, z_2)` are
:class:`GaussianLayer` networks. The guide runs top-down: it samples :math:`z_2` from
:math:`x`, then :math:`z_1` from :math:`x` and :math:`z_2`, as in [1].

Site names: ``"z2"`` (top), ``"z1"``, ``"x"``, plate ``"data"``.

1. J. M. Tomczak, M. Welling, *VAE with a VampPrior*, AISTATS 2018, section 3.3.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

import pyro
import torch
from pyro import distributions as dist
from pyro.nn import PyroModule
from torch import nn
from torch.nn import functional as F

from pyro_vae._checks import check_count
from pyro_vae.inference.sites import batch_device
from pyro_vae.models.vae import LikelihoodData
from pyro_vae.parts.nn import MLP

__all__ = ["GaussianLayer", "HierarchicalVAE"]

_names = itertools.count()


class GaussianLayer(nn.Module):
    r"""A conditional diagonal Gaussian :math:`\mathcal{N}(\mu(u), \mathrm{diag}\,
    \sigma^2(u))` whose input :math:`u` is the concatenation of one or more flattened
    tensors (e.g. :math:`[x, z_2]`): an :class:`~pyro_vae.parts.nn.MLP` outputs
    :math:`\mu` and :math:`\sigma = \mathrm{softplus}(\cdot) + \sigma_{\min}`.

    :param in_shapes: the item shape of each input.
    :param hidden_dims: hidden widths of the MLP.
    :param out_dim: the dimension of the Gaussian.
    :param min_scale: the floor :math:`\sigma_{\min}`.
    :param gated: gated hidden layers (:class:`~pyro_vae.parts.nn.GatedLinear`).
    """

    def __init__(
        self,
        in_shapes: Sequence[Sequence[int]],
        hidden_dims: Sequence[int],
        out_dim: int,
        min_scale: float = 1e-4,
        gated: bool = False,
    ) -> None:
        super().__init__()
        self.in_shapes = [tuple(int(s) for s in shape) for shape in in_shapes]
        self.out_dim = check_count("out_dim", out_dim)
        in_dim = sum(math.prod(shape) for shape in self.in_shapes)
        self.net = MLP(in_dim, tuple(hidden_dims), 2 * out_dim, gated=gated)
        self.min_scale = float(min_scale)

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(loc, scale)`` of shape ``(*batch, out_dim)``."""
        if len(inputs) != len(self.in_shapes):
            raise ValueError(
                f"GaussianLayer takes {len(self.in_shapes)} inputs, got {len(inputs)}."
            )
        dtype = next(self.net.parameters()).dtype
        flat = [
            u.to(dtype).reshape(*u.shape[: u.dim() - len(shape)], -1)
            for u, shape in zip(inputs, self.in_shapes, strict=True)
        ]
        batch = torch.broadcast_shapes(*(u.shape[:-1] for u in flat))
        u = torch.cat([v.expand(*batch, v.shape[-1]) for v in flat], dim=-1)
        loc, raw = self.net(u).split(self.out_dim, dim=-1)
        return loc, F.softplus(raw) + self.min_scale

    def dist(self, *inputs: torch.Tensor) -> Any:
        """The Gaussian, with event shape ``(out_dim,)``."""
        return dist.Normal(*self(*inputs)).to_event(1)


class HierarchicalVAE(LikelihoodData, PyroModule):
    r"""The two-level VAE :math:`p(z_2)\,p(z_1 \mid z_2)\,p(x \mid z_1)` with the top-down
    guide :math:`q(z_2 \mid x)\,q(z_1 \mid x, z_2)`; ``model`` and ``guide`` are Pyro
    callables like :class:`~pyro_vae.models.vae.VAE`'s.

    :param prior: :math:`p(z_2)`, a prior part of dimension ``top_dim``.
    :param transition: :math:`p(z_1 \mid z_2)`, a :class:`GaussianLayer` on ``[z2]``.
    :param likelihood: :math:`p(x \mid z_1)`, a likelihood part on ``z1``.
    :param top_guide: :math:`q(z_2 \mid x)`, a guide part of dimension ``top_dim``.
    :param bottom_guide: :math:`q(z_1 \mid x, z_2)`, a :class:`GaussianLayer` on ``[x, z2]``.
    :param name: the Pyro name prefix; unique by default.
    """

    prior: Any
    transition: GaussianLayer
    likelihood: Any
    posterior: Any
    bottom_posterior: GaussianLayer

    def __init__(
        self,
        prior: nn.Module,
        transition: GaussianLayer,
        likelihood: nn.Module,
        top_guide: nn.Module,
        bottom_guide: GaussianLayer,
        *,
        name: str | None = None,
    ) -> None:
        super().__init__(name=f"hvae{next(_names)}" if name is None else name)
        top = getattr(prior, "latent_dim", None), getattr(top_guide, "latent_dim", None)
        if None not in top and top[0] != top[1]:
            raise ValueError(
                f"The prior has latent_dim={top[0]} but the top guide has {top[1]}; build "
                "both with the same top dimension."
            )
        if transition.out_dim != bottom_guide.out_dim:
            raise ValueError(
                f"p(z1|z2) has dimension {transition.out_dim} but q(z1|x,z2) has "
                f"{bottom_guide.out_dim}; build both with the same bottom dimension."
            )
        self.prior = prior
        self.transition = transition
        self.likelihood = likelihood
        self.posterior = top_guide
        self.bottom_posterior = bottom_guide

    @classmethod
    def mlp(
        cls,
        prior: nn.Module,
        likelihood: nn.Module,
        top_guide: nn.Module,
        x_shape: Sequence[int],
        bottom_dim: int,
        hidden_dims: Sequence[int] = (300,),
        gated: bool = False,
    ) -> HierarchicalVAE:
        """Build the two conditional Gaussians as MLPs (gated MLPs if ``gated``) with
        ``hidden_dims`` around the given parts (the likelihood must take ``z1`` of dimension
        ``bottom_dim``)."""
        top_dim = int(top_guide.latent_dim)  # type: ignore[arg-type]
        transition = GaussianLayer([(top_dim,)], hidden_dims, bottom_dim, gated=gated)
        bottom = GaussianLayer([tuple(x_shape), (top_dim,)], hidden_dims, bottom_dim, gated=gated)
        return cls(prior, transition, likelihood, top_guide, bottom)

    def model(
        self,
        x: torch.Tensor | None = None,
        y: torch.Tensor | None = None,
        *,
        num_samples: int | None = None,
    ) -> torch.Tensor:
        r""":math:`z_2 \sim p(z_2),\ z_1 \sim p(z_1 \mid z_2),\ x \sim p(x \mid z_1)`."""
        n = x.shape[0] if x is not None else num_samples
        if n is None or n <= 0:
            raise ValueError("With x=None the model needs num_samples > 0.")
        with pyro.plate("data", n, device=batch_device(self, x, None)):  # type: ignore[arg-type]
            z2 = pyro.sample("z2", self.prior.dist())
            z1 = pyro.sample("z1", self.transition.dist(z2))
            return pyro.sample("x", self.likelihood_dist(z1, None, x), obs=x)

    def guide(
        self,
        x: torch.Tensor,
        y: torch.Tensor | None = None,
        *,
        num_samples: int | None = None,
    ) -> None:
        r""":math:`z_2 \sim q(z_2 \mid x),\ z_1 \sim q(z_1 \mid x, z_2)`."""
        if x is None:
            raise ValueError("The guide needs data x; sample from the model to generate.")
        with pyro.plate("data", x.shape[0], device=x.device):  # type: ignore[arg-type]
            z2 = pyro.sample("z2", self.posterior.dist(x))
            pyro.sample("z1", self.bottom_posterior.dist(x, z2))
