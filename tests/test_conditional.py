"""Conditional VAE: label-conditioned prior, likelihood and guide."""

from __future__ import annotations

import json

import pyro
import pytest
import torch
from pyro.infer import TraceMeanField_ELBO
from torch.nn import functional as F

from pyro_vae import (
    VAE,
    BernoulliLikelihood,
    DiagonalNormalGuide,
    StandardNormalPrior,
    binarize,
    conditional_vae,
    elbo_terms,
    fit,
)
from pyro_vae.check.viz import samples_by_label
from pyro_vae.parts.conditional import (
    ConditionalNet,
    ConditionalNormalPrior,
    condition_on_labels,
    conditional_guide,
    conditional_likelihood,
)
from pyro_vae.parts.nn import MLP


@pytest.fixture(scope="module")
def labelled(bundled):
    x, y = bundled["train"].tensors
    xv, yv = bundled["valid"].tensors
    return binarize(x[:1024], seed=0), y[:1024], binarize(xv[:300], seed=1), yv[:300]


@pytest.mark.parametrize("gated", [False, True])
def test_conditional_net_is_each_layer_on_the_concatenation_with_the_scaled_label(gated):
    """Every affine layer acts on [h, sqrt(fan_in) * one_hot(y)]: the label is one more
    input of each layer, with the norm of a typical input (so Adam learns it as fast)."""
    torch.manual_seed(0)
    mlp = MLP((2, 3), (5,), 4, gated=gated)
    net = ConditionalNet(mlp, num_classes=3)
    x, y = torch.randn(7, 2, 3), torch.tensor([0, 1, 2, 2, 1, 0, 1])
    one_hot = F.one_hot(y, 3).float()

    def layer(linear, h, k):  # W [h; sqrt(fan_in) e_y] + b, the label's columns in W
        weight = torch.cat([linear.weight, net.label_weights[k].T], dim=1)
        scaled = linear.in_features**0.5 * one_hot
        return F.linear(torch.cat([h, scaled], -1), weight, linear.bias)

    first = mlp.net[0].linear if gated else mlp.net[0]
    h = layer(first, x.reshape(7, 6), 0)
    if gated:
        value, gate = h.chunk(2, -1)
        h = value * torch.sigmoid(gate)
    else:
        h = mlp.net[1](h)
    expected = layer(mlp.net[-1], h, 1)
    assert torch.allclose(net(x, y), expected, atol=1e-6)
    assert len(net.label_weights) == 2  # the hidden layer and the output layer
    # Enumerated labels (C, 1) broadcast against the batch: one row per class.
    out = net(x, torch.arange(3).reshape(3, 1))
    assert out.shape == (3, 7, 4)
    for c in range(3):
        assert torch.allclose(out[c], net(x, torch.full((7,), c)), atol=1e-6)
    # Vectorized particles (K, N, ...) with labels (N,).
    assert net(x.expand(4, 7, 2, 3), y).shape == (4, 7, 4)


def test_conditional_net_keeps_the_mlps_input_scale():
    torch.manual_seed(0)
    net = ConditionalNet(MLP(3, (5,), 4, input_scale=2.0), num_classes=2)
    plain = ConditionalNet(MLP(3, (5,), 4), num_classes=2)
    plain.load_state_dict(net.state_dict())
    z, y = torch.randn(6, 3), torch.tensor([0, 1, 0, 1, 1, 0])
    assert torch.allclose(net(z, y), plain(2.0 * z, y), atol=1e-6)


def test_a_trained_cvae_draws_the_digit_it_is_asked_for(labelled, bundled):
    """The decoder must read the label, not only the code: a CVAE with a standard normal
    prior, 16 latent dimensions and a few epochs on 2,048 digits generates digit c for
    label c, as judged by the nearest class-mean image of real digits. (With the label
    entering the first layer only, unscaled, these samples were at chance, about 0.1: the
    code carried the class and the decoder ignored y.)"""
    x_all, y_all = bundled["train"].tensors
    x, y = binarize(x_all[:2048], seed=0), y_all[:2048]
    class_means = torch.stack([x_all[:2048][y == c].mean(0) for c in range(10)]).flatten(1)
    torch.manual_seed(0)
    vae = VAE(
        StandardNormalPrior(16),
        conditional_likelihood(BernoulliLikelihood, 16, (1, 28, 28), 10, (128,)),
        conditional_guide(DiagonalNormalGuide, (1, 28, 28), 16, 10, (128,)),
    )
    fit(
        vae.model,
        vae.guide,
        (x, y),
        objective="meanfield",
        epochs=4,
        batch_size=64,
        seed=0,
        progress=False,
    )
    pyro.set_rng_seed(0)
    samples = samples_by_label(vae.model, x[:1], range(10), per_label=50).flatten(1)
    read = torch.cdist(samples, class_means).argmin(1)
    accuracy = (read == torch.arange(10).repeat_interleave(50)).double().mean().item()
    assert accuracy > 0.8, accuracy


def test_conditional_prior_rows_and_analytic_kl(labelled):
    prior = ConditionalNormalPrior(10, 3)
    with torch.no_grad():
        prior.loc.copy_(torch.arange(30.0).reshape(10, 3))
    d = prior.dist(torch.tensor([3, 7]))
    assert d.batch_shape == (2,) and d.event_shape == (3,)
    assert torch.equal(d.base_dist.loc, torch.tensor([[9.0, 10, 11], [21, 22, 23]]))
    vae = conditional_vae(10, 3, (1, 28, 28), hidden_dims=(16,))
    x, y = labelled[0][:8], labelled[1][:8]
    loc, scale = vae.posterior(x, y)
    p_loc, p_scale = vae.prior(y)
    closed = (
        p_scale.log() - scale.log() + (scale**2 + (loc - p_loc) ** 2) / (2 * p_scale**2) - 0.5
    ).sum(-1)
    assert torch.allclose(elbo_terms(vae.model, vae.guide, x, y)["kl"], closed.detach(), atol=1e-5)


def test_generate_a_chosen_digit_with_the_right_shapes():
    vae = conditional_vae(10, 4, (1, 28, 28), hidden_dims=(32,))
    x = vae.model(x=None, y=torch.full((6,), 3))
    assert x.shape == (6, 1, 28, 28)
    assert ((x == 0) | (x == 1)).all()
    tr = pyro.poutine.trace(vae.model).get_trace(None, torch.tensor([3, 5]))
    assert tr.nodes["z"]["value"].shape == (2, 4)
    # Same z, different labels: the decoder sees y.
    z = torch.zeros(2, 4)
    means = vae.likelihood.dist(z, torch.tensor([3, 5])).mean
    assert not torch.allclose(means[0], means[1])


def test_cvae_trains_and_uses_the_label(labelled):
    x, y, xv, yv = labelled
    torch.manual_seed(0)
    vae = conditional_vae(10, 4, (1, 28, 28), hidden_dims=(64,))
    before = elbo_terms(vae.model, vae.guide, xv, yv)["elbo"].mean().item()
    history = fit(
        vae.model,
        vae.guide,
        (x, y),
        objective="meanfield",
        epochs=3,
        batch_size=64,
        lr=3e-3,
        validation_data=(xv, yv),
        progress=False,
    )
    assert history["val_elbo"][-1] > before + 100
    assert history["train_elbo"][-1] > history["train_elbo"][0]
    # The model explains the data better with the true labels than with wrong ones.
    pyro.set_rng_seed(1)
    right = elbo_terms(vae.model, vae.guide, xv, yv)["elbo"].mean().item()
    pyro.set_rng_seed(1)
    wrong = elbo_terms(vae.model, vae.guide, xv, (yv + 1) % 10)["elbo"].mean().item()
    assert right > wrong + 1.0, (right, wrong)


def test_labels_missing_or_out_of_range_name_the_fix(labelled):
    x, y = labelled[0][:4], labelled[1][:4]
    vae = conditional_vae(10, 2, (1, 28, 28), hidden_dims=(8,))
    with pytest.raises(ValueError, match="pass y"):
        vae.model(x)
    with pytest.raises(ValueError, match=r"\[0, 10\)"):
        vae.model(x, torch.tensor([0, 1, 10, 2]))
    with pytest.raises(ValueError, match=r"y.long\(\)"):
        vae.model(x, y.float())
    with pytest.raises(ValueError, match="pass y"):
        fit(vae.model, vae.guide, x, epochs=1, batch_size=4, progress=False)
    with pytest.raises(ValueError, match="num_classes=13"):
        fit(
            vae.model,
            vae.guide,
            (x, torch.tensor([0, 12, 3, 4])),
            epochs=1,
            batch_size=4,
            progress=False,
        )


def test_condition_on_labels_wraps_existing_parts():
    likelihood = condition_on_labels(BernoulliLikelihood.mlp(3, (1, 28, 28), (8,)), 10)
    guide = condition_on_labels(DiagonalNormalGuide.mlp((1, 28, 28), 3, (8,)), 10)
    assert isinstance(likelihood.decoder, ConditionalNet)
    assert isinstance(guide.encoder, ConditionalNet)
    vae = VAE(ConditionalNormalPrior(10, 3), likelihood, guide)
    x = torch.zeros(5, 1, 28, 28)
    loss = TraceMeanField_ELBO()(vae.model, vae.guide)(x, torch.arange(5))
    assert torch.isfinite(loss)
    with pytest.raises(ValueError, match="already conditional"):
        condition_on_labels(likelihood, 10)
    with pytest.raises(ValueError, match="no decoder or encoder"):
        condition_on_labels(StandardNormalPrior(3), 10)
    # An unconditional VAE ignores labels that fit passes along.
    plain = VAE(
        StandardNormalPrior(3),
        BernoulliLikelihood.mlp(3, (1, 28, 28), (8,)),
        DiagonalNormalGuide.mlp((1, 28, 28), 3, (8,)),
    )
    pyro.set_rng_seed(0)
    with_y = TraceMeanField_ELBO().loss(plain.model, plain.guide, x, torch.arange(5))
    pyro.set_rng_seed(0)
    without = TraceMeanField_ELBO().loss(plain.model, plain.guide, x)
    assert with_y == without


def test_cli_trains_a_cvae_and_samples_a_chosen_label(bundled, small_cli_args, tmp_path, capsys):
    from pyro_vae.cli import main

    x = bundled["train"].tensors[0]
    out = tmp_path / "cvae"
    common = small_cli_args
    assert main(["train", *common, "--conditional", "--out", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["conditional"] is True and config["num_classes"] == 10
    assert main(["sample", str(out), "--label", "3", "--num-samples", "8"]) == 0
    assert (out / "samples_label3.png").is_file()
    assert (
        main(["train", *common, "--conditional", "--prior", "mog", "--out", str(tmp_path / "bad")])
        == 2
    )
    assert "drop --prior" in capsys.readouterr().err
    x_only = tmp_path / "x_only.pt"
    torch.save(x[:400], x_only)
    assert (
        main(
            [
                "train",
                *common[4:],
                "--dataset",
                "file",
                "--data-file",
                str(x_only),
                "--conditional",
                "--out",
                str(tmp_path / "bad2"),
            ]
        )
        == 2
    )
    assert "--conditional needs labels" in capsys.readouterr().err
