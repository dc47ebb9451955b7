r"""Importance-sampled marginal log-likelihood :math:`\log p(x)` of any model/guide pair.

The estimator (Burda, Grosse & Salakhutdinov, 2015, *Importance Weighted Autoencoders*,
arXiv:1509.00519; see also Rezende, Mohamed & Wierstra, 2014, §6) uses the guide as
proposal:

.. math::

    \widehat{\log p}(x) = \log \frac{1}{K} \sum_{k=1}^{K}
        \frac{p(x, z_k)}{q(z_k \mid x)}, \qquad z_k \sim q(z \mid x).

Its expectation is the IWAE bound :math:`\mathcal{L}_K \le \log p(x)`, which increases with
:math:`K` from the ELBO (:math:`K=1`) to :math:`\log p(x)`; the same number is therefore
both the IWAE bound's estimate and the standard log-likelihood estimate reported for VAEs.
The weights come from Pyro traces (the model replayed on the guide's sample), so the
estimator holds for any prior, likelihood and guide, flows included.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pyro
import torch

from pyro_vae import distributed
from pyro_vae.inference.particles import log_weights, max_plate_nesting, particle_traces

__all__ = ["LogLikelihood", "log_likelihood"]


@dataclass(frozen=True)
class LogLikelihood:
    r"""Per-example estimates :math:`\widehat{\log p}(x_n)` and their standard errors.

    :ivar estimate: ``(N,)`` estimates in nats (float64).
    :ivar stderr: ``(N,)`` delta-method standard errors of the estimates (Monte Carlo error
        over the :math:`K` samples; ``inf`` when :math:`K = 1`).
    :ivar num_samples: :math:`K`.
    """

    estimate: torch.Tensor
    stderr: torch.Tensor
    num_samples: int

    @property
    def mean(self) -> float:
        """The dataset mean of the estimates (nats per example)."""
        return self.estimate.mean().item()

    @property
    def mean_stderr(self) -> float:
        r"""Monte Carlo standard error of :attr:`mean`,
        :math:`\sqrt{\sum_n \mathrm{se}_n^2} / N` (the examples' samples are independent)."""
        return (self.stderr.square().sum().sqrt() / self.stderr.numel()).item()


class _LogMeanExp:
    r"""Streaming :math:`\log \frac{1}{K}\sum_k w_k` and the delta-method standard error,
    from log-weights arriving in chunks of particles. Running sums
    :math:`S_1 = \sum_k e^{\ell_k - m}` and :math:`S_2 = \sum_k e^{2(\ell_k - m)}` are kept
    relative to the running maximum :math:`m`, in float64."""

    def __init__(self, num_examples: int, device: torch.device) -> None:
        opts: dict[str, Any] = {"dtype": torch.float64, "device": device}
        self.max = torch.full((num_examples,), -math.inf, **opts)
        self.s1 = torch.zeros(num_examples, **opts)
        self.s2 = torch.zeros(num_examples, **opts)
        self.count = 0

    def update(self, log_w: torch.Tensor) -> None:
        """Add a ``(k, N)`` chunk of log-weights."""
        log_w = log_w.to(torch.float64)
        if torch.isnan(log_w).any() or torch.isposinf(log_w).any():
            raise ValueError(
                "An importance weight is NaN or +inf: the model or guide returned an invalid "
                "log-density. Check the data lies in the likelihood's support and that the "
                "guide's scale is positive."
            )
        new_max = torch.maximum(self.max, log_w.max(0).values)
        finite = torch.isfinite(new_max)
        shift = torch.where(finite, new_max, torch.zeros_like(new_max))
        old = torch.where(torch.isfinite(self.max), (self.max - shift).exp(), 0.0)
        rel = (log_w - shift).exp()
        self.s1 = self.s1 * old + rel.sum(0)
        self.s2 = self.s2 * old.square() + rel.square().sum(0)
        self.max = new_max
        self.count += log_w.shape[0]

    def result(self) -> tuple[torch.Tensor, torch.Tensor]:
        k = self.count
        estimate = self.s1.log() + self.max - math.log(k)
        if k == 1:
            return estimate, torch.full_like(estimate, math.inf)
        # Var(log mean w) ≈ Var(w) / (K mean(w)^2), with the unbiased sample variance.
        rel_var = (k * self.s2 / self.s1.square() - 1.0).clamp(min=0.0) / (k - 1)
        # Every weight zero (log p(x) = -inf as far as the samples tell): no spread to report.
        return estimate, torch.where(self.s1 > 0, rel_var.sqrt(), math.inf)


def _check_count(name: str, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}.")


@torch.no_grad()
def log_likelihood(
    model: Callable,
    guide: Callable,
    x: torch.Tensor,
    y: torch.Tensor | None = None,
    *,
    num_samples: int = 1000,
    batch_size: int = 100,
    particle_chunk: int = 100,
    shard: bool = True,
) -> LogLikelihood:
    r"""Importance-sampled :math:`\log p(x)` per example, with its standard error.

    .. math::

        \widehat{\log p}(x) = \log \frac{1}{K} \sum_{k=1}^{K} w_k, \qquad
        w_k = \frac{p(x, z_k)}{q(z_k \mid x)},\ z_k \sim q(z \mid x),

    computed from Pyro traces: the guide runs inside a plate of ``particle_chunk``
    particles (to the left of the program's own plates, as in Pyro's vectorized ELBOs)
    and the model is replayed on its trace. Chunks over particles and examples are
    combined by a streaming log-sum-exp, so memory is bounded by
    ``batch_size * particle_chunk`` forward passes whatever :math:`K` and :math:`N` are.

    The expectation of the estimate is the IWAE bound :math:`\mathcal{L}_K` (Burda et al.,
    2015): :math:`\mathcal{L}_1` is the ELBO, and :math:`\mathcal{L}_K \uparrow \log p(x)`.
    The standard error is the delta-method one,
    :math:`\mathrm{se} = \hat\sigma_w / (\sqrt{K}\, \bar w)`; it measures the Monte Carlo
    spread and cannot reveal weights the guide never proposes, so a small s.e. with a poor
    guide is still a lower bound in expectation.

    Conventions: every observed site counts (a model that observes ``"y"`` too gives
    :math:`\log p(x, y)`; a conditional model given ``y`` gives :math:`\log p(x \mid y)`).
    Log-densities are masked but not scaled, so subsampling or KL-annealing scales do not
    change the result. Every sample site must be inside plate ``"data"``.

    :param model: Pyro model with observed site ``"x"`` in plate ``"data"``.
    :param guide: the matching guide (the proposal).
    :param x: data ``(N, ...)``.
    :param y: optional labels, passed to a model/guide that takes ``y``.
    :param num_samples: :math:`K`, importance samples per example.
    :param batch_size: examples per forward pass.
    :param particle_chunk: particles per forward pass.
    :param shard: under :mod:`torch.distributed` (e.g. ``torchrun``), let each rank estimate
        a contiguous slice of the examples and gather the results, so that every rank
        returns the estimates for all of ``x``, in order. Every rank must call with the
        same ``x``. ``False`` (or a single process) estimates every example locally.
    :returns: a :class:`LogLikelihood` with ``estimate`` and ``stderr`` of shape ``(N,)``.
    :raises ValueError: on empty data, non-positive counts, a global latent, or NaN weights.
    """
    for name, value in (
        ("num_samples", num_samples),
        ("batch_size", batch_size),
        ("particle_chunk", particle_chunk),
    ):
        _check_count(name, value)
    if x.shape[0] == 0:
        raise ValueError("log_likelihood needs at least one example; x is empty.")
    if y is not None and y.shape[0] != x.shape[0]:
        raise ValueError(f"x has {x.shape[0]} examples but y has {y.shape[0]}; pass matching y.")
    nesting = max_plate_nesting(model, guide, x[:batch_size], _rows(y, 0, batch_size))
    ctx = distributed.context()
    if ctx is not None and ctx.world_size > 1 and shard:
        # each rank estimates its contiguous slice of the examples; gathered in order
        rows = distributed.shard(x.shape[0], ctx)
        local = _estimate(
            model,
            guide,
            x[rows],
            None if y is None else y[rows],
            num_samples,
            batch_size,
            particle_chunk,
            nesting,
        )
        n = x.shape[0]
        return LogLikelihood(
            distributed.gather_rows(local.estimate, n, ctx),
            distributed.gather_rows(local.stderr, n, ctx),
            num_samples,
        )
    return _estimate(model, guide, x, y, num_samples, batch_size, particle_chunk, nesting)


def _estimate(
    model: Callable,
    guide: Callable,
    x: torch.Tensor,
    y: torch.Tensor | None,
    num_samples: int,
    batch_size: int,
    particle_chunk: int,
    nesting: int,
) -> LogLikelihood:
    """The single-process estimator of :func:`log_likelihood` on all rows of ``x``.

    Pyro's argument validation (if enabled) runs on the first forward pass only, as in
    :func:`~pyro_vae.fit`: it checks every distribution's parameters elementwise, about a
    tenth of the time of a pass; the weights are still checked for NaN on every chunk."""
    empty = x.new_zeros(0, dtype=torch.float64)
    estimates, stderrs = [empty], [empty]  # a rank's shard may be empty
    first = True
    for start in range(0, x.shape[0], batch_size):
        xb, yb = x[start : start + batch_size], _rows(y, start, batch_size)
        acc = _LogMeanExp(xb.shape[0], x.device)
        for k_start in range(0, num_samples, particle_chunk):
            k = min(particle_chunk, num_samples - k_start)
            with contextlib.nullcontext() if first else pyro.validation_enabled(False):
                model_tr, guide_tr = particle_traces(model, guide, xb, yb, k, nesting)
            first = False
            acc.update(log_weights(model_tr, guide_tr, xb.shape[0], nesting))
        est, se = acc.result()
        estimates.append(est)
        stderrs.append(se)
    return LogLikelihood(torch.cat(estimates), torch.cat(stderrs), num_samples)


def _rows(y: torch.Tensor | None, start: int, size: int) -> torch.Tensor | None:
    return None if y is None else y[start : start + size]
