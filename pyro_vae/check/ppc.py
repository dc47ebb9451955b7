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
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

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
      vectors (the shape the model observes, e.g. ``(784,)`` if it flattens images);
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
    """
    t_rep, t_obs = _statistic_values(idata, statistic, obs_site, group)
    p = (t_rep > t_obs).mean(SAMPLE_DIMS) + 0.5 * (t_rep == t_obs).mean(SAMPLE_DIMS)
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
