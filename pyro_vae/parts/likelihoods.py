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
from typing import Any, ClassVar, cast

import torch
from pyro import distributions as dist
from pyro.distributions import constraints
from pyro.nn import PyroModule, PyroParam
from torch import nn
from torch.nn import functional as F

from pyro_vae._checks import check_latent_dim
from pyro_vae.data import Standardization
from pyro_vae.parts.conditional import call_net
from pyro_vae.parts.distributions import DiscretizedLogistic, IndependentBernoulli
from pyro_vae.parts.nn import MLP, ConvDecoder
from pyro_vae.parts.registry import BuildSpec, Option, Part

__all__ = [
    "LIBRARY_SIZE",
    "NUM_LIBRARY_PERCENTILES",
    "BernoulliLikelihood",
    "BinomialLikelihood",
    "ContinuousBernoulliLikelihood",
    "CountLikelihood",
    "DiscretizedLogisticLikelihood",
    "Likelihood",
    "NegativeBinomialLikelihood",
    "NormalLikelihood",
    "PoissonLikelihood",
    "ZeroInflatedNegativeBinomialLikelihood",
    "bits_per_dim",
    "library_size_percentiles",
    "library_sizes",
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
    #: whether ``dist`` reads the library size of the data ``x`` (:class:`CountLikelihood`);
    #: models pass ``x`` to ``dist`` for such likelihoods
    library_size = False

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

    def dist(
        self, z: torch.Tensor, y: torch.Tensor | None = None, x: torch.Tensor | None = None
    ) -> dist.Distribution:
        r"""The distribution :math:`p(x \mid z)`, with event shape ``x_shape``.

        :param z: latent codes ``(*batch, latent_dim)``.
        :param y: labels, for a conditional decoder.
        :param x: the data the model was called with (observed, or replaced by draws in a
            predictive check), ``None`` when it generates. Only a likelihood that reads a
            covariate of the data (``library_size``, see :class:`CountLikelihood`) uses
            it; a model passes it to those alone.
        """
        return self.make_dist(self(z, y))

    def check_data(self, x: torch.Tensor) -> None:
        """Raise :class:`ValueError` with the fix if ``x`` cannot be scored by this likelihood."""
        if not torch.is_floating_point(x):
            kind = "integers" if x.dtype != torch.bool else "booleans"
            raise ValueError(
                f"{type(self).__name__} models real values and needs floating-point data, "
                f"but the data are {kind} (dtype {x.dtype}). For counts choose a count "
                "likelihood (--likelihood poisson, negbin, zinb, or binomial --trials N); "
                "for measurements convert "
                "them to floats (x.float() in Python; in a data file, store float32 values "
                "or write the CSV values with a decimal point); scale 8-bit pixels to "
                "[0, 1] with x / 255."
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
        if not torch.is_floating_point(x):
            raise ValueError(
                f"BernoulliLikelihood needs floating-point 0/1 data, got dtype {x.dtype}; "
                "convert with x.float() (in a data file, store float32 values)."
            )
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
    r"""Gaussian pixels or features :math:`p(x \mid z) = \mathcal{N}(x;\ f(z),\ \sigma^2)`.

    With a :class:`~pyro_vae.data.Standardization` (:meth:`standardize`; ``pyro-vae train``
    does it for tables), the networks work in standardised units and the density is that
    of the data in their own units:

    .. math::

        p(x \mid z) = \mathcal{N}\big(x;\ m + s\,f(z),\ (s\,\sigma)^2\big)
        = \prod_i \frac{1}{s_i}\,\mathcal{N}\big((x_i - m_i) / s_i;\ f(z)_i,\ \sigma_i^2\big),

    so :math:`\sigma` is in standard deviations of each feature, log-likelihoods stay in
    nats of the data as given, and means and draws come out in the data's units.

    :param decoder: network producing the mean.
    :param x_shape: shape of one data item.
    :param scale: the standard deviation :math:`\sigma` (its initial value when learned).
    :param learn_scale: if true, :math:`\sigma` is a learned per-element parameter of shape
        ``x_shape``; otherwise it is fixed.
    :param min_scale: the floor of a learned :math:`\sigma` (in standardised units when
        standardised): a feature the decoder can predict exactly (a constant column, the
        blank border of images) would otherwise shrink its scale to 0 and its density
        without bound.
    """

    part_name = "normal"
    summary = "Gaussian with a fixed or learned --scale"
    options = (
        Option(
            "scale",
            float,
            0.1,
            "standard deviation of the normal likelihood, fixed unless --learn-scale (then "
            "its start); on data that are not images, leaving --scale out learns a scale per "
            "feature starting at 1 (standard deviation of the standardised data)",
            positive=True,
        ),
        Option(
            "learn_scale",
            bool,
            False,
            "learn a per-element scale (normal likelihood); the default on data that are not "
            "images unless --scale is given",
        ),
    )
    standardization: Standardization | None

    @classmethod
    def config_kwargs(cls, spec: BuildSpec) -> dict[str, Any]:
        return {"scale": spec.option("scale"), "learn_scale": spec.option("learn_scale")}

    def __init__(
        self,
        decoder: nn.Module,
        x_shape: Sequence[int],
        scale: float = 1.0,
        learn_scale: bool = False,
        min_scale: float = 1e-3,
    ) -> None:
        super().__init__(decoder, x_shape)
        if not scale > 0:
            raise ValueError(f"NormalLikelihood scale must be > 0, got {scale!r}.")
        if not min_scale >= 0:
            raise ValueError(f"NormalLikelihood min_scale must be >= 0, got {min_scale!r}.")
        self.learn_scale = bool(learn_scale)
        self.min_scale = float(min_scale)
        init = torch.full(self.x_shape, float(scale))
        if self.learn_scale:
            self.scale = PyroParam(init, constraint=constraints.positive)
        else:
            self.register_buffer("scale", init)
        self.standardization = None

    def standardize(self, standardization: Standardization) -> NormalLikelihood:
        r"""Let the decoder work in the standardised units of ``standardization`` (fitted on
        the training split): the mean is :math:`m + s\,f(z)` and the standard deviation
        :math:`s\,\sigma`; see the class docstring. Returns ``self``."""
        if tuple(standardization.loc.shape) != self.x_shape:
            raise ValueError(
                f"The standardisation has shape {tuple(standardization.loc.shape)} but the "
                f"data items {self.x_shape}."
            )
        self.standardization = standardization
        return self

    def make_dist(self, loc: torch.Tensor) -> dist.Distribution:
        scale = cast(torch.Tensor, self.scale)
        if self.learn_scale:
            scale = scale.clamp_min(self.min_scale)
        if self.standardization is not None:
            s = self.standardization.scale
            loc, scale = self.standardization.inverse(loc), s * scale
        return dist.Normal(loc, scale).to_event(len(self.x_shape))


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


#: the number of percentiles (0, 1, ..., 100 %) that summarise the training library sizes
NUM_LIBRARY_PERCENTILES = 101

LIBRARY_SIZE = Option(
    "library_size",
    bool,
    False,
    "use each example's total count (its library size) as an offset, as in scVI: the "
    "decoder gives per-feature proportions (a softmax) and the mean is library size x "
    "proportion; log p(x) is then conditional on the library size",
)


def library_sizes(x: torch.Tensor, event_dim: int) -> torch.Tensor:
    """The library size of each example of ``x``: the sum of its counts over the last
    ``event_dim`` dimensions (the item), as floating point."""
    sizes = x.sum(dim=tuple(range(-event_dim, 0)))
    return sizes if torch.is_floating_point(sizes) else sizes.to(torch.get_default_dtype())


def library_size_percentiles(x: torch.Tensor, event_dim: int) -> torch.Tensor:
    r"""The percentiles :math:`0, 1, \dots, 100\,\%` of the library sizes of the examples
    of ``x`` (linear interpolation between order statistics): the summary of the training
    library sizes that :class:`CountLikelihood` keeps to draw library sizes when it
    generates without data.

    :raises ValueError: when an example's counts are all 0 (library size 0).
    """
    sizes = library_sizes(x, event_dim).double().flatten()
    if sizes.numel() == 0:
        raise ValueError("Library sizes need at least one example.")
    _check_library_sizes(sizes)
    ordered = sizes.sort().values
    position = torch.linspace(0, ordered.numel() - 1, NUM_LIBRARY_PERCENTILES, dtype=torch.float64)
    low = position.floor().long()
    high = position.ceil().long()
    frac = position - low
    return (ordered[low] + frac * (ordered[high] - ordered[low])).float()


def _check_library_sizes(sizes: torch.Tensor) -> None:
    if bool((sizes <= 0).any()):
        count = int((sizes <= 0).sum())
        raise ValueError(
            f"{count} example(s) have no counts at all (library size 0); with "
            "--library-size (library_size=True) every example needs a positive total. Drop "
            "the empty rows, or train without --library-size."
        )


class CountLikelihood(Likelihood):
    r"""Base class of the count likelihoods whose mean can take the **library size** as an
    offset (``library_size=True``, ``--library-size`` on the command line), as scVI does
    with the observed library size (Lopez et al., 2018).

    The library size of an example is its total count, :math:`\ell = \sum_i x_i`. With the
    offset, the decoder's outputs :math:`f(z)` become per-feature proportions
    :math:`\rho(z) = \mathrm{softmax}(f(z))` (summing to 1 over the features) and the mean
    of feature :math:`i` is :math:`\mu_i = \ell\,\rho_i(z)`: the latent code describes the
    *composition* of an example and :math:`\ell` its depth, so examples that differ only in
    their total (sequencing depth, document length) share a code.

    - **Scoring** (training, evaluation, importance-sampled :math:`\log p(x)`): :math:`\ell`
      is read from the observed ``x``, an observed covariate, so every density is
      conditional on it: :math:`p(x \mid z, \ell)` and the estimated
      :math:`\log p(x \mid \ell) = \log \int p(z)\, p(x \mid z, \ell)\, dz`. Like scVI's, the
      model does not force the counts to add up to :math:`\ell`; it is an offset of the
      mean, not a constraint.
    - **Given data** (the model called with ``x``: posterior and prior predictive checks,
      rows generated with data rows as templates), each example keeps its observed
      :math:`\ell`, and replicates :math:`x^{\mathrm{rep}} \sim p(x \mid z, \ell)`.
    - **Without data** (``model(x=None, num_samples=n)``), each example's :math:`\ell` is
      drawn from the **empirical distribution of the training library sizes**, stored as
      their 101 percentiles (:func:`library_size_percentiles`, in the buffer
      ``library_percentiles``, which checkpoints carry): a uniform draw on the percentile
      scale, interpolated linearly. The empirical distribution, not a log-normal fitted to
      it: it needs no assumption about the shape of the totals (bounded, multimodal or
      skewed), and 101 numbers reproduce it to within a percentile. Fill it with
      :meth:`fit_library_sizes` (``pyro-vae train`` does it from the training split and
      keeps the percentiles in ``config.json``).

    Examples whose counts are all zero have no composition and are refused by
    :meth:`check_data` when the offset is on.

    :param decoder: network producing the log-means (or, with the offset, the logits of
        the proportions).
    :param x_shape: shape of one data item.
    :param library_size: use the library size as an offset.
    """

    discrete = True
    options = (LIBRARY_SIZE,)
    #: where the decoder's output holds the log-means: ``None`` for the whole output, or an
    #: index along the dimension before the item's (a stacked output such as the zinb's)
    mean_channel: ClassVar[int | None] = None
    library_percentiles: torch.Tensor

    def __init__(
        self, decoder: nn.Module, x_shape: Sequence[int], library_size: bool = False
    ) -> None:
        super().__init__(decoder, x_shape)
        if not isinstance(library_size, bool):
            raise ValueError(f"library_size must be True or False, got {library_size!r}.")
        self.library_size = library_size
        if library_size:
            empty = torch.full((NUM_LIBRARY_PERCENTILES,), math.nan)
            self.register_buffer("library_percentiles", empty)

    @classmethod
    def config_kwargs(cls, spec: BuildSpec) -> dict[str, Any]:
        return {"library_size": spec.option("library_size")}

    def fit_library_sizes(self, x: torch.Tensor) -> torch.Tensor:
        """Store the percentiles of the library sizes of the training data ``x`` (drawn
        from when the model generates without data); returns them."""
        self._need_library_size("fit_library_sizes")
        return self.set_library_percentiles(library_size_percentiles(x, len(self.x_shape)))

    def set_library_percentiles(self, percentiles: torch.Tensor | Sequence[float]) -> torch.Tensor:
        """Store the 101 percentiles of the training library sizes (as
        :func:`library_size_percentiles` computes them); returns the stored tensor."""
        self._need_library_size("set_library_percentiles")
        values = torch.as_tensor(percentiles, dtype=torch.float32).flatten()
        if values.numel() != NUM_LIBRARY_PERCENTILES:
            raise ValueError(
                f"Library-size percentiles must be {NUM_LIBRARY_PERCENTILES} numbers (0, 1, "
                f"..., 100 %), got {values.numel()}."
            )
        if not bool(torch.isfinite(values).all()) or bool((values[1:] < values[:-1]).any()):
            raise ValueError("Library-size percentiles must be finite and non-decreasing.")
        _check_library_sizes(values)
        self.library_percentiles.copy_(values)
        return self.library_percentiles

    def sample_library_sizes(self, shape: Sequence[int]) -> torch.Tensor:
        """Library sizes of ``shape`` drawn from the stored training distribution (a
        uniform draw on the percentile scale, interpolated between percentiles)."""
        self._need_library_size("sample_library_sizes")
        p = self.library_percentiles
        if not bool(torch.isfinite(p).all()):
            raise ValueError(
                f"{type(self).__name__} with library_size=True generates without data, so "
                "it draws each example's library size from the training library sizes, but "
                "none are stored: call likelihood.fit_library_sizes(x_train) first "
                "(pyro-vae train stores those of the training split), or pass data x."
            )
        u = torch.rand(tuple(shape), device=p.device, dtype=p.dtype) * (p.numel() - 1)
        low = u.floor().long().clamp(max=p.numel() - 2)
        return p[low] + (u - low) * (p[low + 1] - p[low])

    def _need_library_size(self, what: str) -> None:
        if not self.library_size:
            raise ValueError(f"{what} needs a likelihood built with library_size=True.")

    def dist(
        self, z: torch.Tensor, y: torch.Tensor | None = None, x: torch.Tensor | None = None
    ) -> dist.Distribution:
        r"""The distribution :math:`p(x \mid z)`, with event shape ``x_shape``; with the
        library-size offset, :math:`p(x \mid z, \ell)` with :math:`\ell` read from ``x``,
        or drawn from the training library sizes when ``x`` is ``None`` (see the class
        docstring)."""
        params = self(z, y)
        if self.library_size:
            params = self._offset(params, x)
        return self.make_dist(params)

    def _offset(self, params: torch.Tensor, x: torch.Tensor | None) -> torch.Tensor:
        r"""The decoder's output with its log-means replaced by
        :math:`\log \ell + \log \mathrm{softmax}(f(z))`."""
        n = len(self.x_shape)
        channel = self.mean_channel
        logits = params if channel is None else params.select(-n - 1, channel)
        batch = logits.shape[: logits.dim() - n]
        log_prop = logits.reshape(*batch, -1).log_softmax(-1).reshape(logits.shape)
        sizes = library_sizes(x, n) if x is not None else self.sample_library_sizes(batch)
        tiny = torch.finfo(log_prop.dtype).tiny
        log_size = sizes.to(log_prop).clamp_min(tiny).log()
        log_mean = log_prop + log_size.reshape(*log_size.shape, *(1,) * n)
        if channel is None:
            return log_mean
        parts = list(params.unbind(-n - 1))
        parts[channel] = log_mean
        shape = torch.broadcast_shapes(*(p.shape for p in parts))
        return torch.stack([p.expand(shape) for p in parts], dim=-n - 1)

    def check_data(self, x: torch.Tensor) -> None:
        check_counts(type(self).__name__, x)
        if self.library_size and x.numel():
            _check_library_sizes(library_sizes(x, len(self.x_shape)))


class PoissonLikelihood(CountLikelihood):
    r"""Independent Poisson counts, :math:`p(x \mid z) = \prod_i \mathrm{Poisson}(x_i;\
    \lambda_i)` with :math:`\log \lambda = f(z)`: the decoder outputs log-rates. For count
    data (events, words, reads) whose variance is close to their mean; overdispersed counts
    want :class:`NegativeBinomialLikelihood`. With ``library_size=True`` the rate is
    :math:`\lambda = \ell\,\mathrm{softmax}(f(z))` (:class:`CountLikelihood`).

    Counts may be integer tensors or floats holding whole numbers; anything else is refused.
    """

    part_name = "poisson"
    summary = "Poisson counts with a log-rate decoder"

    def make_dist(self, log_rate: torch.Tensor) -> dist.Distribution:
        return dist.Poisson(log_rate.clamp(max=30.0).exp()).to_event(len(self.x_shape))


class NegativeBinomialLikelihood(CountLikelihood):
    r"""Independent negative binomial counts with mean :math:`\mu = \exp f(z)` and a
    learned dispersion :math:`\theta_i > 0` per feature:

    .. math::

        p(x_i \mid z) = \frac{\Gamma(x_i + \theta_i)}{x_i!\, \Gamma(\theta_i)}
        \Big(\frac{\theta_i}{\theta_i + \mu_i}\Big)^{\theta_i}
        \Big(\frac{\mu_i}{\theta_i + \mu_i}\Big)^{x_i},
        \qquad \mathrm{Var}(x_i) = \mu_i + \mu_i^2 / \theta_i,

    the Gamma-Poisson mixture of scVI: overdispersed counts, Poisson as
    :math:`\theta \to \infty`. With ``library_size=True`` the mean is
    :math:`\mu = \ell\,\mathrm{softmax}(f(z))` (:class:`CountLikelihood`).

    :param decoder: network producing the log-means, shape ``(*batch, *x_shape)``.
    :param x_shape: shape of one data item.
    :param init_dispersion: the initial :math:`\theta` of every feature.
    :param library_size: use the library size as an offset.
    """

    part_name = "negbin"
    summary = "negative binomial counts with a learned dispersion per feature"

    def __init__(
        self,
        decoder: nn.Module,
        x_shape: Sequence[int],
        init_dispersion: float = 1.0,
        library_size: bool = False,
    ) -> None:
        super().__init__(decoder, x_shape, library_size=library_size)
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


class ZeroInflatedNegativeBinomialLikelihood(NegativeBinomialLikelihood):
    r"""A negative binomial whose zeros are inflated: with probability
    :math:`\pi_i = \sigma(g(z)_i)` the count is a structural zero, else it is drawn from
    :class:`NegativeBinomialLikelihood`'s distribution (Pyro's
    :class:`~pyro.distributions.ZeroInflatedNegativeBinomial`):

    .. math:: p(0 \mid z) = \pi + (1 - \pi)\,\mathrm{NB}(0), \qquad
        p(x \mid z) = (1 - \pi)\,\mathrm{NB}(x) \quad (x > 0).

    The decoder outputs two numbers per feature, the log-mean and the gate logit, so
    ``mlp`` and ``conv`` build decoders with output shape ``(2, *x_shape)``. With
    ``library_size=True`` the negative binomial's mean is
    :math:`\mu = \ell\,\mathrm{softmax}(f(z))` (:class:`CountLikelihood`); the gate is
    unchanged.
    """

    part_name = "zinb"
    summary = "zero-inflated negative binomial counts (learned dispersion and gate)"
    mean_channel = 0

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
