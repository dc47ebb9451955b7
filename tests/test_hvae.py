"""The two-level hierarchical VAE: its densities are the ones the maths says, it trains
(with the VampPrior on the top level too), and the CLI builds it with --levels 2."""

from __future__ import annotations

import json

import pyro
import pytest
import torch
from pyro import distributions as dist
from pyro import poutine

from pyro_vae import (
    BernoulliLikelihood,
    DiagonalNormalGuide,
    StandardNormalPrior,
    VampPrior,
    binarize,
    elbo_terms,
    fit,
)
from pyro_vae.cli import main
from pyro_vae.models.hvae import GaussianLayer, HierarchicalVAE
from pyro_vae.runs import load_run

X_SHAPE = (1, 28, 28)


def make_hvae(top: int = 3, bottom: int = 4, vamp: bool = False) -> HierarchicalVAE:
    guide = DiagonalNormalGuide.mlp(X_SHAPE, top, (32,))
    prior = VampPrior(guide, 5, X_SHAPE) if vamp else StandardNormalPrior(top)
    likelihood = BernoulliLikelihood.mlp(bottom, X_SHAPE, (32,))
    return HierarchicalVAE.mlp(prior, likelihood, guide, X_SHAPE, bottom, (32,))


def test_log_densities_are_the_factorized_ones(bundled):
    hvae = make_hvae()
    x = binarize(bundled["train"].tensors[0][:6], seed=0)
    guide_tr = poutine.trace(hvae.guide).get_trace(x)
    model_tr = poutine.trace(poutine.replay(hvae.model, trace=guide_tr)).get_trace(x)
    z1, z2 = guide_tr.nodes["z1"]["value"], guide_tr.nodes["z2"]["value"]
    assert z1.shape == (6, 4) and z2.shape == (6, 3)
    # log p(x, z1, z2) = log N(z2; 0, I) + log N(z1; mu(z2), s(z2)) + log Bern(x; f(z1))
    loc, scale = hvae.transition(z2)
    expected = (
        dist.Normal(0.0, 1.0).log_prob(z2).sum(-1)
        + dist.Normal(loc, scale).log_prob(z1).sum(-1)
        + dist.Bernoulli(logits=hvae.likelihood(z1)).log_prob(x).flatten(1).sum(-1)
    )
    model_tr.compute_log_prob()
    got = sum(model_tr.nodes[s]["log_prob"] for s in ("z2", "z1", "x"))
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-4)
    # log q(z2, z1 | x) = log q(z2 | x) + log N(z1; m(x, z2), s(x, z2))
    q_loc, q_scale = hvae.bottom_posterior(x, z2)
    expected_q = hvae.posterior.dist(x).log_prob(z2) + dist.Normal(q_loc, q_scale).log_prob(z1).sum(
        -1
    )
    guide_tr.compute_log_prob()
    got_q = guide_tr.nodes["z2"]["log_prob"] + guide_tr.nodes["z1"]["log_prob"]
    torch.testing.assert_close(got_q, expected_q, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("vamp", [False, True], ids=["normal-top", "vamp-top"])
def test_it_trains_and_the_elbo_rises(bundled, vamp):
    pyro.set_rng_seed(0)
    hvae = make_hvae(vamp=vamp)
    x = binarize(bundled["train"].tensors[0][:512], seed=0)
    before = elbo_terms(hvae.model, hvae.guide, x)["elbo"].mean().item()
    fit(hvae.model, hvae.guide, x, epochs=5, batch_size=64, lr=3e-3, progress=False)
    after = elbo_terms(hvae.model, hvae.guide, x)["elbo"].mean().item()
    assert after > before + 50, (before, after)
    assert hvae.model(num_samples=3).shape == (3, *X_SHAPE)


def test_gaussian_layer_broadcasts_its_inputs():
    layer = GaussianLayer([(2, 3), (4,)], (8,), 5)
    loc, scale = layer(torch.rand(7, 2, 3), torch.rand(10, 7, 4))  # particles on the left
    assert loc.shape == scale.shape == (10, 7, 5) and bool((scale > 0).all())
    with pytest.raises(ValueError, match="takes 2 inputs"):
        layer(torch.rand(7, 2, 3))


def test_cli_levels_2_trains_resumes_and_loads(tmp_path):
    out = tmp_path / "hvae"
    argv = ["train", "--levels", "2", "--prior", "vamp", "--components", "5"]
    argv += ["--hidden-dims", "32", "--latent-dim", "4", "--batch-size", "256", "--no-progress"]
    assert main([*argv, "--epochs", "1", "--out", str(out)]) == 0
    assert main(["train", "--resume", str(out), "--epochs", "2", "--no-progress"]) == 0
    run = load_run(out)
    assert isinstance(run.module, HierarchicalVAE) and run.config.levels == 2
    assert run.module.prior.guide is run.module.posterior  # the VampPrior mixes q(z2|u_k)
    assert [r["epoch"] for r in run.history] == [1, 2]
    assert json.loads((out / "test.json").read_text())["test_elbo"] < 0
    assert main(["train", "--levels", "2", "--conditional", "--out", str(tmp_path / "c")]) == 2


def test_gated_layer_is_the_gated_product_and_gated_runs_build_everywhere(tmp_path):
    from pyro_vae.parts.nn import MLP, GatedLinear

    torch.manual_seed(0)
    layer = GatedLinear(3, 2)
    x = torch.randn(5, 3)
    w, b = layer.linear.weight, layer.linear.bias
    expected = (x @ w[:2].T + b[:2]) * torch.sigmoid(x @ w[2:].T + b[2:])
    assert torch.allclose(layer(x), expected)
    net = MLP(X_SHAPE, (7, 6), 4, gated=True)
    assert [type(m).__name__ for m in net.net] == ["GatedLinear", "GatedLinear", "Linear"]
    assert net(torch.rand(2, 3, *X_SHAPE)).shape == (2, 3, 4)
    # the Tomczak & Welling networks from the CLI: one level and two levels with a VampPrior
    argv = ["train", "--network", "gated", "--hidden-dims", "16", "16", "--latent-dim", "3"]
    argv += ["--epochs", "1", "--batch-size", "256", "--no-progress"]
    two = ["--levels", "2", "--prior", "vamp", "--components", "4"]
    for extra, name in (([], "one"), (two, "two")):
        assert main([*argv, *extra, "--out", str(tmp_path / name)]) == 0
        module = load_run(tmp_path / name).module
        assert sum(isinstance(m, GatedLinear) for m in module.modules()) >= 4
    refused = ["train", "--network", "gated", "--conditional", "--out", str(tmp_path / "c")]
    assert main(refused) == 2 and not (tmp_path / "c").exists()
