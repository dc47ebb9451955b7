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

Error bars and diagnostics: the weights are often heavy-tailed (a guide lighter-tailed than
the posterior proposes the large weights rarely), and then the delta-method variance
:math:`\widehat{\mathrm{Var}}(w) / (K \bar w^2)` is too small, because the sample variance of
:math:`K` heavy-tailed weights rarely contains the large weights that make the estimate
jump. As in Pareto-smoothed importance sampling (PSIS; Vehtari, Simpson, Gelman, Yao &
Gabry, 2024, *JMLR* 25(72), arXiv:1507.02646), the largest weights of every example are
fitted by a generalized Pareto distribution. Its shape :math:`\hat k` is reported as a
diagnostic, and the standard error is the spread of the estimate over resamples of
:math:`K` weights from the Pareto-smoothed weight distribution (the observed weights below
the tail, the fitted Pareto tail above), which can draw weights larger than any observed.
The standard error is that of the Monte Carlo noise given the data; it does not include
the estimator's downward bias.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pyro
import torch

from pyro_vae import distributed
from pyro_vae._checks import check_count
from pyro_vae.inference.particles import particle_log_weights, warn_if_looping
from pyro_vae.inference.program import Program, read_program

__all__ = [
    "PARETO_K_THRESHOLD",
    "PARETO_K_WARN_FRACTION",
    "ImportanceWeightWarning",
    "LogLikelihood",
    "log_likelihood",
]

#: Pareto :math:`\hat k` above which an importance-sampling estimate is unreliable
#: (Vehtari et al., 2024): the weights' variance is infinite and the error decreases far
#: more slowly than :math:`1/\sqrt{K}`.
PARETO_K_THRESHOLD = 0.7
#: :func:`log_likelihood` warns when more than this fraction of the examples has
#: :math:`\hat k >` :data:`PARETO_K_THRESHOLD`.
PARETO_K_WARN_FRACTION = 0.05
_MIN_TAIL = 5  # the generalized Pareto fit needs this many tail weights (K >= 21)
_PRIOR_SHAPE, _PRIOR_WEIGHT = 0.5, 10  # the fit's prior on k: 0.5, worth 10 observations
_MIN_POOLED = 10  # examples with a fitted tail needed to pool the shapes (empirical Bayes)
_REPLICATES = 200  # resamples of K weights per example, for the standard error
_SEED = 0x5EED  # the resampling has its own generator: the global RNG stream is untouched
_BUDGET = 1 << 22  # elements per vectorized pass of the fit and the resampling
_MAX_SIMULATED_SHAPE = 10.0  # exp(k E) cannot overflow float64 for E below 70


class ImportanceWeightWarning(UserWarning):
    """The importance weights of many examples are too heavy-tailed (Pareto
    :math:`\\hat k > 0.7`) for the estimate of :math:`\\log p(x)` to be reliable."""


@dataclass(frozen=True)
class LogLikelihood:
    r"""Per-example estimates :math:`\widehat{\log p}(x_n)`, their Monte Carlo standard
    errors and the Pareto :math:`\hat k` diagnostic of their importance weights.

    :ivar estimate: ``(N,)`` estimates in nats (float64).
    :ivar stderr: ``(N,)`` Monte Carlo standard errors of the estimates given the data, from
        resampling the Pareto-smoothed weights (see :func:`log_likelihood`); the
        delta-method one where no tail could be fitted; ``inf`` when :math:`K = 1`.
    :ivar num_samples: :math:`K`.
    :ivar pareto_k: ``(N,)`` Pareto shape :math:`\hat k` of each example's importance
        weights (float64): below 0.5 the weights have a finite variance, above
        :data:`PARETO_K_THRESHOLD` (0.7) the estimate is unreliable. ``NaN`` when
        :math:`K < 21` (too few weights to fit a tail) or every weight is zero; ``-inf``
        when the largest weights are tied (a flat top, e.g. the exact posterior as guide);
        ``inf`` when a handful of weights carry all the mass.
    """

    estimate: torch.Tensor
    stderr: torch.Tensor
    num_samples: int
    pareto_k: torch.Tensor

    @property
    def mean(self) -> float:
        """The dataset mean of the estimates (nats per example)."""
        return self.estimate.mean().item()

    @property
    def mean_stderr(self) -> float:
        r"""Monte Carlo standard error of :attr:`mean` given the data,
        :math:`\sqrt{\sum_n \mathrm{se}_n^2} / N` (the examples' samples are independent):
        the spread of :attr:`mean` over independent reruns on the same examples. It does
        not include the estimator's bias, which is downward
        (:math:`\mathbb{E}[\widehat{\log p}] \le \log p`), nor the sampling of the examples
        from the data distribution."""
        return (self.stderr.square().sum().sqrt() / self.stderr.numel()).item()

    @property
    def pareto_k_max(self) -> float | None:
        r"""The largest :math:`\hat k` over the examples; ``None`` when no example has
        one (:math:`K < 21`)."""
        k = self.pareto_k[~torch.isnan(self.pareto_k)]
        return k.max().item() if k.numel() else None

    def pareto_k_fraction_above(self, threshold: float = PARETO_K_THRESHOLD) -> float | None:
        r"""The fraction of the examples with :math:`\hat k >` ``threshold``, among those
        that have one; ``None`` when none has (:math:`K < 21`)."""
        k = self.pareto_k[~torch.isnan(self.pareto_k)]
        return (k > threshold).double().mean().item() if k.numel() else None


def _tail_length(num_samples: int) -> int:
    r"""Weights in the Pareto tail: :math:`\lceil \min(K/5, 3\sqrt{K}) \rceil` (Vehtari et
    al., 2024, with relative efficiency 1 for independent draws)."""
    return math.ceil(min(num_samples / 5.0, 3.0 * math.sqrt(num_samples)))


def _fit_generalized_pareto(y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Shape :math:`\hat k` and scale :math:`\hat\sigma` of a generalized Pareto
    distribution fitted to each row of ``y`` (positive exceedances, ascending), by the
    empirical Bayes estimate of Zhang & Stephens (2009, *Technometrics* 51(3)), with the
    shape shrunk towards 0.5 by a prior worth 10 observations (Vehtari et al., 2024).
    Rows are processed in slices so that memory stays bounded."""
    rows, n = y.shape
    grid = 30 + int(math.sqrt(n))
    j = torch.arange(1, grid + 1, dtype=y.dtype, device=y.device)
    step = max(1, _BUDGET // (grid * n))
    shapes, scales = [], []
    for start in range(0, rows, step):
        ys = y[start : start + step]
        quartile = ys[:, int(n / 4 + 0.5) - 1 : int(n / 4 + 0.5)]
        # candidate values of b = -k / sigma, between 1 / max(y) and below
        b = 1.0 / ys[:, -1:] + (1.0 - torch.sqrt(grid / (j - 0.5))) / (3.0 * quartile)
        k = torch.log1p(-b.unsqueeze(-1) * ys.unsqueeze(1)).mean(-1)
        profile = n * (torch.log(-b / k) - k - 1.0)  # profile log-likelihood of each b
        profile = torch.where(torch.isnan(profile), -math.inf, profile)
        weight = torch.softmax(profile, -1)
        weight = torch.where(weight >= 10 * torch.finfo(y.dtype).eps, weight, 0.0)
        b_post = (weight * b).sum(-1) / weight.sum(-1)
        k_post = torch.log1p(-b_post.unsqueeze(-1) * ys).mean(-1)
        scales.append(-k_post / b_post)
        shapes.append((n * k_post + _PRIOR_WEIGHT * _PRIOR_SHAPE) / (n + _PRIOR_WEIGHT))
    return torch.cat(shapes), torch.cat(scales)


class _LogMeanExp:
    r"""Streaming :math:`\log \frac{1}{K}\sum_k w_k`, its standard error and the Pareto
    tail of the weights, from log-weights arriving in chunks of particles.

    Running sums :math:`S_1 = \sum_k e^{\ell_k - m}` and :math:`S_2 = \sum_k e^{2(\ell_k - m)}`
    are kept relative to the running maximum :math:`m`, in float64, with the largest
    :math:`M + 1` log-weights of every example (:math:`M` = :func:`_tail_length`) and the
    moments of the log-weights: memory is :math:`(M + 8) N` numbers whatever :math:`K`
    is."""

    def __init__(self, num_examples: int, device: torch.device, num_samples: int) -> None:
        opts: dict[str, Any] = {"dtype": torch.float64, "device": device}
        self.max = torch.full((num_examples,), -math.inf, **opts)
        self.s1 = torch.zeros(num_examples, **opts)
        self.s2 = torch.zeros(num_examples, **opts)
        self.tail_length = _tail_length(num_samples)
        self.top = torch.empty(0, num_examples, **opts)  # descending along dim 0
        self.count = 0
        # moments of the finite log-weights, about the first chunk's largest one
        self.center = torch.zeros(num_examples, **opts)
        self.log_sums = torch.zeros(3, num_examples, **opts)  # count, sum, sum of squares

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
        if self.count == 0:
            self.center = torch.where(finite, new_max, 0.0)
        seen = torch.isfinite(log_w)
        centered = torch.where(seen, log_w - self.center, 0.0)
        self.log_sums += torch.stack([seen.sum(0), centered.sum(0), centered.square().sum(0)])
        self.count += log_w.shape[0]
        merged = torch.cat([self.top, log_w])
        keep = min(self.tail_length + 1, merged.shape[0])
        self.top = merged.topk(keep, dim=0).values

    def estimate(self) -> torch.Tensor:
        """:math:`\\log \\frac{1}{K}\\sum_k w_k` per example."""
        return self.s1.log() + self.max - math.log(self.count)

    def delta_stderr(self) -> torch.Tensor:
        r"""The delta-method standard error :math:`\hat\sigma_w / (\sqrt{K}\,\bar w)`, with
        the unbiased sample variance; ``inf`` when :math:`K = 1` or every weight is zero."""
        k = self.count
        if k == 1:
            return torch.full_like(self.s1, math.inf)
        rel_var = (k * self.s2 / self.s1.square() - 1.0).clamp(min=0.0) / (k - 1)
        return torch.where(self.s1 > 0, rel_var.sqrt(), math.inf)

    def pareto_tail(self) -> dict[str, torch.Tensor]:
        r"""The generalized Pareto fit to the weights above the cutoff (the
        :math:`(M+1)`-th largest weight), relative to the largest weight: ``shape``
        (:math:`\hat k`), ``scale``, ``cutoff`` (the cutoff weight), ``count`` (weights
        strictly above it), ``sum`` and ``sum_sq`` (their sum and sum of squares)."""
        n = self.max.shape[0]
        opts: dict[str, Any] = {"dtype": torch.float64, "device": self.max.device}
        out = {
            name: torch.full((n,), math.nan, **opts)
            for name in ("shape", "scale", "cutoff", "count", "sum", "sum_sq")
        }
        m = self.tail_length
        if m < _MIN_TAIL or n == 0:
            return out
        has_weight = torch.isfinite(self.max)
        rel = torch.where(has_weight, self.top - self.max, -math.inf)
        # as in PSIS: a cutoff below the smallest positive float is the smallest one
        cutoff = rel[m].clamp(min=math.log(torch.finfo(torch.float64).tiny)).exp()
        w = rel[:m].exp()  # descending
        above = w > cutoff
        count = above.sum(0)
        out["cutoff"], out["count"] = cutoff, count.double()
        out["sum"] = torch.where(above, w, 0.0).sum(0)
        out["sum_sq"] = torch.where(above, w.square(), 0.0).sum(0)
        y = (w - cutoff).flip(0).T  # ascending exceedances; those at or below 0 come first
        shape, scale = out["shape"], out["scale"]
        whole = has_weight & (count == m)
        if whole.any():
            shape[whole], scale[whole] = _fit_generalized_pareto(y[whole])
        # ties at the cutoff (or zero weights) leave a shorter tail: fit what is above it,
        # rows with the same tail length together
        for c in torch.unique(count[has_weight & (count < m)]).tolist():
            rows = has_weight & (count == c)
            if c >= _MIN_TAIL:
                shape[rows], scale[rows] = _fit_generalized_pareto(y[rows][:, m - c :])
            else:
                # too few distinct large weights: a flat top (bounded weights, k = -inf)
                # if the M+1 largest are within a factor 2, else a few dominate (k = inf)
                flat = cutoff[rows] >= 0.5
                shape[rows] = torch.where(flat, -math.inf, math.inf).to(shape.dtype)
        return out

    def log_weight_sd(self, below_tail: bool = True) -> torch.Tensor:
        """Standard deviation of the finite log-weights of each example, leaving out the
        :math:`M + 1` largest (those of the Pareto fit) unless ``below_tail`` is false;
        ``NaN`` with fewer than two."""
        n, total, squares = self.log_sums
        if below_tail:
            kept = torch.isfinite(self.top)
            top = torch.where(kept, self.top - self.center, 0.0)
            n = n - kept.sum(0)
            total = total - top.sum(0)
            squares = squares - top.square().sum(0)
        var = (squares - total.square() / n) / (n - 1)
        return torch.where(n > 1, var.clamp(min=0.0).sqrt(), math.nan)

    def summary(self) -> dict[str, torch.Tensor]:
        """Everything the standard error and the diagnostics need, each ``(N,)``: the
        estimate, the delta-method error, :meth:`pareto_tail`, the running sums and the
        spread of the log-weights."""
        return {
            "estimate": self.estimate(),
            "delta_stderr": self.delta_stderr(),
            "s1": self.s1,
            "s2": self.s2,
            "log_weight_sd": self.log_weight_sd(),
            **self.pareto_tail(),
        }


def _shrunk_shapes(
    shape: torch.Tensor, count: torch.Tensor, covariate: torch.Tensor
) -> torch.Tensor:
    r"""The Pareto shapes used to resample the weights, by empirical Bayes (Fay & Herriot,
    1979, *JASA* 74(366)). The variance of the estimate is convex in :math:`k`, so the
    noise of a shape fitted to a few dozen or hundred tail weights would make the standard
    error too large on average. Each example's fit without its prior,
    :math:`\tilde k_n`, is regressed across the examples on the standard deviation of the
    example's log-weights below the tail (a low-noise statistic that grows with the
    spread of the weights, and whose noise is nearly independent of the tail fit's),
    :math:`\hat\mu_n = a + b\,\mathrm{sd}_n(\log w)`, and shrunk towards that prediction,

    .. math::

        k_n = \hat\mu_n + \frac{\tau^2}{\tau^2 + s_n^2} (\tilde k_n - \hat\mu_n), \qquad
        s_n^2 = \frac{(1 + \hat\mu_n)^2}{M_n}, \qquad
        \tau^2 = \max\Big(0, \overline{(\tilde k - \hat\mu)^2} - \overline{s^2}\Big),

    with :math:`s_n^2` the asymptotic sampling variance of a shape fitted to :math:`M_n`
    exceedances (Smith, 1985, *Biometrika* 72(1)) and :math:`\tau^2` the spread the
    regression leaves. With fewer than :data:`_MIN_POOLED` fitted examples the fits are
    used as they are."""
    raw = ((count + _PRIOR_WEIGHT) * shape - _PRIOR_WEIGHT * _PRIOR_SHAPE) / count
    pooled = torch.isfinite(raw) & torch.isfinite(covariate)
    if int(pooled.sum()) < _MIN_POOLED:
        return shape
    # least squares of the raw shapes on the covariate (a constant covariate: their mean)
    c, k = covariate[pooled], raw[pooled]
    spread = (c - c.mean()).square().sum()
    slope = ((c - c.mean()) * (k - k.mean())).sum() / spread if spread > 0 else 0.0
    predicted = k.mean() + slope * (covariate.nan_to_num() - c.mean())
    noise = (1.0 + predicted.clamp(min=-0.5)).square() / count
    residual = raw - predicted
    between = (residual[pooled].square().mean() - noise[pooled].mean()).clamp(min=0.0)
    shrunk = predicted + between / (between + noise) * residual
    return torch.where(pooled, shrunk, shape)


def _monte_carlo_stderr(
    summary: dict[str, torch.Tensor], num_samples: int, generator: torch.Generator
) -> torch.Tensor:
    """Standard errors from resampling the Pareto-smoothed weights where a tail was
    fitted, the delta-method ones elsewhere (see :func:`log_likelihood`)."""
    stderr = summary["delta_stderr"].clone()
    fitted = torch.isfinite(summary["shape"]) & (summary["s1"] > 0)
    if not fitted.any():
        return stderr
    rows = {name: value[fitted] for name, value in summary.items()}
    rows["shape"] = _shrunk_shapes(rows["shape"], rows["count"], rows["log_weight_sd"])
    variance = _resampled_variance(rows, num_samples, generator)
    # a degenerate fit (a non-positive scale) keeps the delta-method error
    stderr[fitted] = torch.where(torch.isfinite(variance), variance.sqrt(), stderr[fitted])
    return stderr


def _pareto_draws(
    shape: torch.Tensor, scale: torch.Tensor, cutoff: torch.Tensor, exponential: torch.Tensor
) -> torch.Tensor:
    r"""Draws :math:`u + \sigma\,(e^{kE} - 1) / k` from a generalized Pareto distribution
    above the cutoff :math:`u`, given standard exponential draws :math:`E` (that is,
    :math:`V^{-k}` with :math:`V = e^{-E}` uniform). The shape is simulated within
    :math:`[-10^{6}, 10]`, with :math:`|k| \ge 10^{-8}` (where the formula is the
    exponential limit to float64 precision), so that a draw cannot overflow."""
    k = shape.clamp(-1e6, _MAX_SIMULATED_SHAPE)
    k = torch.where(k.abs() < 1e-8, torch.full_like(k, 1e-8), k)
    return cutoff + scale / k * torch.expm1(k * exponential)


def _resampled_variance(
    tail: dict[str, torch.Tensor], num_samples: int, generator: torch.Generator
) -> torch.Tensor:
    r"""Variance of :math:`\log \frac{1}{K}\sum_k w_k` over :data:`_REPLICATES` samples of
    :math:`K` weights from the Pareto-smoothed weight distribution of each example: a
    weight lands in the tail with the observed frequency (binomial count); tail weights
    are drawn from the fitted generalized Pareto distribution, and the sum of the others
    from the normal limit of the observed weights below the cutoff (which are bounded)."""
    reps = _REPLICATES
    s1, s2 = tail["s1"], tail["s2"]
    n_tail = tail["count"]
    n_body = num_samples - n_tail
    mean_body = (s1 - tail["sum"]).clamp(min=0.0) / n_body
    var_body = ((s2 - tail["sum_sq"]) - n_body * mean_body.square()).clamp(min=0.0)
    var_body = var_body / (n_body - 1).clamp(min=1.0)
    counts = torch.binomial(
        torch.full((reps, n_tail.shape[0]), float(num_samples), dtype=s1.dtype, device=s1.device),
        (n_tail / num_samples).expand(reps, -1).contiguous(),
        generator=generator,
    )
    longest = max(1, int(counts.max().item()))
    step = max(1, _BUDGET // (reps * longest))
    variances = []
    for start in range(0, s1.shape[0], step):
        rows = slice(start, start + step)
        count = counts[:, rows]
        t = max(1, int(count.max().item()))
        exponential = torch.empty(
            (reps, t, count.shape[1]), dtype=s1.dtype, device=s1.device
        ).exponential_(generator=generator)
        draws = _pareto_draws(
            tail["shape"][rows], tail["scale"][rows], tail["cutoff"][rows], exponential
        )
        slot = torch.arange(t, device=s1.device).view(1, t, 1)
        tail_sum = torch.where(slot < count.unsqueeze(1), draws, 0.0).sum(1)
        body = num_samples - count
        noise = torch.randn(count.shape, generator=generator, dtype=s1.dtype, device=s1.device)
        body_sum = body * mean_body[rows] + (body * var_body[rows]).sqrt() * noise
        variances.append((body_sum.clamp(min=0.0) + tail_sum).log().var(0))
    return torch.cat(variances)


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
    r"""Importance-sampled :math:`\log p(x)` per example, with its Monte Carlo standard
    error and the Pareto :math:`\hat k` diagnostic of the importance weights.

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

    What the ± means: ``stderr`` (and :attr:`LogLikelihood.mean_stderr` for the dataset
    mean) is the Monte Carlo standard error given the data, the spread of the estimate
    over independent reruns with other samples :math:`z_k` on the same examples. It does
    not include the bias, which is downward: by Jensen's inequality
    :math:`\mathbb{E}[\widehat{\log p}(x)] = \mathcal{L}_K \le \log p(x)`, so with a poor
    guide the truth can lie many standard errors above the estimate. The delta-method
    error :math:`\hat\sigma_w / (\sqrt{K}\, \bar w)` is too small when the weights are
    heavy-tailed, since the sample variance rarely contains the rare large weights that
    make the estimate jump; instead, for each example the weights above the
    :math:`(M+1)`-th largest, :math:`M = \lceil\min(K/5, 3\sqrt{K})\rceil`, are fitted by
    a generalized Pareto distribution (PSIS, Vehtari et al., 2024), and ``stderr`` is the
    standard deviation of :math:`\log \frac{1}{K}\sum_k w^*_k` over resamples of
    :math:`K` weights :math:`w^*` from the observed weights below that cutoff and the
    fitted Pareto tail above it. The shapes used for that are pooled across the examples
    by empirical Bayes (each fit shrunk towards a regression on the spread of the
    log-weights below the tail; see ``_shrunk_shapes``), because the variance is convex
    in :math:`k` and the noise of one example's fit would inflate it on average. The
    delta-method error is kept where no tail can be fitted (:math:`K < 21`, or tied
    weights). The resampling uses its own seeded generator, so the global random stream
    is the same as without it. The per-example errors are themselves estimates; the
    error of the dataset mean, which pools them, is the one to quote.

    The Pareto shape :math:`\hat k` (``pareto_k``) diagnoses the weights: below 0.5 their
    variance is finite and the error falls as :math:`1/\sqrt{K}`; between 0.5 and
    :data:`PARETO_K_THRESHOLD` (0.7) it falls more slowly; above 0.7 the estimate is
    unreliable (far below :math:`\log p(x)` and erratic) for any practical :math:`K`.
    An :class:`ImportanceWeightWarning` (a :class:`UserWarning`) is emitted when more than
    5% of the examples have :math:`\hat k > 0.7`. Only the :math:`M + 1` largest
    log-weights of each example are kept while streaming, not all :math:`K`.

    Conventions: every observed site counts (a model that observes its labels at a sample
    site too gives :math:`\log p(x, y)`; a conditional model given ``y`` gives
    :math:`\log p(x \mid y)`). Log-densities are masked but not scaled, so subsampling or
    KL-annealing scales do not change the result. The sites, the plate over examples (every
    sample site must be inside it) and the arguments are read from a trace of the program
    (:func:`~pyro_vae.inference.program.read_program`), so any Pyro program works
    unchanged. A program that does not broadcast over a plate of particles on the left of
    its plates draws its particles one run at a time, with a
    :class:`~pyro_vae.inference.particles.ParticleLoopWarning`.

    :param model: Pyro model.
    :param guide: the matching guide (the proposal).
    :param x: data ``(N, ...)`` (the first argument); float64 is converted to the
        parameters' dtype.
    :param y: optional second argument (labels, a CVAE's targets), passed as
        :meth:`pyro.infer.SVI.step` would pass it: ``model(x, y)``.
    :param num_samples: :math:`K`, importance samples per example.
    :param batch_size: examples per forward pass.
    :param particle_chunk: particles per forward pass.
    :param shard: under :mod:`torch.distributed` (e.g. ``torchrun``), let each rank estimate
        a contiguous slice of the examples and gather the results, so that every rank
        returns the estimates for all of ``x``, in order. Every rank must call with the
        same ``x``. ``False`` (or a single process) estimates every example locally.
    :returns: a :class:`LogLikelihood` with ``estimate``, ``stderr`` and ``pareto_k`` of
        shape ``(N,)``.
    :raises ValueError: on empty data, non-positive counts, a global latent, or NaN weights.
    """
    for name, value in (
        ("num_samples", num_samples),
        ("batch_size", batch_size),
        ("particle_chunk", particle_chunk),
    ):
        check_count(name, value)
    if x.shape[0] == 0:
        raise ValueError("log_likelihood needs at least one example; x is empty.")
    if y is not None and y.shape[0] != x.shape[0]:
        raise ValueError(f"x has {x.shape[0]} examples but y has {y.shape[0]}; pass matching y.")
    # sites, plate, arguments and dtype read from a trace; particles vectorized where the
    # program broadcasts over them, else drawn in a loop (with a warning)
    program = read_program(
        model, guide, x, y, particles=True, num_examples=batch_size, advance_rng=True
    )
    warn_if_looping(program, num_samples, "log_likelihood")
    ctx = distributed.context()
    if ctx is not None and ctx.world_size > 1 and shard:
        # each rank estimates its contiguous slice of the examples; gathered in order
        rows = distributed.shard(x.shape[0], ctx)
        local = _estimate(
            program,
            x[rows],
            None if y is None else y[rows],
            num_samples,
            batch_size,
            particle_chunk,
        )
        n = x.shape[0]
        result = LogLikelihood(
            distributed.gather_rows(local.estimate, n, ctx),
            distributed.gather_rows(local.stderr, n, ctx),
            num_samples,
            distributed.gather_rows(local.pareto_k, n, ctx),
        )
    else:
        result = _estimate(program, x, y, num_samples, batch_size, particle_chunk)
    _warn_if_unreliable(result)
    return result


def _warn_if_unreliable(result: LogLikelihood) -> None:
    frac = result.pareto_k_fraction_above(PARETO_K_THRESHOLD)
    if frac is None or frac <= PARETO_K_WARN_FRACTION:
        return
    warnings.warn(
        f"The importance weights are too heavy-tailed for {frac:.0%} of the examples "
        f"(Pareto k-hat > {PARETO_K_THRESHOLD}, largest {result.pareto_k_max:.2f}; "
        f"K = {result.num_samples}): the guide rarely proposes where the posterior has "
        "mass, so log p(x) is underestimated by more than the reported standard error "
        "shows. Use more samples K (num_samples), a richer guide (e.g. a normalizing flow "
        "or a wider, heavier-tailed q), or train longer.",
        ImportanceWeightWarning,
        stacklevel=4,  # past log_likelihood and its torch.no_grad wrapper: the caller
    )


def _estimate(
    program: Program,
    x: torch.Tensor,
    y: torch.Tensor | None,
    num_samples: int,
    batch_size: int,
    particle_chunk: int,
) -> LogLikelihood:
    """The single-process estimator of :func:`log_likelihood` on all rows of ``x``.

    Pyro's argument validation (if enabled) runs on the first forward pass only, as in
    :func:`~pyro_vae.fit`: it checks every distribution's parameters elementwise, about a
    tenth of the time of a pass; the weights are still checked for NaN on every chunk."""
    summaries = []
    first = True
    for start in range(0, x.shape[0], batch_size):
        xb, yb = x[start : start + batch_size], _rows(y, start, batch_size)
        acc = _LogMeanExp(xb.shape[0], x.device, num_samples)
        for k_start in range(0, num_samples, particle_chunk):
            k = min(particle_chunk, num_samples - k_start)
            with contextlib.nullcontext() if first else pyro.validation_enabled(False):
                log_w = particle_log_weights(program, xb, yb, k)
            first = False
            acc.update(log_w)
        summaries.append(acc.summary())
    if not summaries:  # a rank's shard may be empty
        empty = x.new_zeros(0, dtype=torch.float64)
        return LogLikelihood(empty, empty, num_samples, empty)
    summary = {name: torch.cat([s[name] for s in summaries]) for name in summaries[0]}
    generator = torch.Generator(device=x.device).manual_seed(_SEED)
    stderr = _monte_carlo_stderr(summary, num_samples, generator)
    return LogLikelihood(summary["estimate"], stderr, num_samples, summary["shape"])


def _rows(y: torch.Tensor | None, start: int, size: int) -> torch.Tensor | None:
    return None if y is None else y[start : start + size]
