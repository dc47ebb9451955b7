r"""Amortized guides :math:`q(z \mid x)`: an encoder network plus a distribution head.

A guide is a :class:`~pyro.nn.PyroModule` with ``latent_dim`` and a ``dist(x, y=None)``
method returning a distribution with ``event_shape == (latent_dim,)`` and batch shape the
leading dimensions of ``x``. Every guide here is a :class:`Guide`: its encoder maps
``(*batch, *x_shape)`` to ``(*batch, encoder_dim)`` numbers, ``forward`` turns them into
distribution parameters and ``make_dist`` into the distribution; ``mlp`` and ``conv`` build
it with the networks of :mod:`pyro_vae.parts.nn`.

- :class:`DiagonalNormalGuide`: :math:`\mathcal{N}(\mu, \mathrm{diag}\,\sigma^2)`,
  :math:`2d` encoder outputs;
- :class:`FullCovarianceNormalGuide`: :math:`\mathcal{N}(\mu, L L^\top)` with a Cholesky
  factor :math:`L`, :math:`d(d + 3)/2` outputs;
- :class:`IAFGuide`: a Normal base plus inverse autoregressive layers conditioned on a
  context :math:`h(x)` of size :math:`c`, :math:`2d + c` outputs;
- :class:`PowerSphericalGuide`: a Power Spherical on :math:`S^{d-1}`, :math:`d + 1` outputs.

Analytic KL: diagonal and full-covariance against a (learned) diagonal Gaussian prior, and
Power Spherical against the uniform sphere prior; see :mod:`pyro_vae.parts.priors` for the table.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from pyro import distributions as dist
from pyro.distributions.transforms import ConditionalAffineAutoregressive
from pyro.nn import ConditionalAutoRegressiveNN, PyroModule
from torch import nn
from torch.nn import functional as F

from pyro_vae._checks import check_count, check_latent_dim
from pyro_vae.parts.conditional import call_net
from pyro_vae.parts.distributions import PowerSpherical
from pyro_vae.parts.nn import MLP, ConvEncoder, latent_input_scale
from pyro_vae.parts.priors import FLOW_LAYERS, _order
from pyro_vae.parts.registry import BuildSpec, Part

__all__ = [
    "DiagonalNormalGuide",
    "FullCovarianceNormalGuide",
    "Guide",
    "IAFGuide",
    "PowerSphericalGuide",
]


class Guide(Part, PyroModule):
    r"""Base class: an encoder network plus a distribution head.

    Subclasses define :meth:`encoder_dim` (how many numbers per item the encoder
    outputs), ``forward`` (numbers to parameters) and ``make_dist``.

    :param encoder: network mapping ``(*batch, *x_shape)`` to ``(*batch, encoder_dim)``.
    :param latent_dim: dimension of ``z``.
    """

    kind = "guide"
    #: the smallest latent dimension the guide supports
    min_latent_dim = 1
    #: where z lives: ``"euclidean"`` or ``"sphere"``
    latent_space = "euclidean"
    #: whether a mixture of its posteriors (the VampPrior) is a distribution
    mixable = True

    def __init__(self, encoder: nn.Module, latent_dim: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.latent_dim = check_latent_dim(latent_dim, self.min_latent_dim)

    @classmethod
    def encoder_dim(cls, latent_dim: int, **kwargs: Any) -> int:
        """The number of encoder outputs per item for this guide."""
        raise NotImplementedError

    @classmethod
    def init_output_layer(cls, layer: nn.Linear, latent_dim: int) -> None:
        """Initialize the encoder's last layer, built by :meth:`mlp` and :meth:`conv`
        (default: PyTorch's initialization, unchanged)."""

    def make_dist(self, *params: torch.Tensor) -> dist.Distribution:
        raise NotImplementedError

    def dist(self, x: torch.Tensor, y: torch.Tensor | None = None) -> dist.Distribution:
        r"""The distribution :math:`q(z \mid x)`."""
        return self.make_dist(*self(x, y))

    @property
    def input_scale(self) -> float:
        """The factor a decoder applies to this guide's ``z``
        (:func:`~pyro_vae.parts.nn.latent_input_scale`)."""
        return latent_input_scale(self.latent_dim, self.latent_space == "sphere")

    @classmethod
    def config_kwargs(cls, spec: BuildSpec) -> dict[str, Any]:
        """Constructor arguments read from the run configuration's options."""
        return {}

    @classmethod
    def from_config(cls, spec: BuildSpec) -> Guide:
        """Build the guide of a run configuration (MLP, gated MLP or convolutional
        encoder)."""
        kwargs = cls.config_kwargs(spec)
        if spec.network == "conv":
            return cls.conv(spec.latent_dim, channels=spec.x_shape[0], **kwargs)
        gated = spec.network == "gated"
        return cls.mlp(spec.x_shape, spec.latent_dim, spec.hidden_dims, gated=gated, **kwargs)

    @classmethod
    def mlp(
        cls,
        x_shape: Sequence[int],
        latent_dim: int,
        hidden_dims: Sequence[int] = (400,),
        gated: bool = False,
        **kwargs: Any,
    ) -> Guide:
        """Build the guide with an :class:`~pyro_vae.parts.nn.MLP` encoder.

        :param x_shape: shape of one data item.
        :param latent_dim: dimension of ``z``.
        :param hidden_dims: hidden widths of the encoder.
        :param gated: gated hidden layers (:class:`~pyro_vae.parts.nn.GatedLinear`).
        :param kwargs: passed to the guide's constructor (e.g. ``num_flows``).
        """
        check_latent_dim(latent_dim, cls.min_latent_dim)
        out = cls.encoder_dim(latent_dim, **kwargs)
        encoder = MLP(x_shape, hidden_dims, out, gated=gated)
        cls.init_output_layer(encoder.net[-1], latent_dim)  # type: ignore[arg-type]
        return cls(encoder, latent_dim, **kwargs)

    @classmethod
    def conv(
        cls, latent_dim: int, channels: int = 1, feature_dim: int = 256, **kwargs: Any
    ) -> Guide:
        """Build the guide with a :class:`~pyro_vae.parts.nn.ConvEncoder` (28×28 images)."""
        check_latent_dim(latent_dim, cls.min_latent_dim)
        encoder = nn.Sequential(
            ConvEncoder(feature_dim, channels),
            nn.Linear(feature_dim, cls.encoder_dim(latent_dim, **kwargs)),
        )
        cls.init_output_layer(encoder[-1], latent_dim)  # type: ignore[arg-type]
        return cls(encoder, latent_dim, **kwargs)


class DiagonalNormalGuide(Guide):
    r"""The mean-field Gaussian :math:`q(z \mid x) = \mathcal{N}(z;\ \mu(x),\
    \mathrm{diag}\,\sigma^2(x))`.

    The encoder outputs ``2 * latent_dim`` numbers per item: :math:`\mu` and a raw scale
    mapped to :math:`\sigma = \mathrm{softplus}(\cdot) + \sigma_{\min}`.

    :param encoder: network mapping ``(*batch, *x_shape)`` to ``(*batch, 2 * latent_dim)``.
    :param latent_dim: dimension of ``z``.
    :param min_scale: the floor :math:`\sigma_{\min}` that keeps the density finite.
    """

    part_name = "diagonal"
    summary = "Gaussian with a diagonal covariance"

    def __init__(self, encoder: nn.Module, latent_dim: int, min_scale: float = 1e-5) -> None:
        super().__init__(encoder, latent_dim)
        self.min_scale = float(min_scale)

    @classmethod
    def encoder_dim(cls, latent_dim: int, **kwargs: Any) -> int:
        return 2 * latent_dim

    def forward(
        self, x: torch.Tensor, y: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(loc, scale)`` for ``x`` (``y`` reaches a conditional encoder only)."""
        loc, raw = call_net(self.encoder, x, y).split(self.latent_dim, dim=-1)
        return loc, F.softplus(raw) + self.min_scale

    def make_dist(self, loc: torch.Tensor, scale: torch.Tensor) -> dist.Distribution:  # type: ignore[override]
        return dist.Normal(loc, scale).to_event(1)


class FullCovarianceNormalGuide(Guide):
    r"""A Gaussian with full covariance, :math:`q(z \mid x) = \mathcal{N}(z;\ \mu(x),\
    L(x) L(x)^\top)`.

    The encoder outputs :math:`d(d + 3)/2` numbers per item: :math:`\mu` (:math:`d`), the
    raw diagonal of the Cholesky factor (:math:`d`), mapped to
    :math:`L_{ii} = \mathrm{softplus}(\cdot) + \sigma_{\min} > 0`, and the strictly lower
    triangle of :math:`L` (:math:`d(d-1)/2`, unconstrained). Reparameterized sampling is
    :math:`z = \mu + L \varepsilon`; the KL against a diagonal Gaussian prior is analytic.

    :param encoder: network mapping ``(*batch, *x_shape)`` to ``(*batch, d(d+3)/2)``.
    :param latent_dim: dimension :math:`d` of ``z``.
    :param min_scale: the floor :math:`\sigma_{\min}` on the diagonal of :math:`L`.
    """

    part_name = "fullcov"
    summary = "Gaussian with a full covariance (Cholesky factor)"

    def __init__(self, encoder: nn.Module, latent_dim: int, min_scale: float = 1e-5) -> None:
        super().__init__(encoder, latent_dim)
        self.min_scale = float(min_scale)
        rows, cols = torch.tril_indices(latent_dim, latent_dim, offset=-1)
        self.register_buffer("_rows", rows, persistent=False)
        self.register_buffer("_cols", cols, persistent=False)

    @classmethod
    def encoder_dim(cls, latent_dim: int, **kwargs: Any) -> int:
        return latent_dim * (latent_dim + 3) // 2

    @classmethod
    def init_output_layer(cls, layer: nn.Linear, latent_dim: int) -> None:
        """Zero the outputs of the strictly lower triangle, so that a fresh guide is the
        diagonal Gaussian and learns correlations from there. (With PyTorch's default
        initialization the :math:`i`-th row of :math:`L` starts with :math:`i - 1` random
        entries, and the variance of :math:`z_i` grows with :math:`i`.)"""
        with torch.no_grad():
            layer.weight[2 * latent_dim :].zero_()
            layer.bias[2 * latent_dim :].zero_()

    def forward(
        self, x: torch.Tensor, y: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(loc, scale_tril)`` of shapes ``(*batch, d)`` and ``(*batch, d, d)``."""
        d = self.latent_dim
        loc, raw_diag, lower = call_net(self.encoder, x, y).split([d, d, d * (d - 1) // 2], dim=-1)
        strict = lower.new_zeros(*lower.shape[:-1], d, d)
        strict[..., self._rows, self._cols] = lower
        return loc, strict + torch.diag_embed(F.softplus(raw_diag) + self.min_scale)

    def make_dist(self, loc: torch.Tensor, scale_tril: torch.Tensor) -> dist.Distribution:  # type: ignore[override]
        return dist.MultivariateNormal(loc, scale_tril=scale_tril)


class IAFGuide(Guide):
    r"""An amortized inverse autoregressive flow (Kingma et al., 2016) [1] conditioned on
    :math:`x`:

    .. math::

        z_0 = \mu(x) + \sigma(x) \odot \varepsilon, \qquad
        z_k = f_k(z_{k-1};\ h(x)), \qquad
        \log q(z_K \mid x) = \log \mathcal{N}(z_0; \mu, \sigma^2)
        - \sum_{k=1}^K \log\left|\det \frac{\partial f_k}{\partial z_{k-1}}\right|.

    Each :math:`f_k` is a :class:`~pyro.distributions.transforms.ConditionalAffineAutoregressive`
    layer (the numerically stable sigmoid-gated form of [1]) whose MADE conditioner also
    takes the context :math:`h(x)`, a further ``context_dim`` outputs of the encoder: the
    flow itself depends on the input, not only its base. The variable order is reversed
    from one layer to the next. Sampling costs one pass per layer, and the density of the
    sample just drawn is read from the transforms' cache (scoring an arbitrary point inverts
    the layers, :math:`d` passes each). ``dist(x)`` returns a
    :class:`~pyro.distributions.TransformedDistribution` over
    ``Normal(loc, scale).to_event(1)``. No KL against it is analytic.

    :param encoder: network mapping ``(*batch, *x_shape)`` to
        ``(*batch, 2 * latent_dim + context_dim)``.
    :param latent_dim: dimension :math:`d` of ``z``.
    :param num_flows: the number :math:`K` of autoregressive layers.
    :param context_dim: size of :math:`h(x)` (default ``2 * latent_dim``).
    :param flow_hidden_dims: hidden widths of each conditioner (default ``(4 * latent_dim,)``).
    :param min_scale: the floor on the base scale :math:`\sigma`.

    1. D. P. Kingma, T. Salimans, R. Jozefowicz, X. Chen, I. Sutskever, M. Welling,
       *Improved variational inference with inverse autoregressive flow*, NeurIPS 2016.
    """

    part_name = "iaf"
    summary = "Gaussian through --flow-layers IAF layers conditioned on x"
    options = (FLOW_LAYERS,)
    mixable = False

    @classmethod
    def config_kwargs(cls, spec: BuildSpec) -> dict[str, Any]:
        return {"num_flows": spec.option("flow_layers")}

    min_latent_dim = 2

    def __init__(
        self,
        encoder: nn.Module,
        latent_dim: int,
        num_flows: int = 2,
        context_dim: int | None = None,
        flow_hidden_dims: Sequence[int] | None = None,
        min_scale: float = 1e-5,
    ) -> None:
        super().__init__(encoder, latent_dim)
        check_count("num_flows", num_flows)
        self.context_dim = check_count(
            "context_dim", 2 * latent_dim if context_dim is None else context_dim
        )
        self.min_scale = float(min_scale)
        hidden = list(flow_hidden_dims or (4 * latent_dim,))
        self.flows = nn.ModuleList(
            ConditionalAffineAutoregressive(
                ConditionalAutoRegressiveNN(
                    latent_dim,
                    self.context_dim,
                    hidden,
                    permutation=_order(latent_dim, k),  # type: ignore[arg-type]
                ),
                stable=True,
            )
            for k in range(num_flows)
        )

    @classmethod
    def encoder_dim(cls, latent_dim: int, context_dim: int | None = None, **kwargs: Any) -> int:
        return 2 * latent_dim + (2 * latent_dim if context_dim is None else context_dim)

    def forward(
        self, x: torch.Tensor, y: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return ``(loc, scale, context)`` for ``x``."""
        d = self.latent_dim
        loc, raw, context = call_net(self.encoder, x, y).split([d, d, self.context_dim], dim=-1)
        return loc, F.softplus(raw) + self.min_scale, context

    def make_dist(  # type: ignore[override]
        self, loc: torch.Tensor, scale: torch.Tensor, context: torch.Tensor
    ) -> dist.Distribution:
        base = dist.Normal(loc, scale).to_event(1)
        return dist.TransformedDistribution(base, [f.condition(context) for f in self.flows])  # type: ignore[operator]


class PowerSphericalGuide(Guide):
    r"""A Power Spherical posterior on the unit sphere :math:`S^{d-1}` (De Cao & Aziz,
    2020), for the hyperspherical VAE with :class:`~pyro_vae.parts.priors.UniformSpherePrior`.

    The encoder outputs :math:`d + 1` numbers per item: a direction, normalized to the mean
    direction :math:`\mu(x)`, and a raw concentration :math:`r` mapped on the log scale to
    :math:`\kappa(x) = \kappa_{\min} + \kappa_0 e^{r}` (:math:`r` clamped at 20). Sampling
    is reparameterized and the KL against the uniform prior is analytic
    (:class:`~pyro_vae.parts.distributions.PowerSpherical`); neither uses Bessel functions.

    The scale :math:`\kappa_0` (default :math:`10 d`) sets the concentration of a fresh
    encoder, whose outputs are near 0: a mean resultant length
    :math:`\mathbb{E}[\mu^\top z] = \kappa / (\kappa + d - 1) \approx 0.9` in any
    dimension, and the log scale keeps the gradient in :math:`r` well conditioned over
    many orders of magnitude of :math:`\kappa`.

    Posterior collapse: the KL to the uniform prior grows like
    :math:`\frac{d-1}{2} \log \kappa`, and unlike a Gaussian's mean, the direction
    carries no information once :math:`\kappa \ll d`. A point on :math:`S^{d-1}` has
    coordinates of variance :math:`1/d`, so a decoder fed :math:`z` as it is learns to
    read it slowly and the KL wins, collapsing the posterior to the prior. Give the decoder
    the input scale :math:`\sqrt{d}` (``input_scale`` of the likelihood's
    ``mlp``/``conv``, from :func:`~pyro_vae.parts.nn.latent_input_scale`; the guide declares
    it as :attr:`Guide.input_scale`), as the run builder does. The measured effect is in
    the README's parts results (``benchmarks/parts.py``).

    :param encoder: network mapping ``(*batch, *x_shape)`` to ``(*batch, latent_dim + 1)``.
    :param latent_dim: the ambient dimension :math:`d \ge 2`.
    :param min_concentration: the floor :math:`\kappa_{\min} \ge 0` of the concentration.
    :param init_concentration: :math:`\kappa_0 > 0`; default ``10 * latent_dim``.
    """

    part_name = "powerspherical"
    summary = "Power Spherical on the unit sphere (for --prior sphere or vamp)"
    latent_space = "sphere"

    min_latent_dim = 2

    def __init__(
        self,
        encoder: nn.Module,
        latent_dim: int,
        min_concentration: float = 0.0,
        init_concentration: float | None = None,
    ) -> None:
        if isinstance(latent_dim, int) and not isinstance(latent_dim, bool) and latent_dim < 2:
            raise ValueError(
                f"PowerSphericalGuide needs latent_dim >= 2 (the sphere S^(d-1) in R^d), "
                f"got {latent_dim}; use e.g. latent_dim=20."
            )
        super().__init__(encoder, latent_dim)
        if not min_concentration >= 0:
            raise ValueError(f"min_concentration must be >= 0, got {min_concentration!r}.")
        self.min_concentration = float(min_concentration)
        init = 10.0 * latent_dim if init_concentration is None else init_concentration
        if not init > 0:
            raise ValueError(f"init_concentration must be > 0, got {init_concentration!r}.")
        self.init_concentration = float(init)

    @classmethod
    def encoder_dim(cls, latent_dim: int, **kwargs: Any) -> int:
        return latent_dim + 1

    def forward(
        self, x: torch.Tensor, y: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(loc, concentration)``: unit vectors ``(*batch, d)`` and ``(*batch,)``."""
        direction, raw = call_net(self.encoder, x, y).split([self.latent_dim, 1], dim=-1)
        loc = direction / direction.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        scale = torch.exp(raw.squeeze(-1).clamp(max=20.0))
        return loc, self.min_concentration + self.init_concentration * scale

    def make_dist(self, loc: torch.Tensor, concentration: torch.Tensor) -> dist.Distribution:  # type: ignore[override]
        return PowerSpherical(loc, concentration)
