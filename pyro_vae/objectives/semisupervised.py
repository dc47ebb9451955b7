r"""The semi-supervised objective of Kingma et al. (2014), eq. 9, for any M2-shaped program.

A model/guide pair with a label site (``"y"`` by default) observed when ``y`` is given and
sampled from :math:`q(y \mid x)` by the guide otherwise is trained on a batch of unlabelled
examples :math:`x_u` and a batch of labelled examples :math:`(x_l, y_l)` by minimising

.. math::

    \mathcal{J}^\alpha = -\sum_{x \in x_u} \mathcal{U}(x)
        - \sum_{(x, y) \in (x_l, y_l)} \big[\mathcal{L}(x, y) + \alpha \log q(y \mid x)\big],

with :math:`\mathcal{U}` computed exactly by enumerating the label
(:class:`~pyro.infer.TraceEnum_ELBO`), :math:`\mathcal{L}` by
:class:`~pyro.infer.Trace_ELBO`, and :math:`q(y \mid x)` read from the guide's label site
in a guide trace without ``y``, stopped at that site (nothing after it runs).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from pyro import poutine
from pyro.infer import ELBO, Trace_ELBO, TraceEnum_ELBO
from pyro.poutine.runtime import NonlocalExit

from pyro_vae._checks import check_number

__all__ = ["SemiSupervisedELBO", "label_log_prob"]


def label_log_prob(
    guide: Callable, x: torch.Tensor, y: torch.Tensor, label_site: str = "y"
) -> torch.Tensor:
    r""":math:`\sum_n \log q(y_n \mid x_n)` from the distribution of the guide's
    ``label_site`` when the guide runs on ``x`` alone.

    :raises ValueError: if the guide has no such sample site without ``y``.
    """

    def at_label(msg: Mapping[str, Any]) -> bool:
        return msg["type"] == "sample" and msg["name"] == label_site

    try:
        with poutine.block():
            poutine.escape(guide, escape_fn=at_label)(x)
    except NonlocalExit as stop:
        return stop.site["fn"].log_prob(y).sum()  # type: ignore[attr-defined]
    raise ValueError(
        f"The guide has no sample site {label_site!r} when called without labels; pass "
        "label_site= naming the site where it samples the label from q(y|x)."
    )


class SemiSupervisedELBO(ELBO):
    r""":math:`\mathcal{J}^\alpha` as a Pyro ELBO: ``elbo(model, guide)(x_u,
    x_labelled=x_l, y_labelled=y_l)`` returns its value, differentiable. Either part may
    be left out (``x_u=None`` or no labelled keywords).

    Use it with :func:`~pyro_vae.fit` and
    :class:`~pyro_vae.train.batches.SemiSupervisedData`, which pass the batches this way.

    :param aux_weight: :math:`\alpha`, the weight of the classification loss per labelled
        example; 0 leaves the plain sum of the two bounds.
    :param label_site: the name of the label's sample site.
    :param max_plate_nesting: plates around the label site (1: the data plate).
    """

    #: The enumerated bound is not replayed as a recorded graph by ``fit(capture=...)``.
    capturable = False

    def __init__(
        self, aux_weight: float = 50.0, *, label_site: str = "y", max_plate_nesting: int = 1
    ) -> None:
        super().__init__(max_plate_nesting=max_plate_nesting)
        self.aux_weight = check_number("aux_weight", aux_weight, minimum=0)
        self.label_site = label_site
        self.unsupervised = TraceEnum_ELBO(max_plate_nesting=max_plate_nesting)
        self.supervised = Trace_ELBO(max_plate_nesting=max_plate_nesting)

    @staticmethod
    def _batches(
        x: torch.Tensor | None, x_labelled: torch.Tensor | None, y_labelled: torch.Tensor | None
    ) -> torch.Tensor | None:
        """The unlabelled batch, ``None`` when left out; refuses a call without data."""
        if (x_labelled is None) != (y_labelled is None):
            raise ValueError("Pass x_labelled and y_labelled together, or neither.")
        if x is not None and x.shape[0] == 0:
            x = None  # a labelled step of the interleaved schedule
        if x is None and x_labelled is None:
            raise ValueError("Pass unlabelled x, labelled x_labelled/y_labelled, or both.")
        return x

    def differentiable_loss(
        self,
        model: Callable,
        guide: Callable,
        x: torch.Tensor | None = None,
        *,
        x_labelled: torch.Tensor | None = None,
        y_labelled: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """:math:`\\mathcal{J}^\\alpha` of one unlabelled and one labelled batch (either may
        be left out; an unlabelled batch of no examples counts as left out)."""
        x = self._batches(x, x_labelled, y_labelled)
        loss = torch.zeros(())
        if x is not None:
            loss = self.unsupervised.differentiable_loss(model, guide, x)
        if x_labelled is not None:
            loss = loss + self.supervised.differentiable_loss(model, guide, x_labelled, y_labelled)
            if self.aux_weight:
                log_q = label_log_prob(guide, x_labelled, y_labelled, self.label_site)  # type: ignore[arg-type]
                loss = loss - self.aux_weight * log_q
        return loss

    def _get_trace(self, model: Callable, guide: Callable, args: Any, kwargs: Any) -> Any:
        raise NotImplementedError("SemiSupervisedELBO combines two estimators' traces.")

    def loss(
        self,
        model: Callable,
        guide: Callable,
        x: torch.Tensor | None = None,
        *,
        x_labelled: torch.Tensor | None = None,
        y_labelled: torch.Tensor | None = None,
    ) -> float:
        """The value of :meth:`differentiable_loss`, computed without gradients (each
        estimator's own ``loss``: ``TraceEnum_ELBO.differentiable_loss`` refuses to run
        where nothing requires a gradient)."""
        x = self._batches(x, x_labelled, y_labelled)
        total = 0.0
        if x is not None:
            total += self.unsupervised.loss(model, guide, x)
        if x_labelled is not None:
            total += self.supervised.loss(model, guide, x_labelled, y_labelled)
            if self.aux_weight:
                with torch.no_grad():
                    log_q = label_log_prob(guide, x_labelled, y_labelled, self.label_site)  # type: ignore[arg-type]
                total -= self.aux_weight * float(log_q)
        return total

    def loss_and_grads(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> float:
        loss = self.differentiable_loss(model, guide, *args, **kwargs)
        loss.backward()
        return loss.item()
