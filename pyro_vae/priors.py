r"""Priors :math:`p(z)` over the latent code.

A prior is a :class:`~pyro.nn.PyroModule` with ``latent_dim`` and a ``dist(y=None)`` method
that returns a distribution with ``event_shape == (latent_dim,)``. The VAE samples site
``"z"`` from it inside plate ``"data"``, which broadcasts it over the batch.
"""

from __future__ import annotations

import torch
from pyro import distributions as dist
from pyro.nn import PyroModule

__all__ = ["StandardNormalPrior"]


def check_latent_dim(latent_dim: int, minimum: int = 1) -> int:
    """Raise a :class:`ValueError` unless ``latent_dim`` is an integer ``>= minimum``."""
    if not isinstance(latent_dim, int) or isinstance(latent_dim, bool) or latent_dim < minimum:
        raise ValueError(
            f"latent_dim must be an integer >= {minimum}, got {latent_dim!r}; "
            "pass e.g. latent_dim=20."
        )
    return latent_dim


class StandardNormalPrior(PyroModule):
    r"""The standard normal prior :math:`p(z) = \mathcal{N}(z; 0, I_d)`.

    :param latent_dim: the dimension :math:`d` of :math:`z`.
    """

    def __init__(self, latent_dim: int) -> None:
        super().__init__()
        self.latent_dim = check_latent_dim(latent_dim)
        self.register_buffer("loc", torch.zeros(latent_dim))
        self.register_buffer("scale", torch.ones(latent_dim))

    def forward(self, y: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(loc, scale)``; the standard normal ignores any condition ``y``."""
        return self.loc, self.scale

    def make_dist(self, loc: torch.Tensor, scale: torch.Tensor) -> dist.Distribution:
        return dist.Normal(loc, scale).to_event(1)

    def dist(self, y: torch.Tensor | None = None) -> dist.Distribution:
        """The distribution :math:`p(z)`, with event shape ``(latent_dim,)``."""
        return self.make_dist(*self(y))
