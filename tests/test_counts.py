"""Count likelihoods: densities against hand computations, data checks, and training on
real counts (MNIST pixel intensities as counts 0..255 are not Poisson; the bundled
digits are used where the data matter)."""

from __future__ import annotations

import math

import pyro
import pytest
import torch

from pyro_vae import VAE, DiagonalNormalGuide, StandardNormalPrior, fit
from pyro_vae.parts.likelihoods import (
    BinomialLikelihood,
    NegativeBinomialLikelihood,
    PoissonLikelihood,
    ZeroInflatedNegativeBinomialLikelihood,
)


def poisson_log_prob(x: torch.Tensor, rate: torch.Tensor) -> torch.Tensor:
    """log Poisson(x; rate) written out: x log(rate) - rate - log(x!)."""
    return (x * rate.log() - rate - torch.lgamma(x + 1)).sum(-1)


def test_poisson_log_prob_is_the_hand_computed_one():
    lik = PoissonLikelihood.mlp(3, (5,), (8,))
    z = torch.randn(4, 3)
    x = torch.tensor([[0, 1, 2, 3, 7]] * 4)
    rate = lik(z).exp()
    torch.testing.assert_close(lik.dist(z).log_prob(x), poisson_log_prob(x.float(), rate))
    assert lik.dist(z).event_shape == (5,) and lik.discrete


@pytest.mark.parametrize(
    ("x", "message"),
    [
        (torch.tensor([[0.5, 1.0]]), "whole numbers"),
        (torch.tensor([[-1, 2]]), ">= 0"),
        (torch.tensor([[True, False]]), "dtype torch.bool"),
    ],
)
def test_poisson_refuses_what_is_not_counts(x, message):
    with pytest.raises(ValueError, match=message):
        PoissonLikelihood.mlp(2, (2,), (4,)).check_data(x)


def test_a_poisson_vae_trains_on_integer_counts():
    gen = torch.Generator().manual_seed(0)
    rates = torch.tensor([0.5, 2.0, 8.0, 20.0])
    x = torch.poisson(rates.expand(400, 4), generator=gen).long()  # integer dtype
    vae = VAE(
        StandardNormalPrior(2),
        PoissonLikelihood.mlp(2, (4,), (16,)),
        DiagonalNormalGuide.mlp((4,), 2, (16,)),
    )
    history = fit(vae.model, vae.guide, x, epochs=30, batch_size=50, lr=1e-2, progress=False)
    first, last = history["train_elbo"][0], history["train_elbo"][-1]
    # the best the model can do is the Poisson entropy of the true rates
    entropy = -sum(
        float(
            torch.distributions.Poisson(r)
            .log_prob(torch.arange(200.0))
            .exp()
            .mul(torch.distributions.Poisson(r).log_prob(torch.arange(200.0)))
            .sum()
        )
        for r in rates
    )
    assert last > first + 5
    assert -last < entropy + 2.0 and -last > entropy - 0.5, (last, entropy)
    assert math.isfinite(last)


def nb_log_prob(x: torch.Tensor, mean: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """The negative binomial of mean mu and dispersion theta, written out (scVI's form)."""
    return (
        torch.lgamma(x + theta)
        - torch.lgamma(theta)
        - torch.lgamma(x + 1)
        + theta * (theta.log() - (theta + mean).log())
        + x * (mean.log() - (theta + mean).log())
    )


def test_negative_binomial_log_prob_mean_and_variance():
    lik = NegativeBinomialLikelihood.mlp(3, (4,), (8,), init_dispersion=2.5)
    z = torch.randn(6, 3)
    x = torch.tensor([[0, 1, 4, 9]] * 6)
    mean = lik(z).exp()
    theta = torch.full((4,), 2.5)
    expected = nb_log_prob(x.float(), mean, theta).sum(-1)
    torch.testing.assert_close(lik.dist(z).log_prob(x), expected, rtol=1e-5, atol=1e-4)
    d = lik.dist(z).base_dist
    torch.testing.assert_close(d.mean, mean, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(d.variance, mean + mean**2 / theta, rtol=1e-4, atol=1e-4)


def test_zero_inflated_negative_binomial_log_prob():
    lik = ZeroInflatedNegativeBinomialLikelihood.mlp(2, (3,), (8,), init_dispersion=1.5)
    z = torch.randn(5, 2)
    x = torch.tensor([[0, 2, 0]] * 5)
    log_mean, gate_logits = lik(z).unbind(-2)
    pi = torch.sigmoid(gate_logits)
    nb = nb_log_prob(x.float(), log_mean.exp(), torch.full((3,), 1.5))
    zero = torch.log(pi + (1 - pi) * nb.exp())
    positive = torch.log1p(-pi) + nb
    expected = torch.where(x == 0, zero, positive).sum(-1)
    torch.testing.assert_close(lik.dist(z).log_prob(x), expected, rtol=1e-5, atol=1e-4)


def test_binomial_log_prob_and_trials_check():
    lik = BinomialLikelihood.mlp(2, (3,), (8,), trials=16)
    z = torch.randn(4, 2)
    x = torch.tensor([[0, 7, 16]] * 4)
    p = torch.sigmoid(lik(z))
    n = torch.tensor(16.0)
    log_choose = torch.lgamma(n + 1) - torch.lgamma(x + 1.0) - torch.lgamma(n - x + 1)
    expected = (log_choose + x * p.log() + (n - x) * torch.log1p(-p)).sum(-1)
    torch.testing.assert_close(lik.dist(z).log_prob(x), expected, rtol=1e-5, atol=1e-4)
    with pytest.raises(ValueError, match="--trials 16 needs counts in \\[0, 16\\]"):
        lik.check_data(torch.tensor([[0, 17, 3]]))


# --------------------------------------------------------------------------- library size

LIBRARY_CLASSES = [
    PoissonLikelihood,
    NegativeBinomialLikelihood,
    ZeroInflatedNegativeBinomialLikelihood,
]


def library_log_prob(lik, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """log p(x | z, l) written out with the offset: l = sum_i x_i, rho = softmax(f(z)),
    mean = l * rho, then the Poisson / NB / ZINB density of the class."""
    out = lik(z)
    logits = out if not isinstance(lik, ZeroInflatedNegativeBinomialLikelihood) else out[..., 0, :]
    rho = torch.softmax(logits, -1)
    mean = x.sum(-1, keepdim=True).float() * rho
    xf = x.float()
    if isinstance(lik, PoissonLikelihood):
        return poisson_log_prob(xf, mean)
    theta = lik.dispersion.detach()
    nb = nb_log_prob(xf, mean, theta)
    if isinstance(lik, ZeroInflatedNegativeBinomialLikelihood):
        pi = torch.sigmoid(out[..., 1, :])
        zero = torch.log(pi + (1 - pi) * nb.exp())
        nb = torch.where(x == 0, zero, torch.log1p(-pi) + nb)
    return nb.sum(-1)


@pytest.mark.parametrize("cls", LIBRARY_CLASSES, ids=lambda c: c.part_name)
def test_library_size_log_prob_is_the_hand_computed_one(cls):
    lik = cls.mlp(3, (5,), (8,), library_size=True)
    z = torch.randn(4, 3)
    x = torch.tensor([[0, 1, 2, 3, 7], [5, 0, 0, 1, 0], [2, 2, 2, 2, 2], [0, 0, 30, 0, 1]])
    d = lik.dist(z, None, x)
    torch.testing.assert_close(d.log_prob(x), library_log_prob(lik, z, x), rtol=1e-5, atol=1e-4)
    # the mean is the library size times the proportions: it adds up to each example's total
    # (the zinb's negative binomial part does; its gate removes a share of it)
    base = d.base_dist
    mean = (
        base.mean
        if cls is not ZeroInflatedNegativeBinomialLikelihood
        else base.mean / (1 - base.gate)
    )
    torch.testing.assert_close(mean.sum(-1), x.sum(-1).float(), rtol=1e-5, atol=1e-4)
    # vectorised particles (K, N, d) against data (N, D): the same numbers per particle
    zk = torch.stack([z, z])
    torch.testing.assert_close(lik.dist(zk, None, x).log_prob(x)[1], d.log_prob(x))


@pytest.mark.parametrize("cls", LIBRARY_CLASSES, ids=lambda c: c.part_name)
def test_library_size_generation_draws_the_training_library_sizes(cls):
    from pyro_vae.parts.likelihoods import library_size_percentiles

    gen = torch.Generator().manual_seed(1)
    depth = torch.exp(torch.randn(3000, 1, generator=gen) * 0.6 + 4)  # log-normal depths
    x = torch.poisson(depth.expand(3000, 6) / 6, generator=gen)
    x = x[x.sum(-1) > 0]
    lik = cls.mlp(2, (6,), (8,), library_size=True)
    with pytest.raises(ValueError, match="fit_library_sizes"):
        lik.dist(torch.randn(3, 2))  # nothing stored yet: the fix is named
    stored = lik.fit_library_sizes(x)
    torch.testing.assert_close(stored, library_size_percentiles(x, 1))
    sizes = x.sum(-1)
    assert stored[0] == sizes.min() and stored[-1] == sizes.max()
    assert stored[50] == sizes.median() or abs(stored[50] - sizes.float().quantile(0.5)) < 1e-3
    # the drawn library sizes follow the training distribution: their deciles agree
    torch.manual_seed(0)
    drawn = lik.sample_library_sizes((20000,))
    levels = torch.linspace(0.1, 0.9, 9)
    torch.testing.assert_close(
        drawn.quantile(levels), sizes.float().quantile(levels), rtol=0.03, atol=0.0
    )
    # generating without data: each example's mean adds up to a drawn library size
    vae = VAE(StandardNormalPrior(2), lik, DiagonalNormalGuide.mlp((6,), 2, (8,)))
    trace = pyro.poutine.trace(vae.model).get_trace(num_samples=500)
    fn = trace.nodes["x"]["fn"].base_dist
    totals = (
        fn.mean if cls is not ZeroInflatedNegativeBinomialLikelihood else fn.mean / (1 - fn.gate)
    ).sum(-1)
    assert sizes.min() - 1e-3 <= totals.min() and totals.max() <= sizes.max() + 1e-3
    assert abs(totals.median() - sizes.float().median()) < 0.15 * sizes.float().median()


def test_library_size_keeps_each_examples_total_in_predictive_draws():
    """Given data (a predictive check unconditions x but passes it), the offset is the
    observed library size, not a draw."""
    lik = PoissonLikelihood.mlp(2, (4,), (8,), library_size=True)
    vae = VAE(StandardNormalPrior(2), lik, DiagonalNormalGuide.mlp((4,), 2, (8,)))
    x = torch.tensor([[1, 2, 3, 4], [40, 0, 0, 0], [0, 0, 0, 200]])
    trace = pyro.poutine.trace(pyro.poutine.uncondition(vae.model)).get_trace(x)
    node = trace.nodes["x"]
    assert not torch.equal(node["value"], x.float())  # a real draw
    torch.testing.assert_close(node["fn"].mean.sum(-1), x.sum(-1).float())


def test_library_size_refuses_rows_without_counts_and_other_likelihoods():
    lik = NegativeBinomialLikelihood.mlp(2, (3,), (8,), library_size=True)
    with pytest.raises(ValueError, match=r"library size 0.*Drop the empty rows"):
        lik.check_data(torch.tensor([[1, 2, 0], [0, 0, 0]]))
    with pytest.raises(ValueError, match="library size 0"):
        lik.fit_library_sizes(torch.tensor([[0, 0, 0], [1, 0, 0]]))
    NegativeBinomialLikelihood.mlp(2, (3,), (8,)).check_data(torch.tensor([[0, 0, 0]]))
    with pytest.raises(TypeError):
        BinomialLikelihood.mlp(2, (3,), (8,), library_size=True)


@pytest.mark.parametrize("cls", LIBRARY_CLASSES, ids=lambda c: c.part_name)
def test_library_size_contract(cls, tmp_path):
    """The contract of tests/test_parts.py for the offset: shapes, generation without data,
    a loss that decreases, and a checkpoint round trip that carries the stored library
    sizes. Real counts: the bundled digits."""
    from pyro_vae import elbo_terms, load_checkpoint
    from pyro_vae.data import load_digits
    from pyro_vae.train.checkpoint import load_module_states

    x = load_digits()["train"].tensors[0][:256]

    def build() -> VAE:
        lik = cls.mlp(4, (64,), (32,), library_size=True)
        return VAE(StandardNormalPrior(4), lik, DiagonalNormalGuide.mlp((64,), 4, (32,)))

    vae = build()
    vae.likelihood.fit_library_sizes(x)
    vae.check_data(x)
    trace = pyro.poutine.trace(vae.model).get_trace(x)
    assert trace.nodes["x"]["fn"].event_shape == (64,)
    assert trace.nodes["x"]["fn"].batch_shape == (256,)
    assert vae.model(num_samples=5).shape == (5, 64)
    before = elbo_terms(vae.model, vae.guide, x)["elbo"].mean().item()
    history = fit(
        vae.model, vae.guide, x, epochs=6, batch_size=64, lr=1e-2, progress=False, run_dir=tmp_path
    )
    pyro.set_rng_seed(1)
    after = elbo_terms(vae.model, vae.guide, x)["elbo"].mean().item()
    assert after > before + 10.0, (before, after)
    assert all(math.isfinite(v) for v in history["train_elbo"])
    clone = build()
    load_module_states([clone], load_checkpoint(tmp_path / "checkpoint.pt")["modules"])
    torch.testing.assert_close(
        clone.likelihood.library_percentiles, vae.likelihood.library_percentiles
    )
    pyro.set_rng_seed(1)
    assert elbo_terms(clone.model, clone.guide, x)["elbo"].mean().item() == after


def test_library_size_trains_from_the_cli_on_the_digits(tmp_path, capsys):
    """``pyro-vae train --dataset digits --likelihood negbin --library-size``: the run
    stores the training library sizes in config.json, resumes, reloads with them, and
    its evaluation, predictive checks and samples run; combinations that cannot work are
    refused before anything is written."""
    import json

    from pyro_vae.check.ppc import posterior_predictive
    from pyro_vae.cli import main
    from pyro_vae.data import load_digits
    from pyro_vae.parts.likelihoods import library_size_percentiles
    from pyro_vae.runs import evaluate_run, load_run, ppc_run

    out = tmp_path / "run"
    argv = ["train", "--dataset", "digits", "--likelihood", "negbin", "--library-size"]
    argv += ["--latent-dim", "4", "--hidden-dims", "32", "--batch-size", "128", "--lr", "1e-2"]
    argv += ["--no-progress", "--out", str(out)]
    assert main([*argv, "--epochs", "4"]) == 0, capsys.readouterr().err
    config = json.loads((out / "config.json").read_text())
    assert config["library_size"] is True and config["standardize"] is False
    train = load_digits()["train"].tensors[0]
    expected = library_size_percentiles(train, 1)
    torch.testing.assert_close(torch.tensor(config["library_percentiles"]), expected)
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert history[-1]["train_elbo"] > history[0]["train_elbo"] + 20  # it trains
    assert main(["train", "--resume", str(out), "--epochs", "5", "--no-progress"]) == 0
    run = load_run(out)
    assert run.epoch == 5 and run.module.likelihood.library_size
    torch.testing.assert_close(run.module.likelihood.library_percentiles, expected)
    report = evaluate_run(run, num_samples=20, num_examples=40)
    assert math.isfinite(report["nll"]) and report["bits_per_dim"] is not None
    summary, _ = ppc_run(run, tmp_path, num_samples=5, num_examples=20)
    assert summary["data"] == "features" and summary["num_features"] == 64
    # posterior predictive replicates keep each example's library size: their totals
    # track the observed ones example by example
    x = run.split("test").tensors[0][:40]
    idata = posterior_predictive(run.model, run.guide, x, num_samples=10)
    replicated = torch.as_tensor(idata.posterior_predictive["x"].values).sum(-1).mean((0, 1))
    observed = x.sum(-1).float()
    assert torch.corrcoef(torch.stack([observed, replicated]))[0, 1] > 0.9
    assert ((replicated - observed).abs() / observed).median() < 0.1
    assert run.module.model(num_samples=3).shape == (3, 64)
    capsys.readouterr()
    for flags, message in (
        (["--likelihood", "binomial", "--trials", "16"], "--library-size has no effect"),
        (["--likelihood", "bernoulli"], "--library-size has no effect"),
    ):
        bad = ["train", "--dataset", "digits", "--library-size", *flags, "--out"]
        assert main([*bad, str(tmp_path / "bad")]) == 2
        assert message in capsys.readouterr().err
        assert not (tmp_path / "bad").exists()
