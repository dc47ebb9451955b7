r"""The VAE as a Pyro program, assembled from a prior, a likelihood and a guide.

Generative model and amortized guide:

.. math::

    p_\theta(x, z) = p_\theta(z)\, p_\theta(x \mid z), \qquad q_\phi(z \mid x).

Its sites are named as all of our own parts name them: observed site ``"x"``, latent site
``"z"``, optional label site ``"y"``, and the plate ``"data"`` over the examples of a batch.
The functions of this library read a program's sites from a trace, so user programs may
name theirs as they like.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import pyro
import torch
from pyro.nn import PyroModule

from pyro_vae.inference.sites import batch_device
from pyro_vae.parts.conditional import (
    ConditionalNormalPrior,
    conditional_guide,
    conditional_likelihood,
)
from pyro_vae.parts.guides import DiagonalNormalGuide
from pyro_vae.parts.likelihoods import BernoulliLikelihood

__all__ = ["VAE", "LikelihoodData", "conditional_vae"]

_names = itertools.count()


class LikelihoodData:
    """What a model with a ``likelihood`` part knows about its data: the item shape and
    the check that names the fix (shared by :class:`VAE` and the hierarchical VAE)."""

    likelihood: Any

    @property
    def x_shape(self) -> tuple[int, ...] | None:
        return getattr(self.likelihood, "x_shape", None)

    def check_data(self, x: torch.Tensor, y: torch.Tensor | None = None) -> None:
        """Raise :class:`ValueError` naming the fix if ``x`` does not suit the likelihood."""
        shape = self.x_shape
        if shape is not None and tuple(x.shape[1:]) != shape:
            hint = ""
            if x[0].numel() == torch.Size(shape).numel():
                hint = f" Reshape it with x.reshape(-1, *{shape})."
            raise ValueError(
                f"The data items have shape {tuple(x.shape[1:])}, but the likelihood "
                f"expects {shape}.{hint}"
            )
        check = getattr(self.likelihood, "check_data", None)
        if check is not None:
            check(x)

    def likelihood_dist(
        self, z: torch.Tensor, y: torch.Tensor | None, x: torch.Tensor | None
    ) -> Any:
        r""":math:`p(x \mid z)` from the likelihood part; a likelihood that reads a
        covariate of the data (``library_size``, see
        :class:`~pyro_vae.parts.likelihoods.CountLikelihood`) also gets the data ``x`` the
        model was called with (``None`` when it generates)."""
        if getattr(self.likelihood, "library_size", False):
            return self.likelihood.dist(z, y, x)
        return self.likelihood.dist(z, y)


class VAE(LikelihoodData, PyroModule):
    r"""A variational autoencoder whose parts are plug-ins.

    ``vae.model`` and ``vae.guide`` are ordinary Pyro callables, usable with
    :class:`pyro.infer.SVI`, :class:`pyro.infer.Predictive` and :func:`pyro_vae.fit`::

        vae = VAE(StandardNormalPrior(20),
                  BernoulliLikelihood.mlp(20, (1, 28, 28)),
                  DiagonalNormalGuide.mlp((1, 28, 28), 20))

    Each instance gets a unique Pyro name (``vae0``, ``vae1``, ...), so the parameters of
    two models never collide in Pyro's global param store.

    :param prior: :math:`p(z)`, e.g. :class:`~pyro_vae.parts.priors.StandardNormalPrior`.
    :param likelihood: :math:`p(x \mid z)`, e.g.
        :class:`~pyro_vae.parts.likelihoods.BernoulliLikelihood`.
    :param guide: :math:`q(z \mid x)`, e.g. :class:`~pyro_vae.parts.guides.DiagonalNormalGuide`;
        stored as ``vae.posterior`` (``vae.guide`` is the Pyro guide function).
    :param name: the Pyro name prefix of the parameters; unique by default.
    """

    def __init__(
        self,
        prior: PyroModule,
        likelihood: PyroModule,
        guide: PyroModule,
        *,
        name: str | None = None,
    ) -> None:
        super().__init__(name=f"vae{next(_names)}" if name is None else name)
        dims = {
            part: getattr(module, "latent_dim", None)
            for part, module in (("prior", prior), ("guide", guide))
        }
        if None not in dims.values() and len(set(dims.values())) > 1:
            raise ValueError(
                f"The prior has latent_dim={dims['prior']} but the guide has "
                f"latent_dim={dims['guide']}; build both with the same latent_dim."
            )
        self.prior = prior
        self.likelihood = likelihood
        self.posterior = guide

    @property
    def latent_dim(self) -> int | None:
        return getattr(self.prior, "latent_dim", None)

    def model(
        self,
        x: torch.Tensor | None = None,
        y: torch.Tensor | None = None,
        *,
        num_samples: int | None = None,
    ) -> torch.Tensor:
        r"""The generative model :math:`z \sim p(z),\ x \sim p(x \mid z)`.

        :param x: observed data ``(N, *x_shape)``; with ``None``, ``x`` is sampled.
        :param y: optional labels ``(N,)``, passed to conditional parts.
        :param num_samples: the batch size when both ``x`` and ``y`` are ``None``.
        :returns: the observed or sampled ``x``.
        """
        with pyro.plate(
            "data",
            self._batch_size(x, y, num_samples),
            device=batch_device(self, x, y),  # type: ignore[arg-type]
        ):
            z = pyro.sample("z", self.prior.dist(y))
            return pyro.sample("x", self.likelihood_dist(z, y, x), obs=x)

    def guide(
        self,
        x: torch.Tensor,
        y: torch.Tensor | None = None,
        *,
        num_samples: int | None = None,
    ) -> torch.Tensor:
        r"""The amortized guide :math:`z \sim q(z \mid x)`.

        ``num_samples`` is accepted (and ignored) so that the guide takes the same
        arguments as the model.
        """
        if x is None:
            raise ValueError("The guide needs data x; sample from vae.model to generate.")
        with pyro.plate("data", x.shape[0], device=x.device):  # type: ignore[arg-type]
            return pyro.sample("z", self.posterior.dist(x, y))

    @staticmethod
    def _batch_size(x: torch.Tensor | None, y: torch.Tensor | None, num_samples: int | None) -> int:
        if x is not None:
            return x.shape[0]
        if y is not None:
            return y.shape[0]
        if num_samples is None or num_samples <= 0:
            raise ValueError(
                "With x=None the model needs num_samples > 0 (or labels y) to know how "
                f"many examples to generate; got num_samples={num_samples!r}."
            )
        return num_samples


def conditional_vae(
    num_classes: int,
    latent_dim: int,
    x_shape: Sequence[int],
    likelihood_cls: type | None = None,
    guide_cls: type | None = None,
    hidden_dims: Sequence[int] = (400,),
) -> VAE:
    r"""A conditional VAE: :class:`~pyro_vae.parts.conditional.ConditionalNormalPrior`,
    :func:`~pyro_vae.parts.conditional.conditional_likelihood` and
    :func:`~pyro_vae.parts.conditional.conditional_guide` with MLP networks (the decoder
    mirrors ``hidden_dims``).

    :param num_classes: the number of classes of ``y``.
    :param latent_dim: dimension of ``z``.
    :param x_shape: shape of one data item.
    :param likelihood_cls: default :class:`~pyro_vae.parts.likelihoods.BernoulliLikelihood`.
    :param guide_cls: default :class:`~pyro_vae.parts.guides.DiagonalNormalGuide`.
    :param hidden_dims: hidden widths of the encoder.
    """
    hidden = tuple(hidden_dims)
    likelihood = conditional_likelihood(
        likelihood_cls or BernoulliLikelihood, latent_dim, x_shape, num_classes, hidden[::-1]
    )
    guide = conditional_guide(
        guide_cls or DiagonalNormalGuide, x_shape, latent_dim, num_classes, hidden
    )
    return VAE(ConditionalNormalPrior(num_classes, latent_dim), likelihood, guide)
