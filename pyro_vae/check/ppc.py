r"""Posterior and prior predictive checks, as :class:`arviz.InferenceData`.

For each example :math:`x_n`, the posterior predictive draws
:math:`z_{n,s} \sim q(z \mid x_n)` and a replicate :math:`x^{\mathrm{rep}}_{n,s} \sim
p(x \mid z_{n,s})` (Gelman, Meng & Stern, 1996, *Posterior predictive assessment of model
fitness*; Gelman et al., *Bayesian Data Analysis*, ch. 6). A test statistic :math:`T`
whose replicated values rarely reach the observed one, :math:`p_B = \Pr(T(x^{\mathrm{rep}})
\ge T(x))` near 0 or 1, shows a way in which the model does not fit.

The replicates are real draws: the model runs unconditioned (:func:`pyro.poutine.uncondition`),
because :class:`pyro.infer.Predictive` returns observed sites unchanged. The data is built
with :func:`arviz.from_dict` (ArviZ 0.x's ``from_pyro`` needs an MCMC object), with one
chain and named dimensions ``chain, draw, example, latent`` and the pixel dimensions.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import arviz as az
import numpy as np
import torch
import xarray as xr

from pyro_vae.inference.particles import (
    max_plate_nesting,
    particle_traces,
    per_example_particles,
    per_example_values,
)

__all__ = [
    "bayesian_p_values",
    "image_ink",
    "mean_intensity",
    "pixel_marginals",
    "posterior_predictive",
    "prior_predictive",
    "save_ppc_plots",
    "statistic_data",
]

SAMPLE_DIMS = ("chain", "draw")
EXAMPLE_DIM = "example"
Statistic = Callable[[xr.DataArray], xr.DataArray]


def _event_dims(name: str, shape: tuple[int, ...], data_site: bool) -> list[str]:
    if data_site:
        named = {1: ["pixel"], 2: ["row", "column"], 3: ["channel", "row", "column"]}
        if len(shape) in named:
            return named[len(shape)]
    elif name == "z" and len(shape) == 1:
        return ["latent"]
    return [f"{name}_dim_{i}" for i in range(len(shape))]


def _no_guide(*args: Any, **kwargs: Any) -> None:
    return None


def _check(x: torch.Tensor, y: torch.Tensor | None, num_samples: int, batch_size: int) -> None:
    for name, value in (("num_samples", num_samples), ("batch_size", batch_size)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    if x.shape[0] == 0:
        raise ValueError("Predictive checks need at least one example; x is empty.")
    if y is not None and y.shape[0] != x.shape[0]:
        raise ValueError(f"x has {x.shape[0]} examples but y has {y.shape[0]}; pass matching y.")


@torch.no_grad()
def _predictive(
    model: Callable,
    guide: Callable | None,
    x: torch.Tensor,
    y: torch.Tensor | None,
    num_samples: int,
    batch_size: int,
    site: str,
) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray | None, dict[str, list[str]]]:
    """Latent draws, replicates of ``site`` and (posterior only) log p(x | z), all with a
    leading ``(1, S, N)``."""
    _check(x, y, num_samples, batch_size)
    proposal = _no_guide if guide is None else guide
    nesting = max_plate_nesting(model, proposal, x[:batch_size], _rows(y, 0, batch_size))
    latents: dict[str, list[np.ndarray]] = {}
    reps, logliks = [], []
    dims: dict[str, list[str]] = {}
    for start in range(0, x.shape[0], batch_size):
        xb, yb = x[start : start + batch_size], _rows(y, start, batch_size)
        model_tr, guide_tr = particle_traces(
            model, proposal, xb, yb, num_samples, nesting, uncondition=True
        )
        if site not in model_tr.nodes:
            raise ValueError(f"The model has no sample site {site!r}; pass site=<its name>.")
        source = model_tr if guide is None else guide_tr
        for name, node in source.nodes.items():
            if node["type"] != "sample" or name == site or node["is_observed"]:
                continue
            value = per_example_values(node["value"], node, nesting)  # type: ignore[arg-type]
            value = value.expand(num_samples, xb.shape[0], *value.shape[2:])
            latents.setdefault(name, []).append(value.cpu().numpy())
            dims[name] = [EXAMPLE_DIM, *_event_dims(name, tuple(value.shape[2:]), False)]
        node = model_tr.nodes[site]
        rep = per_example_values(node["value"], node, nesting)  # type: ignore[arg-type]
        reps.append(rep.expand(num_samples, *rep.shape[1:]).cpu().numpy())
        if guide is not None:
            lp = node["fn"].log_prob(xb)  # type: ignore[attr-defined]
            logliks.append(per_example_particles(lp, node, xb.shape[0], nesting).cpu().numpy())
    dims[site] = [EXAMPLE_DIM, *_event_dims(site, tuple(x.shape[1:]), True)]
    draws = {k: np.concatenate(v, axis=1)[None] for k, v in latents.items()}
    rep = np.concatenate(reps, axis=1)[None]  # type: ignore[assignment]
    loglik = np.concatenate(logliks, axis=1)[None] if logliks else None
    return draws, rep, loglik, dims  # type: ignore[return-value]


def _rows(y: torch.Tensor | None, start: int, size: int) -> torch.Tensor | None:
    return None if y is None else y[start : start + size]


def _coords(x: torch.Tensor, num_samples: int, draws: dict[str, np.ndarray]) -> dict:
    coords: dict[str, Any] = {"draw": np.arange(num_samples), EXAMPLE_DIM: np.arange(len(x))}
    if "z" in draws and draws["z"].ndim == 4:
        coords["latent"] = np.arange(draws["z"].shape[-1])
    return coords


def _constant(y: torch.Tensor | None) -> dict[str, np.ndarray] | None:
    return None if y is None else {"y": y.cpu().numpy()}


def posterior_predictive(
    model: Callable,
    guide: Callable,
    x: torch.Tensor,
    y: torch.Tensor | None = None,
    *,
    num_samples: int = 100,
    batch_size: int = 100,
    site: str = "x",
) -> az.InferenceData:
    r"""Posterior predictive draws for each example, as :class:`arviz.InferenceData`.

    For every example, ``num_samples`` draws :math:`z_s \sim q(z \mid x)` (the guide,
    standing in for the posterior) and one replicate :math:`x^{\mathrm{rep}}_s \sim p(x
    \mid z_s)` per draw, from the model unconditioned and replayed on the guide's trace.

    Groups (``S = num_samples``, ``N = len(x)``):

    - ``posterior``: every latent site of the guide, e.g. ``z`` with dims
      ``(chain, draw, example, latent)``, shape ``(1, S, N, D)``;
    - ``posterior_predictive``: ``x`` with dims ``(chain, draw, example, *pixel)`` where the
      pixel dims are ``(channel, row, column)`` for images, ``(pixel,)`` for vectors;
    - ``log_likelihood``: ``x``, :math:`\log p(x_n \mid z_{n,s})`, dims
      ``(chain, draw, example)``;
    - ``observed_data``: ``x``; ``constant_data``: ``y`` when labels are given.

    :param model: Pyro model with observed site ``site`` in plate ``"data"``.
    :param guide: the matching guide.
    :param x: data ``(N, ...)``.
    :param y: optional labels.
    :param num_samples: draws per example :math:`S`.
    :param batch_size: examples per forward pass (memory grows as ``batch_size * S``).
    :param site: the observed site to replicate.
    """
    draws, rep, loglik, dims = _predictive(model, guide, x, y, num_samples, batch_size, site)
    return az.from_dict(
        posterior=draws,
        posterior_predictive={site: rep},
        log_likelihood={site: loglik},
        observed_data={site: x.cpu().numpy()},
        constant_data=_constant(y),
        coords=_coords(x, num_samples, draws),
        dims=dims,
    )


def prior_predictive(
    model: Callable,
    x: torch.Tensor,
    y: torch.Tensor | None = None,
    *,
    num_samples: int = 100,
    batch_size: int = 100,
    site: str = "x",
) -> az.InferenceData:
    r"""Prior predictive draws :math:`z_s \sim p(z),\ x^{\mathrm{rep}}_s \sim p(x \mid z_s)`,
    ``num_samples`` replicated datasets the size and shape of ``x``, as
    :class:`arviz.InferenceData` with groups ``prior`` (latents, dims as in
    :func:`posterior_predictive`), ``prior_predictive`` (``x``), ``observed_data`` (``x``)
    and ``constant_data`` (``y``, for a conditional model).

    :param model: Pyro model; ``x`` fixes the number and shape of the examples.
    :param x: data ``(N, ...)``: the observed data the draws are compared with.
    :param y: optional labels, passed to a conditional model.
    :param num_samples: replicated datasets :math:`S`.
    :param batch_size: examples per forward pass.
    :param site: the observed site to replicate.
    """
    draws, rep, _, dims = _predictive(model, None, x, y, num_samples, batch_size, site)
    return az.from_dict(
        prior=draws,
        prior_predictive={site: rep},
        observed_data={site: x.cpu().numpy()},
        constant_data=_constant(y),
        coords=_coords(x, num_samples, draws),
        dims=dims,
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
    var_name: str = "x",
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
    :param var_name: the replicated variable.
    :param group: ``"posterior_predictive"`` or ``"prior_predictive"``.
    :returns: p-values in [0, 1], with the statistic's dims other than ``chain, draw``.
    """
    t_rep, t_obs = _statistic_values(idata, statistic, var_name, group)
    p = (t_rep > t_obs).mean(SAMPLE_DIMS) + 0.5 * (t_rep == t_obs).mean(SAMPLE_DIMS)
    return p.rename("p_value")


def _statistic_values(
    idata: az.InferenceData, statistic: Statistic, var_name: str, group: str
) -> tuple[xr.DataArray, xr.DataArray]:
    rep = _group(idata, group)
    if var_name not in rep:
        raise ValueError(f"{group} has no variable {var_name!r}; it has {list(rep.data_vars)}.")
    t_rep = statistic(rep[var_name])
    t_obs = statistic(_group(idata, "observed_data")[var_name])
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
    var_name: str = "x",
    group: str = "posterior_predictive",
) -> az.InferenceData:
    """An :class:`arviz.InferenceData` holding a statistic of the replicates
    (``posterior_predictive`` or ``prior_predictive``) and of the data (``observed_data``)
    under ``name``, for ArviZ's plots: ``az.plot_ppc(..., var_names=[name])`` and
    ``az.plot_bpv(...)``."""
    t_rep, t_obs = _statistic_values(idata, statistic, var_name, group)
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
    var_name: str = "x",
    group: str = "posterior_predictive",
) -> list[Path]:
    """Save ArviZ check plots as PNG files in ``out_dir`` (matplotlib's Agg backend).

    For each statistic (default: per-image ``ink`` and ``mean_intensity``), a statistic
    with an ``example`` dim gets ``ppc_<name>.png`` (``az.plot_ppc``: density of the
    observed values against replicated ones) and ``bpv_<name>.png`` (``az.plot_bpv`` with
    ``kind="u_value"``: the per-example p-values, uniform when the model fits); a scalar
    statistic gets ``bpv_<name>.png`` (its replicated distribution, the observed value and
    the p-value).

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
        data = statistic_data(idata, statistic, name=name, var_name=var_name, group=group)
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
