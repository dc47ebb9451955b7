"""capture.py: the recorded training step equals the Pyro path, or is refused."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO
from pyro.nn import PyroModule
from torch import nn

import pyro_vae.train.capture as capture_module
import pyro_vae.train.loop as train_module
from pyro_vae import (
    VAE,
    BernoulliLikelihood,
    DiagonalNormalGuide,
    StandardNormalPrior,
    binarize,
    fit,
)
from pyro_vae.objectives import IWAE, BetaELBO
from pyro_vae.train.capture import CapturedStep


def small_vae(seed: int = 3) -> VAE:
    torch.manual_seed(seed)
    return VAE(
        StandardNormalPrior(4),
        BernoulliLikelihood.mlp(4, (1, 28, 28), (32,)),
        DiagonalNormalGuide.mlp((1, 28, 28), 4, (32,)),
    )


@pytest.fixture(scope="module")
def x(bundled):
    return binarize(bundled["train"].tensors[0][:200], seed=0)  # 3 batches of 64 + 8


@pytest.fixture
def steppers(monkeypatch):
    """Every CapturedStep that fit creates, to check which path the steps took."""
    made: list[CapturedStep] = []

    class Recorded(CapturedStep):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(train_module, "CapturedStep", Recorded)
    return made


def flat(module: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in module.parameters()])


def run_fit(x, capture, **kwargs):
    pyro.clear_param_store()
    vae = small_vae()
    history = fit(
        vae.model,
        vae.guide,
        x,
        epochs=2,
        batch_size=64,
        eval_examples=64,
        progress=False,
        capture=capture,
        **kwargs,
    )
    return flat(vae), history


@pytest.mark.parametrize(
    "objective",
    [
        lambda: "elbo",
        lambda: "meanfield",
        lambda: Trace_ELBO(num_particles=3, vectorize_particles=True),
        lambda: IWAE(num_particles=3),
    ],
    ids=["elbo", "meanfield", "vectorized-particles", "iwae"],
)
def test_fit_with_capture_equals_the_pyro_path(x, steppers, objective):
    pyro_params, pyro_history = run_fit(x, False, objective=objective())
    captured_params, captured_history = run_fit(x, True, objective=objective())
    (stepper,) = steppers
    # 8 steps: every one replayed a graph (full batches of 64 and the last batch of 8).
    assert stepper.num_captured_steps == 8 and stepper.num_pyro_steps == 0
    assert len(stepper.graphs) == 2 and not stepper.reasons
    # The graph computes log1p from log on the CPU (capture._log1p), so its gradients agree
    # with Pyro's to rounding; Adam's normalised steps can turn a rounding difference in a
    # near-zero gradient into up to ~lr per step, hence the absolute tolerance.
    assert torch.allclose(captured_params, pyro_params, rtol=1e-5, atol=1e-4)
    assert captured_history["train_elbo"] == pytest.approx(pyro_history["train_elbo"], rel=1e-6)
    assert not torch.equal(pyro_params, flat(small_vae()))  # training moved the parameters


def test_default_captures_module_methods_but_not_other_callables(x, steppers):
    vae = small_vae()
    fit(vae.model, vae.guide, x, epochs=1, batch_size=64, eval_examples=64, progress=False)
    assert steppers[0].num_captured_steps == 4

    def model(x):  # a plain function may hold changing Python state: the Pyro path
        return vae.model(x)

    fit(model, vae.guide, x, epochs=1, batch_size=64, eval_examples=64, progress=False)
    assert len(steppers) == 1


def test_schedule_runs_the_pyro_path(x, steppers):
    vae = small_vae()
    objective = BetaELBO(warmup_steps=10)
    fit(
        vae.model,
        vae.guide,
        x,
        objective=objective,
        epochs=1,
        batch_size=64,
        eval_examples=64,
        progress=False,
    )
    assert steppers == []  # a graph would freeze the KL weight of its first step
    assert objective.step == 3
    # compile cannot apply to the Pyro path, and says so instead of doing nothing silently
    with pytest.warns(UserWarning, match="compile=True has no effect here"):
        fit(
            vae.model,
            vae.guide,
            x,
            objective=BetaELBO(warmup_steps=10),
            epochs=1,
            batch_size=64,
            eval_examples=64,
            progress=False,
            compile=True,
        )
    assert steppers == []


def test_resume_with_capture_is_exact(x, tmp_path):
    straight, _ = run_fit(x, True)
    pyro.clear_param_store()
    vae = small_vae()
    fit(
        vae.model,
        vae.guide,
        x,
        epochs=1,
        batch_size=64,
        eval_examples=64,
        progress=False,
        run_dir=tmp_path,
    )
    pyro.clear_param_store()
    vae = small_vae(seed=99)  # the checkpoint, not this init, must decide the result
    fit(
        vae.model,
        vae.guide,
        x,
        epochs=2,
        batch_size=64,
        eval_examples=64,
        progress=False,
        resume=tmp_path,
    )
    assert torch.equal(flat(vae), straight)


def test_each_replay_draws_fresh_randomness_like_pyro(x):
    vae = small_vae()
    loss_fn = Trace_ELBO()(vae.model, vae.guide)
    params = list(vae.parameters())
    stepper = CapturedStep(loss_fn, params, [vae])
    with pyro.validation_enabled(False):
        losses = [float(stepper.step(x[:64])) for _ in range(3)]
        pyro.set_rng_seed(7)
        captured = stepper.step(x[:64])
        captured_grads = [p.grad for p in params]
        after_captured = torch.get_rng_state()
        for p in params:
            p.grad = None
        pyro.set_rng_seed(7)
        reference = loss_fn(x[:64])
        reference.backward()
    assert stepper.num_captured_steps == 4
    assert len(set(losses)) == 3  # a new z each step on the same batch
    assert torch.equal(torch.get_rng_state(), after_captured)  # the same draws
    assert float(captured) == pytest.approx(reference.item(), rel=1e-6)
    for g, p in zip(captured_grads, params, strict=True):  # to rounding, as verified
        assert torch.allclose(g, p.grad, rtol=1e-5, atol=1e-5 * float(p.grad.abs().max()))


class Toy(PyroModule):
    """A tiny model with switchable hazards for the capture checks."""

    def __init__(self, mode: str) -> None:
        super().__init__()
        self.mode = mode
        self.enc = nn.Linear(4, 2)
        self.dec = nn.Linear(2, 4)
        self.norm = nn.BatchNorm1d(4)

    def model(self, x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0], 2), 1.0).to_event(1))
            loc = self.dec(z)
            if self.mode == "branch" and x.sum() > 0:  # data-dependent Python control flow
                loc = 2 * loc
            pyro.sample("x", dist.Normal(loc, 1.0).to_event(1), obs=x)

    def guide(self, x):
        h = self.norm(x) if self.mode == "batchnorm" else x
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(self.enc(h), 1.0).to_event(1))


@pytest.mark.parametrize(
    "mode, validation, reason",
    [
        ("branch", False, "_local_scalar_dense"),
        ("batchnorm", False, "writes in place"),
        ("plain", True, "_local_scalar_dense"),  # validation reads values into Python
    ],
)
def test_unsafe_programs_fall_back_to_pyro_unchanged(mode, validation, reason):
    toy = Toy(mode)
    x = torch.randn(8, 4)
    loss_fn = TraceMeanField_ELBO()(toy.model, toy.guide)
    params = list(toy.parameters())
    stepper = CapturedStep(loss_fn, params, [toy])
    buffers = [b.clone() for b in toy.buffers()]
    with pyro.validation_enabled(validation):
        pyro.set_rng_seed(1)
        loss = stepper.step(x)
        got = [p.grad for p in params]
        pyro.set_rng_seed(1)
        for p in params:
            p.grad = None
        # the Pyro path updates batch-norm statistics once more here, as it did in step()
        expected_loss = loss_fn(x)
        expected_loss.backward()
    assert stepper.num_captured_steps == 0 and stepper.num_pyro_steps == 1
    assert reason in next(iter(stepper.reasons.values()))
    assert float(loss) == float(expected_loss.detach())
    for a, p in zip(got, params, strict=True):
        assert (a is None and p.grad is None) or torch.equal(a, p.grad)
    if mode == "batchnorm":  # recording ran the program; its statistics updates were undone
        after_two_updates = toy.norm.num_batches_tracked.item()
        assert after_two_updates == buffers[-1].item() + 2


def test_a_plain_program_is_captured_and_shapes_beyond_max_graphs_fall_back():
    toy = Toy("plain")
    loss_fn = Trace_ELBO()(toy.model, toy.guide)
    stepper = CapturedStep(loss_fn, list(toy.parameters()), [toy], max_graphs=2)
    with pyro.validation_enabled(False):
        for n in (8, 8, 5, 3, 8):
            stepper.step(torch.randn(n, 4))
    assert len(stepper.graphs) == 2
    assert stepper.num_captured_steps == 4 and stepper.num_pyro_steps == 1
    assert "max_graphs=2" in next(iter(stepper.reasons.values()))


class PoisonAfter:
    """A transform that passes batches through, then turns them into NaN."""

    def __init__(self, n: int) -> None:
        self.n, self.calls = n, 0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return x if self.calls <= self.n else x * float("nan")


@pytest.mark.filterwarnings("ignore:Encountered NaN")
def test_nan_from_a_captured_step_stops_training(x, steppers):
    vae = small_vae()
    with pytest.raises(train_module.TrainingDivergedError, match="NaN or infinite"):
        fit(
            vae.model,
            vae.guide,
            x,
            epochs=1,
            batch_size=64,
            progress=False,
            transform=PoisonAfter(3),
        )
    # The full batches replayed the graph, NaN or not; the last batch (8 examples, NaN) failed
    # its verification (NaN != NaN) and ran the Pyro path, which reports NaN the same way.
    assert steppers[0].num_captured_steps == 3 and steppers[0].num_pyro_steps == 1


def test_compiled_fit_agrees_with_pyro_and_resumes_exactly(x, steppers, tmp_path):
    """One batch shape (128 examples, batches of 64), so one graph is compiled per fit."""
    data = x[:128]
    pyro_params, pyro_history = run_fit(data, False)
    compiled_params, compiled_history = run_fit(data, True, compile=True)
    (stepper,) = steppers
    # compiled, and verified against the Pyro path: loss, gradients and random draws
    assert len(stepper.compiled) == 1 and not stepper.compile_reasons and not stepper.reasons
    assert stepper.num_captured_steps == 4 and stepper.num_pyro_steps == 0
    assert stepper.compile_seconds > 0
    assert torch.allclose(compiled_params, pyro_params, rtol=1e-5, atol=1e-4)
    assert compiled_history["train_elbo"] == pytest.approx(pyro_history["train_elbo"], rel=1e-5)
    # a compiled run resumed from its checkpoint equals the uninterrupted compiled run
    pyro.clear_param_store()
    vae = small_vae()
    options = {"batch_size": 64, "eval_examples": 64, "progress": False, "compile": True}
    fit(vae.model, vae.guide, data, epochs=1, run_dir=tmp_path, **options)
    pyro.clear_param_store()
    vae = small_vae(seed=99)
    fit(vae.model, vae.guide, data, epochs=2, resume=tmp_path, **options)
    assert len(steppers[-1].compiled) == 1
    assert torch.equal(flat(vae), compiled_params)


def test_a_failed_or_wrong_compilation_falls_back_to_the_recorded_graph(x, monkeypatch):
    def fails(graph, inputs, cpu=True):
        raise RuntimeError("no C++ compiler\nmore detail")

    def wrong(graph, inputs, cpu=True):  # a compiled graph whose loss is off
        def run(*args):
            grads, loss = graph(*args)
            return grads, loss * (1 + 1e-3)

        return run

    vae = small_vae()
    loss_fn = Trace_ELBO()(vae.model, vae.guide)
    params = list(vae.parameters())
    for compiler, reason in (
        (fails, "compilation failed: RuntimeError: no C++ compiler"),
        (wrong, "compiled graph refused: the graph's loss"),
    ):
        monkeypatch.setattr(capture_module, "compile_graph", compiler)
        stepper = CapturedStep(loss_fn, params, [vae], compile=True)
        with pyro.validation_enabled(False):
            pyro.set_rng_seed(5)
            captured = stepper.step(x[:64])
            pyro.set_rng_seed(5)
            reference = loss_fn(x[:64])
        assert not stepper.compiled and len(stepper.graphs) == 1  # replays the recorded graph
        (why,) = stepper.compile_reasons.values()
        assert why.startswith(reason) and "more detail" not in why  # the error's first line
        assert stepper.num_captured_steps == 1
        assert float(captured) == pytest.approx(reference.item(), rel=1e-6)
