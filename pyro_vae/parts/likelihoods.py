r"""Likelihoods :math:`p(x \mid z)`: a decoder network plus a distribution head.

A likelihood is a :class:`~pyro.nn.PyroModule` holding a ``decoder`` that maps
``(*batch, latent_dim)`` to distribution parameters of shape ``(*batch, *x_shape)``. Its
``dist(z, y=None)`` returns a distribution whose event shape is ``x_shape``, and
``check_data(x)`` raises a :class:`ValueError` naming the fix when ``x`` is outside the
distribution's support. Each subclass overrides ``make_dist`` (and ``check_data`` where the
support is restricted), nothing else.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, cast

import torch
from pyro import distributions as dist
from pyro.distributions import constraints
from pyro.nn import PyroModule, PyroParam
from torch import nn
from torch.nn import functional as F

from pyro_vae._checks import check_latent_dim
from pyro_vae.parts.conditional import call_net
from pyro_vae.parts.distributions import DiscretizedLogistic, IndependentBernoulli
from pyro_vae.parts.nn import MLP, ConvDecoder
from pyro_vae.parts.registry import BuildSpec, Option, Part

__all__ = [
    "BernoulliLikelihood",
    "BinomialLikelihood",
    "ContinuousBernoulliLikelihood",
    "DiscretizedLogisticLikelihood",
    "Likelihood",
    "NegativeBinomialLikelihood",
    "NormalLikelihood",
    "PoissonLikelihood",
    "ZeroInflatedNegativeBinomialLikelihood",
    "bits_per_dim",
]


class Likelihood(Part, PyroModule):
    r"""Base class: :math:`p(x \mid z) = \mathrm{Dist}(x;\ \mathrm{decoder}(z))`.

    :param decoder: network mapping ``(*batch, latent_dim)`` to parameters of shape
        ``(*batch, *x_shape)``.
    :param x_shape: shape of one data item, e.g. ``(1, 28, 28)`` or ``(784,)``.
    """

    kind = "likelihood"
    #: whether the data are discrete, so that -log p(x) is a code length (bits/dim apply)
    discrete = False

    def __init__(self, decoder: nn.Module, x_shape: Sequence[int]) -> None:
        super().__init__()
        self.decoder = decoder
        self.x_shape = tuple(int(s) for s in x_shape)

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Return the distribution parameters for ``z`` (``y`` reaches a conditional decoder
        only, see :class:`~pyro_vae.parts.conditional.ConditionalNet`)."""
        return call_net(self.decoder, z, y)

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
    def decoder_shape(cls, x_shape: Sequence[int]) -> tuple[int, ...]:
        """The decoder's output shape per item: one parameter per pixel, ``x_shape``."""
        return tuple(x_shape)

    @classmethod
    def config_kwargs(cls, spec: BuildSpec) -> dict[str, Any]:
        """Constructor arguments read from the run configuration's options."""
        return {}

    @classmethod
    def from_config(cls, spec: BuildSpec, input_scale: float = 1.0) -> Likelihood:
        """Build the likelihood of a run configuration; the MLP decoder mirrors the
        encoder's ``hidden_dims``. ``input_scale`` comes from the guide
        (:attr:`~pyro_vae.parts.guides.Guide.input_scale`)."""
        kwargs = {"input_scale": input_scale, **cls.config_kwargs(spec)}
        if spec.network == "conv":
            return cls.conv(spec.latent_dim, spec.x_shape, **kwargs)
        gated = spec.network == "gated"
        return cls.mlp(spec.latent_dim, spec.x_shape, spec.hidden_dims[::-1], gated=gated, **kwargs)

    @classmethod
    def mlp(
        cls,
        latent_dim: int,
        x_shape: Sequence[int],
        hidden_dims: Sequence[int] = (400,),
        input_scale: float = 1.0,
        gated: bool = False,
        **kwargs,
    ) -> Likelihood:
        r"""Build this likelihood with an :class:`~pyro_vae.parts.nn.MLP` decoder whose output
        shape is :meth:`decoder_shape`.

        :param latent_dim: dimension of ``z``.
        :param x_shape: shape of one data item.
        :param hidden_dims: hidden widths of the decoder, from ``z`` outwards.
        :param input_scale: the decoder multiplies ``z`` by this;
            :func:`~pyro_vae.parts.nn.latent_input_scale` gives :math:`\sqrt{d}` for a latent
            on the sphere (a hyperspherical VAE).
        :param gated: gated hidden layers (:class:`~pyro_vae.parts.nn.GatedLinear`).
        :param kwargs: passed to the likelihood's constructor (e.g. ``scale``).
        """
        check_latent_dim(latent_dim)
        out = cls.decoder_shape(x_shape)
        decoder = MLP(latent_dim, hidden_dims, out, input_scale=input_scale, gated=gated)
        return cls(decoder, x_shape, **kwargs)

    @classmethod
    def conv(
        cls,
        latent_dim: int,
        x_shape: Sequence[int] = (1, 28, 28),
        input_scale: float = 1.0,
        **kwargs,
    ) -> Likelihood:
        """Build this likelihood with a :class:`~pyro_vae.parts.nn.ConvDecoder` (28×28 images)
        whose output shape is :meth:`decoder_shape`; ``input_scale`` as for :meth:`mlp`."""
        check_latent_dim(latent_dim)
        out = cls.decoder_shape(x_shape)
        return cls(ConvDecoder(latent_dim, out, input_scale=input_scale), x_shape, **kwargs)


class BernoulliLikelihood(Likelihood):
    r"""Independent Bernoulli pixels, :math:`p(x \mid z) = \prod_i \mathrm{Bern}(x_i;\
    \sigma(f(z)_i))`, for **binary** data. The decoder outputs logits.

    Grayscale data is refused: binarize it first (:func:`pyro_vae.data.binarize`,
    :class:`pyro_vae.data.DynamicBinarization`) or use :class:`ContinuousBernoulliLikelihood`.
    """

    part_name = "bernoulli"
    summary = "Bernoulli pixels, for binary data"
    discrete = True

    def make_dist(self, logits: torch.Tensor) -> dist.Distribution:
        return IndependentBernoulli(dist.Bernoulli(logits=logits), len(self.x_shape))

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

    part_name = "cbernoulli"
    summary = "continuous Bernoulli, for grayscale data in [0, 1]"

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

    part_name = "normal"
    summary = "Gaussian with a fixed or learned --scale"
    options = (
        Option("scale", float, 0.1, "standard deviation of the normal likelihood", positive=True),
        Option("learn_scale", bool, False, "learn a per-element scale (normal likelihood)"),
    )

    @classmethod
    def config_kwargs(cls, spec: BuildSpec) -> dict[str, Any]:
        return {"scale": spec.option("scale"), "learn_scale": spec.option("learn_scale")}

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
        return dist.Normal(loc, self.scale).to_event(len(self.x_shape))  # type: ignore[arg-type]


class DiscretizedLogisticLikelihood(Likelihood):
    r"""Discretized logistic pixels for 8-bit images (Salimans et al., 2017):
    :math:`p(x \mid z) = \prod_i \mathrm{DiscLogistic}(x_i;\ \mu_i(z), s_i(z))`, the logistic
    density integrated over each pixel's bin of width :math:`1/255`, with the edge bins
    :math:`0` and :math:`1` taking the tails
    (:class:`~pyro_vae.parts.distributions.DiscretizedLogistic`).

    The data must be 8-bit values scaled to :math:`[0, 1]`, i.e. on the grid
    :math:`k / 255`. The decoder outputs two numbers per pixel, the location :math:`\mu`
    and a raw scale mapped to :math:`s = \mathrm{softplus}(\cdot) + s_{\min}`, so ``mlp``
    and ``conv`` build decoders with output shape ``(2, *x_shape)``.

    Why not a 256-way categorical: it needs 256 decoder outputs per pixel (a 400-unit MLP
    would end in a 400 × 200,704 layer for MNIST) and knows nothing of the order of the
    intensities; the discretized logistic needs 2 and puts neighbouring values close.

    Because it is a probability mass function on the 256 levels, :math:`-\log p(x)` is a
    code length: the negative ELBO divided by :math:`D \ln 2` (:func:`bits_per_dim`,
    :math:`D` = pixels per image) is an upper bound on :math:`-\log_2 p(x)` per pixel,
    comparable with published bits/dim figures; 8 bits/dim is the uniform baseline.

    :param decoder: network mapping ``(*batch, latent_dim)`` to ``(*batch, 2, *x_shape)``.
    :param x_shape: shape of one data item.
    :param num_bins: the number of intensity levels (256 for 8-bit data).
    :param min_scale: the floor :math:`s_{\min}` of the logistic scale.
    """

    part_name = "dlogistic"
    summary = "discretized logistic, for 8-bit data scaled to [0, 1] (reports bits/dim)"
    discrete = True

    def __init__(
        self,
        decoder: nn.Module,
        x_shape: Sequence[int],
        num_bins: int = 256,
        min_scale: float = 1e-3,
    ) -> None:
        super().__init__(decoder, x_shape)
        if not isinstance(num_bins, int) or num_bins < 2:
            raise ValueError(f"num_bins must be an integer >= 2, got {num_bins!r}.")
        self.num_bins = num_bins
        self.min_scale = float(min_scale)

    def make_dist(self, params: torch.Tensor) -> dist.Distribution:
        loc, raw = params.unbind(-len(self.x_shape) - 1)
        scale = F.softplus(raw) + self.min_scale
        return DiscretizedLogistic(loc, scale, self.num_bins).to_event(len(self.x_shape))

    def check_data(self, x: torch.Tensor) -> None:
        super().check_data(x)
        levels = self.num_bins - 1
        if (x < 0).any() or (x > 1).any():
            raise ValueError(
                "DiscretizedLogisticLikelihood needs data in [0, 1], but found values in "
                f"[{x.min().item():g}, {x.max().item():g}]. Scale 8-bit pixels with x / 255."
            )
        off = (x * levels - torch.round(x * levels)).abs() > 1e-3
        if off.any():
            example = x[off].flatten()[0].item()
            raise ValueError(
                f"DiscretizedLogisticLikelihood needs {self.num_bins}-level data on the grid "
                f"k / {levels}, but found {example:g}. Quantize it with "
                f"torch.round(x * {levels}) / {levels} (and do not binarize or add noise), "
                "or use ContinuousBernoulliLikelihood for continuous values in [0, 1]."
            )

    @classmethod
    def decoder_shape(cls, x_shape: Sequence[int]) -> tuple[int, ...]:
        """``(2, *x_shape)``: the location and the raw scale of each pixel."""
        return (2, *x_shape)


def check_counts(name: str, x: torch.Tensor, upper: int | None = None) -> None:
    """Raise :class:`ValueError` unless ``x`` holds whole numbers ``>= 0`` (``<= upper``)."""
    if x.dtype == torch.bool or x.is_complex():
        raise ValueError(f"{name} needs counts (whole numbers >= 0), got dtype {x.dtype}.")
    if torch.is_floating_point(x) and bool((x != torch.round(x)).any()):
        example = x[x != torch.round(x)].flatten()[0].item()
        raise ValueError(
            f"{name} needs counts (whole numbers >= 0), but found {example:g}; use a "
            "likelihood for continuous data (normal, cbernoulli) or round the counts."
        )
    if x.numel() and bool((x < 0).any()):
        raise ValueError(f"{name} needs counts >= 0, but found {x.min().item():g}.")
    if upper is not None and x.numel() and bool((x > upper).any()):
        raise ValueError(
            f"{name} with --trials {upper} needs counts in [0, {upper}], but found "
            f"{x.max().item():g}; raise --trials to the largest possible count."
        )


class PoissonLikelihood(Likelihood):
    r"""Independent Poisson counts, :math:`p(x \mid z) = \prod_i \mathrm{Poisson}(x_i;\
    \lambda_i)` with :math:`\log \lambda = f(z)`: the decoder outputs log-rates. For count
    data (events, words, reads) whose variance is close to their mean; overdispersed counts
    want :class:`NegativeBinomialLikelihood`.

    Counts may be integer tensors or floats holding whole numbers; anything else is refused.
    """

    part_name = "poisson"
    summary = "Poisson counts with a log-rate decoder"
    discrete = True

    def make_dist(self, log_rate: torch.Tensor) -> dist.Distribution:
        return dist.Poisson(log_rate.clamp(max=30.0).exp()).to_event(len(self.x_shape))

    def check_data(self, x: torch.Tensor) -> None:
        check_counts(type(self).__name__, x)


class NegativeBinomialLikelihood(Likelihood):
    r"""Independent negative binomial counts with mean :math:`\mu = \exp f(z)` and a
    learned dispersion :math:`\theta_i > 0` per feature:

    .. math::

        p(x_i \mid z) = \frac{\Gamma(x_i + \theta_i)}{x_i!\, \Gamma(\theta_i)}
        \Big(\frac{\theta_i}{\theta_i + \mu_i}\Big)^{\theta_i}
        \Big(\frac{\mu_i}{\theta_i + \mu_i}\Big)^{x_i},
        \qquad \mathrm{Var}(x_i) = \mu_i + \mu_i^2 / \theta_i,

    the Gamma-Poisson mixture of scVI: overdispersed counts, Poisson as
    :math:`\theta \to \infty`.

    :param decoder: network producing the log-means, shape ``(*batch, *x_shape)``.
    :param x_shape: shape of one data item.
    :param init_dispersion: the initial :math:`\theta` of every feature.
    """

    part_name = "negbin"
    summary = "negative binomial counts with a learned dispersion per feature"
    discrete = True

    def __init__(
        self, decoder: nn.Module, x_shape: Sequence[int], init_dispersion: float = 1.0
    ) -> None:
        super().__init__(decoder, x_shape)
        if not init_dispersion > 0:
            raise ValueError(f"init_dispersion must be > 0, got {init_dispersion!r}.")
        init = torch.full(self.x_shape, float(init_dispersion))
        self.dispersion = PyroParam(init, constraint=constraints.positive)

    def _nb_logits(self, log_mean: torch.Tensor) -> torch.Tensor:
        # torch's NegativeBinomial has mean total_count * exp(logits)
        return log_mean.clamp(max=30.0) - cast(torch.Tensor, self.dispersion).log()

    def make_dist(self, log_mean: torch.Tensor) -> dist.Distribution:
        nb = dist.NegativeBinomial(total_count=self.dispersion, logits=self._nb_logits(log_mean))
        return nb.to_event(len(self.x_shape))

    def check_data(self, x: torch.Tensor) -> None:
        check_counts(type(self).__name__, x)


class ZeroInflatedNegativeBinomialLikelihood(NegativeBinomialLikelihood):
    r"""A negative binomial whose zeros are inflated: with probability
    :math:`\pi_i = \sigma(g(z)_i)` the count is a structural zero, else it is drawn from
    :class:`NegativeBinomialLikelihood`'s distribution (Pyro's
    :class:`~pyro.distributions.ZeroInflatedNegativeBinomial`):

    .. math:: p(0 \mid z) = \pi + (1 - \pi)\,\mathrm{NB}(0), \qquad
        p(x \mid z) = (1 - \pi)\,\mathrm{NB}(x) \quad (x > 0).

    The decoder outputs two numbers per feature, the log-mean and the gate logit, so
    ``mlp`` and ``conv`` build decoders with output shape ``(2, *x_shape)``.
    """

    part_name = "zinb"
    summary = "zero-inflated negative binomial counts (learned dispersion and gate)"

    @classmethod
    def decoder_shape(cls, x_shape: Sequence[int]) -> tuple[int, ...]:
        """``(2, *x_shape)``: the log-mean and the gate logit of each feature."""
        return (2, *x_shape)

    def make_dist(self, params: torch.Tensor) -> dist.Distribution:
        log_mean, gate_logits = params.unbind(-len(self.x_shape) - 1)
        zinb = dist.ZeroInflatedNegativeBinomial(
            total_count=self.dispersion,
            logits=self._nb_logits(log_mean),
            gate_logits=gate_logits,
        )
        return zinb.to_event(len(self.x_shape))


class BinomialLikelihood(Likelihood):
    r"""Independent binomial counts out of a known number of trials :math:`n` (e.g. 16 for
    the 4×4-block counts of the UCI digits, 255 for 8-bit intensities):
    :math:`p(x_i \mid z) = \binom{n}{x_i} p_i^{x_i} (1 - p_i)^{n - x_i}` with
    :math:`\mathrm{logit}\, p = f(z)`.

    :param decoder: network producing the logits, shape ``(*batch, *x_shape)``.
    :param x_shape: shape of one data item.
    :param trials: the number of trials :math:`n` (the largest possible count).
    """

    part_name = "binomial"
    summary = "binomial counts out of --trials N"
    discrete = True
    options = (Option("trials", int, 255, "trials of the binomial likelihood", minimum=1),)

    def __init__(self, decoder: nn.Module, x_shape: Sequence[int], trials: int = 255) -> None:
        super().__init__(decoder, x_shape)
        if isinstance(trials, bool) or not isinstance(trials, int) or trials < 1:
            raise ValueError(f"trials must be an integer >= 1, got {trials!r}.")
        self.trials = trials

    @classmethod
    def config_kwargs(cls, spec: BuildSpec) -> dict[str, Any]:
        return {"trials": spec.option("trials")}

    def make_dist(self, logits: torch.Tensor) -> dist.Distribution:
        binomial = dist.Binomial(total_count=self.trials, logits=logits)
        return binomial.to_event(len(self.x_shape))

    def check_data(self, x: torch.Tensor) -> None:
        check_counts(type(self).__name__, x, upper=self.trials)


def bits_per_dim(log_prob: torch.Tensor | float, x_shape: Sequence[int]) -> torch.Tensor | float:
    r"""Convert a log-probability (or an ELBO) in nats per example to bits per dimension,
    :math:`-\log p(x) / (D \ln 2)` with :math:`D = \prod x\_shape`.

    Meaningful for discrete likelihoods of discrete data (e.g.
    :class:`DiscretizedLogisticLikelihood` on 8-bit pixels), where it is a code length;
    with an ELBO it is an upper bound.
    """
    return -log_prob / (math.prod(x_shape) * math.log(2.0))
