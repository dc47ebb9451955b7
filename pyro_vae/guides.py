r"""Amortized guides :math:`q(z \mid x)`: an encoder network plus a distribution head.

A guide is a :class:`~pyro.nn.PyroModule` with ``latent_dim`` and a ``dist(x, y=None)``
method returning a distribution with ``event_shape == (latent_dim,)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from pyro import distributions as dist
from pyro.nn import PyroModule
from torch import nn
from torch.nn import functional as F

from .nn import MLP, ConvEncoder
from .priors import check_latent_dim

__all__ = ["DiagonalNormalGuide"]


class DiagonalNormalGuide(PyroModule):
    r"""The mean-field Gaussian :math:`q(z \mid x) = \mathcal{N}(z;\ \mu(x),\
    \mathrm{diag}\,\sigma^2(x))`.

    The encoder outputs ``2 * latent_dim`` numbers per item: :math:`\mu` and a raw scale
    mapped to :math:`\sigma = \mathrm{softplus}(\cdot) + \sigma_{\min}`.

    :param encoder: network mapping ``(*batch, *x_shape)`` to ``(*batch, 2 * latent_dim)``.
    :param latent_dim: dimension of ``z``.
    :param min_scale: the floor :math:`\sigma_{\min}` that keeps the density finite.
    """

    def __init__(self, encoder: nn.Module, latent_dim: int, min_scale: float = 1e-5) -> None:
        super().__init__()
        self.encoder = encoder
        self.latent_dim = check_latent_dim(latent_dim)
        self.min_scale = float(min_scale)

    def forward(
        self, x: torch.Tensor, y: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(loc, scale)`` for ``x`` (unconditional: ``y`` is ignored)."""
        loc, raw = self.encoder(x).split(self.latent_dim, dim=-1)
        return loc, F.softplus(raw) + self.min_scale

    def make_dist(self, loc: torch.Tensor, scale: torch.Tensor) -> dist.Distribution:
        return dist.Normal(loc, scale).to_event(1)

    def dist(self, x: torch.Tensor, y: torch.Tensor | None = None) -> dist.Distribution:
        r"""The distribution :math:`q(z \mid x)`."""
        return self.make_dist(*self(x, y))

    @classmethod
    def mlp(
        cls, x_shape: Sequence[int], latent_dim: int, hidden_dims: Sequence[int] = (400,)
    ) -> DiagonalNormalGuide:
        """Build the guide with an :class:`~pyro_vae.nn.MLP` encoder."""
        check_latent_dim(latent_dim)
        return cls(MLP(x_shape, hidden_dims, 2 * latent_dim), latent_dim)

    @classmethod
    def conv(
        cls, latent_dim: int, channels: int = 1, feature_dim: int = 256
    ) -> DiagonalNormalGuide:
        """Build the guide with a :class:`~pyro_vae.nn.ConvEncoder` (28×28 images)."""
        check_latent_dim(latent_dim)
        encoder = nn.Sequential(
            ConvEncoder(feature_dim, channels), nn.Linear(feature_dim, 2 * latent_dim)
        )
        return cls(encoder, latent_dim)
