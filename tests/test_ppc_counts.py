"""Predictive checks per feature for tables and counts: the statistics and p-values against
hand computations, ArviZ's per-feature plots, and the check telling likelihoods apart on
overdispersed counts (Poisson vs negative binomial) and on the UCI digits (Poisson and
negative binomial vs Binomial(16))."""

from __future__ import annotations

import json
import math

import arviz as az
import matplotlib
import numpy as np
import pandas as pd
import pyro
import pytest
import torch
from torchvision.io import decode_png, read_file

from pyro_vae import VAE, DiagonalNormalGuide, NormalLikelihood, StandardNormalPrior, fit
from pyro_vae.check.evaluate import evaluate
from pyro_vae.check.ppc import (
    FEATURE_STATISTICS,
    choose_features,
    feature_check_summary,
    feature_checks,
    feature_data,
    posterior_predictive,
    save_feature_plots,
)
from pyro_vae.cli import main
from pyro_vae.data import load_digits
from pyro_vae.parts.likelihoods import (
    BinomialLikelihood,
    NegativeBinomialLikelihood,
    PoissonLikelihood,
)

matplotlib.use("Agg")


def hand_idata(rep: np.ndarray, obs: np.ndarray) -> az.InferenceData:
    """Replicates ``(S, N, F)`` and data ``(N, F)`` laid out as posterior_predictive does."""
    return az.from_dict(
        posterior_predictive={"x": rep[None]},
        observed_data={"x": obs},
        dims={"x": ["example", "feature"]},
    )


def test_feature_statistics_and_p_values_by_hand():
    obs = np.array([[0, 2, 0], [0, 4, 1], [0, 0, 5]], dtype=float)  # feature 0 all zeros
    rep = np.array(
        [
            [[0, 2, 0], [0, 4, 1], [0, 0, 5]],  # the data again: every statistic ties
            [[0, 9, 1], [0, 9, 1], [1, 9, 1]],
            [[0, 0, 0], [0, 0, 0], [0, 0, 0]],  # the mean is 0: no dispersion index
        ],
        dtype=float,
    )
    table = feature_checks(hand_idata(rep, obs))
    assert list(table.index) == [0, 1, 2]
    np.testing.assert_allclose(table["mean_observed"], [0, 2, 2])
    np.testing.assert_allclose(table["variance_observed"], [0, 4, 7])
    np.testing.assert_allclose(table["zero_fraction_observed"], [1, 1 / 3, 1 / 3])
    np.testing.assert_allclose(table["max_observed"], [0, 4, 5])
    assert math.isnan(table["dispersion_observed"][0])  # 0 / 0
    np.testing.assert_allclose(table["dispersion_observed"][1:], [2, 3.5])
    # p = Pr(T_rep > T_obs) + Pr(T_rep = T_obs) / 2 over the three draws
    # mean of feature 1: replicates 2 (tie), 9 (above), 0 (below) -> (1 + 0.5) / 3
    assert table["mean_p"][1] == pytest.approx(0.5)
    # mean of feature 0: 0 (tie), 1/3 (above), 0 (tie) -> (1 + 1) / 3
    assert table["mean_p"][0] == pytest.approx(2 / 3)
    # the dispersion index of feature 1: 2 (tie), 0 (below; variance 0, mean 9), undefined
    # in the third draw -> counted over two draws: 0.5 / 2
    assert table["dispersion_p"][1] == pytest.approx(0.25)
    # undefined on the data -> no p-value
    assert math.isnan(table["dispersion_p"][0])
    np.testing.assert_allclose(table["mean_replicated"], [1 / 9, 11 / 3, 1])
    summary = feature_check_summary(table)
    assert set(summary) == set(FEATURE_STATISTICS)
    assert summary["dispersion"]["num_features"] == 2
    assert summary["mean"] == {"extreme_fraction": 0.0, "p_median": 0.5, "num_features": 3}
    with pytest.raises(ValueError, match="low < high"):
        feature_check_summary(table, low=0.9, high=0.1)
    with pytest.raises(ValueError, match="reduce the example dim"):
        feature_checks(hand_idata(rep, obs), {"ink": lambda x: x.sum("feature")})


def test_feature_data_for_arviz_plots_per_feature(tmp_path):
    gen = np.random.default_rng(0)
    obs = gen.poisson([0.5, 3.0, 9.0, 0.0], size=(40, 4)).astype(float)
    rep = gen.poisson([0.5, 3.0, 9.0, 0.1], size=(30, 40, 4)).astype(float)
    idata = hand_idata(rep, obs)
    assert choose_features(idata, 2) == [0, 2]  # the constant feature 3 is left out
    assert choose_features(idata) == [0, 1, 2]
    data = feature_data(idata, [1, 2])
    x = data.posterior_predictive["x"]
    assert x.dims == ("chain", "draw", "example", "feature") and x.shape == (1, 30, 40, 2)
    assert x.dtype == np.int64 and data.observed_data["x"].dtype == np.int64  # counts
    assert list(data.observed_data["feature"].values) == ["1", "2"]
    np.testing.assert_array_equal(data.observed_data["x"].values, obs[:, 1:3])
    axes = az.plot_ppc(data, flatten=["example"], num_pp_samples=10, random_seed=0)
    assert np.size(axes) == 2  # one panel per feature
    axes = az.plot_bpv(
        data, kind="t_stat", t_stat=lambda a: a.var(-1) / a.mean(-1), flatten=["example"]
    )
    assert np.size(axes) == 2
    with pytest.raises(ValueError, match="positions in \\[0, 4\\)"):
        feature_data(idata, [4])
    paths = save_feature_plots(idata, tmp_path, features=[1, 2])
    assert [p.name for p in paths] == [
        "ppc_features.png",
        "bpv_features_dispersion.png",
        "stat_features.png",
        "p_values_features.png",
    ]
    assert all(p.stat().st_size > 5000 for p in paths)


def simulate_overdispersed(n: int, num_features: int = 20, seed: int = 0) -> torch.Tensor:
    """Counts from a known latent negative binomial model: ``z ~ N(0, I_2)``, mean
    ``exp(W z + b)`` from 1 to 20 across features, Gamma(θ = 2) noise on the rate (the
    Gamma-Poisson mixture), so each feature's variance is far above its mean."""
    gen = torch.Generator().manual_seed(seed)
    w = 0.5 * torch.randn(2, num_features, generator=gen)
    b = torch.linspace(0.0, math.log(20.0), num_features)
    theta = torch.full((n, num_features), 2.0)
    mean = (torch.randn(n, 2, generator=gen) @ w + b).exp()
    rate = torch._standard_gamma(theta, generator=gen) / theta * mean
    return torch.poisson(rate, generator=gen).long()


def trained_checks(make_likelihood, x_train, x_test, latent_dim, hidden, epochs=20):
    """Train a VAE (seeded) and return its posterior predictive data on ``x_test`` with
    the summary of the per-feature checks. One thread: the networks are tiny, so a step is
    Python work, and a second thread only waits on a shared machine."""
    torch.set_num_threads(1)
    pyro.set_rng_seed(0)
    shape = tuple(x_train.shape[1:])
    vae = VAE(
        StandardNormalPrior(latent_dim),
        make_likelihood(latent_dim, shape, hidden),
        DiagonalNormalGuide.mlp(shape, latent_dim, hidden),
    )
    fit(
        vae.model,
        vae.guide,
        x_train,
        epochs=epochs,
        batch_size=100,
        lr=1e-2,
        objective="meanfield",
        progress=False,
    )
    pyro.set_rng_seed(1)
    idata = posterior_predictive(vae.model, vae.guide, x_test, num_samples=100, batch_size=300)
    return idata, feature_check_summary(feature_checks(idata))


def test_the_dispersion_index_rejects_a_poisson_on_overdispersed_counts():
    """Poisson and negative binomial VAEs (2 latent dims, as the generator) on 1,000
    overdispersed count vectors: the Poisson's replicates cannot vary as much as the data
    feature by feature, so most features' dispersion p-values are extreme; the negative
    binomial, the generating family, leaves few extreme (measured: 90% vs 5%)."""
    x = simulate_overdispersed(1300)
    x_train, x_test = x[:1000], x[1000:]
    summaries = {}
    for name, likelihood in (
        ("poisson", PoissonLikelihood),
        ("negbin", NegativeBinomialLikelihood),
    ):
        _, summaries[name] = trained_checks(likelihood.mlp, x_train, x_test, 2, (32,))
    assert summaries["poisson"]["dispersion"]["extreme_fraction"] >= 0.6
    assert summaries["negbin"]["dispersion"]["extreme_fraction"] <= 0.2
    # the Poisson also makes too few zeros in almost every feature
    assert summaries["poisson"]["zero_fraction"]["extreme_fraction"] >= 0.8
    assert summaries["poisson"]["zero_fraction"]["p_median"] < 0.025


def test_the_upper_bound_tells_the_binomial_from_unbounded_counts_on_the_digits():
    """On the UCI digits (counts 0..16), Poisson and negative binomial VAEs replicate
    counts above 16, so the largest value of most features is more extreme in the
    replicates than in the data; the Binomial(16) cannot exceed 16 (measured: about 69%,
    69% and 11% of the features extreme). The dispersion index separates the negative
    binomial from the binomial in direction: the negative binomial's replicates vary too
    much (p-values pile up at 1), the binomial's too little (at 0)."""
    digits = load_digits()
    x_train, x_test = digits["train"].tensors[0], digits["test"].tensors[0]
    likelihoods = {
        "poisson": PoissonLikelihood.mlp,
        "negbin": NegativeBinomialLikelihood.mlp,
        "binomial": lambda *shape: BinomialLikelihood.mlp(*shape, trials=16),
    }
    summaries, above = {}, {}
    for name, make in likelihoods.items():
        idata, summaries[name] = trained_checks(make, x_train, x_test, 8, (64,))
        above[name] = float((idata.posterior_predictive["x"] > 16).mean())
    assert above["poisson"] > 0.01 and above["negbin"] > 0.01 and above["binomial"] == 0
    extreme_max = {name: s["max"]["extreme_fraction"] for name, s in summaries.items()}
    assert extreme_max["poisson"] >= 0.4 and extreme_max["negbin"] >= 0.4, extreme_max
    assert extreme_max["binomial"] <= 0.2, extreme_max
    assert summaries["poisson"]["max"]["p_median"] > 0.975
    assert summaries["negbin"]["dispersion"]["p_median"] > 0.9
    assert summaries["binomial"]["dispersion"]["p_median"] < 0.1


def test_evaluate_reports_nats_per_feature_for_discrete_data():
    x = simulate_overdispersed(60, num_features=5)
    pyro.set_rng_seed(0)
    vae = VAE(
        StandardNormalPrior(2),
        PoissonLikelihood.mlp(2, (5,), (8,)),
        DiagonalNormalGuide.mlp((5,), 2, (8,)),
    )
    report = evaluate(vae.model, vae.guide, x, num_samples=30)
    assert report["num_features"] == 5 and report["data_shape"] == [5]
    assert report["nll_per_feature"] == pytest.approx(report["nll"] / 5)
    assert report["bits_per_dim"] == pytest.approx(report["nll"] / (5 * math.log(2)))
    normal = VAE(
        StandardNormalPrior(2),
        NormalLikelihood.mlp(2, (5,), (8,), scale=1.0),
        DiagonalNormalGuide.mlp((5,), 2, (8,)),
    )
    report = evaluate(normal.model, normal.guide, x.float(), num_samples=30)
    assert report["nll_per_feature"] is None and report["bits_per_dim"] is None
    assert report["num_features"] == 5


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    """A Binomial(16) run on the UCI digits, trained for one epoch by the CLI."""
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("digits") / "run"
    args = ["--dataset", "digits", "--likelihood", "binomial", "--trials", "16"]
    size = ["--epochs", "1", "--hidden-dims", "32", "--latent-dim", "4", "--no-progress"]
    assert main(["train", *args, *size, "--out", str(out)]) == 0
    return out


def test_cli_evaluate_prints_nats_per_feature_for_counts(digits_run, capsys):
    torch.set_num_threads(1)
    assert main(["evaluate", str(digits_run), "--num-samples", "20"]) == 0
    table = capsys.readouterr().out
    report = json.loads((digits_run / "evaluation.json").read_text())
    assert report["images"] is False and report["num_features"] == 64
    assert report["nll_per_feature"] == pytest.approx(report["nll"] / 64)
    assert f"IS NLL per feature  {report['nll_per_feature']:.4f} nats (64 features)" in table
    assert "bits/dim" in table


def test_cli_ppc_checks_counts_per_feature(digits_run, capsys):
    torch.set_num_threads(1)
    args = ["ppc", str(digits_run), "--num-samples", "20", "--num-examples", "60"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "ink" not in printed and "pixel" not in printed
    for label in ("mean", "variance", "fraction of zeros", "variance / mean", "largest value"):
        rows = [line for line in printed.splitlines() if line.startswith(f"  {label:<18} ")]
        assert len(rows) == 2, printed  # posterior and prior predictive
    summary = json.loads((digits_run / "ppc.json").read_text())
    assert summary["data"] == "features" and summary["num_features"] == 64
    for group in ("posterior_predictive", "prior_predictive"):
        assert set(summary[group]) == set(FEATURE_STATISTICS)
        for check in summary[group].values():
            assert check["extreme_fraction"] is None or 0 <= check["extreme_fraction"] <= 1
    # the UCI digits have features that are 0 in every example: no dispersion index there
    assert summary["posterior_predictive"]["dispersion"]["num_features"] < 64
    table = pd.read_csv(digits_run / "ppc_features.csv", index_col=0)
    assert len(table) == 64 and {"dispersion_p", "max_observed"} <= set(table.columns)
    assert table["max_observed"].max() == 16
    idata = az.from_netcdf(digits_run / "ppc.nc")
    assert idata.posterior_predictive["x"].dims == ("chain", "draw", "example", "feature")
    for name in ("ppc_features", "bpv_features_dispersion", "stat_features", "p_values_features"):
        assert decode_png(read_file(str(digits_run / f"{name}.png"))).float().std() > 5
