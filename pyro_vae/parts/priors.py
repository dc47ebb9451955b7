r"""Priors :math:`p(z)` over the latent code.

A prior is a :class:`~pyro.nn.PyroModule` with ``latent_dim`` and a ``dist(y=None)`` method
that returns a distribution with ``event_shape == (latent_dim,)``. The VAE samples site
``"z"`` from it inside plate ``"data"``, which broadcasts it over the batch. Learned priors
hold their parameters as module parameters, so :func:`~pyro_vae.fit` (a torch optimizer
over every module parameter) trains them jointly with the encoder and decoder.

Which prior x guide pairs have an analytic KL, as
:func:`torch.distributions.kl_divergence` dispatches them (and hence
:class:`~pyro.infer.TraceMeanField_ELBO`, which otherwise falls back to the one-sample
Monte Carlo estimate :math:`\log q(z \mid x) - \log p(z)`):

======================== ============ ============ ======== ===============
prior                    diagonal     full-cov     IAF      Power Spherical
======================== ============ ============ ======== ===============
StandardNormalPrior      analytic     analytic     MC       refused
LearnedNormalPrior       analytic     analytic     MC       refused
MixtureOfGaussiansPrior  MC           MC           MC       refused
VampPrior                MC           MC           refused  MC
FlowPrior                MC           MC           MC       refused
UniformSpherePrior       refused      refused      refused  analytic
======================== ============ ============ ======== ===============

"refused": a Euclidean guide's samples are off the sphere (under validation the sphere
prior rejects them) and a sphere guide's density is with respect to the surface measure,
not Lebesgue measure on :math:`\mathbb{R}^d`, so the "ELBO" of such a pair bounds nothing;
the CLI refuses these pairs with the fix. :class:`VampPrior` raises a ``ValueError`` for
the IAF guide: a mixture needs components with a plain batch dimension, and the flow's
transforms hold one context per input. The full-covariance KL against a diagonal Gaussian
and the Power Spherical KL against the uniform sphere are registered in
:mod:`pyro_vae.parts.distributions`; ``tests/test_priors.py`` checks this table.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from pyro import distributions as dist
from pyro.distributions import constraints
from pyro.distributions.transforms import AffineAutoregressive
from pyro.nn import AutoRegressiveNN, PyroModule, PyroParam
from torch import nn

from pyro_vae._checks import check_count, check_latent_dim
from pyro_vae.parts.distributions import DiagonalNormalMixture, HypersphericalUniform
from pyro_vae.parts.registry import BuildSpec, Option, Part, registered

__all__ = [
    "FlowPrior",
    "LearnedNormalPrior",
    "MixtureOfGaussiansPrior",
    "Prior",
    "StandardNormalPrior",
    "UniformSpherePrior",
    "VampPrior",
]


COMPONENTS = Option(
    "components", int, 10, "mixture components (mog), pseudo-inputs (vamp)", minimum=1
)
FLOW_LAYERS = Option(
    "flow_layers", int, 2, "autoregressive layers of a flow (flow prior, iaf guide)", minimum=1
)


class Prior(Part, PyroModule):
    r"""Base class of priors :math:`p(z)`: ``forward(y)`` returns the distribution's
    parameters, ``make_dist(*params)`` the distribution, and :meth:`dist` chains the two.

    Declared facts (class attributes), read by the run builder and the contract tests:

    - ``latent_space``: ``"euclidean"`` (a density on :math:`\mathbb{R}^d`), ``"sphere"``
      (a density on :math:`S^{d-1}`) or ``"guide"`` (whatever the guide's is, e.g. a
      mixture of the guide's own posteriors);
    - ``needs_mixable_guide``: the prior mixes the guide's posteriors, so the guide must
      declare ``mixable``.

    A subclass that sets ``part_name`` is registered (see :mod:`pyro_vae.parts.registry`).
    """

    kind = "prior"
    latent_space: str = "euclidean"
    needs_mixable_guide: bool = False
    latent_dim: int

    def forward(self, y: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        raise NotImplementedError

    def make_dist(self, *params: torch.Tensor) -> dist.Distribution:
        raise NotImplementedError

    def dist(self, y: torch.Tensor | None = None) -> dist.Distribution:
        """The distribution :math:`p(z)`, with event shape ``(latent_dim,)``."""
        return self.make_dist(*self(y))

    @classmethod
    def from_config(cls, spec: BuildSpec, guide: nn.Module) -> Prior:
        """Build the prior of a run configuration; ``guide`` is the run's guide part."""
        return cls(spec.latent_dim)  # type: ignore[arg-type]

    @classmethod
    def check_guide(cls, guide_cls: type[Any]) -> None:
        """Raise :class:`ValueError` naming the fix if the pair's ELBO would not be a bound:
        the guide's samples must live where this prior has a density."""
        guide_space = getattr(guide_cls, "latent_space", "euclidean")
        space = guide_space if cls.latent_space == "guide" else cls.latent_space
        if guide_space != space:
            raise ValueError(
                f"--prior {cls.part_name} cannot be paired with --guide {guide_cls.part_name}: "
                f"the prior has a density on the {_SPACES[space]}, but the guide puts z on the "
                f"{_SPACES[guide_space]}, so the ELBO of this pair bounds nothing. Choose a "
                f"guide on the {_SPACES[space]} ({', '.join(_guides_on(space))}) or another "
                "prior."
            )
        if cls.needs_mixable_guide and not getattr(guide_cls, "mixable", True):
            raise ValueError(
                f"--prior {cls.part_name} cannot use --guide {guide_cls.part_name}: the prior "
                "mixes the guide's posteriors, and a mixture of these is not a distribution "
                f"here; choose a guide with mixable posteriors ({', '.join(_mixable())})."
            )


_SPACES = {"euclidean": "Euclidean space R^d", "sphere": "unit sphere S^(d-1)"}


def _mixable() -> list[str]:
    return [n for n, c in registered("guide").items() if c.mixable]


def _guides_on(space: str) -> list[str]:
    return [n for n, c in registered("guide").items() if c.latent_space == space]


class StandardNormalPrior(Prior):
    r"""The standard normal prior :math:`p(z) = \mathcal{N}(z; 0, I_d)`.

    :param latent_dim: the dimension :math:`d` of :math:`z`.
    """

    part_name = "normal"
    summary = "standard normal N(0, I)"

    def __init__(self, latent_dim: int) -> None:
        super().__init__()
        self.latent_dim = check_latent_dim(latent_dim)
        self.register_buffer("loc", torch.zeros(latent_dim))
        self.register_buffer("scale", torch.ones(latent_dim))

    def forward(self, y: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(loc, scale)``; the standard normal ignores any condition ``y``."""
        return self.loc, self.scale

    def make_dist(self, loc: torch.Tensor, scale: torch.Tensor) -> dist.Distribution:  # type: ignore[override]
        return dist.Normal(loc, scale).to_event(1)


class LearnedNormalPrior(Prior):
    r"""A diagonal Gaussian prior with learned parameters,
    :math:`p_\theta(z) = \mathcal{N}(z;\ m, \mathrm{diag}\, s^2)`.

    ``loc`` is a free parameter and ``scale`` a positive :class:`~pyro.nn.PyroParam`; both
    are trained jointly with the encoder and decoder. The KL against a
    :class:`~pyro_vae.parts.guides.DiagonalNormalGuide` is analytic.

    :param latent_dim: the dimension :math:`d` of :math:`z`.
    :param init_scale: the initial value of every :math:`s_i`.
    """

    part_name = "learned"
    summary = "diagonal Gaussian with learned mean and scale"

    def __init__(self, latent_dim: int, init_scale: float = 1.0) -> None:
        super().__init__()
        self.latent_dim = check_latent_dim(latent_dim)
        if not init_scale > 0:
            raise ValueError(f"init_scale must be > 0, got {init_scale!r}.")
        self.loc = nn.Parameter(torch.zeros(latent_dim))
        self.scale = PyroParam(torch.full((latent_dim,), float(init_scale)), constraints.positive)

    def forward(self, y: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(loc, scale)``; ``y`` is ignored."""
        return self.loc, self.scale  # type: ignore[return-value]

    def make_dist(self, loc: torch.Tensor, scale: torch.Tensor) -> dist.Distribution:  # type: ignore[override]
        return dist.Normal(loc, scale).to_event(1)


class MixtureOfGaussiansPrior(Prior):
    r"""A mixture of :math:`K` diagonal Gaussians with learned weights, means and scales:

    .. math::

        p_\theta(z) = \sum_{k=1}^K \pi_k\, \mathcal{N}(z;\ m_k, \mathrm{diag}\, s_k^2),

    built as a :class:`~pyro_vae.parts.distributions.DiagonalNormalMixture` (a
    :class:`~pyro.distributions.MixtureSameFamily` of independent Normal components whose
    ``log_prob`` is one matrix product). No KL
    against it is analytic: :class:`~pyro.infer.TraceMeanField_ELBO` uses the Monte Carlo
    estimate :math:`\log q(z \mid x) - \log p(z)`.

    :param latent_dim: the dimension :math:`d` of :math:`z`.
    :param num_components: the number :math:`K` of components.
    :param init_spread: the component means start as ``init_spread * N(0, I)`` draws, so
        that the components differ from the first step (seed with ``pyro.set_rng_seed``).
    :param init_scale: the initial scale of every component.
    """

    part_name = "mog"
    summary = "mixture of --components learned diagonal Gaussians"
    options = (COMPONENTS,)

    @classmethod
    def from_config(cls, spec: BuildSpec, guide: nn.Module) -> MixtureOfGaussiansPrior:
        return cls(spec.latent_dim, spec.option("components"))

    def __init__(
        self,
        latent_dim: int,
        num_components: int = 10,
        init_spread: float = 1.0,
        init_scale: float = 1.0,
    ) -> None:
        super().__init__()
        self.latent_dim = check_latent_dim(latent_dim)
        self.num_components = check_count("num_components", num_components)
        if not init_scale > 0:
            raise ValueError(f"init_scale must be > 0, got {init_scale!r}.")
        self.logits = nn.Parameter(torch.zeros(num_components))
        self.locs = nn.Parameter(init_spread * torch.randn(num_components, latent_dim))
        self.scales = PyroParam(
            torch.full((num_components, latent_dim), float(init_scale)), constraints.positive
        )

    def forward(
        self, y: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return ``(logits, locs, scales)`` of shapes ``(K,)``, ``(K, d)``, ``(K, d)``."""
        return self.logits, self.locs, self.scales  # type: ignore[return-value]

    def make_dist(  # type: ignore[override]
        self, logits: torch.Tensor, locs: torch.Tensor, scales: torch.Tensor
    ) -> dist.Distribution:
        return DiagonalNormalMixture(
            dist.Categorical(logits=logits), dist.Normal(locs, scales).to_event(1)
        )


class VampPrior(Prior):
    r"""The VampPrior (Tomczak & Welling, 2018) [1]: the aggregate posterior of :math:`K`
    learned pseudo-inputs :math:`u_k`,

    .. math::

        p_\lambda(z) = \frac{1}{K} \sum_{k=1}^K q_\phi(z \mid u_k).

    It shares the encoder with the guide: pass the **same** guide part to both::

        guide = DiagonalNormalGuide.mlp((1, 28, 28), 20)
        vae = VAE(VampPrior(guide, 50, (1, 28, 28)), likelihood, guide)

    The guide is held by reference, not registered as a submodule of the prior, so its
    parameters belong to the VAE once (as ``vae.posterior``): they are not duplicated in
    ``state_dict`` or in the optimizer, and a checkpoint loads into a freshly built pair.
    The pseudo-inputs are free parameters of shape ``(K, *x_shape)`` (no squashing).
    The guide's ``dist`` must return a distribution with batch shape ``(K,)`` that
    :class:`~pyro.distributions.MixtureSameFamily` accepts as components (Gaussian and
    Power Spherical guides do); diagonal Gaussian posteriors make a
    :class:`~pyro_vae.parts.distributions.DiagonalNormalMixture`, whose density costs one matrix
    product rather than a ``(points, K, d)`` broadcast. No KL against it is analytic.

    :param guide: the guide part :math:`q_\phi(z \mid x)` (with ``latent_dim`` and
        ``dist(x)``), the one given to :class:`~pyro_vae.models.vae.VAE`.
    :param num_pseudo: the number :math:`K` of pseudo-inputs.
    :param x_shape: shape of one data item.
    :param init: optional initial pseudo-inputs ``(K, *x_shape)``, e.g. random training
        examples; by default uniform draws in :math:`[0, 1]`.

    1. J. M. Tomczak, M. Welling, *VAE with a VampPrior*, AISTATS 2018.
    """

    part_name = "vamp"
    summary = "VampPrior: mixture of the guide's posteriors at --components pseudo-inputs"
    options = (COMPONENTS,)
    latent_space = "guide"
    needs_mixable_guide = True

    @classmethod
    def from_config(cls, spec: BuildSpec, guide: nn.Module) -> VampPrior:
        return cls(guide, spec.option("components"), spec.x_shape)

    def __init__(
        self,
        guide: nn.Module,
        num_pseudo: int,
        x_shape: Sequence[int],
        init: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        latent_dim = getattr(guide, "latent_dim", None)
        if latent_dim is None or not callable(getattr(guide, "dist", None)):
            raise ValueError(
                "VampPrior needs the guide part (with latent_dim and dist(x)), e.g. "
                "DiagonalNormalGuide.mlp(x_shape, latent_dim); pass the same object to VAE."
            )
        self.latent_dim = check_latent_dim(latent_dim)
        self.num_pseudo = check_count("num_pseudo", num_pseudo)
        self.x_shape = tuple(int(s) for s in x_shape)
        # A tuple hides the guide from nn.Module registration: the VAE owns it.
        self._guide = (guide,)
        if init is None:
            init = torch.rand(num_pseudo, *self.x_shape)
        elif tuple(init.shape) != (num_pseudo, *self.x_shape):
            raise ValueError(
                f"init has shape {tuple(init.shape)}; VampPrior needs (num_pseudo, *x_shape) = "
                f"{(num_pseudo, *self.x_shape)}."
            )
        self.pseudo_inputs = nn.Parameter(init.detach().clone().float())

    @property
    def guide(self) -> nn.Module:
        """The guide part whose posteriors make up the mixture."""
        return self._guide[0]

    def forward(self, y: torch.Tensor | None = None) -> tuple[torch.Tensor]:
        """Return ``(pseudo_inputs,)``; ``y`` is ignored."""
        return (self.pseudo_inputs,)

    def make_dist(self, pseudo_inputs: torch.Tensor) -> dist.Distribution:  # type: ignore[override]
        components = self.guide.dist(pseudo_inputs)  # type: ignore[operator]
        if isinstance(components, dist.TransformedDistribution):
            raise ValueError(
                "VampPrior cannot mix flow posteriors (the IAF guide's transforms are "
                "conditioned on one context per input); use a DiagonalNormalGuide or "
                "FullCovarianceNormalGuide with the VampPrior."
            )
        mixing = dist.Categorical(logits=pseudo_inputs.new_zeros(self.num_pseudo))
        if DiagonalNormalMixture.accepts(components):
            return DiagonalNormalMixture(mixing, components)
        return dist.MixtureSameFamily(mixing, components)


class FlowPrior(Prior):
    r"""A standard normal pushed through learnable bijections (a normalizing-flow prior):

    .. math::

        z = f^{-1}(\varepsilon),\quad \varepsilon \sim \mathcal{N}(0, I_d), \qquad
        \log p(z) = \log \mathcal{N}(f(z); 0, I) + \log\left|\det \frac{\partial f}
        {\partial z}\right|.

    ``transforms`` are the layers of :math:`f = f_L \circ \dots \circ f_1`, the
    *normalizing* direction from :math:`z` to :math:`\varepsilon`. With autoregressive
    layers (:class:`~pyro.distributions.transforms.AffineAutoregressive`, spline
    autoregressive) this is the masked autoregressive flow (MAF, Papamakarios et al., 2017):
    the density of a guide sample costs one network pass per layer, and only generation
    inverts the layers (sequentially). The layers are registered as submodules
    (``nn.ModuleList``), so :func:`~pyro_vae.fit` trains them with its torch optimizer. No
    KL against a flow prior is analytic.

    :param latent_dim: the dimension :math:`d` of :math:`z`.
    :param transforms: :class:`~pyro.distributions.TransformModule` layers (nn.Modules)
        acting on vectors of size ``latent_dim``.
    """

    part_name = "flow"
    summary = "standard normal through --flow-layers autoregressive layers (MAF)"
    options = (FLOW_LAYERS,)

    @classmethod
    def from_config(cls, spec: BuildSpec, guide: nn.Module) -> FlowPrior:
        return cls.mlp(spec.latent_dim, spec.option("flow_layers"))

    def __init__(self, latent_dim: int, transforms: Sequence[nn.Module]) -> None:
        super().__init__()
        self.latent_dim = check_latent_dim(latent_dim)
        if not transforms or not all(isinstance(t, nn.Module) for t in transforms):
            raise ValueError(
                "FlowPrior needs a non-empty list of pyro.distributions.TransformModule "
                "layers (nn.Modules, so that they are trained); build one with "
                "FlowPrior.mlp(latent_dim, num_flows)."
            )
        self.transforms = nn.ModuleList(transforms)
        self.register_buffer("loc", torch.zeros(latent_dim))
        self.register_buffer("scale", torch.ones(latent_dim))

    def forward(self, y: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the base ``(loc, scale)``; ``y`` is ignored."""
        return self.loc, self.scale

    def make_dist(self, loc: torch.Tensor, scale: torch.Tensor) -> dist.Distribution:  # type: ignore[override]
        base = dist.Normal(loc, scale).to_event(1)
        return dist.TransformedDistribution(base, [t.inv for t in reversed(self.transforms)])

    @classmethod
    def mlp(
        cls, latent_dim: int, num_flows: int = 2, hidden_dims: Sequence[int] | None = None
    ) -> FlowPrior:
        r"""A MAF prior: ``num_flows`` affine autoregressive layers whose conditioners are
        MADE networks (masked MLPs) with ``hidden_dims`` (default ``(4 * latent_dim,)``);
        the variable order is reversed from one layer to the next.
        """
        check_latent_dim(latent_dim, minimum=2)
        check_count("num_flows", num_flows)
        hidden = list(hidden_dims or (4 * latent_dim,))
        layers = [
            AffineAutoregressive(
                AutoRegressiveNN(latent_dim, hidden, permutation=_order(latent_dim, i))  # type: ignore[arg-type]
            )
            for i in range(num_flows)
        ]
        return cls(latent_dim, layers)


class UniformSpherePrior(Prior):
    r"""The uniform prior on the unit sphere :math:`S^{d-1} \subset \mathbb{R}^d`, the
    hyperspherical VAE's prior (Davidson et al., 2018), with density
    :math:`1 / |S^{d-1}|`, :math:`|S^{d-1}| = 2\pi^{d/2} / \Gamma(d/2)`.

    Use it with :class:`~pyro_vae.parts.guides.PowerSphericalGuide`: the KL
    :math:`\mathrm{KL}(\mathrm{PowerSpherical} \,\|\, \mathrm{Uniform})` is analytic
    (registered in :mod:`pyro_vae.parts.distributions`). A Gaussian guide has no density on
    the sphere, so it cannot be paired with this prior.

    :param latent_dim: the ambient dimension :math:`d \ge 2`.
    """

    part_name = "sphere"
    summary = "uniform on the unit sphere (needs a guide on the sphere)"
    latent_space = "sphere"

    def __init__(self, latent_dim: int) -> None:
        super().__init__()
        if isinstance(latent_dim, int) and not isinstance(latent_dim, bool) and latent_dim < 2:
            raise ValueError(
                f"UniformSpherePrior needs latent_dim >= 2 (the sphere S^(d-1) in R^d), got "
                f"{latent_dim}; use e.g. latent_dim=20."
            )
        self.latent_dim = check_latent_dim(latent_dim, minimum=2)
        self.register_buffer("_anchor", torch.zeros(()))  # carries dtype and device

    def forward(self, y: torch.Tensor | None = None) -> tuple[torch.Tensor]:
        """Return a scalar that carries the dtype and device; ``y`` is ignored."""
        return (self._anchor,)

    def make_dist(self, anchor: torch.Tensor) -> dist.Distribution:  # type: ignore[override]
        return HypersphericalUniform(self.latent_dim, dtype=anchor.dtype, device=anchor.device)


def _order(dim: int, layer: int) -> torch.Tensor:
    """The variable order of autoregressive layer ``layer``: identity, reversed, ..."""
    order = torch.arange(dim)
    return order if layer % 2 == 0 else order.flip(0)
