"""Any Pyro program, unchanged: programs written the way Pyro's own examples write them
(any site names, ``model(xs, ys=None)``, labels observed at a sample site, several latent
levels, a model that does not broadcast over particles) go through every public function
of the library with no edits, on real MNIST images."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import TraceEnum_ELBO, config_enumerate
from pyro.poutine.messenger import Messenger
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from pyro_vae import (
    binarize,
    elbo_terms,
    evaluate,
    fit,
    latent_diagnostics,
    log_likelihood,
    posterior_predictive,
    prior_predictive,
)
from pyro_vae.check.ppc import bayesian_p_values, image_ink, save_ppc_plots
from pyro_vae.check.viz import save_figures
from pyro_vae.inference.particles import ParticleLoopWarning
from pyro_vae.inference.program import read_program

Z = 4
HIDDEN = 48


def mlp(n_in: int, n_out: int) -> nn.Module:
    return nn.Sequential(nn.Linear(n_in, HIDDEN), nn.Softplus(), nn.Linear(HIDDEN, n_out))


def normal(params: torch.Tensor) -> dist.Distribution:
    loc, raw = params.chunk(2, dim=-1)
    return dist.Normal(loc, F.softplus(raw) + 1e-3).to_event(1)


def cat_broadcast(*tensors: torch.Tensor) -> torch.Tensor:
    """Concatenate on the last dimension after broadcasting the others (as the
    ``ConcatModule`` of Pyro's SS-VAE example does for enumerated labels)."""
    shape = torch.broadcast_shapes(*(t.shape[:-1] for t in tensors))
    return torch.cat([t.expand(*shape, t.shape[-1]) for t in tensors], dim=-1)


class TutorialVAE:
    """Pyro's VAE tutorial: a plain class holding two networks registered with
    ``pyro.module``, sites ``"latent"`` and ``"obs"``, a Bernoulli of probabilities."""

    def __init__(self) -> None:
        self.encoder = mlp(784, 2 * Z)
        self.decoder = nn.Sequential(mlp(Z, 784), nn.Sigmoid())

    def model(self, x: torch.Tensor) -> None:
        pyro.module("decoder", self.decoder)
        with pyro.plate("data", x.shape[0]):
            z_loc = x.new_zeros(torch.Size((x.shape[0], Z)))
            z_scale = x.new_ones(torch.Size((x.shape[0], Z)))
            z = pyro.sample("latent", dist.Normal(z_loc, z_scale).to_event(1))
            loc_img = self.decoder(z)
            pyro.sample(
                "obs",
                dist.Bernoulli(loc_img, validate_args=False).to_event(1),
                obs=x.reshape(-1, 784),
            )

    def guide(self, x: torch.Tensor) -> None:
        pyro.module("encoder", self.encoder)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("latent", normal(self.encoder(x.reshape(-1, 784))))


class SSVAE(nn.Module):
    """Pyro's M2 example: ``model(xs, ys=None)``, one-hot labels observed at a
    ``OneHotCategorical`` site, a plate without a size, enumeration in the guide."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder_y = mlp(784, 10)
        self.encoder_z = mlp(784 + 10, 2 * Z)
        self.decoder = mlp(Z + 10, 784)

    def model(self, xs: torch.Tensor, ys: torch.Tensor | None = None) -> None:
        pyro.module("ss_vae", self)
        batch_size = xs.size(0)
        options = {"dtype": xs.dtype, "device": xs.device}
        with pyro.plate("data"):
            prior_loc = torch.zeros(batch_size, Z, **options)
            prior_scale = torch.ones(batch_size, Z, **options)
            zs = pyro.sample("z", dist.Normal(prior_loc, prior_scale).to_event(1))
            alpha_prior = torch.ones(batch_size, 10, **options) / 10.0
            ys = pyro.sample("y", dist.OneHotCategorical(alpha_prior), obs=ys)
            logits = self.decoder(cat_broadcast(zs, ys))
            pyro.sample("x", dist.Bernoulli(logits=logits).to_event(1), obs=xs)

    def guide(self, xs: torch.Tensor, ys: torch.Tensor | None = None) -> None:
        with pyro.plate("data"):
            if ys is None:
                alpha = F.softmax(self.encoder_y(xs), dim=-1)
                ys = pyro.sample("y", dist.OneHotCategorical(alpha))
            pyro.sample("z", normal(self.encoder_z(cat_broadcast(xs, ys))))


class QuadrantCVAE(nn.Module):
    """Pyro's CVAE example: the three hidden quadrants ``ys`` predicted from the visible
    one ``xs``; without ``ys`` the model records its prediction with
    ``pyro.deterministic`` and observes nothing."""

    def __init__(self) -> None:
        super().__init__()
        self.prior_net = mlp(196, 2 * Z)
        self.recognition_net = mlp(196 + 588, 2 * Z)
        self.generation_net = mlp(Z, 588)

    def model(self, xs: torch.Tensor, ys: torch.Tensor | None = None) -> torch.Tensor:
        pyro.module("generation_net", self.generation_net)
        pyro.module("prior_net", self.prior_net)
        with pyro.plate("data"):
            zs = pyro.sample("z", normal(self.prior_net(xs.view(-1, 196))))
            loc = torch.sigmoid(self.generation_net(zs))
            if ys is not None:
                pyro.sample("y", dist.Bernoulli(loc, validate_args=False).to_event(1), obs=ys)
            else:
                pyro.deterministic("y", loc.detach())
            return loc

    def guide(self, xs: torch.Tensor, ys: torch.Tensor | None = None) -> None:
        pyro.module("recognition_net", self.recognition_net)
        with pyro.plate("data"):
            if ys is None:
                params = self.prior_net(xs.view(-1, 196))
            else:
                params = self.recognition_net(torch.cat([xs.view(-1, 196), ys], dim=-1))
            pyro.sample("z", normal(params))


class LadderVAE(nn.Module):
    """Two latent levels, p(z2) p(z1 | z2) p(x | z1), with q(z1 | x) q(z2 | z1)."""

    def __init__(self) -> None:
        super().__init__()
        self.p_z1, self.p_x = mlp(2, 2 * Z), mlp(Z, 784)
        self.q_z1, self.q_z2 = mlp(784, 2 * Z), mlp(Z, 4)

    def model(self, x: torch.Tensor) -> None:
        pyro.module("ladder", self)
        with pyro.plate("data", x.shape[0]):
            z2 = pyro.sample("z2", dist.Normal(x.new_zeros(2), 1.0).to_event(1))
            z1 = pyro.sample("z1", normal(self.p_z1(z2)))
            logits = self.p_x(z1).reshape(*z1.shape[:-1], 1, 28, 28)
            pyro.sample("x", dist.Bernoulli(logits=logits).to_event(3), obs=x)

    def guide(self, x: torch.Tensor) -> None:
        pyro.module("ladder", self)
        with pyro.plate("data", x.shape[0]):
            z1 = pyro.sample("z1", normal(self.q_z1(x.reshape(*x.shape[:-3], 784))))
            pyro.sample("z2", normal(self.q_z2(z1)))


class FixedBatchVAE(nn.Module):
    """A model that does not broadcast over particles: it indexes ``x[:, 0]`` and reshapes
    with the batch size."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder, self.decoder = mlp(784, 2 * Z), mlp(Z, 784)

    def model(self, x: torch.Tensor) -> None:
        pyro.module("fixed", self)
        n = x.shape[0]
        with pyro.plate("data", n):
            z = pyro.sample("z", dist.Normal(x.new_zeros(n, Z), 1.0).to_event(1))
            logits = self.decoder(z).view(n, 784)
            pyro.sample("x", dist.Bernoulli(logits=logits).to_event(1), obs=x[:, 0].view(n, 784))

    def guide(self, x: torch.Tensor) -> None:
        pyro.module("fixed", self)
        n = x.shape[0]
        with pyro.plate("data", n):
            pyro.sample("z", normal(self.encoder(x[:, 0].reshape(n, 784))))


def quadrants(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The visible top-left quadrant ``(N, 1, 14, 14)`` and the other three, flattened."""
    hidden = [images[..., :14, 14:], images[..., 14:, :14], images[..., 14:, 14:]]
    visible = images[..., :14, :14].contiguous()
    return visible, torch.cat([q.reshape(len(images), -1) for q in hidden], -1)


@dataclass
class Case:
    make: Callable[[], Any]
    data: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor | None]]
    latents: tuple[str, ...]
    obs: str
    objective: Any = "elbo"
    enumerate_guide: bool = False


CASES = {
    # float64 images (N, 1, 28, 28) for a model that observes 784-vectors
    "tutorial": Case(TutorialVAE, lambda x, y: (x.double(), None), ("latent",), "obs"),
    "m2": Case(
        SSVAE,
        lambda x, y: (x.reshape(-1, 784), F.one_hot(y, 10).float()),
        ("z",),
        "x",
        objective=TraceEnum_ELBO(max_plate_nesting=1),
        enumerate_guide=True,
    ),
    "cvae": Case(QuadrantCVAE, lambda x, y: quadrants(x), ("z",), "y"),
    "ladder": Case(LadderVAE, lambda x, y: (x, None), ("z1", "z2"), "x"),
    "fixed_batch": Case(FixedBatchVAE, lambda x, y: (x, None), ("z",), "x"),
}


@pytest.fixture(scope="module")
def images(bundled):
    train, test = bundled["train"].tensors, bundled["test"].tensors
    return {
        "train": (binarize(train[0][:400], seed=0), train[1][:400]),
        "test": (binarize(test[0][:100], seed=1), test[1][:100]),
    }


def unpack(data: tuple[torch.Tensor, torch.Tensor | None]) -> Any:
    return data if data[1] is not None else data[0]


@pytest.fixture(scope="module")
def trained(images):
    """Each program trained once, briefly, with ``fit`` as written: (program object,
    model, guide, test data, mean test ELBO before and after training, history)."""
    out = {}
    for name, case in CASES.items():
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        torch.set_num_threads(1)
        obj = case.make()
        guide = obj.guide
        if case.enumerate_guide:
            guide = config_enumerate(obj.guide, "parallel", expand=True)
        train, test = case.data(*images["train"]), case.data(*images["test"])
        before = elbo_terms(obj.model, guide, *test)["elbo"].mean().item()
        history = fit(
            obj.model,
            guide,
            unpack(train),
            objective=case.objective,
            epochs=2,
            batch_size=50,
            lr=3e-3,
            progress=False,
        )
        after = elbo_terms(obj.model, guide, *test)["elbo"].mean().item()
        out[name] = (obj, obj.model, guide, test, before, after, history)
    return out


@pytest.mark.parametrize("name", list(CASES))
def test_every_function_on_any_program(name, trained, tmp_path, recwarn):
    case = CASES[name]
    _, model, guide, (x, y), before, after, history = trained[name]
    # fit trained it: the loss falls and the held-out ELBO rises
    assert all(math.isfinite(e) for e in history["train_elbo"])
    assert history["train_elbo"][-1] > history["train_elbo"][0]
    assert after > before + 20, (before, after)
    program = read_program(model, guide, x, y)
    assert program.obs_site == case.obs and program.latent_sites == case.latents

    terms = elbo_terms(model, guide, x, y)
    assert torch.isfinite(terms["elbo"]).all() and terms["elbo"].shape == (len(x),)
    for site in case.latents:
        assert torch.isfinite(terms[f"kl_{site}"]).all()
    kl_sites = sum(terms[f"kl_{site}"] for site in case.latents)
    assert torch.allclose(kl_sites, terms["kl"], atol=1e-4)

    ll = log_likelihood(model, guide, x, y, num_samples=64, batch_size=50)
    assert torch.isfinite(ll.estimate).all()
    # the IS estimate is >= the ELBO per example in expectation: on the mean, with a margin
    elbo = torch.stack([elbo_terms(model, guide, x, y)["elbo"] for _ in range(4)]).mean(0)
    assert ll.estimate.mean().item() >= elbo.double().mean().item() - 0.5

    report = evaluate(model, guide, x, y, num_samples=32, batch_size=50)
    for key in ("elbo", "reconstruction", "kl", "nll"):
        assert math.isfinite(report[key]), key
    assert set(report["kl_per_site"]) == set(case.latents)
    assert set(report["active_units_per_site"]) == set(case.latents)
    assert report["latent_dim"] == sum(report["latent_dim_per_site"].values())

    diag = latent_diagnostics(model, guide, x, y, warn=False)
    assert set(diag.sites) == set(case.latents)
    assert diag.kl_per_dim is not None and torch.isfinite(diag.kl_per_dim).all()
    assert diag.latent_dim == sum(d for _, d in diag.site_dims)

    post = posterior_predictive(model, guide, x[:40], None if y is None else y[:40], num_samples=8)
    prior = prior_predictive(model, x[:40], None if y is None else y[:40], num_samples=8)
    rep = post.posterior_predictive[case.obs]
    assert rep.shape[:3] == (1, 8, 40)
    assert rep.shape[3:] == post.observed_data[case.obs].shape[1:]
    assert prior.prior_predictive[case.obs].shape == rep.shape
    assert set(case.latents) <= set(post.posterior.data_vars)
    assert torch.isfinite(torch.as_tensor(post.log_likelihood[case.obs].values)).all()
    p_values = bayesian_p_values(post, image_ink)
    assert ((p_values >= 0) & (p_values <= 1)).all()
    paths = save_ppc_plots(post, tmp_path / "ppc", statistics={"ink": image_ink})
    assert all(p.stat().st_size > 0 for p in paths)

    figures = save_figures(model, guide, x, y, tmp_path / "figures", num_samples=16)
    assert figures and all(p.stat().st_size > 0 for p in figures)
    looped = [w for w in recwarn.list if issubclass(w.category, ParticleLoopWarning)]
    assert bool(looped) == (name == "fixed_batch")


class LabelsSeen(Messenger):
    """Records the value at site ``"y"`` each time the model reaches it."""

    def __init__(self) -> None:
        super().__init__()
        self.values: list[torch.Tensor] = []

    def _pyro_post_sample(self, msg: Any) -> None:
        if msg["name"] == "y":
            self.values.append(msg["value"])


def test_predictive_checks_keep_the_given_labels_in_every_draw(trained):
    _, model, guide, (x, y), *_ = trained["m2"]
    x, y = x[:30], y[:30]
    program = read_program(model, guide, x, y)
    assert (program.obs_site, program.label_sites, program.model_call) == (
        "x",
        ("y",),
        "positional",
    )
    for run in (
        lambda: posterior_predictive(model, guide, x, y, num_samples=25),
        lambda: prior_predictive(model, x, y, num_samples=25),
    ):
        with LabelsSeen() as seen:
            idata = run()
        assert seen.values
        for value in seen.values:  # every run of the model, every particle
            assert value.shape[-2:] == y.shape and (value == y).all()
        assert (idata.constant_data["y"].values == y.numpy()).all()
    # unlabelled, the label is a latent site: enumerated in training, drawn in the checks
    history = fit(
        model,
        guide,
        x,
        objective=TraceEnum_ELBO(max_plate_nesting=1),
        epochs=1,
        batch_size=10,
        progress=False,
    )
    assert math.isfinite(history.last["train_elbo"])
    idata = posterior_predictive(model, guide, x, num_samples=4)
    assert idata.posterior["y"].shape == (1, 4, 30, 10)


def test_fit_passes_labels_positionally_and_refuses_ignored_data(trained, images):
    _, model, guide, (x, y), before, after, history = trained["cvae"]
    # the CVAE got its targets: a real ELBO, far from the 0 of a program without data
    assert history["train_elbo"][-1] < -50 and after > before
    with pytest.raises(ValueError, match=r"no observed site.*pass the data as \(x, y\)"):
        fit(model, guide, x, epochs=1, batch_size=50, progress=False)
    three = DataLoader(TensorDataset(x, y, y), batch_size=50)
    with pytest.raises(ValueError, match="yields 3 tensors per batch"):
        fit(model, guide, three, epochs=1, progress=False)
    tutorial = trained["tutorial"][0]
    with pytest.raises(ValueError, match=r"TutorialVAE.model\(x\) takes only one argument"):
        fit(tutorial.model, tutorial.guide, (x.new_zeros(8, 784), y[:8]), batch_size=8)


def test_hierarchy_gets_kl_and_active_units_per_site(trained):
    _, model, guide, (x, y), *_ = trained["ladder"]
    report = evaluate(model, guide, x, y, num_samples=16, batch_size=50)
    assert report["latent_dim_per_site"] == {"z1": Z, "z2": 2}
    assert sum(report["kl_per_site"].values()) == pytest.approx(report["kl"], rel=0.05, abs=0.5)
    assert report["kl_per_site"]["z1"] > 1.0  # the level next to x carries information
    diag = latent_diagnostics(model, guide, x, latent_sites="z2", warn=False)
    assert diag.site_dims == (("z2", 2),)


def test_particle_loop_is_the_vectorised_estimator(trained):
    """The model that cannot take a particle plate gets the same estimate by a loop."""
    obj, model, guide, (x, _), *_ = trained["fixed_batch"]
    program = read_program(model, guide, x, particles=True)
    assert program.vectorizes is False and "RuntimeError" in program.vectorize_error
    with pytest.warns(ParticleLoopWarning, match="one run at a time"):
        looped = log_likelihood(model, guide, x[:20], num_samples=200)

    def broadcasting(x: torch.Tensor) -> None:  # the same model, written to broadcast
        pyro.module("fixed", obj)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(Z), 1.0).to_event(1))
            logits = obj.decoder(z)
            pyro.sample(
                "x", dist.Bernoulli(logits=logits).to_event(1), obs=x[:, 0].reshape(-1, 784)
            )

    vectorised = log_likelihood(broadcasting, guide, x[:20], num_samples=200)
    se = (looped.stderr.square() + vectorised.stderr.square()).sqrt()
    assert ((looped.estimate - vectorised.estimate).abs() < 5 * se + 0.05).all()


def test_ambiguous_or_missing_structure_names_the_keyword(images):
    x = images["test"][0][:16].reshape(-1, 784)
    decoder = mlp(Z, 784)

    def two_views(x):
        pyro.module("decoder", decoder)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(Z), 1.0).to_event(1))
            logits = decoder(z)
            pyro.sample(
                "left", dist.Bernoulli(logits=logits[..., :392]).to_event(1), obs=x[:, :392]
            )
            pyro.sample(
                "right", dist.Bernoulli(logits=logits[..., 392:]).to_event(1), obs=x[:, 392:]
            )

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(x.new_zeros(Z), 1.0).to_event(1))

    with pytest.raises(ValueError, match=r"\['left', 'right'\].*obs_site="):
        posterior_predictive(two_views, guide, x, num_samples=2)
    idata = posterior_predictive(two_views, guide, x, num_samples=2, obs_site="right")
    assert idata.posterior_predictive["right"].shape == (1, 2, 16, 392)
    with pytest.raises(ValueError, match=r"latent_sites=.*no latent sample site 'w'"):
        latent_diagnostics(two_views, guide, x, obs_site="left", latent_sites="w")

    def no_plate(x):
        pyro.module("decoder", decoder)
        z = pyro.sample("z", dist.Normal(x.new_zeros(len(x), Z), 1.0).to_event(2))
        pyro.sample("x", dist.Bernoulli(logits=decoder(z)).to_event(2), obs=x)

    def no_plate_guide(x):
        pyro.sample("z", dist.Normal(x.new_zeros(len(x), Z), 1.0).to_event(2))

    with pytest.raises(ValueError, match=r"no plate over the 16 examples.*pyro.plate"):
        elbo_terms(no_plate, no_plate_guide, x)
