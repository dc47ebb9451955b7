"""Parts: shapes, supports and the VAE contract, parametrized over prior x guide x likelihood
x network (a covering subset: every likelihood with both networks, every prior with the
diagonal guide, every guide with the standard normal prior)."""

from __future__ import annotations

import math

import pyro
import pytest
import torch
from pyro import poutine

from pyro_vae import (
    VAE,
    BernoulliLikelihood,
    DiagonalNormalGuide,
    StandardNormalPrior,
    elbo_terms,
    fit,
)
from pyro_vae.parts import registered
from pyro_vae.parts.priors import VampPrior
from pyro_vae.runs import RunConfig, build_model

X_SHAPE = (1, 28, 28)
# small settings of the part options, so that the contract runs fast
SMALL_OPTIONS = {"components": 3, "flow_layers": 2, "scale": 0.5}


def compatible(prior: str, guide: str) -> bool:
    try:
        registered("prior")[prior].check_guide(registered("guide")[guide])
    except ValueError:
        return False
    return True


def _cases() -> list[tuple[str, str, str, str]]:
    """From the registry: every likelihood with both networks; every prior with the first
    guide it accepts; every guide with the first prior that accepts it."""
    priors, guides = list(registered("prior")), list(registered("guide"))
    cases = [
        ("normal", "diagonal", lik, net)
        for lik in registered("likelihood")
        for net in ("mlp", "conv")
    ]
    cases += [(p, next(g for g in guides if compatible(p, g)), "bernoulli", "mlp") for p in priors]
    cases += [(next(p for p in priors if compatible(p, g)), g, "bernoulli", "mlp") for g in guides]
    return list(dict.fromkeys(cases))


CASES = _cases()


def make_vae(
    likelihood: str,
    network: str,
    latent_dim: int = 4,
    prior: str = "normal",
    guide: str = "diagonal",
    **options,
) -> VAE:
    """Build a VAE the way the CLI does, from the registry (small networks)."""
    config = RunConfig(
        likelihood=likelihood,
        network=network,
        latent_dim=latent_dim,
        hidden_dims=[32],
        prior=prior,
        guide=guide,
        x_shape=list(X_SHAPE),
    )
    used = config.resolved_options()
    small = {k: v for k, v in {**SMALL_OPTIONS, **options}.items() if k in used}
    return build_model(config.replace(**small).validate())


def data_for(vae: VAE, bundled) -> torch.Tensor:
    """Grayscale MNIST, or a binarization of it where the likelihood wants binary data."""
    x = bundled["train"].tensors[0][:64]
    try:
        vae.check_data(x)
    except ValueError:
        x = torch.bernoulli(x, generator=torch.Generator().manual_seed(0))
        vae.check_data(x)
    return x


def test_the_registry_declares_every_part():
    """Every registered part names itself, says what it is, and builds from a config."""
    for kind in ("prior", "likelihood", "guide"):
        assert registered(kind), kind
        for name, cls in registered(kind).items():
            assert cls.part_name == name and cls.kind == kind
            assert cls.summary, f"{kind} {name} has no summary"
    assert {c[0] for c in CASES} == set(registered("prior"))
    assert {c[1] for c in CASES} == set(registered("guide"))
    assert {c[2] for c in CASES} == set(registered("likelihood"))


def test_a_new_part_registers_itself_and_reaches_the_cli(tmp_path, capsys):
    """Defining a part class is all it takes: the CLI offers it and trains with it."""
    from pyro import distributions as dist

    from pyro_vae.cli import main, parser
    from pyro_vae.parts.priors import Prior
    from pyro_vae.parts.registry import _REGISTRY

    class WideNormalPrior(Prior):
        """N(0, 4 I), a test part."""

        part_name = "wide-test"
        summary = "N(0, 4 I), defined inside a test"

        def __init__(self, latent_dim: int) -> None:
            super().__init__()
            self.latent_dim = latent_dim
            self.register_buffer("scale", torch.full((latent_dim,), 2.0))

        def forward(self, y=None):
            return (self.scale,)

        def make_dist(self, scale):
            return dist.Normal(torch.zeros_like(scale), scale).to_event(1)

    try:
        assert registered("prior")["wide-test"] is WideNormalPrior
        out = tmp_path / "wide"
        argv = ["train", "--prior", "wide-test", "--epochs", "1", "--out", str(out), *TINY]
        assert main(argv) == 0, capsys.readouterr().err
        assert '"prior": "wide-test"' in (out / "config.json").read_text()
        train_parser = parser()._subparsers._group_actions[0].choices["train"]
        help_text = " ".join(train_parser.format_help().split())
        assert "wide-test: N(0, 4 I), defined inside a test" in help_text
    finally:
        del _REGISTRY["prior"]["wide-test"]
    assert "wide-test" not in registered("prior")


@pytest.mark.parametrize(
    ("prior", "guide", "likelihood", "network"), CASES, ids=["-".join(c) for c in CASES]
)
def test_contract(prior, guide, likelihood, network, bundled, tmp_path):
    """Shapes, a finite loss that decreases over a few steps, trained prior parameters, and
    a checkpoint round trip."""
    vae = make_vae(likelihood, network, prior=prior, guide=guide)
    prior_before = [p.detach().clone() for p in vae.prior.parameters()]
    x = data_for(vae, bundled)
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
    # learned priors train through fit's torch optimizer (every parameter moved)
    for p0, p1 in zip(prior_before, vae.prior.parameters(), strict=True):
        assert not torch.allclose(p0, p1.detach()), "a prior parameter was not trained"

    clone = make_vae(likelihood, network, prior=prior, guide=guide)
    from pyro_vae import load_checkpoint
    from pyro_vae.train.checkpoint import load_module_states

    load_module_states([clone], load_checkpoint(tmp_path / "checkpoint.pt")["modules"])
    for (name, a), (_, b) in zip(vae.state_dict().items(), clone.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    pyro.set_rng_seed(1)
    assert elbo_terms(clone.model, clone.guide, x)["elbo"].mean().item() == after


def test_learned_scale_is_trained(bundled):
    vae = make_vae("normal", "mlp", learn_scale=True)
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


# --------------------------------------------------------------------------- from the CLI

TINY = ["--hidden-dims", "32", "--latent-dim", "4", "--batch-size", "256", "--no-progress"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--prior", "sphere"], "--prior sphere cannot be paired with --guide diagonal"),
        (["--guide", "powerspherical"], "--prior normal cannot be paired with --guide power"),
        (["--prior", "vamp", "--guide", "iaf"], "--prior vamp cannot use --guide iaf"),
        (["--prior", "sphere", "--guide", "powerspherical", "--latent-dim", "1"], ">= 2"),
        (["--prior", "mog", "--components", "0"], "--components must be an integer >= 1"),
    ],
)
def test_cli_refuses_invalid_parts_with_the_fix(argv, message, tmp_path, capsys):
    from pyro_vae.cli import main

    assert main(["train", "--epochs", "1", *TINY, "--out", str(tmp_path / "r"), *argv]) == 2
    assert message in capsys.readouterr().err


def test_cli_trains_and_resumes_a_vamp_prior_and_reports_bits_per_dim(bundled, tmp_path, capsys):
    import json

    from pyro_vae.cli import main
    from pyro_vae.runs import load_run

    x, y = (t[:400] for t in bundled["train"].tensors)
    torch.save({"x": x, "y": y}, tmp_path / "small.pt")
    small = ["--dataset", "file", "--data-file", str(tmp_path / "small.pt"), *TINY]
    out = tmp_path / "vamp"
    argv = ["train", *small, "--prior", "vamp", "--components", "3", "--guide", "fullcov"]
    assert main([*argv, "--epochs", "1", "--out", str(out)]) == 0
    assert main(["train", "--resume", str(out), "--epochs", "2", "--no-progress"]) == 0
    assert json.loads((out / "test.json").read_text())["epochs"] == 2
    run = load_run(out)
    vae, config = run.module, run.config
    assert isinstance(vae.prior, VampPrior) and vae.prior.guide is vae.posterior
    assert (config.prior, config.guide, config.options["components"]) == ("vamp", "fullcov", 3)
    assert [r["epoch"] for r in run.history] == [1, 2]
    assert main(["train", "--resume", str(out), "--prior", "mog", "--no-progress"]) == 2
    assert "prior='vamp'" in capsys.readouterr().err

    out = tmp_path / "dl"
    assert (
        main(["train", *small, "--likelihood", "dlogistic", "--epochs", "1", "--out", str(out)])
        == 0
    )
    metrics = json.loads((out / "test.json").read_text())
    assert metrics["test_bits_per_dim"] == pytest.approx(
        -metrics["test_elbo"] / (784 * math.log(2)), rel=1e-6
    )
    assert 0 < metrics["test_bits_per_dim"] < 8
