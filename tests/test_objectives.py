"""Objectives: IWAE, β / KL warm-up, free bits, score-function gradients."""

from __future__ import annotations

import json
import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import RenyiELBO, Trace_ELBO, TraceMeanField_ELBO

from pyro_vae import (
    VAE,
    BernoulliLikelihood,
    DiagonalNormalGuide,
    StandardNormalPrior,
    binarize,
    elbo_terms,
    fit,
    make_objective,
)
from pyro_vae.objectives import (
    IWAE,
    BetaELBO,
    FreeBitsELBO,
    ScoreFunctionELBO,
    non_reparameterized,
    scale_latents,
)
from pyro_vae.parts.guides import FullCovarianceNormalGuide

# --------------------------------------------------------------------------- fixtures

SIGMA = 0.5  # likelihood scale of the linear Gaussian model


def gaussian_model(x):
    """z ~ N(0, I), x | z ~ N(z, SIGMA^2 I): log p(x) = log N(x; 0, (1 + SIGMA^2) I)."""
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(torch.zeros_like(x), 1.0).to_event(1))
        pyro.sample("x", dist.Normal(z, SIGMA).to_event(1), obs=x)


def gaussian_guide(x):
    """A deliberately imperfect guide (the exact posterior is N(0.8 x, 0.447^2))."""
    with pyro.plate("data", x.shape[0]):
        pyro.sample("z", dist.Normal(0.5 * x, 0.6).to_event(1))


def exact_gaussian_elbo(x):
    loc, scale = 0.5 * x, 0.6
    recon = -0.5 * math.log(2 * math.pi * SIGMA**2) - ((x - loc) ** 2 + scale**2) / (2 * SIGMA**2)
    kl = 0.5 * (scale**2 + loc**2 - 1 - 2 * math.log(scale))
    return (recon - kl).sum(-1)


def small_vae(latent_dim: int = 4, hidden: int = 32) -> VAE:
    return VAE(
        StandardNormalPrior(latent_dim),
        BernoulliLikelihood.mlp(latent_dim, (1, 28, 28), (hidden,)),
        DiagonalNormalGuide.mlp((1, 28, 28), latent_dim, (hidden,)),
    )


@pytest.fixture(scope="module")
def binary(bundled):
    return binarize(bundled["train"].tensors[0][:256], seed=0)


def paired(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    """Mean and standard error of a - b."""
    d = (a - b).double()
    return d.mean().item(), (d.std() / math.sqrt(d.numel())).item()


# --------------------------------------------------------------------------- IWAE


def test_iwae_bound_is_above_the_elbo_nondecreasing_in_k_and_below_log_px():
    """On a linear Gaussian model with closed-form log p(x) and ELBO: L_1 is the ELBO,
    L_K rises with K (paired differences > 3 standard errors) and stays below log p(x)."""
    x = torch.randn(4000, 2) * math.sqrt(1 + SIGMA**2)
    log_px = dist.Normal(0.0, math.sqrt(1 + SIGMA**2)).log_prob(x).sum(-1)
    bounds = {}
    for k in (1, 4, 32, 256):
        log_w = IWAE(k).log_weights(gaussian_model, gaussian_guide, x)
        assert log_w.shape == (k, 4000)
        bounds[k] = torch.logsumexp(log_w, 0) - math.log(k)
    mean, se = paired(bounds[1], exact_gaussian_elbo(x))
    assert abs(mean) < 4 * se, (mean, se)
    for lo, hi in ((1, 4), (4, 32), (32, 256)):
        mean, se = paired(bounds[hi], bounds[lo])
        assert mean > 3 * se, (lo, hi, mean, se)
    gap, se = paired(bounds[256], log_px)
    assert gap < 3 * se and gap > -0.05, (gap, se)  # close to log p(x), not above it


def test_iwae_loss_is_pyros_renyi_bound_and_trains_through_fit(binary):
    vae = small_vae()
    iwae = make_objective("iwae", num_particles=5)
    assert isinstance(iwae, RenyiELBO) and iwae.alpha == 0
    assert iwae.num_particles == 5 and iwae.vectorize_particles
    pyro.set_rng_seed(3)
    ours = iwae(vae.model, vae.guide)(binary[:32])
    pyro.set_rng_seed(3)
    theirs = RenyiELBO(alpha=0, num_particles=5, vectorize_particles=True).loss(
        vae.model, vae.guide, binary[:32]
    )
    assert ours.item() == pytest.approx(theirs, rel=1e-6)
    ours.backward()  # a differentiable loss, unlike RenyiELBO's
    history = fit(
        vae.model,
        vae.guide,
        binary,
        objective="iwae",
        num_particles=3,
        epochs=2,
        batch_size=64,
        validation_data=binary[:64],
        progress=False,
    )
    assert history["val_elbo"][-1] > history["val_elbo"][0]


# --------------------------------------------------------------------------- β and warm-up


def test_kl_weight_schedule():
    beta = BetaELBO(beta=2.0, warmup_steps=100, start=0.01)
    assert beta.weight_at(0) == 0.01
    assert beta.weight_at(50) == pytest.approx(0.01 + 1.99 / 2)
    assert beta.weight_at(100) == beta.weight_at(10_000) == 2.0
    beta.set_step(25)
    assert beta.weight == pytest.approx(0.01 + 1.99 / 4)
    assert BetaELBO(beta=4.0).weight == 4.0  # no warm-up: constant


@pytest.mark.parametrize("inner", [TraceMeanField_ELBO, Trace_ELBO])
def test_beta_scales_only_the_kl_and_is_the_elbo_at_the_end_of_warmup(binary, inner):
    vae, x = small_vae(), binary[:64]
    beta = BetaELBO(inner(), beta=1.0, warmup_steps=10)
    beta.set_step(10)
    pyro.set_rng_seed(5)
    plain = inner()(vae.model, vae.guide)(x)
    pyro.set_rng_seed(5)
    annealed = beta(vae.model, vae.guide)(x)
    assert torch.equal(annealed, plain)  # exactly, through poutine.scale(1.0)
    # Mid warm-up only the KL is weighted: loss_w - loss_1 = (w - 1) KL for the same z.
    beta.set_step(4)
    w = beta.weight
    pyro.set_rng_seed(5)
    weighted = beta(vae.model, vae.guide)(x)
    pyro.set_rng_seed(5)
    guide_tr = pyro.poutine.trace(vae.guide).get_trace(x)
    model_tr = pyro.poutine.trace(pyro.poutine.replay(vae.model, trace=guide_tr)).get_trace(x)
    if inner is TraceMeanField_ELBO:
        kl = elbo_terms(vae.model, vae.guide, x)["kl"].sum()
    else:
        kl = (
            guide_tr.log_prob_sum()
            - model_tr.nodes["z"]["fn"].log_prob(model_tr.nodes["z"]["value"]).sum()
        )
    assert (weighted - plain).item() == pytest.approx(((w - 1) * kl).item(), rel=1e-4)


def test_scale_latents_leaves_observed_sites_alone(binary):
    vae, x = small_vae(), binary[:8]
    tr = pyro.poutine.trace(scale_latents(vae.model, 0.25)).get_trace(x)
    assert tr.nodes["z"]["scale"] == 0.25 and tr.nodes["x"]["scale"] == 1.0
    with pytest.raises(ValueError, match="positive"):
        scale_latents(vae.model, 0.0)


def test_refused_combinations():
    with pytest.raises(ValueError, match="IWAE"):
        BetaELBO(IWAE(5), beta=2.0)
    with pytest.raises(ValueError, match="IWAE"):
        make_objective("iwae", 5, beta=0.5)
    with pytest.raises(ValueError, match="IWAE"):
        make_objective("iwae", 5, warmup_steps=100)
    with pytest.raises(ValueError, match="IWAE"):
        make_objective("iwae", 5, free_bits=0.5)
    with pytest.raises(ValueError, match="IWAE"):
        make_objective("iwae", 5, score_function=True)
    with pytest.raises(ValueError, match="TraceGraph"):
        make_objective("meanfield", score_function=True)
    with pytest.raises(ValueError, match="reparameterized"):
        make_objective("elbo", free_bits=1.0, score_function=True)
    with pytest.raises(ValueError, match="start > 0"):
        BetaELBO(warmup_steps=10, start=0.0)
    with pytest.raises(ValueError, match="warmup_steps"):
        BetaELBO(warmup_steps=-1)
    with pytest.raises(ValueError, match="free_bits"):
        FreeBitsELBO(-0.1)
    assert isinstance(make_objective("elbo", beta=4.0).elbo, Trace_ELBO)
    assert isinstance(make_objective("meanfield", free_bits=0.5), FreeBitsELBO)


def test_warmup_position_is_exact_after_resume(binary, tmp_path):
    """2 + 2 epochs (resumed) give bit-identical weights and KL weights to 4 epochs."""

    def run(epochs, run_dir, resume=None):
        torch.manual_seed(0)
        vae = small_vae()
        objective = BetaELBO(beta=1.0, warmup_steps=10)
        history = fit(
            vae.model,
            vae.guide,
            binary,
            objective=objective,
            epochs=epochs,
            batch_size=64,
            run_dir=run_dir,
            resume=resume,
            progress=False,
        )
        return vae, history, objective

    straight, h4, obj4 = run(4, tmp_path / "a")
    run(2, tmp_path / "b")
    resumed, h22, obj22 = run(4, tmp_path / "b", resume=tmp_path / "b")
    assert h4["kl_weight"] == h22["kl_weight"]
    assert h4["kl_weight"][0] == pytest.approx(1e-3 + (1 - 1e-3) * 3 / 10)  # after 4 steps
    assert h4["kl_weight"][-1] == 1.0 and obj22.step == obj4.step == 15
    for (k, a), b in zip(straight.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), k


# --------------------------------------------------------------------------- free bits


def test_free_bits_zero_is_the_elbo_and_floors_each_dimension(binary):
    vae, x = small_vae().double(), binary[:64].double()  # float64: exact sums
    pyro.set_rng_seed(7)
    plain = TraceMeanField_ELBO()(vae.model, vae.guide)(x)
    pyro.set_rng_seed(7)
    free0 = FreeBitsELBO(0.0)(vae.model, vae.guide)(x)
    assert free0.item() == pytest.approx(plain.item(), rel=1e-12)
    # By hand: -reconstruction + sum_d max(lambda * N, sum_n KL_nd).
    loc, scale = vae.posterior(x)
    kl_nd = 0.5 * (scale**2 + loc**2 - 1 - 2 * scale.log())
    kl = kl_nd.sum()
    lam = kl_nd.mean(0).median().item()  # floors about half the dimensions
    floored = torch.clamp(kl_nd.sum(0), min=lam * 64).sum()
    pyro.set_rng_seed(7)
    free = FreeBitsELBO(lam)(vae.model, vae.guide)(x)
    assert (free - plain).item() == pytest.approx((floored - kl).item(), rel=1e-9)
    assert floored > kl


def test_free_bits_refuses_a_non_factorized_guide(binary):
    vae = VAE(
        StandardNormalPrior(3),
        BernoulliLikelihood.mlp(3, (1, 28, 28), (16,)),
        FullCovarianceNormalGuide.mlp((1, 28, 28), 3, (16,)),
    )
    with pytest.raises(ValueError, match="independent dimensions"):
        FreeBitsELBO(0.5)(vae.model, vae.guide)(binary[:4])


# --------------------------------------------------------------------------- score function


def _grads(elbo, model, guide, x):
    """Gradient of the loss wrt the guide's parameters (a, b, c)."""
    loss = elbo(model, guide)(x)
    params = [pyro.param(n).unconstrained() for n in ("a", "b", "c")]
    return torch.stack(torch.autograd.grad(loss, params))


def test_score_function_gradient_is_unbiased_and_noisier():
    """Mean gradients of Trace_ELBO (reparameterized) and ScoreFunctionELBO agree within
    4 standard errors; the score function's variance is larger."""

    def guide(x):
        a = pyro.param("a", torch.tensor(0.3))
        b = pyro.param("b", torch.tensor(-0.2))
        c = pyro.param("c", torch.tensor(0.0))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(a * x + b, torch.nn.functional.softplus(c)).to_event(1))

    x = torch.tensor([[0.5, -1.0], [1.5, 0.2], [-0.7, 0.9]])
    tr = pyro.poutine.trace(non_reparameterized(guide)).get_trace(x)
    assert tr.nodes["z"]["fn"].has_rsample is False
    assert not tr.nodes["z"]["value"].requires_grad
    reps = 100
    draws = {}
    for name, elbo in (
        ("reparam", Trace_ELBO(num_particles=50, vectorize_particles=True)),
        ("score", ScoreFunctionELBO(num_particles=50, vectorize_particles=True)),
    ):
        pyro.set_rng_seed(11)
        draws[name] = torch.stack([_grads(elbo, gaussian_model, guide, x) for _ in range(reps)])
    se = ((draws["reparam"].var(0) + draws["score"].var(0)) / reps).sqrt()
    diff = (draws["reparam"].mean(0) - draws["score"].mean(0)).abs()
    assert (diff < 4 * se).all(), (diff, se)
    assert (draws["reparam"].mean(0).abs() > 4 * se).any()  # the gradient is not ~0
    assert (draws["score"].var(0) > draws["reparam"].var(0)).all()


def test_score_function_loss_value_is_the_elbo_and_trains_a_vae(binary):
    vae, x = small_vae(), binary[:64]
    pyro.set_rng_seed(2)
    score = ScoreFunctionELBO()(vae.model, vae.guide)(x)
    pyro.set_rng_seed(2)
    reparam = Trace_ELBO()(vae.model, vae.guide)(x)
    assert score.item() == pytest.approx(reparam.item(), rel=1e-6)
    history = fit(
        vae.model,
        vae.guide,
        binary,
        objective=make_objective("elbo", score_function=True),
        epochs=2,
        batch_size=32,
        validation_data=binary[:64],
        progress=False,
    )
    assert history["val_elbo"][-1] > history["val_elbo"][0]


# --------------------------------------------------------------------------- CLI


def test_cli_objective_flags(small_cli_args, tmp_path, capsys):
    from pyro_vae.cli import main

    common = small_cli_args
    assert (
        main(
            [
                "train",
                *common,
                "--objective",
                "iwae",
                "--num-particles",
                "3",
                "--beta",
                "2",
                "--out",
                str(tmp_path / "bad"),
            ]
        )
        == 2
    )
    assert "cannot be combined with beta" in capsys.readouterr().err
    assert (
        main(
            [
                "train",
                *common,
                "--objective",
                "meanfield",
                "--score-function",
                "--out",
                str(tmp_path / "bad2"),
            ]
        )
        == 2
    )
    assert "TraceGraph_ELBO" in capsys.readouterr().err
    out = tmp_path / "warm"
    assert (
        main(
            [
                "train",
                *common,
                "--warmup-steps",
                "20",
                "--beta",
                "2",
                "--free-bits",
                "0.1",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert records[0]["kl_weight"] == pytest.approx(1e-3 + (2 - 1e-3) * 4 / 20)  # 5 steps
    config = json.loads((out / "config.json").read_text())
    assert (config["beta"], config["warmup_steps"], config["free_bits"]) == (2.0, 20, 0.1)
    assert (
        main(
            [
                "train",
                *common,
                "--objective",
                "iwae",
                "--num-particles",
                "3",
                "--out",
                str(tmp_path / "iwae"),
            ]
        )
        == 0
    )
    assert main(["train", *common, "--score-function", "--out", str(tmp_path / "sf")]) == 0
