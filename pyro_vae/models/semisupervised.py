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
with a :class:`~pyro_vae.parts.conditional.ConditionalNet` decoder on ``[z, one_hot(y)]``, a
guide with a conditional encoder on ``[x, one_hot(y)]``, plus a classifier network for
:math:`q_\phi(y \mid x)`. Pyro's SS-VAE tutorial (``examples/vae/ss_vae_M2.py``) reports
test accuracies of about 0.93 and 0.95 with 100 and 1000 labels after long training.

1. D. P. Kingma, D. J. Rezende, S. Mohamed, M. Welling, *Semi-supervised learning with
   deep generative models*, NeurIPS 2014.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import pyro
import torch
from pyro import distributions as dist
from pyro.nn import PyroModule
from torch import nn

from pyro_vae.inference.sites import batch_device
from pyro_vae.objectives.semisupervised import SemiSupervisedELBO
from pyro_vae.parts.conditional import check_labels, conditional_guide, conditional_likelihood
from pyro_vae.parts.nn import MLP
from pyro_vae.parts.priors import StandardNormalPrior
from pyro_vae.train.batches import SemiSupervisedData
from pyro_vae.train.loop import History, fit

__all__ = [
    "SemiSupervisedVAE",
    "classification_accuracy",
    "fit_semisupervised",
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
        if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 2:
            raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}.")
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
        with pyro.plate("data", n, device=batch_device(self, x, y)):
            z = pyro.sample("z", self.prior.dist())
            y = pyro.sample("y", self._label_prior(z), obs=y)
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
        with pyro.plate("data", x.shape[0], device=x.device):
            if y is None:
                y = pyro.sample("y", self.class_dist(x), infer={"enumerate": "parallel"})
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


def fit_semisupervised(
    ssvae: SemiSupervisedVAE,
    labelled: tuple[torch.Tensor, torch.Tensor],
    unlabelled: torch.Tensor,
    *,
    epochs: int = 10,
    batch_size: int = 200,
    lr: float | None = None,
    aux_weight: float = 50.0,
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    validation_data: tuple[torch.Tensor, torch.Tensor] | None = None,
    seed: int = 0,
    max_seconds: float | None = None,
    log: Callable[[dict[str, float]], None] | None = None,
    run_dir: str | os.PathLike | None = None,
    resume: str | os.PathLike | None = None,
    config: dict[str, Any] | None = None,
    on_nan: str = "raise",
    progress: bool = False,
) -> History:
    r"""Train M2 by minimising :math:`\mathcal{J}^\alpha` with Adam, through
    :func:`~pyro_vae.fit` with
    :class:`~pyro_vae.train.batches.SemiSupervisedData` and
    :class:`~pyro_vae.objectives.semisupervised.SemiSupervisedELBO`.

    Each step pairs one batch of unlabelled examples (one pass over ``unlabelled`` is an
    epoch) with one batch of labelled examples, drawn in turn from a reshuffled
    ``labelled`` set; the loss of the step is

    .. math:: -\sum_{\mathrm{unlab.\ batch}} \mathcal{U}(x)
        - \sum_{\mathrm{lab.\ batch}} \big[\mathcal{L}(x, y) + \alpha \log q(y \mid x)\big],

    with :class:`~pyro.infer.TraceEnum_ELBO` for :math:`\mathcal{U}` and
    :class:`~pyro.infer.Trace_ELBO` for :math:`\mathcal{L}`. With few labels this
    revisits each labelled example many times per epoch, i.e. it weights the labelled
    part more than a plain sum over the dataset would (Pyro's tutorial instead interleaves
    one labelled batch every so many unlabelled ones); it is a schedule choice, not a
    different objective per example. Like :func:`~pyro_vae.fit`, it checkpoints into
    ``run_dir`` every epoch (and on Ctrl-C or SIGTERM), resumes exactly with ``resume``
    and applies the ``on_nan`` policy.

    :param ssvae: the model.
    :param labelled: ``(x, y)`` of the labelled examples.
    :param unlabelled: ``x`` of the unlabelled examples.
    :param epochs: passes over the unlabelled data.
    :param batch_size: examples per batch (labelled batches hold at most all labels).
    :param lr: Adam learning rate (``None``: ``1e-3``, or the checkpoint's on resume).
    :param aux_weight: :math:`\alpha`, the weight of the classification loss per labelled
        example.
    :param transform: applied to every batch of ``x`` (e.g.
        :class:`~pyro_vae.data.DynamicBinarization`).
    :param validation_data: ``(x, y)`` for the per-epoch ``val_accuracy``.
    :param seed: seeds Pyro/torch and the batch order.
    :param max_seconds: stop after the first epoch that ends past this wall-clock budget.
    :param log: called with each epoch's record.
    :param run_dir: where to write ``config.json``, ``metrics.jsonl`` and
        ``checkpoint.pt``, as :func:`~pyro_vae.fit` does.
    :param resume: a checkpoint (or run directory) to continue from.
    :param config: the run's description, saved in ``config.json`` and the checkpoint.
    :param on_nan: ``"raise"``, ``"skip"`` or ``"reduce_lr"``, as in :func:`~pyro_vae.fit`.
    :param progress: show a progress bar and one line per epoch.
    :returns: a :class:`~pyro_vae.train.loop.History` whose records hold ``loss`` (the
        objective per example, labelled and unlabelled together), ``train_elbo``
        (its negative), ``val_accuracy``, ``lr`` and ``seconds``.
    :raises KeyboardInterrupt: on Ctrl-C or SIGTERM without ``run_dir`` (nothing could be
        saved); with ``run_dir`` the history returns with ``interrupted = True``.
    """
    x_l, y_l = labelled
    check_labels(y_l, ssvae.num_classes)
    if x_l.shape[0] == 0 or x_l.shape[0] != y_l.shape[0]:
        raise ValueError(
            f"labelled must be (x, y) with as many labels as examples and at least one; got "
            f"{x_l.shape[0]} examples and {y_l.shape[0]} labels."
        )
    if unlabelled.shape[0] == 0:
        raise ValueError("unlabelled is empty; pass the unlabelled examples (x only).")
    started = time.perf_counter()

    def metrics(record: dict[str, float]) -> None:
        record["loss"] = -record["train_elbo"]
        if validation_data is not None:
            record["val_accuracy"] = classification_accuracy(ssvae, *validation_data)

    def out_of_time(record: dict[str, float]) -> bool:
        return max_seconds is not None and time.perf_counter() - started > max_seconds

    history = fit(
        ssvae.model,
        ssvae.guide,
        SemiSupervisedData(labelled=(x_l, y_l), unlabelled=unlabelled),
        objective=SemiSupervisedELBO(aux_weight),
        lr=lr,
        epochs=epochs,
        batch_size=batch_size,
        seed=seed,
        transform=transform,
        callbacks=[metrics, out_of_time] if log is None else [metrics, log, out_of_time],
        run_dir=run_dir,
        resume=resume,
        config=config,
        on_nan=on_nan,
        progress=progress,
    )
    if history.interrupted and run_dir is None:
        raise KeyboardInterrupt
    return history
