r"""Posterior and prior predictive checks, as :class:`arviz.InferenceData`.

For each example :math:`x_n`, the posterior predictive draws
:math:`z_{n,s} \sim q(z \mid x_n)` and a replicate :math:`x^{\mathrm{rep}}_{n,s} \sim
p(x \mid z_{n,s})` (Gelman, Meng & Stern, 1996, *Posterior predictive assessment of model
fitness*; Gelman et al., *Bayesian Data Analysis*, ch. 6). A test statistic :math:`T`
whose replicated values rarely reach the observed one, :math:`p_B = \Pr(T(x^{\mathrm{rep}})
\ge T(x))` near 0 or 1, shows a way in which the model does not fit.

The replicates are real draws: the data site (read from the program's trace, any name;
``obs_site=`` where the model observes several) is unconditioned, because
:class:`pyro.infer.Predictive` returns observed sites unchanged. Only that site is: labels
the model observes at a sample site, and every other input the user gave, stay as given in
every draw. The data is built with :func:`arviz.from_dict` (ArviZ 0.x's ``from_pyro``
needs an MCMC object), with one chain and named dimensions ``chain, draw, example`` and
the dimensions of the data site.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import arviz as az
import numpy as np
import torch
import xarray as xr

from pyro_vae._checks import check_count
from pyro_vae.inference.particles import (
    draw_particles,
    per_example_particles,
    per_example_values,
    warn_if_looping,
)
from pyro_vae.inference.program import Program, read_program, trace_sites

if TYPE_CHECKING:
    import pandas as pd  # type: ignore[import-untyped]

__all__ = [
    "FEATURE_LABELS",
    "FEATURE_STATISTICS",
    "bayesian_p_values",
    "choose_features",
    "feature_check_summary",
    "feature_checks",
    "feature_data",
    "feature_dispersion",
    "feature_max",
    "feature_mean",
    "feature_variance",
    "feature_zero_fraction",
    "image_ink",
    "mean_intensity",
    "pixel_marginals",
    "plot_feature_p_values",
    "plot_feature_statistics",
    "posterior_predictive",
    "prior_predictive",
    "save_feature_plots",
    "save_ppc_plots",
    "statistic_data",
]

SAMPLE_DIMS = ("chain", "draw")
EXAMPLE_DIM = "example"
FEATURE_DIM = "feature"
Statistic = Callable[[xr.DataArray], xr.DataArray]


def _event_dims(name: str, shape: tuple[int, ...], data_site: bool) -> list[str]:
    if data_site:
        if len(shape) == 1:  # a table or a count vector; 784-vectors are flattened MNIST
            return ["pixel"] if shape == (784,) else [FEATURE_DIM]
        named = {2: ["row", "column"], 3: ["channel", "row", "column"]}
        if len(shape) in named:
            return named[len(shape)]
    elif name == "z" and len(shape) == 1:
        return ["latent"]
    return [f"{name}_dim_{i}" for i in range(len(shape))]


def _check(x: torch.Tensor, y: torch.Tensor | None, num_samples: int, batch_size: int) -> None:
    check_count("num_samples", num_samples)
    check_count("batch_size", batch_size)
    if x.shape[0] == 0:
        raise ValueError("Predictive checks need at least one example; x is empty.")
    if y is not None and y.shape[0] != x.shape[0]:
        raise ValueError(f"x has {x.shape[0]} examples but y has {y.shape[0]}; pass matching y.")


def _values(node: Any, value: torch.Tensor, program: Program) -> torch.Tensor:
    """A site's tensor as ``(K, N, *rest)``, broadcast to the site's full shape first (a
    run per particle has ``K = 1``)."""
    fn = node["fn"]
    full = torch.Size(fn.batch_shape) + torch.Size(fn.event_shape)
    value = value.expand(torch.broadcast_shapes(value.shape, full))
    return per_example_values(value, node, program.max_plate_nesting, program.plate)


@torch.no_grad()
def _predictive(
    program: Program,
    x: torch.Tensor,
    y: torch.Tensor | None,
    num_samples: int,
    batch_size: int,
    posterior: bool,
) -> dict[str, Any]:
    """Latent draws, replicates of the data site, the observed values and (posterior
    only) log p(x | z), each with a leading ``(1, S, N)`` (the observed ``(N, ...)``)."""
    site = program.data_site()
    nesting = program.max_plate_nesting
    latents: dict[str, list[np.ndarray]] = {}
    reps: list[np.ndarray] = []
    logliks: list[np.ndarray] = []
    observed: list[np.ndarray] = []
    for start in range(0, x.shape[0], batch_size):
        xb = x[start : start + batch_size]
        yb = None if y is None else y[start : start + batch_size]
        n = xb.shape[0]
        batch: dict[str, list[torch.Tensor]] = {}
        rep: list[torch.Tensor] = []
        loglik: list[torch.Tensor] = []
        for model_tr, guide_tr in draw_particles(program, xb, yb, num_samples, uncondition=True):
            nodes = trace_sites(model_tr)
            node = nodes[site]
            source = trace_sites(guide_tr) if posterior else nodes
            for name in program.latent_sites if posterior else _model_latents(nodes, site):
                latent = source[name]
                batch.setdefault(name, []).append(_values(latent, latent["value"], program))
            rep.append(_values(node, node["value"], program))
            obs = node["infer"]["obs"]  # the observed value, kept by the unconditioning
            if posterior:
                lp = node["fn"].log_prob(obs)
                loglik.append(per_example_particles(lp, node, n, nesting, program.plate))
        for name, parts in batch.items():
            value = torch.cat(parts)  # (S, n, ...), or (1, n, ...) if shared by the draws
            value = value.expand(num_samples, *value.shape[1:])
            latents.setdefault(name, []).append(value.cpu().numpy())
        rep_b = torch.cat(rep)
        reps.append(rep_b.expand(num_samples, *rep_b.shape[1:]).cpu().numpy())
        observed.append(_values(node, obs, program)[0].expand(rep_b.shape[1:]).cpu().numpy())
        if posterior:
            logliks.append(torch.cat(loglik).cpu().numpy())
    rep_all = np.concatenate(reps, axis=1)[None]
    dims = {site: [EXAMPLE_DIM, *_event_dims(site, tuple(rep_all.shape[3:]), True)]}
    draws = {}
    for name, arrays in latents.items():
        draws[name] = np.concatenate(arrays, axis=1)[None]
        dims[name] = [EXAMPLE_DIM, *_event_dims(name, tuple(draws[name].shape[3:]), False)]
    return {
        "draws": draws,
        "rep": rep_all,
        "loglik": np.concatenate(logliks, axis=1)[None] if logliks else None,
        "observed": np.concatenate(observed, axis=0),
        "dims": dims,
    }


def _model_latents(nodes: dict[str, Any], site: str) -> list[str]:
    return [
        name
        for name, node in nodes.items()
        if node["type"] == "sample" and not node["is_observed"] and name != site
    ]


def _coords(x: torch.Tensor, num_samples: int, draws: dict[str, np.ndarray]) -> dict:
    coords: dict[str, Any] = {"draw": np.arange(num_samples), EXAMPLE_DIM: np.arange(len(x))}
    if "z" in draws and draws["z"].ndim == 4:
        coords["latent"] = np.arange(draws["z"].shape[-1])
    return coords


def _constant(program: Program, x: torch.Tensor, y: torch.Tensor | None) -> dict | None:
    """The arguments the data site does not observe: the inputs held fixed."""
    given = {"x": x, "y": y}
    if program.obs_arg is not None:
        given.pop("xy"[program.obs_arg])
    else:
        given.pop("x")
    out = {k: v.cpu().numpy() for k, v in given.items() if v is not None}
    return out or None


def _read(
    model: Callable,
    guide: Callable | None,
    x: torch.Tensor,
    y: torch.Tensor | None,
    num_samples: int,
    batch_size: int,
    obs_site: str | None,
    latent_sites: str | Sequence[str] | None,
    what: str,
) -> Program:
    _check(x, y, num_samples, batch_size)
    program = read_program(
        model,
        guide,
        x,
        y,
        obs_site=obs_site,
        latent_sites=latent_sites,
        particles=True,
        num_examples=batch_size,
        advance_rng=True,
    )
    program.data_site()  # raises, naming obs_site=, where the trace leaves it ambiguous
    warn_if_looping(program, num_samples, what)
    return program


def posterior_predictive(
    model: Callable,
    guide: Callable,
    x: torch.Tensor,
    y: torch.Tensor | None = None,
    *,
    num_samples: int = 100,
    batch_size: int = 100,
    obs_site: str | None = None,
    latent_sites: str | Sequence[str] | None = None,
) -> az.InferenceData:
    r"""Posterior predictive draws for each example, as :class:`arviz.InferenceData`.

    For every example, ``num_samples`` draws :math:`z_s \sim q(z \mid x)` (the guide,
    standing in for the posterior) and one replicate :math:`x^{\mathrm{rep}}_s \sim p(x
    \mid z_s)` per draw, from the model replayed on the guide's trace with its data site
    unconditioned. Labels observed at other sample sites, and every argument, stay as
    given.

    Groups (``S = num_samples``, ``N = len(x)``; the data site named as in the model,
    e.g. ``x``):

    - ``posterior``: every latent site of the guide, e.g. ``z`` with dims
      ``(chain, draw, example, latent)``, shape ``(1, S, N, D)``;
    - ``posterior_predictive``: the data site, dims ``(chain, draw, example, *pixel)``
      where the pixel dims are ``(channel, row, column)`` for images, ``(pixel,)`` for
      784-vectors (flattened MNIST, the shape the model observes) and ``(feature,)`` for
      any other vector (a table, counts per feature);
    - ``log_likelihood``: the data site, :math:`\log p(x_n \mid z_{n,s})`, dims
      ``(chain, draw, example)``;
    - ``observed_data``: the data site's observed values; ``constant_data``: the
      arguments it does not observe (``y`` for labels; ``x`` for a model that observes
      ``y``, as a CVAE's targets).

    :param model: Pyro model.
    :param guide: the matching guide.
    :param x: data ``(N, ...)`` (the first argument).
    :param y: optional second argument (labels, targets), passed as the program takes it.
    :param num_samples: draws per example :math:`S`.
    :param batch_size: examples per forward pass (memory grows as ``batch_size * S``).
    :param obs_site: the data site to replicate, where the model observes several.
    :param latent_sites: the latent sites to store; default every latent site.
    """
    program = _read(
        model,
        guide,
        x,
        y,
        num_samples,
        batch_size,
        obs_site,
        latent_sites,
        "posterior_predictive",
    )
    out = _predictive(program, x, y, num_samples, batch_size, posterior=True)
    site = program.data_site()
    return az.from_dict(
        posterior=out["draws"],
        posterior_predictive={site: out["rep"]},
        log_likelihood={site: out["loglik"]},
        observed_data={site: out["observed"]},
        constant_data=_constant(program, x, y),
        coords=_coords(x, num_samples, out["draws"]),
        dims=out["dims"],
    )


def prior_predictive(
    model: Callable,
    x: torch.Tensor,
    y: torch.Tensor | None = None,
    *,
    num_samples: int = 100,
    batch_size: int = 100,
    obs_site: str | None = None,
) -> az.InferenceData:
    r"""Prior predictive draws :math:`z_s \sim p(z),\ x^{\mathrm{rep}}_s \sim p(x \mid z_s)`,
    ``num_samples`` replicated datasets the size and shape of the data, as
    :class:`arviz.InferenceData` with groups ``prior`` (the model's latent sites, dims as
    in :func:`posterior_predictive`), ``prior_predictive`` (the data site),
    ``observed_data`` and ``constant_data`` (the inputs held fixed: labels of a
    conditional model, the ``x`` of a CVAE). Only the data site is unconditioned: labels
    the model observes at a sample site keep their given values in every draw.

    :param model: Pyro model; ``x`` fixes the number and shape of the examples.
    :param x: data ``(N, ...)``: the first argument of the model.
    :param y: optional second argument (labels, targets).
    :param num_samples: replicated datasets :math:`S`.
    :param batch_size: examples per forward pass.
    :param obs_site: the data site to replicate, where the model observes several.
    """
    program = _read(model, None, x, y, num_samples, batch_size, obs_site, None, "prior_predictive")
    out = _predictive(program, x, y, num_samples, batch_size, posterior=False)
    site = program.data_site()
    return az.from_dict(
        prior=out["draws"],
        prior_predictive={site: out["rep"]},
        observed_data={site: out["observed"]},
        constant_data=_constant(program, x, y),
        coords=_coords(x, num_samples, out["draws"]),
        dims=out["dims"],
    )


# --------------------------------------------------------------------------- statistics


def _pixel_dims(x: xr.DataArray) -> list[str]:
    return [d for d in x.dims if d not in (*SAMPLE_DIMS, EXAMPLE_DIM)]  # type: ignore[misc]


def mean_intensity(x: xr.DataArray) -> xr.DataArray:
    """The mean pixel value of a dataset: one number per (replicated) dataset."""
    return x.mean(dim=[EXAMPLE_DIM, *_pixel_dims(x)])


def image_ink(x: xr.DataArray) -> xr.DataArray:
    """Per-image ink, the sum of the pixel values of each image: dims ``(..., example)``."""
    return x.sum(dim=_pixel_dims(x))


def pixel_marginals(x: xr.DataArray) -> xr.DataArray:
    """The mean of each pixel over the examples: dims ``(..., *pixel)``."""
    return x.mean(dim=EXAMPLE_DIM)


def _group(idata: az.InferenceData, group: str) -> xr.Dataset:
    if group not in idata.groups():
        raise ValueError(
            f"The InferenceData has no {group!r} group (it has {idata.groups()}); build it "
            "with posterior_predictive(...) or prior_predictive(...)."
        )
    return idata[group]


def bayesian_p_values(
    idata: az.InferenceData,
    statistic: Statistic,
    *,
    obs_site: str | None = None,
    group: str = "posterior_predictive",
) -> xr.DataArray:
    r"""Bayesian p-values :math:`p_B = \Pr(T(x^{\mathrm{rep}}) > T(x)) + \tfrac12
    \Pr(T(x^{\mathrm{rep}}) = T(x))` over the draws (ties count half, so discrete
    statistics give p-values symmetric about 0.5).

    :param idata: from :func:`posterior_predictive` or :func:`prior_predictive`.
    :param statistic: a function of a :class:`xarray.DataArray` with dims ``(..., example,
        *pixel)`` that reduces the pixel and/or example dims, such as :func:`mean_intensity`,
        :func:`image_ink`, :func:`pixel_marginals`, or any user function written with
        named dims (e.g. ``lambda x: (x > 0.5).sum(["channel", "row", "column"])``).
    :param obs_site: the replicated data site; default the group's only variable.
    :param group: ``"posterior_predictive"`` or ``"prior_predictive"``.
    :returns: p-values in [0, 1], with the statistic's dims other than ``chain, draw``.
        Where the statistic is undefined (NaN, e.g. a variance-to-mean ratio of a
        feature that is all zeros) in some draws, the p-value counts the other draws;
        where it is undefined for the data, or in every draw, the p-value is NaN.
    """
    t_rep, t_obs = _statistic_values(idata, statistic, obs_site, group)
    return _p_values(t_rep, t_obs)


def _p_values(t_rep: xr.DataArray, t_obs: xr.DataArray) -> xr.DataArray:
    """Bayesian p-values over the draws; a statistic undefined (NaN) in some draws counts
    over the others, and one undefined for the data gives NaN."""
    if not (t_rep.isnull().any() or t_obs.isnull().any()):
        p = (t_rep > t_obs).mean(SAMPLE_DIMS) + 0.5 * (t_rep == t_obs).mean(SAMPLE_DIMS)
    else:
        valid = t_rep.notnull()
        above = (t_rep > t_obs).where(valid).sum(SAMPLE_DIMS)
        ties = (t_rep == t_obs).where(valid).sum(SAMPLE_DIMS)
        count = valid.sum(SAMPLE_DIMS)
        p = ((above + 0.5 * ties) / count.where(count > 0)).where(t_obs.notnull())
    return p.rename("p_value")


def _replicated(rep: xr.Dataset, obs_site: str | None, group: str) -> str:
    names = list(rep.data_vars)
    if obs_site is None:
        if len(names) != 1:
            raise ValueError(
                f"{group} holds {names}; pass obs_site=<name> to choose the replicated site."
            )
        return str(names[0])
    if obs_site not in rep:
        raise ValueError(
            f"obs_site={obs_site!r}: {group} has no variable {obs_site!r}; it has {names}."
        )
    return obs_site


def _statistic_values(
    idata: az.InferenceData, statistic: Statistic, obs_site: str | None, group: str
) -> tuple[xr.DataArray, xr.DataArray]:
    rep = _group(idata, group)
    site = _replicated(rep, obs_site, group)
    t_rep = statistic(rep[site])
    t_obs = statistic(_group(idata, "observed_data")[site])
    if not set(SAMPLE_DIMS) <= set(t_rep.dims) or set(SAMPLE_DIMS) & set(t_obs.dims):
        raise ValueError(
            "The statistic must keep the chain and draw dims of the replicates; reduce only "
            f"the example and pixel dims. Got dims {t_rep.dims} for the replicates."
        )
    return t_rep, t_obs


def statistic_data(
    idata: az.InferenceData,
    statistic: Statistic,
    *,
    name: str,
    obs_site: str | None = None,
    group: str = "posterior_predictive",
) -> az.InferenceData:
    """An :class:`arviz.InferenceData` holding a statistic of the replicates
    (``posterior_predictive`` or ``prior_predictive``) and of the data (``observed_data``)
    under ``name``, for ArviZ's plots: ``az.plot_ppc(..., var_names=[name])`` and
    ``az.plot_bpv(...)``."""
    t_rep, t_obs = _statistic_values(idata, statistic, obs_site, group)
    return az.InferenceData(
        **{
            group: t_rep.rename(name).to_dataset(),
            "observed_data": t_obs.rename(name).to_dataset(),
        }
    )


def save_ppc_plots(
    idata: az.InferenceData,
    out_dir: str | os.PathLike,
    *,
    statistics: dict[str, Statistic] | None = None,
    obs_site: str | None = None,
    group: str = "posterior_predictive",
) -> list[Path]:
    """Save ArviZ check plots as PNG files in ``out_dir`` (matplotlib's Agg backend).

    For each statistic (default: per-image ``ink`` and ``mean_intensity``), a statistic
    with an ``example`` dim gets ``ppc_<name>.png`` (``az.plot_ppc``: density of the
    observed values against replicated ones) and ``bpv_<name>.png`` (``az.plot_bpv`` with
    ``kind="u_value"``: the per-example p-values, uniform when the model fits); a scalar
    statistic gets ``bpv_<name>.png`` (its replicated distribution, the observed value and
    the p-value).

    :param obs_site: the replicated data site; default the group's only variable.
    :returns: the paths written.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    statistics = (
        {"ink": image_ink, "mean_intensity": mean_intensity} if statistics is None else statistics
    )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    kind_group = "prior" if group == "prior_predictive" else "posterior"
    paths = []
    for name, statistic in statistics.items():
        data = statistic_data(idata, statistic, name=name, obs_site=obs_site, group=group)
        per_example = EXAMPLE_DIM in data.observed_data[name].dims  # type: ignore[attr-defined]
        plots: list[tuple[str, Callable[[], Any]]] = []
        if per_example:
            plots.append(
                (
                    "ppc",
                    lambda data=data: az.plot_ppc(  # type: ignore[misc]
                        data,
                        group=kind_group,
                        num_pp_samples=min(50, data[group].sizes["draw"]),
                        random_seed=0,
                    ),
                )
            )
            plots.append(("bpv", lambda data=data: az.plot_bpv(data, group=kind_group)))  # type: ignore[misc]
        else:
            plots.append(("bpv", lambda data=data, name=name: _plot_scalar(data, name, group)))  # type: ignore[misc]
        for prefix, plot in plots:
            plot()
            path = out / f"{prefix}_{name}.png"
            plt.gcf().savefig(path, dpi=80)
            plt.close("all")
            paths.append(path)
    return paths


def _plot_scalar(data: az.InferenceData, name: str, group: str) -> None:
    import matplotlib.pyplot as plt

    t_rep = data[group][name].values.ravel()
    t_obs = float(data.observed_data[name].values)  # type: ignore[attr-defined]
    p = (t_rep > t_obs).mean() + 0.5 * (t_rep == t_obs).mean()
    _, ax = plt.subplots(figsize=(5, 3.5))
    az.plot_dist(t_rep, ax=ax, label="replicated")
    ax.axvline(t_obs, color="k", linestyle="--", label="observed")
    ax.set_title(f"{name}: Bayesian p-value {p:.3f}")
    ax.legend()


# --------------------------------------------------------------------------- per feature


def feature_mean(x: xr.DataArray) -> xr.DataArray:
    """The mean of each feature over the examples: dims ``(..., *feature)``."""
    return x.mean(EXAMPLE_DIM)


def feature_variance(x: xr.DataArray) -> xr.DataArray:
    """The sample variance (``ddof=1``) of each feature over the examples."""
    return x.var(EXAMPLE_DIM, ddof=1)


def feature_zero_fraction(x: xr.DataArray) -> xr.DataArray:
    """The fraction of the examples in which each feature is exactly 0."""
    return (x == 0).mean(EXAMPLE_DIM)


def feature_dispersion(x: xr.DataArray) -> xr.DataArray:
    r"""The dispersion index of each feature, variance / mean over the examples: 1 for
    Poisson counts, above 1 for overdispersed counts (a negative binomial's
    :math:`1 + \mu/\theta`), below 1 for counts with an upper bound (a binomial's
    :math:`1 - p`). NaN for a feature whose mean is not positive."""
    mean = x.mean(EXAMPLE_DIM)
    return x.var(EXAMPLE_DIM, ddof=1) / mean.where(mean > 0)


def feature_max(x: xr.DataArray) -> xr.DataArray:
    """The largest value of each feature over the examples (an upper bound the data keep,
    such as 16 for the UCI digits, and the replicates may not)."""
    return x.max(EXAMPLE_DIM)


#: the per-feature statistics of :func:`feature_checks`, by name
FEATURE_STATISTICS: dict[str, Statistic] = {
    "mean": feature_mean,
    "variance": feature_variance,
    "zero_fraction": feature_zero_fraction,
    "dispersion": feature_dispersion,
    "max": feature_max,
}

# the same statistics on numpy arrays ``(..., examples)``, for ``az.plot_bpv(t_stat=...)``
_NUMPY_STATISTICS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "mean": lambda a: a.mean(axis=-1),
    "variance": lambda a: a.var(axis=-1, ddof=1),
    "zero_fraction": lambda a: (a == 0).mean(axis=-1),
    "dispersion": lambda a: a.var(axis=-1, ddof=1) / np.where(a.mean(-1) > 0, a.mean(-1), np.nan),
    "max": lambda a: a.max(axis=-1),
}
#: how the statistics of :data:`FEATURE_STATISTICS` are named in figures and tables
FEATURE_LABELS = {
    "mean": "mean",
    "variance": "variance",
    "zero_fraction": "fraction of zeros",
    "dispersion": "variance / mean",
    "max": "largest value",
}


def feature_checks(
    idata: az.InferenceData,
    statistics: dict[str, Statistic] | None = None,
    *,
    obs_site: str | None = None,
    group: str = "posterior_predictive",
) -> pd.DataFrame:
    r"""Per-feature predictive checks for tables and counts: for each statistic of
    :data:`FEATURE_STATISTICS` (the mean, variance, fraction of zeros, dispersion index
    and largest value of each feature over the examples) or of ``statistics``, its value
    on the data, its mean over the replicated datasets, and its Bayesian p-value
    (:func:`bayesian_p_values`).

    Each draw :math:`s` of ``idata`` replicates the whole dataset, one
    :math:`x^{\mathrm{rep}}_{n,s}` per example, so a feature's statistic has one value per
    draw. A dispersion index whose p-values pile up at 0 across the features says the
    data vary more than the model's replicates (a Poisson fitted to overdispersed
    counts); a fraction of zeros with p-values near 1 says the model makes too many zeros.

    :param idata: from :func:`posterior_predictive` or :func:`prior_predictive`.
    :param statistics: ``{name: function}``, each function reducing the ``example`` dim
        of a :class:`xarray.DataArray` and keeping the feature dims; default
        :data:`FEATURE_STATISTICS`.
    :param obs_site: the replicated data site; default the group's only variable.
    :param group: ``"posterior_predictive"`` or ``"prior_predictive"``.
    :returns: a :class:`pandas.DataFrame` with one row per feature (indexed by the feature
        dims' coordinates) and, per statistic ``name``, the columns ``name_observed``,
        ``name_replicated`` (mean over the draws where it is defined) and ``name_p``.
    """
    statistics = FEATURE_STATISTICS if statistics is None else statistics
    columns: dict[str, xr.DataArray] = {}
    for name, statistic in statistics.items():
        t_rep, t_obs = _statistic_values(idata, statistic, obs_site, group)
        if EXAMPLE_DIM in t_obs.dims or not t_obs.dims:
            raise ValueError(
                f"The statistic {name!r} must reduce the example dim and keep the feature "
                f"dims; its value on the data has dims {t_obs.dims}."
            )
        columns[f"{name}_observed"] = t_obs
        columns[f"{name}_replicated"] = t_rep.mean(SAMPLE_DIMS)
        columns[f"{name}_p"] = _p_values(t_rep, t_obs)
    table = xr.Dataset(columns).reset_coords(drop=True).to_dataframe()
    return table


def feature_check_summary(
    table: pd.DataFrame, *, low: float = 0.025, high: float = 0.975
) -> dict[str, dict[str, float | int | None]]:
    """For each statistic of a :func:`feature_checks` table: the fraction of features whose
    p-value lies outside ``[low, high]`` (``extreme_fraction``), the median p-value and
    the number of features where the statistic is defined (``num_features``; the
    dispersion index is undefined for a feature that is 0 in every example). ``None`` where
    no feature has it defined."""
    if not 0 <= low < high <= 1:
        raise ValueError(f"Need 0 <= low < high <= 1, got low={low}, high={high}.")
    out: dict[str, dict[str, float | int | None]] = {}
    for column in table.columns:
        if not column.endswith("_p"):
            continue
        p = table[column].dropna()
        out[column[: -len("_p")]] = {
            "extreme_fraction": float(((p < low) | (p > high)).mean()) if len(p) else None,
            "p_median": float(p.median()) if len(p) else None,
            "num_features": len(p),
        }
    return out


def _flat_features(values: xr.DataArray) -> tuple[np.ndarray, list[str]]:
    """Values with the feature dims flattened into one last axis, and a label per feature."""
    dims = _pixel_dims(values)
    if len(dims) == 1:
        labels = [str(v) for v in values[dims[0]].values]
        return values.transpose(..., dims[0]).values, labels
    stacked = values.stack(__feature__=dims).transpose(..., "__feature__")
    labels = [",".join(str(i) for i in ix) for ix in stacked["__feature__"].values]
    return stacked.values, labels


def choose_features(
    idata: az.InferenceData, num_features: int = 6, *, obs_site: str | None = None
) -> list[int]:
    """Up to ``num_features`` features to plot, spread evenly over the features ordered by
    their mean on the data (from the rarest to the most common), leaving out features
    that are constant on the data. Positions in the flattened feature order."""
    check_count("num_features", num_features)
    observed = _group(idata, "observed_data")
    site = _replicated(observed, obs_site, "observed_data")
    values, _ = _flat_features(observed[site])
    varying = np.flatnonzero(values.std(axis=0) > 0)
    if len(varying) == 0:
        return []
    order = varying[np.argsort(values[:, varying].mean(axis=0), kind="stable")]
    picks = np.linspace(0, len(order) - 1, min(num_features, len(order))).round().astype(int)
    return sorted(int(order[i]) for i in np.unique(picks))


def feature_data(
    idata: az.InferenceData,
    features: Sequence[int] | None = None,
    *,
    obs_site: str | None = None,
    group: str = "posterior_predictive",
) -> az.InferenceData:
    """Observed and replicated values of chosen features, built with
    :func:`arviz.from_dict` for ArviZ's per-feature plots: the data site with dims
    ``(chain, draw, example, feature)`` in ``group`` and ``(example, feature)`` in
    ``observed_data`` (image-shaped data have their dims flattened, labelled
    ``"channel,row,column"``). Whole-number data are stored as integers, so that
    ArviZ draws them as histograms. Plot with::

        data = feature_data(idata, [3, 10, 20])
        az.plot_ppc(data, flatten=["example"])  # one panel per feature
        az.plot_bpv(data, kind="t_stat", t_stat=lambda a: a.var(-1) / a.mean(-1),
                    flatten=["example"])  # the dispersion index per feature

    :param features: positions in the flattened feature order; default
        :func:`choose_features`.
    :param obs_site: the replicated data site; default the group's only variable.
    :param group: ``"posterior_predictive"`` or ``"prior_predictive"``.
    """
    rep = _group(idata, group)
    site = _replicated(rep, obs_site, group)
    replicated, labels = _flat_features(rep[site])
    observed, _ = _flat_features(_group(idata, "observed_data")[site])
    chosen = choose_features(idata, obs_site=site) if features is None else list(features)
    bad = [f for f in chosen if not 0 <= f < len(labels)]
    if bad or not chosen:
        raise ValueError(
            f"features={list(chosen)}: pass positions in [0, {len(labels)}) of the "
            f"flattened features ({len(labels)} of them)."
        )
    replicated, observed = replicated[..., chosen], observed[..., chosen]
    if np.array_equal(observed, np.round(observed)) and np.array_equal(
        replicated, np.round(replicated)
    ):
        replicated, observed = replicated.astype(np.int64), observed.astype(np.int64)
    return az.from_dict(
        **{group: {site: replicated}},  # type: ignore[arg-type]
        observed_data={site: observed},
        coords={FEATURE_DIM: [labels[f] for f in chosen]},
        dims={site: [EXAMPLE_DIM, FEATURE_DIM]},
    )


def save_feature_plots(
    idata: az.InferenceData,
    out_dir: str | os.PathLike,
    *,
    features: Sequence[int] | None = None,
    obs_site: str | None = None,
    group: str = "posterior_predictive",
) -> list[Path]:
    """Save the per-feature checks of tables and counts as PNG files in ``out_dir``:

    - ``ppc_features.png``: ``az.plot_ppc`` per chosen feature, the distribution of the
      observed values against that of replicated datasets (histograms for counts);
    - ``bpv_features_dispersion.png``: ``az.plot_bpv(kind="t_stat")`` per chosen feature
      with the dispersion index (variance / mean) as the statistic: its density over the
      replicated datasets, the observed value as a dot;
    - ``stat_features.png``: :func:`plot_feature_statistics`, every statistic of
      :data:`FEATURE_STATISTICS` per chosen feature with its p-value;
    - ``p_values_features.png``: :func:`plot_feature_p_values`, the p-values of every
      feature (a pile-up at 0 or 1 is a misfit shared by many features).

    :param features: positions of the features to plot; default :func:`choose_features`.
    :param obs_site: the replicated data site; default the group's only variable.
    :param group: ``"posterior_predictive"`` or ``"prior_predictive"``.
    :returns: the paths written.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    positions = (
        list(features) if features is not None else choose_features(idata, obs_site=obs_site)
    )
    data = feature_data(idata, positions, obs_site=obs_site, group=group)
    kind_group = "prior" if group == "prior_predictive" else "posterior"
    paths = [out / name for name in ("ppc_features.png", "bpv_features_dispersion.png")]
    axes = az.plot_ppc(
        data,
        flatten=[EXAMPLE_DIM],
        group=kind_group,
        num_pp_samples=min(50, data[group].sizes["draw"]),
        random_seed=0,
    )
    _label_panels(axes, data, "value", "frequency")
    plt.gcf().savefig(paths[0], dpi=72)
    plt.close("all")
    with warnings.catch_warnings():  # a feature whose replicates are all 0 has no density
        warnings.filterwarnings("ignore", message="Your data appears to have a single value")
        axes = az.plot_bpv(
            data,
            kind="t_stat",
            t_stat=lambda a: _finite(_NUMPY_STATISTICS["dispersion"](a)),
            flatten=[EXAMPLE_DIM],
            bpv=False,
            group=kind_group,
        )
    _label_panels(axes, data, FEATURE_LABELS["dispersion"], "density over replicates")
    plt.gcf().savefig(paths[1], dpi=72)
    plt.close("all")
    table = feature_checks(idata, obs_site=obs_site, group=group)
    plot_feature_statistics(idata, positions, obs_site=obs_site, group=group, table=table)
    paths.append(out / "stat_features.png")
    plt.gcf().savefig(paths[-1], dpi=72)
    plt.close("all")
    plot_feature_p_values(table)
    paths.append(out / "p_values_features.png")
    plt.gcf().savefig(paths[-1], dpi=72)
    plt.close("all")
    return paths


def _label_panels(axes: Any, data: az.InferenceData, xlabel: str, ylabel: str) -> None:
    labels = data.observed_data[FEATURE_DIM].values  # type: ignore[attr-defined]
    for ax, label in zip(np.ravel(axes), labels, strict=False):
        ax.set_title(f"feature {label}")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)


def _finite(values: np.ndarray) -> np.ndarray:
    values = np.atleast_1d(values)
    return values[np.isfinite(values)]


def plot_feature_statistics(
    idata: az.InferenceData,
    features: Sequence[int] | None = None,
    statistics: Sequence[str] | None = None,
    *,
    obs_site: str | None = None,
    group: str = "posterior_predictive",
    table: pd.DataFrame | None = None,
    axes: Any = None,
) -> Any:
    """A grid of per-feature checks: one row per statistic (names of
    :data:`FEATURE_STATISTICS`, default all), one column per feature (positions, default
    :func:`choose_features`). Each panel is the histogram of the statistic over the
    replicated datasets with the observed value as a vertical line and the Bayesian
    p-value in the title; histograms rather than densities, because the fraction of
    zeros and the largest value take few distinct values.

    :param table: a :func:`feature_checks` table of the same ``idata`` (computed if not
        given) for the p-values.
    :param axes: a ``(len(statistics), len(features))`` array of axes; default a new figure.
    :returns: the axes.
    """
    import matplotlib.pyplot as plt

    names = list(FEATURE_STATISTICS) if statistics is None else list(statistics)
    unknown = [n for n in names if n not in FEATURE_STATISTICS]
    if unknown:
        raise ValueError(f"Unknown statistics {unknown}; choose from {list(FEATURE_STATISTICS)}.")
    positions = (
        list(features) if features is not None else choose_features(idata, obs_site=obs_site)
    )
    data = feature_data(idata, positions, obs_site=obs_site, group=group)
    site = str(next(iter(data.observed_data.data_vars)))  # type: ignore[attr-defined]
    labels = [str(v) for v in data.observed_data[FEATURE_DIM].values]  # type: ignore[attr-defined]
    if table is None:
        table = feature_checks(
            idata, {n: FEATURE_STATISTICS[n] for n in names}, obs_site=site, group=group
        )
    if axes is None:
        _, axes = plt.subplots(
            len(names),
            len(positions),
            figsize=(2.6 * len(positions), 2.1 * len(names)),
            squeeze=False,
            constrained_layout=True,
        )
    axes = np.asarray(axes).reshape(len(names), len(positions))
    for row, name in enumerate(names):
        t_rep = FEATURE_STATISTICS[name](data[group][site].astype(float))
        t_obs = FEATURE_STATISTICS[name](data.observed_data[site].astype(float))  # type: ignore[attr-defined]
        for col, (position, label) in enumerate(zip(positions, labels, strict=True)):
            ax = axes[row, col]
            values = _finite(t_rep.isel({FEATURE_DIM: col}).values.ravel())
            observed = float(t_obs.isel({FEATURE_DIM: col}))
            if len(values):
                ax.hist(values, bins=min(20, len(np.unique(values))), color="C0", alpha=0.7)
            ax.axvline(observed, color="k", linestyle="--")
            ax.set_title(
                f"feature {label}: p = {table[f'{name}_p'].iloc[position]:.3f}", fontsize=8
            )
            ax.set_xlabel(FEATURE_LABELS[name], fontsize=8)
            ax.tick_params(labelsize=7)
        axes[row, 0].set_ylabel("replicates", fontsize=8)
    return axes


def plot_feature_p_values(
    table: pd.DataFrame, statistics: Sequence[str] | None = None, *, axes: Any = None
) -> Any:
    """Histograms of the per-feature p-values of a :func:`feature_checks` table, one panel
    per statistic, with the bands below 0.025 and above 0.975 shaded; returns the axes."""
    import matplotlib.pyplot as plt

    names = (
        [c[: -len("_p")] for c in table.columns if c.endswith("_p")]
        if statistics is None
        else list(statistics)
    )
    if axes is None:
        _, axes = plt.subplots(
            1, len(names), figsize=(3.2 * len(names), 2.8), squeeze=False, constrained_layout=True
        )
    for ax, name in zip(np.ravel(axes), names, strict=True):
        p = table[f"{name}_p"].dropna().to_numpy()
        ax.hist(p, bins=20, range=(0, 1), color="C0")
        for lo, hi in ((0, 0.025), (0.975, 1)):
            ax.axvspan(lo, hi, color="C3", alpha=0.15)
        ax.set_title(FEATURE_LABELS.get(name, name), fontsize=9)
        ax.set_xlabel("Bayesian p-value")
        ax.set_ylabel(f"features (of {len(p)})")
        ax.set_xlim(0, 1)
    return axes
