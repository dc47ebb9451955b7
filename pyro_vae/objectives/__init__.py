r"""Training objectives: Pyro ELBO estimators and their variants.

.. math::

    \log p(x) \;=\; \underbrace{\mathbb{E}_{q(z\mid x)}[\log p(x\mid z)]
    - \mathrm{KL}(q(z\mid x)\,\|\,p(z))}_{\mathrm{ELBO}}
    \;+\; \mathrm{KL}(q(z\mid x)\,\|\,p(z\mid x)).

Each objective is an :class:`~pyro.infer.ELBO` (usable as ``elbo(model, guide)``, an
``nn.Module``, as :func:`~pyro_vae.fit` does), one idea per module:

- ``"elbo"``: :class:`~pyro.infer.Trace_ELBO` (Monte Carlo KL);
- ``"meanfield"``: :class:`~pyro.infer.TraceMeanField_ELBO`, the analytic KL where one is
  registered (e.g. Normal against Normal), Monte Carlo otherwise;
- ``"iwae"``: :class:`~pyro_vae.objectives.iwae.IWAE`, the importance weighted bound
  (``RenyiELBO(alpha=0)``) with ``num_particles`` samples;
- :class:`~pyro_vae.objectives.beta.BetaELBO`: β-VAE and linear KL warm-up;
- :class:`~pyro_vae.objectives.free_bits.FreeBitsELBO`: a per-dimension KL floor;
- :class:`~pyro_vae.objectives.score_function.ScoreFunctionELBO`: score-function gradients
  (:class:`~pyro.infer.TraceGraph_ELBO` on a non-reparameterized guide);
- :class:`~pyro_vae.objectives.semisupervised.SemiSupervisedELBO`: the M2 objective, the
  enumerated unlabelled bound plus the labelled bound and a classification term.
"""

from __future__ import annotations

from pyro.infer import ELBO, Trace_ELBO, TraceMeanField_ELBO

from pyro_vae.objectives.beta import BetaELBO, scale_latents
from pyro_vae.objectives.free_bits import FreeBitsELBO
from pyro_vae.objectives.iwae import IWAE
from pyro_vae.objectives.score_function import ScoreFunctionELBO, non_reparameterized
from pyro_vae.objectives.semisupervised import SemiSupervisedELBO

__all__ = [
    "IWAE",
    "OBJECTIVES",
    "BetaELBO",
    "FreeBitsELBO",
    "ScoreFunctionELBO",
    "SemiSupervisedELBO",
    "make_objective",
    "non_reparameterized",
    "scale_latents",
]

#: Names accepted by :func:`make_objective` and by ``fit(objective=...)``.
OBJECTIVES: dict[str, type[ELBO]] = {
    "elbo": Trace_ELBO,
    "meanfield": TraceMeanField_ELBO,
    "iwae": IWAE,
}


def make_objective(
    objective: str | ELBO = "elbo",
    num_particles: int = 1,
    *,
    beta: float = 1.0,
    warmup_steps: int = 0,
    start: float = 1e-3,
    free_bits: float = 0.0,
    score_function: bool = False,
) -> ELBO:
    r"""Return an ELBO instance.

    :param objective: a name from :data:`OBJECTIVES`, or an :class:`~pyro.infer.ELBO`
        instance, which is returned unchanged (or wrapped in :class:`BetaELBO` when
        ``beta``/``warmup_steps`` are given).
    :param num_particles: Monte Carlo samples per example (vectorized when > 1), the
        :math:`K` of ``"iwae"``; only used with a name.
    :param beta: the KL weight :math:`\beta` (:class:`BetaELBO`); 1 is the ELBO.
    :param warmup_steps: steps of linear KL warm-up from ``start`` to ``beta``.
    :param start: the KL weight at step 0 of the warm-up (> 0).
    :param free_bits: the per-dimension KL floor :math:`\lambda` in nats
        (:class:`FreeBitsELBO`); 0 disables it.
    :param score_function: train the guide with score-function gradients
        (:class:`ScoreFunctionELBO`) instead of reparameterized ones.
    :raises ValueError: for unknown names and for refused combinations: IWAE with KL
        weighting, free bits or score-function gradients (the weights would be scaled
        inside its log-sum-exp; free bits has no per-sample bound; IWAE's gradient here is
        reparameterized), score-function gradients with ``"meanfield"`` (TraceGraph has
        no analytic-KL variant) or with free bits (the floor needs a reparameterized
        guide), and options together with an ELBO instance other than KL weighting.
    """
    weighted = beta != 1.0 or warmup_steps != 0
    if isinstance(objective, ELBO):
        if free_bits or score_function:
            raise ValueError(
                "free_bits and score_function choose the estimator; pass them with an "
                "objective name ('elbo' or 'meanfield'), not with an ELBO instance."
            )
        if weighted:
            return BetaELBO(objective, beta=beta, warmup_steps=warmup_steps, start=start)
        return objective
    if not isinstance(num_particles, int) or isinstance(num_particles, bool) or num_particles < 1:
        raise ValueError(f"num_particles must be an integer >= 1, got {num_particles!r}.")
    if objective not in OBJECTIVES:
        raise ValueError(
            f"Unknown objective {objective!r}: use one of {sorted(OBJECTIVES)} or pass an "
            "ELBO instance such as pyro.infer.Trace_ELBO()."
        )
    vectorize = num_particles > 1
    if objective == "iwae":
        for flag, on, why in (
            (
                "beta / warm-up",
                weighted,
                "poutine.scale would multiply the log-densities inside its log-sum-exp, "
                "which is not a KL-weighted bound",
            ),
            ("free bits", bool(free_bits), "the bound has no per-dimension KL term to floor"),
            (
                "score-function gradients",
                score_function,
                "its gradient is the reparameterized IWAE gradient",
            ),
        ):
            if on:
                raise ValueError(
                    f"The IWAE objective cannot be combined with {flag}: {why}. Use objective "
                    "'elbo' or 'meanfield' for that, or IWAE alone."
                )
        return IWAE(num_particles=num_particles, vectorize_particles=True)
    if score_function:
        if objective != "elbo":
            raise ValueError(
                "Score-function gradients use TraceGraph_ELBO, which has a Monte Carlo KL "
                f"only; use objective 'elbo' with score_function, not {objective!r}."
            )
        if free_bits:
            raise ValueError(
                "Free bits needs a reparameterized guide; drop score_function or free_bits."
            )
        elbo: ELBO = ScoreFunctionELBO(num_particles, vectorize_particles=vectorize)
    elif free_bits:
        elbo = FreeBitsELBO(free_bits, num_particles, vectorize_particles=vectorize)
    else:
        elbo = OBJECTIVES[objective](num_particles=num_particles, vectorize_particles=vectorize)
    if weighted:
        elbo = BetaELBO(elbo, beta=beta, warmup_steps=warmup_steps, start=start)
    return elbo
