r"""Likelihoods :math:`p(x \mid z)`: a decoder network plus a distribution head.

A likelihood is a :class:`~pyro.nn.PyroModule` holding a ``decoder`` that maps
``(*batch, latent_dim)`` to distribution parameters of shape ``(*batch, *x_shape)``. Its
``dist(z, y=None)`` returns a distribution whose event shape is ``x_shape``, and
``check_data(x)`` raises a :class:`ValueError` naming the fix when ``x`` is outside the
distribution's support. Each subclass overrides ``make_dist`` (and ``check_data`` where the
support is restricted), nothing else.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from pyro import distributions as dist
from pyro.distributions import constraints
from pyro.nn import PyroModule, PyroParam
from torch import nn

from .nn import MLP, ConvDecoder
from .priors import check_latent_dim

__all__ = [
    "BernoulliLikelihood",
    "ContinuousBernoulliLikelihood",
    "Likelihood",
    "NormalLikelihood",
]


class Likelihood(PyroModule):
    r"""Base class: :math:`p(x \mid z) = \mathrm{Dist}(x;\ \mathrm{decoder}(z))`.

    :param decoder: network mapping ``(*batch, latent_dim)`` to parameters of shape
        ``(*batch, *x_shape)``.
    :param x_shape: shape of one data item, e.g. ``(1, 28, 28)`` or ``(784,)``.
    """

    def __init__(self, decoder: nn.Module, x_shape: Sequence[int]) -> None:
        super().__init__()
        self.decoder = decoder
        self.x_shape = tuple(int(s) for s in x_shape)

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Return the distribution parameters for ``z`` (unconditional: ``y`` is ignored)."""
        return self.decoder(z)

    def make_dist(self, params: torch.Tensor) -> dist.Distribution:
        raise NotImplementedError

    def dist(self, z: torch.Tensor, y: torch.Tensor | None = None) -> dist.Distribution:
        r"""The distribution :math:`p(x \mid z)`, with event shape ``x_shape``."""
        return self.make_dist(self(z, y))

    def check_data(self, x: torch.Tensor) -> None:
        """Raise :class:`ValueError` with the fix if ``x`` cannot be scored by this likelihood."""
        if not torch.is_floating_point(x):
            raise ValueError(
                f"{type(self).__name__} needs floating-point data, got dtype {x.dtype}; "
                "convert with x.float() (and scale 8-bit pixels to [0, 1] with x / 255)."
            )

    @classmethod
    def mlp(
        cls,
        latent_dim: int,
        x_shape: Sequence[int],
        hidden_dims: Sequence[int] = (400,),
        **kwargs,
    ) -> Likelihood:
        """Build this likelihood with an :class:`~pyro_vae.nn.MLP` decoder.

        :param latent_dim: dimension of ``z``.
        :param x_shape: shape of one data item.
        :param hidden_dims: hidden widths of the decoder, from ``z`` outwards.
        :param kwargs: passed to the likelihood's constructor (e.g. ``scale``).
        """
        check_latent_dim(latent_dim)
        return cls(MLP(latent_dim, hidden_dims, x_shape), x_shape, **kwargs)

    @classmethod
    def conv(cls, latent_dim: int, x_shape: Sequence[int] = (1, 28, 28), **kwargs) -> Likelihood:
        """Build this likelihood with a :class:`~pyro_vae.nn.ConvDecoder` (28×28 images)."""
        check_latent_dim(latent_dim)
        return cls(ConvDecoder(latent_dim, x_shape), x_shape, **kwargs)


class BernoulliLikelihood(Likelihood):
    r"""Independent Bernoulli pixels, :math:`p(x \mid z) = \prod_i \mathrm{Bern}(x_i;\
    \sigma(f(z)_i))`, for **binary** data. The decoder outputs logits.

    Grayscale data is refused: binarize it first (:func:`pyro_vae.data.binarize`,
    :class:`pyro_vae.data.DynamicBinarization`) or use :class:`ContinuousBernoulliLikelihood`.
    """

    def make_dist(self, logits: torch.Tensor) -> dist.Distribution:
        return dist.Bernoulli(logits=logits).to_event(len(self.x_shape))

    def check_data(self, x: torch.Tensor) -> None:
        super().check_data(x)
        bad = (x != 0) & (x != 1)
        if bad.any():
            example = x[bad].flatten()[0].item()
            raise ValueError(
                "BernoulliLikelihood needs binary data (every value 0 or 1), but found "
                f"{example:g}. Binarize the data (pyro_vae.data.binarize, or "
                "pyro_vae.data.DynamicBinarization for dynamic binarization; on the CLI "
                "--binarize static|dynamic) or use ContinuousBernoulliLikelihood for "
                "grayscale values in [0, 1]."
            )


class ContinuousBernoulliLikelihood(Likelihood):
    r"""The continuous Bernoulli (Loaiza-Ganem & Cunningham, 2019), a proper density on
    :math:`[0, 1]` for grayscale pixels. The decoder outputs logits."""

    def make_dist(self, logits: torch.Tensor) -> dist.Distribution:
        return dist.ContinuousBernoulli(logits=logits).to_event(len(self.x_shape))

    def check_data(self, x: torch.Tensor) -> None:
        super().check_data(x)
        if (x < 0).any() or (x > 1).any():
            raise ValueError(
                "ContinuousBernoulliLikelihood needs data in [0, 1], but found values in "
                f"[{x.min().item():g}, {x.max().item():g}]. Rescale the data (e.g. x / 255 "
                "for 8-bit pixels) or use NormalLikelihood for unbounded data."
            )


class NormalLikelihood(Likelihood):
    r"""Gaussian pixels :math:`p(x \mid z) = \mathcal{N}(x;\ f(z),\ \sigma^2)`.

    :param decoder: network producing the mean.
    :param x_shape: shape of one data item.
    :param scale: the standard deviation :math:`\sigma` (its initial value when learned).
    :param learn_scale: if true, :math:`\sigma` is a learned per-element parameter of shape
        ``x_shape``; otherwise it is fixed.
    """

    def __init__(
        self,
        decoder: nn.Module,
        x_shape: Sequence[int],
        scale: float = 1.0,
        learn_scale: bool = False,
    ) -> None:
        super().__init__(decoder, x_shape)
        if not scale > 0:
            raise ValueError(f"NormalLikelihood scale must be > 0, got {scale!r}.")
        self.learn_scale = bool(learn_scale)
        init = torch.full(self.x_shape, float(scale))
        if self.learn_scale:
            self.scale = PyroParam(init, constraint=constraints.positive)
        else:
            self.register_buffer("scale", init)

    def make_dist(self, loc: torch.Tensor) -> dist.Distribution:
        return dist.Normal(loc, self.scale).to_event(len(self.x_shape))
