r"""Training objectives: Pyro ELBO estimators.

.. math::

    \log p(x) \;=\; \underbrace{\mathbb{E}_{q(z\mid x)}[\log p(x\mid z)]
    - \mathrm{KL}(q(z\mid x)\,\|\,p(z))}_{\mathrm{ELBO}}
    \;+\; \mathrm{KL}(q(z\mid x)\,\|\,p(z\mid x)).

``"elbo"`` is :class:`pyro.infer.Trace_ELBO` (Monte Carlo KL); ``"meanfield"`` is
:class:`pyro.infer.TraceMeanField_ELBO`, which uses the analytic KL where one is registered
(e.g. Normal against Normal) and falls back to Monte Carlo otherwise.
"""

from __future__ import annotations

from pyro.infer import ELBO, Trace_ELBO, TraceMeanField_ELBO

__all__ = ["OBJECTIVES", "make_objective"]

#: Names accepted by :func:`make_objective` and by ``fit(objective=...)``.
OBJECTIVES: dict[str, type[ELBO]] = {"elbo": Trace_ELBO, "meanfield": TraceMeanField_ELBO}


def make_objective(objective: str | ELBO = "elbo", num_particles: int = 1) -> ELBO:
    """Return an ELBO instance.

    :param objective: a name from :data:`OBJECTIVES`, or an :class:`~pyro.infer.ELBO`
        instance, which is returned unchanged.
    :param num_particles: Monte Carlo samples per example (vectorized when > 1); only
        used with a name.
    """
    if isinstance(objective, ELBO):
        return objective
    if not isinstance(num_particles, int) or num_particles < 1:
        raise ValueError(f"num_particles must be an integer >= 1, got {num_particles!r}.")
    try:
        cls = OBJECTIVES[objective]
    except (KeyError, TypeError):
        raise ValueError(
            f"Unknown objective {objective!r}: use one of {sorted(OBJECTIVES)} or pass an "
            "ELBO instance such as pyro.infer.Trace_ELBO()."
        ) from None
    return cls(num_particles=num_particles, vectorize_particles=num_particles > 1)
