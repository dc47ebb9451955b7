r"""β-VAE and KL annealing: the latent sites' log-densities weighted by :math:`\beta_t`.

.. math::

    \mathcal{L}_{\beta_t}(x) = \mathbb{E}_{q(z \mid x)}[\log p(x \mid z)]
        - \beta_t\, \mathrm{KL}(q(z \mid x) \,\|\, p(z)),
    \qquad \beta_t = \varepsilon + (\beta - \varepsilon) \min(1, t / T).

:math:`\beta > 1` is the β-VAE of Higgins et al. (2017) [1]; the linear warm-up from a
small :math:`\varepsilon` to :math:`\beta` over :math:`T` optimizer steps is the KL
annealing of Bowman et al. (2016) [2] and Sønderby et al. (2016) [3].

The weight is applied the Pyro way, by scaling every **latent** sample site (not the
observed ``"x"``) in both the model and the guide with ``poutine.scale``. With
:class:`~pyro.infer.Trace_ELBO` the Monte Carlo KL :math:`\log q - \log p` is then
multiplied by :math:`\beta_t`; :class:`~pyro.infer.TraceMeanField_ELBO` multiplies its
analytic KL by the guide site's scale; with :class:`~pyro.infer.TraceGraph_ELBO` the
score-function term is left unscaled (Pyro never scales it) while its downstream cost
carries the weighted terms, which is the gradient of :math:`\mathcal{L}_{\beta_t}`.
``poutine.scale(0)`` raises, hence :math:`\varepsilon > 0`.

1. I. Higgins et al., *β-VAE: Learning basic visual concepts with a constrained
   variational framework*, ICLR 2017.
2. S. R. Bowman et al., *Generating sentences from a continuous space*, CoNLL 2016.
3. C. K. Sønderby et al., *Ladder variational autoencoders*, NeurIPS 2016.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import torch
from pyro.infer import ELBO, RenyiELBO, TraceMeanField_ELBO
from pyro.poutine.scale_messenger import ScaleMessenger

__all__ = ["BetaELBO", "scale_latents"]


class _LatentScaleMessenger(ScaleMessenger):
    """``poutine.scale`` restricted to latent (unobserved) sample sites."""

    def _process_message(self, msg: Any) -> None:
        if msg["type"] == "sample" and not msg["is_observed"]:
            super()._process_message(msg)


def scale_latents(fn: Callable, scale: float) -> Callable:
    r"""Wrap a Pyro model or guide so that the log-density of each latent sample site is
    multiplied by ``scale`` (observed sites are left as they are).

    Applied to both model and guide, this weights the KL term of the ELBO by ``scale``.

    :param fn: a Pyro model or guide.
    :param scale: a positive weight (``poutine.scale`` refuses 0).
    """
    _check_positive("scale", scale)

    @functools.wraps(fn)
    def scaled(*args: Any, **kwargs: Any) -> Any:
        with _LatentScaleMessenger(scale):
            return fn(*args, **kwargs)

    return scaled


class BetaELBO(ELBO):
    r"""An ELBO whose KL term is weighted by :math:`\beta_t` (β-VAE, KL warm-up).

    It wraps another ELBO: each evaluation runs that ELBO on the model and guide with their
    latent sites scaled by the current weight (:func:`scale_latents`). Pass it to
    :func:`~pyro_vae.fit` as the objective::

        fit(vae.model, vae.guide, data, objective=BetaELBO(beta=4.0))            # β-VAE
        fit(vae.model, vae.guide, data, objective=BetaELBO(warmup_steps=5000))   # annealing

    The schedule follows the global optimizer step: :func:`~pyro_vae.fit` calls
    :meth:`set_step` with the number of steps already taken before every step, and that
    number is checkpointed, so a resumed run continues the warm-up exactly where it
    stopped. The validation and test terms that ``fit`` reports are those of the plain
    ELBO (the unwrapped model and guide); ``train_elbo`` is the weighted objective.

    Refused: wrapping :class:`~pyro.infer.RenyiELBO` / :class:`~pyro_vae.objectives.IWAE`,
    whose log-sum-exp would take the scaled log-densities inside it (not a scaled bound),
    and wrapping another :class:`BetaELBO`.

    :param elbo: the estimator to weight (default :class:`~pyro.infer.TraceMeanField_ELBO`,
        analytic KL where registered).
    :param beta: the final weight :math:`\beta > 0` (1 is the plain ELBO).
    :param warmup_steps: the number :math:`T` of optimizer steps of the linear warm-up
        (0: constant :math:`\beta`).
    :param start: the weight :math:`\varepsilon > 0` at step 0 of the warm-up.
    """

    def __init__(
        self,
        elbo: ELBO | None = None,
        *,
        beta: float = 1.0,
        warmup_steps: int = 0,
        start: float = 1e-3,
    ) -> None:
        elbo = TraceMeanField_ELBO() if elbo is None else elbo
        if isinstance(elbo, RenyiELBO):
            raise ValueError(
                "KL weighting (beta / warm-up) cannot be combined with the IWAE/Renyi bound: "
                "poutine.scale multiplies log-densities inside its log-sum-exp, which is not "
                "a weighted bound. Use objective 'elbo' or 'meanfield' with beta/warm-up, or "
                "IWAE without them."
            )
        if isinstance(elbo, BetaELBO):
            raise ValueError("This objective is already a BetaELBO; wrap the plain ELBO once.")
        if not isinstance(elbo, ELBO):
            raise ValueError(
                f"BetaELBO wraps a pyro.infer.ELBO instance, got {type(elbo).__name__}; "
                "pass e.g. pyro.infer.TraceMeanField_ELBO()."
            )
        _check_positive("beta", beta)
        _check_positive("start", start)
        if not isinstance(warmup_steps, int) or isinstance(warmup_steps, bool) or warmup_steps < 0:
            raise ValueError(f"warmup_steps must be an integer >= 0, got {warmup_steps!r}.")
        super().__init__(
            num_particles=elbo.num_particles,
            max_plate_nesting=elbo.max_plate_nesting,
            vectorize_particles=elbo.vectorize_particles,
        )
        self.elbo = elbo
        self.beta = float(beta)
        self.warmup_steps = warmup_steps
        self.start = float(start)
        self.step = 0

    def weight_at(self, step: int) -> float:
        r"""The weight :math:`\beta_t` after ``step`` optimizer steps."""
        if step >= self.warmup_steps:
            return self.beta
        return self.start + (self.beta - self.start) * step / self.warmup_steps

    @property
    def weight(self) -> float:
        r"""The current weight :math:`\beta_t`."""
        return self.weight_at(self.step)

    def set_step(self, step: int) -> None:
        """Move the schedule to ``step`` optimizer steps taken (``fit`` calls this)."""
        if not isinstance(step, int) or step < 0:
            raise ValueError(f"step must be an integer >= 0, got {step!r}.")
        self.step = step

    def _weighted(self, model: Callable, guide: Callable) -> tuple[Callable, Callable]:
        w = self.weight
        return scale_latents(model, w), scale_latents(guide, w)

    def loss(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> float:
        return self.elbo.loss(*self._weighted(model, guide), *args, **kwargs)  # type: ignore[attr-defined]

    def loss_and_grads(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> float:
        return self.elbo.loss_and_grads(*self._weighted(model, guide), *args, **kwargs)  # type: ignore[attr-defined]

    def differentiable_loss(
        self, model: Callable, guide: Callable, *args: Any, **kwargs: Any
    ) -> torch.Tensor:
        return self.elbo.differentiable_loss(*self._weighted(model, guide), *args, **kwargs)  # type: ignore[attr-defined]

    def _get_trace(self, model: Callable, guide: Callable, args: Any, kwargs: Any) -> Any:
        return self.elbo._get_trace(*self._weighted(model, guide), args, kwargs)

    def __repr__(self) -> str:
        return (
            f"BetaELBO({type(self.elbo).__name__}(), beta={self.beta}, "
            f"warmup_steps={self.warmup_steps}, start={self.start})"
        )


def _check_positive(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a positive number, got {value!r}.")
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(
            f"{name} must be a positive finite number, got {value!r} (poutine.scale(0) "
            "raises, so a warm-up starts at a small start > 0)."
        )
