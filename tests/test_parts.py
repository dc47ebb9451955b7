"""Parts: shapes, supports and the VAE contract, parametrized over likelihood x network."""

from __future__ import annotations

import math

import pyro
import pytest
import torch
from pyro import poutine

from pyro_vae import (
    VAE,
    BernoulliLikelihood,
    ContinuousBernoulliLikelihood,
    DiagonalNormalGuide,
    NormalLikelihood,
    StandardNormalPrior,
    elbo_terms,
    fit,
)

X_SHAPE = (1, 28, 28)
LIKELIHOODS = {
    "bernoulli": (BernoulliLikelihood, {}),
    "cbernoulli": (ContinuousBernoulliLikelihood, {}),
    "normal": (NormalLikelihood, {"scale": 0.5}),
    "normal-learned": (NormalLikelihood, {"scale": 0.5, "learn_scale": True}),
}


def make_vae(likelihood: str, network: str, latent_dim: int = 4) -> VAE:
    cls, kwargs = LIKELIHOODS[likelihood]
    if network == "mlp":
        lik = cls.mlp(latent_dim, X_SHAPE, (32,), **kwargs)
        guide = DiagonalNormalGuide.mlp(X_SHAPE, latent_dim, (32,))
    else:
        lik = cls.conv(latent_dim, X_SHAPE, **kwargs)
        guide = DiagonalNormalGuide.conv(latent_dim, feature_dim=32)
    return VAE(StandardNormalPrior(latent_dim), lik, guide)


def data_for(likelihood: str, bundled) -> torch.Tensor:
    x = bundled["train"].tensors[0][:64]
    return (
        torch.bernoulli(x, generator=torch.Generator().manual_seed(0))
        if (likelihood == "bernoulli")
        else x
    )


@pytest.mark.parametrize("network", ["mlp", "conv"])
@pytest.mark.parametrize("likelihood", sorted(LIKELIHOODS))
def test_contract(likelihood, network, bundled, tmp_path):
    """Shapes, a finite loss that decreases over a few steps, and a checkpoint round trip."""
    vae = make_vae(likelihood, network)
    x = data_for(likelihood, bundled)
    trace = poutine.trace(vae.model).get_trace(x)
    assert trace.nodes["z"]["value"].shape == (64, 4)
    assert trace.nodes["x"]["fn"].event_shape == X_SHAPE
    assert trace.nodes["x"]["fn"].batch_shape == (64,)
    guide_trace = poutine.trace(vae.guide).get_trace(x)
    assert guide_trace.nodes["z"]["fn"].event_shape == (4,)
    # generation without data
    assert vae.model(num_samples=5).shape == (5, *X_SHAPE)

    before = elbo_terms(vae.model, vae.guide, x)["elbo"].mean().item()
    assert math.isfinite(before)
    history = fit(
        vae.model, vae.guide, x, epochs=15, batch_size=32, lr=3e-3, progress=False, run_dir=tmp_path
    )
    pyro.set_rng_seed(1)
    after = elbo_terms(vae.model, vae.guide, x)["elbo"].mean().item()
    assert after > before + 1.0, (before, after)
    assert all(math.isfinite(v) for v in history["train_elbo"])

    clone = make_vae(likelihood, network)
    from pyro_vae import load_checkpoint
    from pyro_vae.checkpoint import load_module_states

    load_module_states([clone], load_checkpoint(tmp_path / "checkpoint.pt")["modules"])
    for (name, a), (_, b) in zip(vae.state_dict().items(), clone.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    pyro.set_rng_seed(1)
    assert elbo_terms(clone.model, clone.guide, x)["elbo"].mean().item() == after


def test_learned_scale_is_trained(bundled):
    vae = make_vae("normal-learned", "mlp")
    x = bundled["train"].tensors[0][:256]
    scale0 = vae.likelihood.scale.detach().clone()
    fit(vae.model, vae.guide, x, epochs=30, batch_size=64, lr=1e-2, progress=False)
    scale1 = vae.likelihood.scale.detach()
    assert scale1.shape == X_SHAPE
    assert torch.equal(scale0, torch.full(X_SHAPE, 0.5))
    # residuals on [0, 1] pixels are far below 0.5, so the learned scales shrink
    assert scale1.mean() < 0.3
    assert scale1.std() > 0  # per pixel, not one shared number


def test_bernoulli_refuses_grayscale(bundled):
    vae = make_vae("bernoulli", "mlp")
    with pytest.raises(ValueError, match=r"binary data.*ContinuousBernoulli"):
        fit(vae.model, vae.guide, bundled["train"].tensors[0][:256], epochs=1, progress=False)


def test_continuous_bernoulli_refuses_out_of_range():
    vae = make_vae("cbernoulli", "mlp")
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        vae.check_data(torch.full((2, *X_SHAPE), 2.0))


def test_wrong_shape_names_reshape():
    vae = make_vae("cbernoulli", "mlp")
    with pytest.raises(ValueError, match=r"Reshape it with x.reshape\(-1, \*\(1, 28, 28\)\)"):
        vae.check_data(torch.rand(3, 784))


@pytest.mark.parametrize("bad", [0, -3, 2.5])
def test_latent_dim_must_be_positive(bad):
    with pytest.raises(ValueError, match="latent_dim"):
        StandardNormalPrior(bad)
    with pytest.raises(ValueError, match="latent_dim"):
        DiagonalNormalGuide.mlp(X_SHAPE, bad)


def test_latent_dims_must_agree():
    with pytest.raises(ValueError, match="same latent_dim"):
        VAE(
            StandardNormalPrior(3),
            BernoulliLikelihood.mlp(4, X_SHAPE),
            DiagonalNormalGuide.mlp(X_SHAPE, 4),
        )


def test_model_needs_a_batch_size():
    with pytest.raises(ValueError, match="num_samples"):
        make_vae("bernoulli", "mlp").model()


def test_guide_scale_positive_and_reported():
    guide = DiagonalNormalGuide.mlp(X_SHAPE, 3, (16,))
    loc, scale = guide(torch.rand(5, *X_SHAPE))
    assert loc.shape == scale.shape == (5, 3)
    assert (scale > 0).all()
    d = guide.dist(torch.rand(5, *X_SHAPE))
    assert d.event_shape == (3,) and d.batch_shape == (5,)
