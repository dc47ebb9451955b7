r"""Distributions that Pyro and torch do not ship, and the KL divergences between them.

- :class:`PowerSpherical` (De Cao & Aziz, 2020) [1]: a reparameterized distribution on the
  unit sphere :math:`S^{d-1}`, with closed-form normalizer and entropy (no Bessel
  functions, unlike the von Mises-Fisher), stable for large :math:`d` and concentration.
  Pyro's :class:`~pyro.distributions.ProjectedNormal` scores only :math:`d \le 4` and
  has no KL divergence, so it does not fit a latent space of dimension up to 64.
- :class:`HypersphericalUniform`: the uniform distribution on :math:`S^{d-1}`.
- :class:`DiscretizedLogistic` (Salimans et al., 2017) [2]: a logistic density integrated
  over the 256 bins of 8-bit pixel values, a proper discrete likelihood.
- :class:`IndependentBernoulli`: ``Bernoulli(logits).to_event(n)`` whose ``log_prob`` is
  :math:`x^\top \ell - \sum_i \mathrm{softplus}(\ell_i)` when ``x`` is broadcast
  against particles: two passes over the logits instead of an elementwise
  cross-entropy on the broadcast ``x``.
- :class:`DiagonalNormalMixture`: :class:`~pyro.distributions.MixtureSameFamily` of
  diagonal Gaussians whose ``log_prob`` is one matrix product instead of a
  ``(..., K, d)`` broadcast, for mixtures with many components (the VampPrior).

Importing this module registers with :func:`torch.distributions.kl.register_kl`:

- ``KL(PowerSpherical || HypersphericalUniform)`` in closed form, so
  :class:`~pyro.infer.TraceMeanField_ELBO` uses the analytic KL for the hyperspherical VAE;
- ``KL(MultivariateNormal || Independent(Normal, 1))`` (a full-covariance guide against a
  diagonal Gaussian prior), which torch and Pyro do not register in this direction.

References:

1. N. De Cao, W. Aziz, *The Power Spherical distribution*, ICML INNF+ workshop 2020,
   arXiv:2006.04437.
2. T. Salimans, A. Karpathy, X. Chen, D. P. Kingma, *PixelCNN++: Improving the PixelCNN
   with discretized logistic mixture likelihood and other modifications*, ICLR 2017.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from pyro.distributions import (
    Bernoulli,
    MixtureSameFamily,
    TorchDistribution,
    constraints,
)
from pyro.distributions import Independent as PyroIndependent
from torch.distributions import Gamma, Independent, MultivariateNormal, Normal, kl_divergence
from torch.distributions.kl import register_kl
from torch.nn import functional as F

__all__ = [
    "DiagonalNormalMixture",
    "DiscretizedLogistic",
    "HypersphericalUniform",
    "IndependentBernoulli",
    "PowerSpherical",
    "log_sphere_area",
]


def log_sphere_area(dim: int) -> float:
    r"""Log surface area of the unit sphere :math:`S^{d-1} \subset \mathbb{R}^d`:

    .. math:: \log |S^{d-1}| = \log 2 + \tfrac{d}{2} \log \pi - \log \Gamma(d/2).
    """
    return math.log(2.0) + 0.5 * dim * math.log(math.pi) - math.lgamma(0.5 * dim)


def _check_sphere_dim(dim: int) -> int:
    if not isinstance(dim, int) or isinstance(dim, bool) or dim < 2:
        raise ValueError(
            f"A hyperspherical latent needs dimension >= 2 (the sphere S^(d-1) in R^d), got "
            f"{dim!r}; use latent_dim >= 2."
        )
    return dim


class PowerSpherical(TorchDistribution):
    r"""The Power Spherical distribution on :math:`S^{d-1}` [1]:

    .. math::

        p(z;\ \mu, \kappa) = \frac{(1 + \mu^\top z)^\kappa}{N(\kappa, d)}, \qquad
        N(\kappa, d) = 2^{\alpha + \beta}\, \pi^\beta\,
        \frac{\Gamma(\alpha)}{\Gamma(\alpha + \beta)},

    with :math:`\alpha = \frac{d - 1}{2} + \kappa` and :math:`\beta = \frac{d - 1}{2}`.
    A sample is :math:`t = \mu^\top z` with :math:`\frac{1 + t}{2} \sim
    \mathrm{Beta}(\alpha, \beta)`, a uniform direction :math:`v` on :math:`S^{d-2}`, and a
    Householder reflection taking :math:`e_1` to :math:`\mu`. The Beta variable is drawn as
    :math:`X / (X + Y)` from two reparameterized Gamma draws, so :math:`1 - t^2 =
    4XY / (X + Y)^2` keeps full precision when :math:`\kappa` is large.

    :param loc: the mean direction :math:`\mu`, unit vectors of shape ``(*batch, d)``.
    :param concentration: :math:`\kappa \ge 0`, shape ``batch`` (broadcastable).
    """

    arg_constraints: ClassVar[dict] = {
        "loc": constraints.sphere,
        "concentration": constraints.nonnegative,
    }
    support = constraints.sphere
    has_rsample = True

    def __init__(
        self,
        loc: torch.Tensor,
        concentration: torch.Tensor | float,
        validate_args: bool | None = None,
    ) -> None:
        dim = _check_sphere_dim(loc.shape[-1])
        concentration = torch.as_tensor(concentration, dtype=loc.dtype, device=loc.device)
        batch_shape = torch.broadcast_shapes(loc.shape[:-1], concentration.shape)
        self.loc = loc.expand(*batch_shape, dim)
        self.concentration = concentration.expand(batch_shape)
        super().__init__(batch_shape, torch.Size([dim]), validate_args=validate_args)

    @property
    def _alpha(self) -> torch.Tensor:
        return 0.5 * (self.event_shape[0] - 1) + self.concentration

    @property
    def _beta(self) -> float:
        return 0.5 * (self.event_shape[0] - 1)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(PowerSpherical, _instance)
        batch_shape = torch.Size(batch_shape)
        new.loc = self.loc.expand(*batch_shape, self.event_shape[0])
        new.concentration = self.concentration.expand(batch_shape)
        super(PowerSpherical, new).__init__(batch_shape, self.event_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    def rsample(self, sample_shape: torch.Size | list[int] | tuple[int, ...] = ()) -> torch.Tensor:
        sample_shape = torch.Size(sample_shape)
        dim = self.event_shape[0]
        shape = sample_shape + self.batch_shape
        alpha = self._alpha.expand(shape)
        x = Gamma(alpha, torch.ones_like(alpha)).rsample()
        y = Gamma(torch.full_like(alpha, self._beta), torch.ones_like(alpha)).rsample()
        total = x + y
        t = (x - y) / total
        sin = 2.0 * torch.sqrt(x * y) / total
        v = torch.randn(*shape, dim - 1, dtype=self.loc.dtype, device=self.loc.device)
        v = v / v.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(v.dtype).tiny)
        w = torch.cat([t.unsqueeze(-1), sin.unsqueeze(-1) * v], dim=-1)
        e1 = torch.zeros_like(self.loc)
        e1[..., 0] = 1.0
        u = e1 - self.loc
        u = u / u.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        z = w - 2.0 * (w * u).sum(-1, keepdim=True) * u
        return z / z.norm(dim=-1, keepdim=True)

    def log_normalizer(self) -> torch.Tensor:
        r""":math:`\log N(\kappa, d)`, shape ``batch_shape``. Computed in float64:
        :math:`\log\Gamma(\alpha) - \log\Gamma(\alpha + \beta)` is a small difference of
        large numbers when :math:`\kappa` is large."""
        return self._log_normalizer64().to(self.loc.dtype)

    def _log_normalizer64(self) -> torch.Tensor:
        alpha, beta = self._alpha.double(), self._beta
        return (
            (alpha + beta) * math.log(2.0)
            + beta * math.log(math.pi)
            + torch.lgamma(alpha)
            - torch.lgamma(alpha + beta)
        )

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        dot = (self.loc * value).sum(-1).clamp(-1.0, 1.0).double()
        log_prob = torch.xlogy(self.concentration.double(), 1.0 + dot) - self._log_normalizer64()
        return log_prob.to(self.loc.dtype)  # float64 inside: two large terms nearly cancel

    def entropy(self) -> torch.Tensor:
        r""":math:`H = \log N(\kappa, d) - \kappa\,(\log 2 + \psi(\alpha) -
        \psi(\alpha + \beta))`, computed in float64 like :meth:`log_normalizer`."""
        alpha, beta = self._alpha.double(), self._beta
        mean_log = math.log(2.0) + torch.digamma(alpha) - torch.digamma(alpha + beta)
        entropy = self._log_normalizer64() - self.concentration.double() * mean_log
        return entropy.to(self.loc.dtype)

    @property
    def mean_resultant_length(self) -> torch.Tensor:
        r""":math:`\mathbb{E}[\mu^\top z] = (\alpha - \beta) / (\alpha + \beta)`."""
        return (self._alpha - self._beta) / (self._alpha + self._beta)

    @property
    def mean(self) -> torch.Tensor:
        return self.mean_resultant_length.unsqueeze(-1) * self.loc

    @property
    def mode(self) -> torch.Tensor:
        return self.loc


class HypersphericalUniform(TorchDistribution):
    r"""The uniform distribution on the unit sphere :math:`S^{d-1} \subset \mathbb{R}^d`,
    with density :math:`1 / |S^{d-1}|` (see :func:`log_sphere_area`).

    :param dim: the ambient dimension :math:`d \ge 2`.
    :param batch_shape: batch shape of the distribution.
    :param dtype: floating dtype of samples and densities.
    :param device: device of samples and densities.
    """

    arg_constraints: ClassVar[dict] = {}
    support = constraints.sphere
    has_rsample = True

    def __init__(
        self,
        dim: int,
        batch_shape: torch.Size | tuple[int, ...] = (),
        *,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
        validate_args: bool | None = None,
    ) -> None:
        _check_sphere_dim(dim)
        self._dtype, self._device = dtype, device
        super().__init__(torch.Size(batch_shape), torch.Size([dim]), validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(HypersphericalUniform, _instance)
        new._dtype, new._device = self._dtype, self._device
        super(HypersphericalUniform, new).__init__(
            torch.Size(batch_shape), self.event_shape, validate_args=False
        )
        new._validate_args = self._validate_args
        return new

    def rsample(self, sample_shape: torch.Size | list[int] | tuple[int, ...] = ()) -> torch.Tensor:
        shape = self._extended_shape(torch.Size(sample_shape))
        v = torch.randn(shape, dtype=self._dtype, device=self._device)
        return v / v.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(v.dtype).tiny)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        shape = torch.broadcast_shapes(value.shape[:-1], self.batch_shape)
        return value.new_full(shape, -log_sphere_area(self.event_shape[0]))

    def entropy(self) -> torch.Tensor:
        return torch.full(
            self.batch_shape,
            log_sphere_area(self.event_shape[0]),
            dtype=self._dtype,
            device=self._device,
        )

    @property
    def mean(self) -> torch.Tensor:
        return torch.zeros(self._extended_shape(), dtype=self._dtype, device=self._device)


@register_kl(PowerSpherical, HypersphericalUniform)
def _kl_powerspherical_uniform(p: PowerSpherical, q: HypersphericalUniform) -> torch.Tensor:
    if p.event_shape != q.event_shape:
        raise ValueError(
            f"KL between spheres of different dimension: {p.event_shape} vs {q.event_shape}."
        )
    kl = log_sphere_area(p.event_shape[0]) - p.entropy()
    return kl.expand(torch.broadcast_shapes(p.batch_shape, q.batch_shape))


@register_kl(MultivariateNormal, Independent)
def _kl_mvn_diagonal_normal(p: MultivariateNormal, q: Independent) -> torch.Tensor:
    if not isinstance(q.base_dist, Normal) or q.reinterpreted_batch_ndims != 1:
        raise NotImplementedError
    base = q.base_dist
    diag = MultivariateNormal(base.loc, scale_tril=torch.diag_embed(base.scale))
    return kl_divergence(p, diag)


class DiscretizedLogistic(TorchDistribution):
    r"""A logistic density integrated over the bins of :math:`K`-level data (``num_bins=256``
    for 8-bit images), after Salimans et al. (2017) [2].

    Values lie on the grid :math:`x_k = k / (K - 1)`, :math:`k = 0, \dots, K - 1`. With the
    half bin width :math:`h = 1 / (2 (K - 1))` and :math:`F` the logistic CDF,

    .. math::

        P(x_k) = \begin{cases}
            F(h) & k = 0, \\
            F(x_k + h) - F(x_k - h) & 0 < k < K - 1, \\
            1 - F(1 - h) & k = K - 1,
        \end{cases}

    so the edge bins take all the mass outside :math:`[0, 1]` and the probabilities sum to 1.
    The interior difference is computed without cancellation as
    :math:`\log\sigma(a) + \log\sigma(-b) + \log(1 - e^{-2h/s})`, with
    :math:`a = (x + h - \mu)/s` and :math:`b = (x - h - \mu)/s`.

    :param loc: the location :math:`\mu` of the logistic, per element.
    :param scale: its scale :math:`s > 0`.
    :param num_bins: the number of levels :math:`K`.
    """

    arg_constraints: ClassVar[dict] = {"loc": constraints.real, "scale": constraints.positive}
    support = constraints.unit_interval
    has_rsample = False

    def __init__(
        self,
        loc: torch.Tensor,
        scale: torch.Tensor,
        num_bins: int = 256,
        validate_args: bool | None = None,
    ) -> None:
        if not isinstance(num_bins, int) or num_bins < 2:
            raise ValueError(f"num_bins must be an integer >= 2, got {num_bins!r}.")
        self.loc, self.scale = torch.broadcast_tensors(loc, scale)
        self.num_bins = num_bins
        super().__init__(self.loc.shape, validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(DiscretizedLogistic, _instance)
        batch_shape = torch.Size(batch_shape)
        new.loc = self.loc.expand(batch_shape)
        new.scale = self.scale.expand(batch_shape)
        new.num_bins = self.num_bins
        super(DiscretizedLogistic, new).__init__(batch_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    @property
    def half_width(self) -> float:
        return 0.5 / (self.num_bins - 1)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        h = self.half_width
        a = (value + h - self.loc) / self.scale
        b = (value - h - self.loc) / self.scale
        interior = F.logsigmoid(a) + F.logsigmoid(-b) + torch.log(-torch.expm1(-2 * h / self.scale))
        out = torch.where(value < h, F.logsigmoid(a), interior)
        return torch.where(value > 1 - h, F.logsigmoid(-b), out)

    def sample(self, sample_shape: torch.Size | list[int] | tuple[int, ...] = ()) -> torch.Tensor:
        shape = self._extended_shape(torch.Size(sample_shape))
        with torch.no_grad():
            u = torch.rand(shape, dtype=self.loc.dtype, device=self.loc.device)
            u = u.clamp(1e-6, 1 - 1e-6)
            y = self.loc + self.scale * (torch.log(u) - torch.log1p(-u))
            k = torch.round(y * (self.num_bins - 1)).clamp(0, self.num_bins - 1)
            return k / (self.num_bins - 1)

    @property
    def mean(self) -> torch.Tensor:
        r""":math:`\mathbb{E}[x] = \frac{1}{K-1} \sum_{k=1}^{K-1} P(x \ge x_k)`, summed one
        bin boundary at a time to keep memory at the size of ``loc``."""
        total = torch.zeros_like(self.loc)
        for k in range(1, self.num_bins):
            edge = (k - 0.5) / (self.num_bins - 1)
            total = total + torch.sigmoid((self.loc - edge) / self.scale)
        return total / (self.num_bins - 1)


class DiagonalNormalMixture(MixtureSameFamily):
    r"""A mixture of :math:`K` diagonal Gaussians,
    :math:`p(z) = \sum_k \pi_k \mathcal{N}(z;\ \mu_k, \mathrm{diag}\,\sigma_k^2)`, with a
    ``log_prob`` computed as one matrix product.

    :class:`~pyro.distributions.MixtureSameFamily` scores ``M`` points by broadcasting
    them against the components, an ``(M, K, d)`` tensor that is memory-bound for large
    :math:`K` (the VampPrior's 500 components at :math:`K_{IS} = 5000` importance samples
    per test image). Expanding the square,

    .. math::

        \sum_j \frac{(z_j - \mu_{kj})^2}{\sigma_{kj}^2}
        = [z^2, z] \cdot [\sigma_k^{-2}, -2 \mu_k \sigma_k^{-2}]
        + \sum_j \mu_{kj}^2 \sigma_{kj}^{-2},

    the component log densities of all points are one ``(M, 2d) @ (2d, K)`` product.
    Sampling, ``mean``, ``variance`` and the rest are those of
    :class:`~pyro.distributions.MixtureSameFamily`. The fast path applies when the
    component parameters are shared by the whole batch (shape ``(K, d)``, possibly
    expanded, as for a prior); otherwise ``log_prob`` falls back to the broadcast.

    :param mixture_distribution: a :class:`~pyro.distributions.Categorical` over the
        :math:`K` components.
    :param component_distribution: ``Normal(loc, scale).to_event(1)`` with batch shape
        ``(K,)`` (or ``(*batch, K)``) and event shape ``(d,)``.
    """

    def __init__(
        self,
        mixture_distribution: torch.distributions.Categorical,
        component_distribution: torch.distributions.Distribution,
        validate_args: bool | None = None,
    ) -> None:
        if not self.accepts(component_distribution):
            raise ValueError(
                "DiagonalNormalMixture needs Normal(loc, scale).to_event(1) components; "
                "use MixtureSameFamily for other component families."
            )
        super().__init__(mixture_distribution, component_distribution, validate_args)

    @staticmethod
    def accepts(components: torch.distributions.Distribution) -> bool:
        """Whether ``components`` is ``Normal(loc, scale).to_event(1)``, the family this
        mixture takes."""
        return (
            isinstance(components, Independent)
            and isinstance(components.base_dist, Normal)
            and components.reinterpreted_batch_ndims == 1
        )

    def expand(
        self, batch_shape: torch.Size, _instance: DiagonalNormalMixture | None = None
    ) -> DiagonalNormalMixture:
        """Expand to ``batch_shape``, keeping the fast ``log_prob``."""
        new = self._get_checked_instance(DiagonalNormalMixture, _instance)
        return super().expand(batch_shape, _instance=new)

    @staticmethod
    def _shared(t: torch.Tensor, keep: int) -> torch.Tensor | None:
        """The ``keep``-dimensional tensor behind an expanded one, or None."""
        while t.dim() > keep:
            if t.stride(0) != 0 and t.shape[0] != 1:
                return None
            t = t[0]
        return t

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        base = self.component_distribution.base_dist
        loc, scale = self._shared(base.loc, 2), self._shared(base.scale, 2)
        logits = self._shared(self.mixture_distribution.logits, 1)
        if loc is None or scale is None or logits is None:
            return super().log_prob(value)
        d = loc.shape[-1]
        # Centre on the mean component: smaller terms, less cancellation in float32.
        centre = loc.mean(0).detach()
        loc, value = loc - centre, value - centre
        prec = scale.pow(-2)
        weights = torch.cat([prec, -2.0 * loc * prec], dim=-1)  # (K, 2d)
        const = (
            (loc.pow(2) * prec).sum(-1) + 2.0 * scale.log().sum(-1) + d * math.log(2.0 * math.pi)
        )  # (K,)
        flat = value.reshape(-1, d)
        quad = torch.cat([flat.pow(2), flat], dim=-1) @ weights.T  # (M, K)
        comp_lp = -0.5 * (quad + const)
        lp = torch.logsumexp(comp_lp + torch.log_softmax(logits, -1), dim=-1)
        lp = lp.reshape(value.shape[:-1])
        return lp.expand(torch.broadcast_shapes(lp.shape, self.batch_shape))


class IndependentBernoulli(PyroIndependent):
    r"""Independent Bernoulli pixels, ``Bernoulli(logits=l).to_event(n)``, whose
    log-density is fast when the data are broadcast against many particles:

    .. math::

        \log p(x \mid \ell) = \sum_i \big[x_i \ell_i - \log(1 + e^{\ell_i})\big]
        = x^\top \ell - \sum_i \mathrm{softplus}(\ell_i).

    :class:`~pyro.distributions.Bernoulli` computes an elementwise binary cross-entropy on
    ``x`` broadcast to the logits' shape (multiply, log-sigmoid, negate, subtract, then
    sum). When ``x`` has fewer batch dimensions than the logits (``K`` particles of each
    example, as in importance sampling and IWAE), this class uses the formula above
    instead: one pass for :math:`\sum_i \mathrm{softplus}(\ell_i)` and, without
    gradients, one batched matrix product for :math:`x^\top \ell` (with gradients, a
    product and a sum, whose backward is cheaper), which is the faster of the two for
    that shape (``benchmarks/eval_speed.py`` measures it). When ``x`` has the logits'
    shape (plain training) the cross-entropy is kept. Everything else
    (sampling, ``mean``, ``support``, ``expand``) is that of
    :class:`~pyro.distributions.Independent`.

    :param base_distribution: a :class:`~pyro.distributions.Bernoulli` (built from logits
        or probabilities).
    :param reinterpreted_batch_ndims: the number :math:`n` of event dimensions.
    """

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        base = self.base_dist
        if not isinstance(base, Bernoulli) or value.shape == base.batch_shape:
            return super().log_prob(value)
        if self._validate_args:
            self._validate_sample(value)
        n = self.reinterpreted_batch_ndims
        logits = base.logits
        size = math.prod(logits.shape[logits.dim() - n :])
        flat_l = logits.reshape(*logits.shape[: logits.dim() - n], size)
        flat_x = value.reshape(*value.shape[: value.dim() - n], size).to(flat_l.dtype)
        if torch.is_grad_enabled() and flat_l.requires_grad:
            dot = (flat_l * flat_x).sum(-1)
        else:
            dot = torch.einsum("...d,...d->...", flat_l, flat_x)
        return dot - F.softplus(flat_l).sum(-1)
