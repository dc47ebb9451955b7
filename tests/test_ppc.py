"""Posterior and prior predictive checks: InferenceData layout, real replicates,
p-values, a misspecified likelihood caught, netCDF round trip and the plots."""

from __future__ import annotations

import arviz as az
import numpy as np
import pyro
import pytest
import torch
from torchvision.io import decode_png, read_file

from pyro_vae import (
    VAE,
    BernoulliLikelihood,
    DiagonalNormalGuide,
    NormalLikelihood,
    StandardNormalPrior,
    binarize,
    fit,
)
from pyro_vae.check.ppc import (
    bayesian_p_values,
    image_ink,
    mean_intensity,
    pixel_marginals,
    posterior_predictive,
    prior_predictive,
    save_ppc_plots,
)

LATENT = 8


def sum_of_squares(x):
    """A user statistic: Σ x² per image, which equals the ink for binary images."""
    return (x**2).sum(["channel", "row", "column"])


@pytest.fixture(scope="module")
def trained(bundled):
    """A Bernoulli and a Normal(σ = 1 fixed) VAE, trained briefly on the same binarized
    MNIST images, and their posterior predictive data on 100 test images."""
    x_train = binarize(bundled["train"].tensors[0][:3000], seed=0)
    x_test = binarize(bundled["test"].tensors[0][:100], seed=2)
    y_test = bundled["test"].tensors[1][:100]
    out = {"x": x_test, "y": y_test}
    likelihoods = {
        "bernoulli": lambda: BernoulliLikelihood.mlp(LATENT, (1, 28, 28), (64,)),
        "normal": lambda: NormalLikelihood.mlp(LATENT, (1, 28, 28), (64,), scale=1.0),
    }
    for name, make_likelihood in likelihoods.items():
        # a module fixture runs before the autouse seeding: seed here, before any init
        pyro.set_rng_seed(0)
        torch.set_num_threads(2)
        vae = VAE(
            StandardNormalPrior(LATENT),
            make_likelihood(),
            DiagonalNormalGuide.mlp((1, 28, 28), LATENT, (64,)),
        )
        fit(
            vae.model,
            vae.guide,
            x_train,
            epochs=3,
            batch_size=100,
            lr=3e-3,
            objective="meanfield",
            progress=False,
        )
        pyro.set_rng_seed(1)
        out[name] = vae
        out[f"{name}_idata"] = posterior_predictive(
            vae.model, vae.guide, x_test, y_test, num_samples=100, batch_size=40
        )
    return out


def test_inference_data_groups_dims_and_coords(trained):
    idata = trained["bernoulli_idata"]
    assert {
        "posterior",
        "posterior_predictive",
        "log_likelihood",
        "observed_data",
        "constant_data",
    } <= set(idata.groups())
    z = idata.posterior["z"]
    assert z.dims == ("chain", "draw", "example", "latent") and z.shape == (1, 100, 100, LATENT)
    rep = idata.posterior_predictive["x"]
    assert rep.dims == ("chain", "draw", "example", "channel", "row", "column")
    assert rep.shape == (1, 100, 100, 1, 28, 28)
    assert idata.observed_data["x"].dims == ("example", "channel", "row", "column")
    ll = idata.log_likelihood["x"]
    assert ll.dims == ("chain", "draw", "example") and ll.shape == (1, 100, 100)
    np.testing.assert_array_equal(idata.posterior.coords["example"], np.arange(100))
    np.testing.assert_array_equal(idata.posterior.coords["latent"], np.arange(LATENT))
    np.testing.assert_array_equal(idata.constant_data["y"], trained["y"].numpy())
    # the log-likelihood is log p(x_n | z_{n,s}) of the observed image: Bernoulli, so < 0,
    # and it is the likelihood of the draws in the posterior group
    vae = trained["bernoulli"]
    z0 = torch.as_tensor(z.values[0, :3, 5])
    direct = vae.likelihood.dist(z0).log_prob(trained["x"][5])
    np.testing.assert_allclose(ll.values[0, :3, 5], direct.detach().numpy(), rtol=1e-5)


def test_replicates_are_real_draws(trained):
    idata, x = trained["bernoulli_idata"], trained["x"].numpy()
    rep = idata.posterior_predictive["x"].values[0]
    assert set(np.unique(rep)) == {0.0, 1.0}  # Bernoulli draws, not probabilities
    differs = (rep != x[None]).mean()
    assert 0.01 < differs < 0.3  # not a copy of x, but close to it
    assert (rep[0] != rep[1]).any()  # and fresh per draw


def test_p_values_in_unit_interval_with_the_statistics_dims(trained):
    idata = trained["bernoulli_idata"]
    p_mean = bayesian_p_values(idata, mean_intensity)
    p_ink = bayesian_p_values(idata, image_ink)
    p_pix = bayesian_p_values(idata, pixel_marginals)
    p_user = bayesian_p_values(idata, sum_of_squares)
    assert p_mean.dims == () and p_ink.dims == ("example",)
    assert p_pix.dims == ("channel", "row", "column")
    for p in (p_mean, p_ink, p_pix, p_user):
        assert float(p.min()) >= 0 and float(p.max()) <= 1
    # on binary data Σ x² is the ink
    np.testing.assert_array_equal(p_user.values, p_ink.values)


def test_check_tells_a_misspecified_likelihood_from_a_good_one(trained):
    """A Gaussian with fixed σ = 1 on binary images: replicates are the decoder mean plus
    N(0, 1) noise, so Σ x² per image is ~784 too large and every image's p-value is
    extreme; under the Bernoulli few are. The plain ink Σ x does NOT give extreme p-values
    under the Gaussian (its mean is right); its p-values pile up near 1/2 instead (the
    replicates are far too dispersed), more than the Bernoulli's do."""
    extreme = {}
    middle = {}
    for name in ("bernoulli", "normal"):
        idata = trained[f"{name}_idata"]
        p_sq = bayesian_p_values(idata, sum_of_squares)
        extreme[name] = float(((p_sq < 0.005) | (p_sq > 0.995)).mean())
        p_ink = bayesian_p_values(idata, image_ink)
        middle[name] = float(((p_ink > 0.1) & (p_ink < 0.9)).mean())
    assert extreme["normal"] == 1.0
    assert extreme["bernoulli"] < 0.3
    assert middle["normal"] > 0.75 and middle["normal"] > middle["bernoulli"]


def test_prior_predictive(trained):
    vae, x = trained["bernoulli"], trained["x"][:20]
    idata = prior_predictive(vae.model, x, num_samples=30)
    assert {"prior", "prior_predictive", "observed_data"} <= set(idata.groups())
    assert idata.prior["z"].dims == ("chain", "draw", "example", "latent")
    assert idata.prior_predictive["x"].shape == (1, 30, 20, 1, 28, 28)
    z = idata.prior["z"].values
    assert abs(z.mean()) < 0.1 and abs(z.std() - 1) < 0.1  # draws from N(0, I)
    p = bayesian_p_values(idata, mean_intensity, group="prior_predictive")
    assert 0 <= float(p) <= 1
    with pytest.raises(ValueError, match="no 'posterior_predictive' group"):
        bayesian_p_values(idata, mean_intensity)


def test_netcdf_round_trip_and_plots(trained, tmp_path):
    idata = trained["bernoulli_idata"]
    small = idata.isel(draw=slice(0, 10), example=slice(0, 20))
    small.to_netcdf(str(tmp_path / "ppc.nc"))
    back = az.from_netcdf(tmp_path / "ppc.nc")
    assert set(back.groups()) == set(small.groups())
    for group in small.groups():
        for name, var in small[group].data_vars.items():
            assert back[group][name].dims == var.dims
            np.testing.assert_array_equal(back[group][name].values, var.values)
    paths = save_ppc_plots(
        small, tmp_path, statistics={"ink": image_ink, "mean_intensity": mean_intensity}
    )
    assert [p.name for p in paths] == ["ppc_ink.png", "bpv_ink.png", "bpv_mean_intensity.png"]
    for p in paths:
        image = decode_png(read_file(str(p)))
        assert image.shape[0] in (3, 4) and image.float().std() > 5  # a drawn figure


def test_bad_input(trained):
    vae, x = trained["bernoulli"], trained["x"]
    with pytest.raises(ValueError, match="num_samples must be an integer >= 1"):
        posterior_predictive(vae.model, vae.guide, x, num_samples=0)
    with pytest.raises(ValueError, match="no sample site 'obs'"):
        posterior_predictive(vae.model, vae.guide, x[:4], num_samples=2, obs_site="obs")
    with pytest.raises(ValueError, match="keep the chain and draw dims"):
        bayesian_p_values(trained["bernoulli_idata"], lambda a: a.mean())
