"""The ``pyro-vae evaluate``, ``ppc`` and ``sample`` commands on a tiny trained run."""

from __future__ import annotations

import json
import math

import arviz as az
import pytest
from torchvision.io import decode_png, read_file

from pyro_vae.cli import main

TINY = ["--hidden-dims", "32", "--latent-dim", "4", "--batch-size", "256", "--no-progress"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli_eval") / "run"
    assert main(["train", "--epochs", "1", *TINY, "--out", str(out)]) == 0
    return out


def test_evaluate_writes_a_consistent_report(run_dir, capsys):
    code = main(["evaluate", str(run_dir), "--num-samples", "50", "--num-examples", "200"])
    assert code == 0
    table = capsys.readouterr().out
    for row in ("ELBO", "IS NLL (K=50)", "KL", "bits/dim", "active units"):
        assert row in table
    report = json.loads((run_dir / "evaluation.json").read_text())
    for key in ("elbo", "reconstruction", "kl", "nll", "nll_stderr", "bits_per_dim"):
        assert math.isfinite(report[key]), key
    assert report["num_examples"] == 200 and report["num_samples"] == 50
    assert report["elbo"] == pytest.approx(report["reconstruction"] - report["kl"], abs=1e-3)
    # IS NLL is below the negative ELBO (a looser bound), up to Monte Carlo error
    assert report["nll"] <= -report["elbo"] + 4 * report["nll_stderr"] + 0.5
    assert report["bits_per_dim"] == pytest.approx(report["nll"] / (784 * math.log(2)))
    assert 0 <= report["active_units"] <= report["latent_dim"] == 4
    assert len(report["kl_per_dim"]) == 4
    assert sum(report["kl_per_dim"]) == pytest.approx(report["kl"], rel=0.05, abs=0.05)
    assert report["peak_rss_mb"] > 0


def test_ppc_writes_netcdf_json_and_plots(run_dir):
    args = ["ppc", str(run_dir), "--num-samples", "20", "--num-examples", "30"]
    assert main(args) == 0
    idata = az.from_netcdf(run_dir / "ppc.nc")
    assert {"posterior", "posterior_predictive", "prior", "prior_predictive"} <= set(idata.groups())
    assert idata.posterior_predictive["x"].shape == (1, 20, 30, 1, 28, 28)
    summary = json.loads((run_dir / "ppc.json").read_text())
    for group in ("posterior_predictive", "prior_predictive"):
        assert 0 <= summary[group]["p_mean_intensity"] <= 1
        assert 0 <= summary[group]["ink_extreme_fraction"] <= 1
    for name in ("ppc_ink.png", "bpv_ink.png", "bpv_mean_intensity.png"):
        assert decode_png(read_file(str(run_dir / name))).float().std() > 5


def test_sample_writes_the_figures(run_dir):
    assert main(["sample", str(run_dir), "--num-samples", "16"]) == 0
    expected = {
        "samples.png": (2 * 30 + 2, 8 * 30 + 2),
        "interpolation_linear.png": (4 * 30 + 2, 10 * 30 + 2),
        "interpolation_spherical.png": (4 * 30 + 2, 10 * 30 + 2),
        "traversals.png": (4 * 30 + 2, 9 * 30 + 2),  # the 4 latent dims
    }
    for name, (height, width) in expected.items():
        image = decode_png(read_file(str(run_dir / name)))
        assert image.shape[1:] == (height, width), name
        assert image.float().std() > 5
    assert decode_png(read_file(str(run_dir / "latent_scatter.png"))).float().std() > 5
    assert (run_dir / "reconstructions.png").is_file()


def test_labels_need_a_conditional_model(run_dir, capsys):
    assert main(["sample", str(run_dir), "--label", "3"]) == 2
    assert "does not depend on labels" in capsys.readouterr().err


def test_missing_or_half_written_run_dir(tmp_path, capsys):
    assert main(["evaluate", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "half").mkdir()
    assert main(["ppc", str(tmp_path / "half")]) == 2
    assert "no config.json" in capsys.readouterr().err
    (tmp_path / "half" / "config.json").write_text('{"dataset": "bundled"')
    assert main(["sample", str(tmp_path / "half")]) == 2
    assert "half-written" in capsys.readouterr().err


def test_conditional_model_figures_per_label(tmp_path):
    """save_figures on a user's conditional program: one sample row per label, and the
    samples for one label."""
    import pyro
    import pyro.distributions as dist
    import torch

    from pyro_vae.check.viz import depends_on_labels, save_figures

    embed, dec = torch.nn.Embedding(10, 3), torch.nn.Linear(6, 784)
    enc = torch.nn.Linear(784 + 3, 6)

    def model(x, y=None):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(3), 1.0).to_event(1))
            h = torch.cat([z, embed(y).expand(*z.shape[:-1], 3)], -1)
            logits = dec(h).reshape(*z.shape[:-1], 1, 28, 28)
            pyro.sample("x", dist.Bernoulli(logits=logits).to_event(3), obs=x)

    def guide(x, y=None):
        with pyro.plate("data", x.shape[0]):
            h = torch.cat([x.reshape(len(x), -1), embed(y)], -1)
            loc, raw = enc(h).split(3, -1)
            pyro.sample("z", dist.Normal(loc, torch.nn.functional.softplus(raw)).to_event(1))

    x = torch.bernoulli(torch.full((40, 1, 28, 28), 0.3))
    y = torch.arange(40) % 10
    assert depends_on_labels(model, x[:2])
    paths = save_figures(model, guide, x, y, tmp_path, label=3, num_samples=16)
    assert [p.name for p in paths][:2] == ["samples_by_label.png", "samples_label3.png"]
    grid = decode_png(read_file(str(tmp_path / "samples_by_label.png")))
    assert grid.shape[1:] == (10 * 30 + 2, 8 * 30 + 2)  # a row of 8 per label
