r"""Conditional VAE (Sohn, Lee & Yan, 2015) [1]: a label :math:`y` enters every part.

.. math::

    p_\theta(x, z \mid y) = p_\theta(z \mid y)\, p_\theta(x \mid z, y), \qquad
    q_\phi(z \mid x, y).

The same :class:`~pyro_vae.models.vae.VAE` class runs it: ``vae.model(x, y)`` and
``vae.guide(x, y)`` already pass ``y`` to the parts. What makes a part conditional:

- the prior :class:`ConditionalNormalPrior`, :math:`\mathcal{N}(m_y, \mathrm{diag}\,s_y^2)`
  with a learned mean and scale per class (a linear map of the one-hot label);
- an MLP wrapped in :class:`ConditionalNet`, whose every layer also takes the one-hot
  label (scaled so that it is learned as fast as the inputs); used as the decoder of any
  :class:`~pyro_vae.parts.likelihoods.Likelihood` or the encoder of any
  :class:`~pyro_vae.parts.guides.Guide` (:func:`condition_on_labels` wraps a part's network;
  :func:`conditional_likelihood`, :func:`conditional_guide` and
  :func:`pyro_vae.models.vae.conditional_vae` build them).

Generate a chosen digit by sampling the model with labels and no data::

    x = vae.model(x=None, y=torch.full((16,), 3))

1. K. Sohn, H. Lee, X. Yan, *Learning structured output representation using deep
   conditional generative models*, NeurIPS 2015.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from pyro import distributions as dist
from pyro.distributions import constraints
from pyro.nn import PyroModule, PyroParam
from torch import nn

from pyro_vae._checks import check_count, check_latent_dim
from pyro_vae.parts.nn import MLP, GatedLinear
from pyro_vae.parts.priors import Prior

__all__ = [
    "ConditionalNet",
    "ConditionalNormalPrior",
    "call_net",
    "check_labels",
    "condition_on_labels",
    "conditional_guide",
    "conditional_likelihood",
]


def check_labels(y: torch.Tensor | None, num_classes: int) -> torch.Tensor:
    """Raise a :class:`ValueError` naming the fix unless ``y`` holds class indices in
    ``[0, num_classes)``; return it."""
    if y is None:
        raise ValueError(
            "This model is conditional on labels: pass y (class indices in "
            f"[0, {num_classes})), e.g. fit(..., data=(x, y)) or "
            f"vae.model(x=None, y=torch.full((n,), 3)) to generate digit 3."
        )
    if not isinstance(y, torch.Tensor) or y.dtype.is_floating_point or y.dtype == torch.bool:
        raise ValueError(
            f"Labels y must be an integer tensor of class indices, got "
            f"{getattr(y, 'dtype', type(y).__name__)}; convert with y.long()."
        )
    if y.numel() and bool(((y < 0) | (y >= num_classes)).any()):
        raise ValueError(
            f"Labels y must lie in [0, {num_classes}), but range over "
            f"[{int(y.min())}, {int(y.max())}]; build the conditional parts with "
            f"num_classes={int(y.max()) + 1} or relabel the data."
        )
    return y


class ConditionalNet(nn.Module):
    r"""An :class:`~pyro_vae.parts.nn.MLP` that also sees the label, at every layer: each
    affine layer acts on the concatenation ``[h, sqrt(fan_in) * one_hot(y)]`` of its input
    :math:`h` (``fan_in`` numbers) and the scaled one-hot label.

    The layer :math:`W [h; s\,e_y] + b = W_h h + b + s\,w_y` is computed as the MLP's own
    linear layer plus :math:`s = \sqrt{\mathrm{fan\_in}}` times a learned vector
    :math:`w_y` per class, without building the concatenation (for a
    :class:`~pyro_vae.parts.nn.GatedLinear` layer, both halves get their vector).

    Why every layer, and why scaled: Adam moves every weight by about the learning rate
    per step whatever its input, so a pathway changes a unit's pre-activation about as
    fast as the norm of its input. A one-hot label of norm 1 entering the first layer
    only is learned about :math:`\sqrt{\mathrm{fan\_in}}` times more slowly than the
    input, and the encoder puts the class into :math:`z` long before the decoder learns it
    from :math:`y`; trained on MNIST for a few epochs, such a CVAE decodes one code to the
    same digit whatever the label. Giving the label the norm of a typical input, and a
    direct path to the output (a class-specific bias of the last layer), lets it be read
    as fast as the input.

    The leading batch dimensions of the inputs and of ``y`` broadcast against each other,
    so vectorized particles ``(K, N, ...)`` with labels ``(N,)`` work, and so do enumerated
    labels ``(C, 1)`` with inputs ``(N, ...)`` (the semi-supervised M2), where the first
    layer's input projection is computed once instead of once per class. Parts recognise
    the wrapper by its ``conditional = True`` attribute and call it as ``net(inputs, y)``.

    :param mlp: the unconditional network, e.g. ``likelihood.decoder`` or
        ``guide.encoder`` of a part built with ``.mlp(...)``.
    :param num_classes: the number :math:`C` of classes.
    """

    conditional = True

    def __init__(self, mlp: MLP, num_classes: int) -> None:
        super().__init__()
        if not isinstance(mlp, MLP):
            raise ValueError(
                f"ConditionalNet conditions an MLP, got {type(mlp).__name__}; build the part "
                "with .mlp(...) (convolutional networks are not conditioned)."
            )
        self.mlp = mlp
        self.num_classes = check_count("num_classes", num_classes)
        self.label_scales: list[float] = []
        self.label_weights = nn.ParameterList()
        for layer in mlp.net:
            affine = _affine(layer)
            if affine is None:
                continue
            scale = math.sqrt(affine.in_features)
            bound = 1.0 / math.sqrt(affine.in_features + num_classes)  # nn.Linear's init
            weight = torch.empty(num_classes, affine.out_features).uniform_(-bound, bound)
            self.label_scales.append(scale)
            self.label_weights.append(nn.Parameter(weight / scale))

    @property
    def in_shape(self) -> tuple[int, ...]:
        return self.mlp.in_shape

    def label_terms(self, y: torch.Tensor) -> list[torch.Tensor]:
        r"""What the label adds to each affine layer: :math:`s_k\,w^{(k)}_y`, shape
        ``(*y.shape, out_features_k)``."""
        return [s * w[y] for s, w in zip(self.label_scales, self.label_weights, strict=True)]

    def forward(self, inputs: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        y = check_labels(y, self.num_classes)
        batch = inputs.shape[: inputs.dim() - len(self.mlp.in_shape)]
        h = inputs.reshape(*batch, -1)
        if self.mlp.input_scale != 1.0:
            h = h * self.mlp.input_scale
        terms = iter(self.label_terms(y))
        for layer in self.mlp.net:
            if isinstance(layer, GatedLinear):
                value, gate = (layer.linear(h) + next(terms)).chunk(2, dim=-1)
                h = value * torch.sigmoid(gate)
            elif isinstance(layer, nn.Linear):
                h = layer(h) + next(terms)
            else:
                h = layer(h)
        return h.reshape(*h.shape[:-1], *self.mlp.out_shape)


def _affine(layer: nn.Module) -> nn.Linear | None:
    """The linear map of an MLP layer that the label joins (``None`` for an activation)."""
    if isinstance(layer, GatedLinear):
        return layer.linear
    return layer if isinstance(layer, nn.Linear) else None


def call_net(net: nn.Module, inputs: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
    """``net(inputs, y)`` for a conditional network (``net.conditional`` true), else
    ``net(inputs)``: unconditional parts ignore labels. Inputs of another dtype than the
    network's parameters (integer counts, float64 arrays) are converted to it."""
    weight = next(net.parameters(), None)
    if weight is not None and inputs.dtype != weight.dtype:
        inputs = inputs.to(weight.dtype)
    return net(inputs, y) if getattr(net, "conditional", False) else net(inputs)


class ConditionalNormalPrior(Prior):
    r"""A learned class-conditional Gaussian prior
    :math:`p_\theta(z \mid y) = \mathcal{N}(z;\ m_y, \mathrm{diag}\, s_y^2)`.

    ``loc`` (``(C, d)``, a free parameter) and ``scale`` (``(C, d)``, a positive
    :class:`~pyro.nn.PyroParam`) are linear maps of the one-hot label (row lookups),
    trained jointly with the networks. Initialized to :math:`\mathcal{N}(0, I)` for every
    class. The KL against a :class:`~pyro_vae.parts.guides.DiagonalNormalGuide` is analytic.

    :param num_classes: the number :math:`C` of classes.
    :param latent_dim: the dimension :math:`d` of :math:`z`.
    """

    def __init__(self, num_classes: int, latent_dim: int) -> None:
        super().__init__()
        self.num_classes = check_count("num_classes", num_classes)
        self.latent_dim = check_latent_dim(latent_dim)
        self.loc = nn.Parameter(torch.zeros(num_classes, latent_dim))
        self.scale = PyroParam(torch.ones(num_classes, latent_dim), constraints.positive)

    def forward(self, y: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(loc, scale)`` of shape ``(*y.shape, latent_dim)``."""
        y = check_labels(y, self.num_classes)
        return self.loc[y], self.scale[y]  # type: ignore[return-value]

    def make_dist(self, loc: torch.Tensor, scale: torch.Tensor) -> dist.Distribution:  # type: ignore[override]
        return dist.Normal(loc, scale).to_event(1)


def condition_on_labels(part: nn.Module, num_classes: int) -> nn.Module:
    r"""Make a likelihood or guide part conditional on the label, in place: its MLP
    ``decoder`` (:math:`p(x \mid z) \to p(x \mid z, y)`) or ``encoder``
    (:math:`q(z \mid x) \to q(z \mid x, y)`) is wrapped in :class:`ConditionalNet`.

    :param part: a :class:`~pyro_vae.parts.likelihoods.Likelihood` or
        :class:`~pyro_vae.parts.guides.Guide` built with ``.mlp(...)``.
    :param num_classes: the number of classes of ``y``.
    :returns: the same part.
    """
    for attr in ("decoder", "encoder"):
        net = getattr(part, attr, None)
        if isinstance(net, nn.Module):
            if getattr(net, "conditional", False):
                raise ValueError(f"The part's {attr} is already conditional on labels.")
            setattr(part, attr, ConditionalNet(net, num_classes))  # type: ignore[arg-type]
            return part
    raise ValueError(
        f"{type(part).__name__} has no decoder or encoder network to condition; pass a "
        "Likelihood or Guide part."
    )


def conditional_likelihood(
    likelihood_cls: type[Any],
    latent_dim: int,
    x_shape: Sequence[int],
    num_classes: int,
    hidden_dims: Sequence[int] = (400,),
    **kwargs: Any,
) -> PyroModule:
    r""":math:`p(x \mid z, y)`: ``likelihood_cls.mlp(...)`` (e.g.
    :class:`~pyro_vae.parts.likelihoods.BernoulliLikelihood`) with a conditional decoder.

    :param kwargs: passed to the likelihood's constructor (e.g. ``scale``).
    """
    part = likelihood_cls.mlp(latent_dim, x_shape, hidden_dims, **kwargs)
    return condition_on_labels(part, num_classes)  # type: ignore[return-value]


def conditional_guide(
    guide_cls: type[Any],
    x_shape: Sequence[int],
    latent_dim: int,
    num_classes: int,
    hidden_dims: Sequence[int] = (400,),
    **kwargs: Any,
) -> PyroModule:
    r""":math:`q(z \mid x, y)`: ``guide_cls.mlp(...)`` (e.g.
    :class:`~pyro_vae.parts.guides.DiagonalNormalGuide`) with a conditional encoder.

    :param kwargs: passed to the guide's constructor (e.g. ``num_flows``).
    """
    part = guide_cls.mlp(x_shape, latent_dim, hidden_dims, **kwargs)
    return condition_on_labels(part, num_classes)  # type: ignore[return-value]
