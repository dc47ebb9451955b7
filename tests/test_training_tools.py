"""The training tools: learning-rate schedules, early stopping, gradient clipping, and logging
to TensorBoard and MLflow, read back with the tools' own readers."""

from __future__ import annotations

import json
import math
import re
import signal
import sys
from functools import partial

import pyro
import pytest
import torch
from torch import nn

from pyro_vae import (
    VAE,
    BernoulliLikelihood,
    DiagonalNormalGuide,
    StandardNormalPrior,
    binarize,
    elbo_terms,
    fit,
    load_checkpoint,
)
from pyro_vae.cli import main
from pyro_vae.runs import RunConfig
from pyro_vae.train import loop
from pyro_vae.train.loop import CHECKPOINT_NAME
from pyro_vae.train.schedule import EarlyStopping, lr_scheduler, make_schedule
from pyro_vae.train.tracking import (
    INSTALL,
    MissingExtraError,
    MLflowLogger,
    TensorBoardLogger,
    flat_config,
)

TIMING = ("seconds", "examples_per_s")
LR = 2e-2


@pytest.fixture(autouse=True)
def one_thread():
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def data(bundled):
    x = binarize(bundled["train"].tensors[0][:300], seed=0)
    xv = binarize(bundled["valid"].tensors[0][:100], seed=1)
    return x, xv


def tiny_vae() -> VAE:
    pyro.clear_param_store()
    torch.manual_seed(0)
    return VAE(
        StandardNormalPrior(3),
        BernoulliLikelihood.mlp(3, (1, 28, 28), (16,)),
        DiagonalNormalGuide.mlp((1, 28, 28), 3, (16,)),
    )


def params_of(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def untimed(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING} for r in records]


class InterruptAt:
    """An identity transform that sends SIGINT on its n-th call (the first call is the
    evaluation subset, then one per training batch)."""

    def __init__(self, call: int | None = None) -> None:
        self.call, self.calls = call, 0

    def __call__(self, xb: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls == self.call:
            signal.raise_signal(signal.SIGINT)
        return xb


def test_cosine_early_stopping_and_clipping_resume_bit_exactly(data, tmp_path):
    """A user trains with a cosine schedule, early stopping and clipping, is interrupted in
    the middle of an epoch and, in another run, between two epochs; both resumed runs
    equal the uninterrupted one bit for bit: same parameters (the restored best), same
    records, same stopping epoch. The recorded learning rate follows the closed form."""
    x, xv = data
    epochs = 12

    def run(run_dir, interrupt_at=None, resume=None):
        vae = tiny_vae()
        es = EarlyStopping(patience=2, min_delta=2.0)
        history = fit(
            vae.model,
            vae.guide,
            x,
            validation_data=xv,
            epochs=epochs,
            batch_size=50,  # 6 steps per epoch
            lr=LR,
            scheduler="cosine",
            early_stopping=es,
            clip_grad_norm=1000.0,
            transform=InterruptAt(interrupt_at),
            run_dir=run_dir,
            resume=resume,
            progress=False,
        )
        return vae, history, es

    full, h_full, es_full = run(tmp_path / "full")
    stop = len(h_full)
    assert stop < epochs and h_full.restored_epoch == es_full.best_epoch < stop
    for where, call in (("mid", 1 + 2 * 6 + 2), ("between", 1 + (stop - 1) * 6)):
        _, h_cut, _ = run(tmp_path / where, interrupt_at=call)
        assert h_cut.interrupted and h_cut.restored_epoch is None
        cut = load_checkpoint(tmp_path / where / CHECKPOINT_NAME)
        assert ("batch_in_epoch" in cut) == (where == "mid")
        resumed, h_res, es_res = run(tmp_path / where, resume=tmp_path / where)
        assert not h_res.interrupted and len(h_res) == stop
        assert h_res.restored_epoch == h_full.restored_epoch
        assert (es_res.best, es_res.best_epoch) == (es_full.best, es_full.best_epoch)
        for k, v in params_of(full).items():
            assert torch.equal(v, params_of(resumed)[k]), (where, k)
        assert untimed(h_res.records) == untimed(h_full.records), where
    # the learning rate each epoch trained with: eta_0 (1 + cos(pi (e - 1) / E)) / 2
    for e, lr in enumerate(h_full["lr"], start=1):
        assert lr == pytest.approx(LR * (1 + math.cos(math.pi * (e - 1) / epochs)) / 2, rel=1e-9)
    assert all(r["grad_norm"] > 0 for r in h_full.records)


def test_early_stopping_restores_the_best_epoch(data, tmp_path, monkeypatch):
    """The final parameters are those of the best epoch (copied by a callback when that
    epoch ended), and the restored model's validation ELBO, drawn with the random state
    of that epoch's evaluation, equals the recorded best. The final checkpoint holds them
    too, and the last epoch's parameters under trained_weights."""
    x, xv = data
    val_rng: dict[int, torch.Tensor] = {}
    real_mean_terms = loop.mean_terms

    def mean_terms(prefix, *args, **kwargs):
        if prefix == "val":
            val_rng[len(val_rng) + 1] = torch.get_rng_state()
        return real_mean_terms(prefix, *args, **kwargs)

    monkeypatch.setattr(loop, "mean_terms", mean_terms)
    vae = tiny_vae()
    seen: dict[int, dict[str, torch.Tensor]] = {}
    es = EarlyStopping(patience=2, min_delta=4.0)
    history = fit(
        vae.model,
        vae.guide,
        x,
        validation_data=xv,
        epochs=12,
        batch_size=50,
        lr=LR,
        early_stopping=es,
        callbacks=[lambda r: seen.__setitem__(int(r["epoch"]), params_of(vae))],
        run_dir=tmp_path,
        progress=False,
    )
    best = history.restored_epoch
    assert best == es.best_epoch and best < len(history) < 12
    assert es.best == history.records[best - 1]["val_elbo"] == max(history["val_elbo"][:best])
    final = params_of(vae)
    for k, v in seen[best].items():
        assert torch.equal(final[k], v), k
    torch.set_rng_state(val_rng[best])
    with pyro.validation_enabled(False):
        val_elbo = elbo_terms(vae.model, vae.guide, xv)["elbo"].mean().item()
    assert val_elbo == es.best
    ckpt = load_checkpoint(tmp_path / CHECKPOINT_NAME)
    assert ckpt["epoch"] == len(history)
    assert all(torch.equal(final[k], v) for k, v in ckpt["modules"][0].items())
    trained = ckpt["trained_weights"]["modules"][0]
    assert all(torch.equal(seen[len(history)][k], v) for k, v in trained.items())
    # a resumed run that had stopped trains no further and restores the same parameters
    again = tiny_vae()
    h2 = fit(
        again.model,
        again.guide,
        x,
        validation_data=xv,
        epochs=12,
        batch_size=50,
        early_stopping=EarlyStopping(patience=2, min_delta=4.0),
        resume=tmp_path,
        progress=False,
    )
    assert len(h2) == len(history) and h2.restored_epoch == best
    assert all(torch.equal(final[k], v) for k, v in params_of(again).items())


def test_clipping_bounds_every_update_of_plain_sgd(data):
    """With plain SGD each update is the learning rate times the clipped gradient: its norm
    never exceeds learning rate times bound, while the recorded norm before clipping does."""
    x, _ = data
    bound, lr = 50.0, 0.01
    updates: list[float] = []

    def sgd(params):
        opt = torch.optim.SGD(params, lr=lr)
        before: list[torch.Tensor] = []

        def pre(*_):
            before[:] = [p.detach().clone() for p in params]

        def post(*_):
            diff = [p.detach() - b for p, b in zip(params, before, strict=True)]
            updates.append(torch.linalg.vector_norm(torch.stack([d.norm() for d in diff])).item())

        opt.register_step_pre_hook(pre)
        opt.register_step_post_hook(post)
        return opt

    vae = tiny_vae()
    history = fit(
        vae.model,
        vae.guide,
        x,
        epochs=2,
        batch_size=50,
        optimizer=sgd,
        clip_grad_norm=bound,
        progress=False,
    )
    assert len(updates) == 12
    assert max(updates) <= lr * bound * (1 + 1e-4)
    assert max(updates) >= lr * bound * (1 - 1e-4)  # the bound is reached: clipping acted
    assert min(history["grad_norm"]) > bound


def test_named_schedules_follow_their_formulas_and_round_trip(tmp_path):
    """step and plateau decay as documented; a schedule's state survives a checkpoint
    (weights_only) and continues where it was."""
    p = [nn.Parameter(torch.zeros(2))]
    opt = torch.optim.SGD(p, lr=1.0)
    step = make_schedule(
        lr_scheduler("step", step_size=2, gamma=0.5), opt, epochs=6, has_validation=False
    )
    lrs = []
    for _ in range(6):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()  # an epoch of training (no gradients here), then the schedule
        step.step({})
    assert lrs == [1.0, 1.0, 0.5, 0.5, 0.25, 0.25]

    opt = torch.optim.SGD(p, lr=1.0)
    plateau = make_schedule(
        lr_scheduler("plateau", gamma=0.5, patience=1), opt, epochs=9, has_validation=True
    )
    for value in (-10.0, -9.0, -9.5, -9.5):  # better, better, worse, worse
        opt.step()
        plateau.step({"val_elbo": value})
    assert opt.param_groups[0]["lr"] == 0.5
    torch.save(plateau.state_dict(), tmp_path / "s.pt")
    opt2 = torch.optim.SGD(p, lr=0.5)
    again = make_schedule(
        lr_scheduler("plateau", gamma=0.5, patience=1), opt2, epochs=9, has_validation=True
    )
    again.load_state_dict(torch.load(tmp_path / "s.pt", weights_only=True))
    for value in (-9.5, -9.5):
        opt.step(), opt2.step()
        again.step({"val_elbo": value})
        plateau.step({"val_elbo": value})
    assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"] == 0.25


def test_a_new_lr_on_resume_scales_the_schedule():
    """fit(lr=...) on resume with a schedule: the same initial rate changes nothing, a
    different one scales every rate of the schedule, current and to come."""
    p = [nn.Parameter(torch.zeros(2))]
    opt = torch.optim.SGD(p, lr=1.0)
    step = make_schedule(
        lr_scheduler("step", step_size=2, gamma=0.5), opt, epochs=6, has_validation=False
    )
    for _ in range(3):
        opt.step()
        step.step({})
    step.set_initial_lr(1.0)
    assert opt.param_groups[0]["lr"] == 0.5
    step.set_initial_lr(4.0)
    lrs = [opt.param_groups[0]["lr"]]
    for _ in range(3):
        opt.step()
        step.step({})
        lrs.append(opt.param_groups[0]["lr"])
    assert lrs == [2.0, 1.0, 1.0, 0.5]  # 4 * 0.5 ** (epoch // 2) for epochs 3..6


def test_tensorboard_scalars_images_and_hparams_read_back(data, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    x, xv = data
    vae = tiny_vae()
    config = {"lr": LR, "hidden_dims": [16], "fingerprint": {"seed": 1}, "labels": None}
    with TensorBoardLogger(
        tmp_path / "tb", config=config, model=vae.model, guide=vae.guide, images=xv[:16]
    ) as tb:
        history = fit(
            vae.model,
            vae.guide,
            x,
            validation_data=xv,
            epochs=2,
            batch_size=100,
            clip_grad_norm=1e4,
            callbacks=[tb],
            progress=False,
        )
    events = EventAccumulator(str(tmp_path / "tb"), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    numbers = {k for k in history.records[0] if k != "epoch"}
    assert numbers <= set(events.Tags()["scalars"]) and "grad_norm" in numbers
    for key in numbers:
        logged = events.Scalars(key)
        assert [e.step for e in logged] == [1, 2]
        assert [e.value for e in logged] == pytest.approx(history[key], rel=1e-6)
    assert {"samples", "reconstructions"} <= set(events.Tags()["images"])
    samples = events.Images("samples")
    assert [im.step for im in samples] == [1, 2]
    assert samples[0].encoded_image_string.startswith(b"\x89PNG")
    start = events.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    hparams = plugin_data_pb2.HParamsPluginData.FromString(start).session_start_info.hparams
    assert hparams["hidden_dims"].string_value == "[16]"
    assert hparams["fingerprint.seed"].number_value == 1
    assert hparams["labels"].string_value == "null"
    # no images for data that are not images
    flat = TensorBoardLogger(tmp_path / "tb2", model=vae.model, images=torch.rand(4, 5))
    assert flat.images is None
    flat.finish()


def test_mlflow_params_metrics_and_artifacts_read_back(data, tmp_path):
    from mlflow.tracking import MlflowClient

    x, xv = data
    run_dir = tmp_path / "run"
    vae = tiny_vae()
    config = {"lr": LR, "hidden_dims": [16], "nested": {"a": True}}
    with MLflowLogger(run_dir=run_dir, config=config) as ml:
        history = fit(
            vae.model,
            vae.guide,
            x,
            validation_data=xv,
            epochs=2,
            batch_size=100,
            callbacks=[ml],
            run_dir=run_dir,
            config=config,
            progress=False,
        )
    assert ml.uri.startswith("file:") and (run_dir / "mlruns").is_dir()
    client = MlflowClient(tracking_uri=ml.uri)
    run = client.get_run(ml.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params == {k: str(v) for k, v in flat_config(config).items()}
    assert run.data.params["hidden_dims"] == "[16]"
    val = client.get_metric_history(ml.run_id, "val_elbo")
    assert [(m.step, m.value) for m in val] == list(enumerate(history["val_elbo"], start=1))
    assert set(run.data.metrics) == {k for k in history.records[0] if k != "epoch"}
    artifacts = {f.path for f in client.list_artifacts(ml.run_id)}
    assert {"config.json", "metrics.jsonl", CHECKPOINT_NAME} <= artifacts
    assert "mlruns" not in artifacts


@pytest.mark.parametrize("tool", ["tensorboard", "mlflow"])
def test_missing_tracking_extra_names_the_install_command(tool, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, tool, None)  # as if it were not installed
    logger = TensorBoardLogger if tool == "tensorboard" else MLflowLogger
    with pytest.raises(MissingExtraError, match=rf"{tool}.*{re.escape(INSTALL)}") as info:
        logger(tmp_path / tool)
    assert isinstance(info.value, ImportError) and isinstance(info.value, ValueError)
    out = tmp_path / "run"
    assert main(["train", "--epochs", "1", "--log", tool, "--out", str(out)]) == 2
    assert INSTALL in capsys.readouterr().err
    assert not out.exists()  # refused before anything is written


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"early_stopping": EarlyStopping(3)}, "validation_data"),
        ({"early_stopping": 3}, "EarlyStopping"),
        ({"scheduler": "linear"}, "'step', 'cosine', 'plateau'"),
        ({"scheduler": "plateau"}, "validation_data"),
        ({"scheduler": partial(torch.optim.lr_scheduler.ReduceLROnPlateau)}, "validation"),
        ({"clip_grad_norm": 0.0}, "clip_grad_norm must be a number > 0"),
        ({"clip_grad_norm": math.inf}, "clip_grad_norm must be finite"),
    ],
)
def test_bad_training_tool_arguments_are_refused_with_the_fix(data, kwargs, match):
    x, _ = data
    vae = tiny_vae()
    with pytest.raises(ValueError, match=match):
        fit(vae.model, vae.guide, x, epochs=1, progress=False, **kwargs)


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"lr_schedule": "linear"}, "--lr-schedule must be one of step, cosine, plateau"),
        ({"lr_gamma": 0.5}, "--lr-gamma has no effect without --lr-schedule step or plateau"),
        ({"lr_schedule": "step", "lr_gamma": 1.5}, "must be below 1"),
        ({"lr_schedule": "step", "lr_step_size": 0}, "step_size"),
        ({"patience": 0}, "--patience must be an integer >= 1"),
        ({"min_delta": 1.0}, "--min-delta has no effect without --patience"),
        ({"model": "m2", "labels": 100, "patience": 3}, "semi-supervised"),
        ({"clip_grad_norm": -1.0}, "--clip-grad-norm must be a number > 0"),
        ({"log": ["wandb"]}, "--log must be one of tensorboard, mlflow"),
        ({"mlflow_uri": "x"}, "--mlflow-uri has no effect without --log mlflow"),
    ],
)
def test_run_config_refuses_bad_training_tool_options(changes, match):
    with pytest.raises(ValueError, match=match):
        RunConfig().replace(**changes).validate()


def test_cli_trains_with_every_tool_and_logs_to_both(small_cli_args, tmp_path):
    """pyro-vae train with a cosine schedule, early stopping, clipping and both loggers;
    the options round-trip through config.json, and MLflow keeps test.json too."""
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    tools = ["--lr-schedule", "cosine", "--patience", "2", "--clip-grad-norm", "500"]
    tools += ["--log", "tensorboard", "--log", "mlflow"]
    assert main(["train", *small_cli_args, "--epochs", "3", *tools, "--out", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["lr_schedule"] == "cosine" and config["patience"] == 2
    assert config["clip_grad_norm"] == 500.0 and config["log"] == ["tensorboard", "mlflow"]
    assert RunConfig.read(out / "config.json").log == ["tensorboard", "mlflow"]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 3 and all("grad_norm" in r for r in records)
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    assert "val_elbo" in events.Tags()["scalars"] and "samples" in events.Tags()["images"]
    client = MlflowClient(tracking_uri=(out / "mlruns").as_uri())
    (run,) = client.search_runs([client.get_experiment_by_name("pyro-vae").experiment_id])
    assert run.info.status == "FINISHED" and run.data.params["lr_schedule"] == "cosine"
    artifacts = {f.path for f in client.list_artifacts(run.info.run_id)}
    assert {"test.json", "samples.png", "tensorboard"} <= artifacts
    assert len(client.get_metric_history(run.info.run_id, "lr")) == 3
    # resumed for one more epoch: the ended cosine schedule stays at zero (and says so),
    # and both logs go on where they were: one MLflow run, TensorBoard steps 1..4
    with pytest.warns(UserWarning, match="cosine schedule ended at epoch 3"):
        assert main(["train", "--resume", str(out), "--epochs", "4", "--no-progress"]) == 0
    (again,) = client.search_runs([run.info.experiment_id])
    assert again.info.run_id == run.info.run_id and again.info.status == "FINISHED"
    lrs = client.get_metric_history(run.info.run_id, "lr")
    assert [m.step for m in lrs] == [1, 2, 3, 4] and lrs[-1].value == 0.0
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("val_elbo")] == [1, 2, 3, 4]
