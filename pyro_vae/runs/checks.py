"""Evaluate, check and draw a finished run: what ``pyro-vae evaluate``, ``ppc`` and
``sample`` do, callable from Python with a :class:`~pyro_vae.runs.build.Run`."""

from __future__ import annotations

import resource
import time
import warnings
from pathlib import Path
from typing import Any

import pyro
import torch

from pyro_vae import distributed
from pyro_vae._checks import check_count
from pyro_vae.check import ppc as ppc_mod
from pyro_vae.check import viz as viz_mod
from pyro_vae.check.evaluate import evaluate
from pyro_vae.runs.build import Run
from pyro_vae.train.loop import resolve_device

__all__ = ["evaluate_run", "ppc_run", "run_data", "sample_run"]


def run_data(
    run: Run,
    split: str = "test",
    *,
    num_examples: int | None = None,
    device: str = "cpu",
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A split of the run's data, binarized as in training, on ``device``; moves the model
    there too and seeds Pyro (independently per rank under ``torchrun``)."""
    if num_examples is not None:
        check_count("--num-examples", num_examples)
    target = resolve_device(device, [run.module])
    x, *rest = run.split(split).tensors
    y = rest[0] if rest else None
    if num_examples is not None:
        x, y = x[:num_examples], None if y is None else y[:num_examples]
    run.module.to(target)
    x, y = x.to(target), None if y is None else y.to(target)
    check = getattr(run.module, "check_data", None)
    if check is not None:
        check(x)
    ctx = distributed.context()
    pyro.set_rng_seed(seed + (ctx.rank if ctx is not None else 0))
    return x, y


def evaluate_run(
    run: Run,
    split: str = "test",
    *,
    num_samples: int = 5000,
    batch_size: int = 100,
    particle_chunk: int = 100,
    num_examples: int | None = None,
    device: str = "cpu",
    seed: int = 0,
) -> dict[str, Any]:
    """:func:`~pyro_vae.check.evaluate.evaluate` on a split of a run, with the run's
    facts (split, seed, time, memory, warnings raised) added to the report, and
    ``images``: whether the data site holds images (bits/dim are then the usual figure;
    for tables and counts ``nll_per_feature``, in nats)."""
    for name, value in (
        ("--num-samples", num_samples),
        ("--batch-size", batch_size),
        ("--particle-chunk", particle_chunk),
    ):
        check_count(name, value)
    started = time.perf_counter()
    x, y = run_data(run, split, num_examples=num_examples, device=device, seed=seed)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = evaluate(
            run.model,
            run.guide,
            x,
            y,
            num_samples=num_samples,
            batch_size=batch_size,
            particle_chunk=particle_chunk,
        )
    report["images"] = viz_mod.is_image(report["data_shape"])
    report["split"] = split
    report["seed"] = seed
    report["wall_seconds"] = time.perf_counter() - started
    report["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    report["warnings"] = [str(w.message) for w in caught]
    ctx = distributed.context()
    report["world_size"] = 1 if ctx is None else ctx.world_size
    return report


def ppc_run(
    run: Run,
    out_dir: str | Path,
    split: str = "test",
    *,
    num_samples: int = 100,
    num_examples: int = 200,
    batch_size: int = 50,
    device: str = "cpu",
    seed: int = 0,
) -> tuple[dict[str, Any], list[Path]]:
    """Posterior and prior predictive checks of a run: writes ``ppc.nc`` and the ArviZ
    plots to ``out_dir``; returns the summary of Bayesian p-values and the written paths.

    For images the statistics are the mean intensity, the ink per image and the pixel
    marginals (:func:`~pyro_vae.check.ppc.save_ppc_plots`); for tables and counts they are
    per feature (:func:`~pyro_vae.check.ppc.feature_checks`: mean, variance, fraction of
    zeros, dispersion index, largest value), summarised per statistic as the fraction of
    features with a p-value outside [0.025, 0.975], with the posterior table written to
    ``ppc_features.csv`` and the plots of
    :func:`~pyro_vae.check.ppc.save_feature_plots`. ``summary["data"]`` says which:
    ``"images"`` or ``"features"``."""
    check_count("--num-samples", num_samples)
    check_count("--batch-size", batch_size)
    x, y = run_data(run, split, num_examples=num_examples, device=device, seed=seed)
    kw: dict[str, Any] = {"num_samples": num_samples, "batch_size": batch_size}
    idata = ppc_mod.posterior_predictive(run.model, run.guide, x, y, **kw)
    idata.extend(ppc_mod.prior_predictive(run.model, x, y, **kw))
    out = Path(out_dir)
    idata.to_netcdf(str(out / "ppc.nc"))
    summary: dict[str, Any] = {"num_examples": int(x.shape[0]), "num_samples": num_samples}
    observed = next(iter(idata.observed_data.data_vars.values()))  # type: ignore[attr-defined]
    if not viz_mod.is_image(observed.shape[1:]):
        return _feature_summary(idata, out, summary, run.config.feature_names)
    summary["data"] = "images"
    paths = [out / "ppc.nc", *ppc_mod.save_ppc_plots(idata, out)]
    for group in ("posterior_predictive", "prior_predictive"):
        mean_p = ppc_mod.bayesian_p_values(idata, ppc_mod.mean_intensity, group=group)
        ink_p = ppc_mod.bayesian_p_values(idata, ppc_mod.image_ink, group=group)
        pix_p = ppc_mod.bayesian_p_values(idata, ppc_mod.pixel_marginals, group=group)
        summary[group] = {
            "p_mean_intensity": float(mean_p),
            "ink_extreme_fraction": float(((ink_p < 0.025) | (ink_p > 0.975)).mean()),
            "ink_p_median": float(ink_p.median()),
            "pixel_extreme_fraction": float(((pix_p < 0.025) | (pix_p > 0.975)).mean()),
        }
    return summary, paths


def _feature_summary(
    idata: Any, out: Path, summary: dict[str, Any], feature_names: list[str] | None = None
) -> tuple[dict[str, Any], list[Path]]:
    """The per-feature checks of tables and counts (see :func:`ppc_run`); the CSV's rows
    carry the features' names in a ``feature_name`` column when the run has them."""
    summary["data"] = "features"
    paths = [out / "ppc.nc", out / "ppc_features.csv"]
    for group in ("posterior_predictive", "prior_predictive"):
        table = ppc_mod.feature_checks(idata, group=group)
        if group == "posterior_predictive":
            written = table.copy()
            if feature_names is not None and len(feature_names) == len(table):
                written.insert(0, "feature_name", list(feature_names))
            written.to_csv(paths[-1])
            summary["num_features"] = len(table)
        summary[group] = ppc_mod.feature_check_summary(table)
    paths += ppc_mod.save_feature_plots(idata, out)
    return summary, paths


def sample_run(
    run: Run,
    out_dir: str | Path,
    split: str = "test",
    *,
    num_samples: int = 64,
    label: int | None = None,
    device: str = "cpu",
    seed: int = 0,
) -> list[Path]:
    """Every figure of :mod:`pyro_vae.check.viz` for a run (generated rows and per-feature
    histograms for data that are not images)."""
    check_count("--num-samples", num_samples)
    x, y = run_data(run, split, device=device, seed=seed)
    return viz_mod.save_figures(
        run.model,
        run.guide,
        x,
        y,
        out_dir,
        num_samples=num_samples,
        label=label,
        feature_names=run.config.feature_names,
    )
