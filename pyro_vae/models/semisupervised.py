r"""Semi-supervised learning with the M2 model of Kingma et al. (2014) [1].

The label is a latent variable that is observed for some examples:

.. math::

    p_\theta(x, y, z) = p(y)\, p(z)\, p_\theta(x \mid y, z), \qquad
    q_\phi(y, z \mid x) = q_\phi(y \mid x)\, q_\phi(z \mid x, y),

with a uniform :math:`p(y)`. A labelled example contributes the ELBO
:math:`\mathcal{L}(x, y)` of the conditional VAE; an unlabelled one
:math:`\mathcal{U}(x) = \sum_y q_\phi(y \mid x)\,\mathcal{L}(x, y) + \mathcal{H}(q_\phi(y
\mid x))`, computed exactly by enumerating the :math:`C` values of :math:`y` in parallel
(:class:`~pyro.infer.TraceEnum_ELBO`, the guide's ``"y"`` site has
``infer={"enumerate": "parallel"}``). Because :math:`q_\phi(y \mid x)` would otherwise
learn only from unlabelled data, the classification loss on the labelled examples is
added with weight :math:`\alpha` (eq. 9 of [1]):

.. math::

    \mathcal{J}^\alpha = \sum_{(x, y)\ \mathrm{labelled}} \big[-\mathcal{L}(x, y)
        - \alpha \log q_\phi(y \mid x)\big]
        + \sum_{x\ \mathrm{unlabelled}} -\mathcal{U}(x).

The parts are those of the conditional VAE (:mod:`pyro_vae.parts.conditional`): a likelihood
with a :class:`~pyro_vae.parts.conditional.ConditionalNet` decoder of ``z`` and ``y``, a
guide with a conditional encoder of ``x`` and ``y`` (the label enters every layer), plus a
classifier network for :math:`q_\phi(y \mid x)`. The unlabelled examples teach the
classifier only through the decoder's preference for one label over another, so a decoder
that ignores ``y`` leaves them nothing to teach. Pyro's SS-VAE tutorial
(``examples/vae/ss_vae_M2.py``) reports test accuracies of about 0.93 and 0.95 with 100 and
1000 labels after long training.

1. D. P. Kingma, D. J. Rezende, S. Mohamed, M. Welling, *Semi-supervised learning with
   deep generative models*, NeurIPS 2014.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import pyro
import torch
from pyro import distributions as dist
from pyro.nn import PyroModule
from torch import nn

from pyro_vae._checks import check_count
from pyro_vae.inference.sites import batch_device
from pyro_vae.parts.conditional import check_labels, conditional_guide, conditional_likelihood
from pyro_vae.parts.nn import MLP
from pyro_vae.parts.priors import StandardNormalPrior

__all__ = [
    "SemiSupervisedVAE",
    "classification_accuracy",
    "split_labelled",
]

_names = itertools.count()


class SemiSupervisedVAE(PyroModule):
    r"""The M2 model: ``model(x, y=None)`` and ``guide(x, y=None)`` with the label site
    ``"y"`` observed when ``y`` is given and enumerated otherwise.

    Train with :func:`fit_semisupervised`; classify with :meth:`classify`. The
    ``model``/``guide`` pair follows the site conventions (``"x"``, ``"z"``, ``"y"``,
    plate ``"data"``), so :class:`~pyro.infer.TraceEnum_ELBO` (``max_plate_nesting=1``)
    scores it directly.

    :param prior: :math:`p(z)`, e.g. :class:`~pyro_vae.parts.priors.StandardNormalPrior`.
    :param likelihood: :math:`p(x \mid z, y)`, with a conditional decoder.
    :param guide: :math:`q(z \mid x, y)`, with a conditional encoder.
    :param classifier: network mapping ``(*batch, *x_shape)`` to ``(*batch, C)`` logits of
        :math:`q(y \mid x)`.
    :param num_classes: the number :math:`C` of classes.
    :param name: the Pyro name prefix; unique by default.
    """

    def __init__(
        self,
        prior: PyroModule,
        likelihood: PyroModule,
        guide: PyroModule,
        classifier: nn.Module,
        num_classes: int,
        *,
        name: str | None = None,
    ) -> None:
        super().__init__(name=f"ssvae{next(_names)}" if name is None else name)
        check_count("num_classes", num_classes, minimum=2)
        self.prior = prior
        self.likelihood = likelihood
        self.posterior = guide
        self.classifier = classifier
        self.num_classes = num_classes

    @classmethod
    def mlp(
        cls,
        num_classes: int,
        latent_dim: int,
        x_shape: Sequence[int],
        hidden_dims: Sequence[int] = (500,),
        likelihood_cls: type | None = None,
    ) -> SemiSupervisedVAE:
        """M2 with MLP networks, as in Pyro's tutorial (500 hidden units, ``latent_dim``
        50 there): a standard normal prior, a Bernoulli likelihood by default, a diagonal
        Normal guide and an MLP classifier."""
        from pyro_vae.parts.guides import DiagonalNormalGuide
        from pyro_vae.parts.likelihoods import BernoulliLikelihood

        hidden = tuple(hidden_dims)
        likelihood = conditional_likelihood(
            likelihood_cls or BernoulliLikelihood,
            latent_dim,
            x_shape,
            num_classes,
            tuple(reversed(hidden)),
        )
        guide = conditional_guide(DiagonalNormalGuide, x_shape, latent_dim, num_classes, hidden)
        classifier = MLP(tuple(x_shape), hidden, num_classes)
        return cls(StandardNormalPrior(latent_dim), likelihood, guide, classifier, num_classes)

    def _label_prior(self, like: torch.Tensor) -> dist.Distribution:
        return dist.Categorical(logits=like.new_zeros(self.num_classes))

    def model(
        self,
        x: torch.Tensor | None = None,
        y: torch.Tensor | None = None,
        *,
        num_samples: int | None = None,
    ) -> torch.Tensor:
        r""":math:`z \sim p(z),\ y \sim p(y),\ x \sim p(x \mid z, y)`; ``y`` is observed
        when given. With ``x=None`` it generates (``y`` or ``num_samples`` sets the size)."""
        if y is not None:
            check_labels(y, self.num_classes)
        n = x.shape[0] if x is not None else y.shape[0] if y is not None else num_samples
        if n is None or n <= 0:
            raise ValueError("With x=None and y=None the model needs num_samples > 0.")
        with pyro.plate("data", n, device=batch_device(self, x, y)):  # type: ignore[arg-type]
            z = pyro.sample("z", self.prior.dist())
            y = pyro.sample("y", self._label_prior(z), obs=y)  # type: ignore[arg-type]
            return pyro.sample("x", self.likelihood.dist(z, y), obs=x)

    def guide(
        self,
        x: torch.Tensor,
        y: torch.Tensor | None = None,
        *,
        num_samples: int | None = None,
    ) -> None:
        r""":math:`y \sim q(y \mid x)` (enumerated) when ``y`` is missing, then
        :math:`z \sim q(z \mid x, y)`."""
        if x is None:
            raise ValueError("The guide needs data x; sample from the model to generate.")
        with pyro.plate("data", x.shape[0], device=x.device):  # type: ignore[arg-type]
            if y is None:
                y = pyro.sample("y", self.class_dist(x), infer={"enumerate": "parallel"})  # type: ignore[arg-type]
            else:
                check_labels(y, self.num_classes)
            pyro.sample("z", self.posterior.dist(x, y))

    def class_dist(self, x: torch.Tensor) -> dist.Distribution:
        r"""The classifier :math:`q(y \mid x)`, a :class:`~pyro.distributions.Categorical`."""
        return dist.Categorical(logits=self.classifier(x))

    @torch.no_grad()
    def classify(self, x: torch.Tensor) -> torch.Tensor:
        r"""The most probable class under :math:`q(y \mid x)`, shape ``(N,)``."""
        return self.classifier(x).argmax(-1)


def split_labelled(
    x: torch.Tensor, y: torch.Tensor, num_labelled: int, num_classes: int, seed: int = 0
) -> tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Keep the labels of ``num_labelled`` examples, the same number from each class (as
    in Kingma et al., 2014), drawn at random with ``seed``; the others become unlabelled.

    :returns: ``((x_labelled, y_labelled), x_unlabelled)``.
    :raises ValueError: if ``num_labelled`` is not a positive multiple of ``num_classes``,
        or a class has fewer examples than its share.
    """
    check_labels(y, num_classes)
    if (
        not isinstance(num_labelled, int)
        or isinstance(num_labelled, bool)
        or num_labelled < num_classes
        or num_labelled % num_classes
    ):
        raise ValueError(
            f"num_labelled must be a positive multiple of num_classes={num_classes} (the same "
            f"number of labels per class), got {num_labelled!r}; e.g. 100 or 1000."
        )
    per_class = num_labelled // num_classes
    gen = torch.Generator().manual_seed(seed)
    keep = []
    for c in range(num_classes):
        members = (y == c).nonzero().flatten()
        if members.numel() < per_class:
            raise ValueError(
                f"Class {c} has {members.numel()} examples, fewer than the {per_class} "
                f"labels per class that num_labelled={num_labelled} asks for; use fewer labels."
            )
        keep.append(members[torch.randperm(members.numel(), generator=gen)[:per_class]])
    labelled = torch.cat(keep).sort().values
    mask = torch.ones(y.shape[0], dtype=torch.bool)
    mask[labelled] = False
    if not mask.any():
        raise ValueError("Every example would be labelled; use fewer labels than examples.")
    return (x[labelled], y[labelled]), x[mask]


@torch.no_grad()
def classification_accuracy(
    ssvae: SemiSupervisedVAE, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1000
) -> float:
    """The fraction of ``x`` whose most probable class under :math:`q(y|x)` is ``y``."""
    if x.shape[0] == 0 or x.shape[0] != y.shape[0]:
        raise ValueError(f"Need as many labels as examples, got {x.shape[0]} and {y.shape[0]}.")
    correct = sum(
        int((ssvae.classify(x[i : i + batch_size]) == y[i : i + batch_size]).sum())
        for i in range(0, x.shape[0], batch_size)
    )
    return correct / x.shape[0]
