"""fit(): training any model/guide pair, checkpoints, exact resume, training faults."""

from __future__ import annotations

import json
import math
import signal

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.optim import Adam
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from pyro_vae import (
    VAE,
    BernoulliLikelihood,
    DiagonalNormalGuide,
    DynamicBinarization,
    StandardNormalPrior,
    TrainingDivergedError,
    binarize,
    elbo_terms,
    fit,
    load_checkpoint,
)
from pyro_vae.train.loop import CHECKPOINT_NAME


def small_vae(latent_dim: int = 4, hidden: int = 32) -> VAE:
    return VAE(
        StandardNormalPrior(latent_dim),
        BernoulliLikelihood.mlp(latent_dim, (1, 28, 28), (hidden,)),
        DiagonalNormalGuide.mlp((1, 28, 28), latent_dim, (hidden,)),
    )


@pytest.fixture(scope="module")
def binary(bundled):
    x = binarize(bundled["train"].tensors[0][:1024], seed=0)
    xv = binarize(bundled["valid"].tensors[0][:256], seed=1)
    return x, bundled["train"].tensors[1][:1024], xv


def params_of(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_elbo_improves_and_history_is_complete(binary):
    x, _, xv = binary
    vae = small_vae()
    before = elbo_terms(vae.model, vae.guide, xv)["elbo"].mean().item()
    history = fit(vae.model, vae.guide, x, validation_data=xv, epochs=3, progress=False)
    assert len(history) == 3
    val = history["val_elbo"]
    assert val[-1] > before + 100  # random init is ~ -550 nats; 3 epochs gain far more
    assert val[-1] > val[0]
    for key in ("train_elbo", "train_kl", "train_reconstruction", "val_kl", "seconds"):
        assert all(torch.isfinite(torch.tensor(history[key])))
    rec = history.last
    assert rec["val_elbo"] == pytest.approx(rec["val_reconstruction"] - rec["val_kl"], abs=1e-3)
    assert rec["examples_per_s"] > 0 and rec["step"] == 3 * 8


def test_every_parameter_trains(binary):
    vae = small_vae()
    before = {k: v.detach().clone() for k, v in vae.named_parameters()}
    assert len(before) == 8  # two Linear layers in each of encoder and decoder
    fit(vae.model, vae.guide, binary[0], epochs=1, progress=False)
    after = dict(vae.named_parameters())
    unchanged = [k for k in before if torch.equal(before[k], after[k])]
    assert unchanged == []


def test_plain_pyro_functions_train_through_fit(binary):
    """A model/guide written as plain Pyro functions (pyro.module, pyro.param), not VAE."""
    x = binary[0].reshape(-1, 784)
    decoder = nn.Sequential(nn.Linear(4, 64), nn.Softplus(), nn.Linear(64, 784))
    encoder = nn.Sequential(nn.Linear(784, 64), nn.Softplus(), nn.Linear(64, 8))

    def model(x):
        pyro.module("decoder", decoder)
        bias = pyro.param("out_bias", torch.zeros(784))
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(4), 1.0).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=decoder(z) + bias).to_event(1), obs=x)

    def guide(x):
        pyro.module("encoder", encoder)
        loc, raw = encoder(x).chunk(2, -1)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(loc, nn.functional.softplus(raw) + 1e-4).to_event(1))

    w0 = decoder[0].weight.detach().clone()
    before = elbo_terms(model, guide, x[:256])["elbo"].mean().item()
    history = fit(model, guide, x, epochs=3, progress=False)
    after = elbo_terms(model, guide, x[:256])["elbo"].mean().item()
    assert after > before + 100
    assert not torch.equal(w0, decoder[0].weight)
    assert pyro.param("out_bias").abs().sum() > 0
    assert len(history) == 3


def test_plain_svi_with_pyro_optim_trains_two_vaes_side_by_side(binary):
    """vae.model/vae.guide are ordinary Pyro callables; two VAEs share one param store."""
    x = binary[0][:512]
    first, second = small_vae(), small_vae(latent_dim=3)
    assert first.prior.loc.shape != second.prior.loc.shape
    losses = {}
    for name, vae in (("first", first), ("second", second)):
        svi = SVI(vae.model, vae.guide, Adam({"lr": 1e-2}), Trace_ELBO())
        start = params_of(vae)
        trace = [svi.step(x) / len(x) for _ in range(30)]
        losses[name] = (sum(trace[:5]) / 5, sum(trace[-5:]) / 5)
        changed = [k for k in start if not torch.equal(start[k], params_of(vae)[k])]
        assert len(changed) == len(start) - 2  # all but the prior's fixed loc/scale buffers
    for begin, end in losses.values():
        assert end < begin - 50
    names = list(pyro.get_param_store().keys())
    assert any(n.startswith(first._pyro_name) for n in names)
    assert any(n.startswith(second._pyro_name) for n in names)


def test_data_as_dataset_and_dataloader(binary):
    x, y, _ = binary

    class Images(Dataset):
        def __len__(self):
            return 256

        def __getitem__(self, i):
            return x[i], y[i]

    vae = small_vae()
    h1 = fit(vae.model, vae.guide, Images(), epochs=1, batch_size=64, progress=False)
    loader = DataLoader(TensorDataset(x[:256]), batch_size=64, shuffle=True)
    h2 = fit(vae.model, vae.guide, loader, epochs=1, progress=False)
    assert h1.last["step"] == 4 and h2.last["step"] == 4
    assert h2.last["train_elbo"] > h1.records[0]["train_elbo"] - 50


def test_labels_reach_only_models_that_take_them(binary):
    x, y, _ = binary
    seen = []

    def model(x, y=None):
        seen.append(y)
        return small.model(x)

    small = small_vae()
    fit(model, small.guide, (x[:128], y[:128]), epochs=1, batch_size=64, progress=False)
    # training steps see batches of 64 labels, the epoch's evaluation all 128
    assert {tuple(s.shape) for s in seen} == {(64,), (128,)}
    # A guide without y must not be given labels: VAE.guide takes y, so wrap one that doesn't.
    fit(small.model, lambda x: small.guide(x), (x[:128], y[:128]), epochs=1, progress=False)


def test_checkpoint_round_trip_and_exact_resume(binary, tmp_path):
    """2 epochs + resume for 2 more == 4 uninterrupted epochs, bit for bit, with dynamic
    binarization (its RNG), data order, optimizer and global RNG state all restored."""
    xg = binary[0] * 0.5 + 0.25  # grayscale-ish values in (0, 1): binarized dynamically

    def run(epochs, run_dir, resume=None):
        pyro.clear_param_store()
        torch.manual_seed(123)
        vae = small_vae()
        fit(
            vae.model,
            vae.guide,
            xg,
            epochs=epochs,
            transform=DynamicBinarization(seed=5),
            run_dir=run_dir,
            resume=resume,
            seed=3,
            progress=False,
        )
        return vae

    full = run(4, tmp_path / "full")
    run(2, tmp_path / "part")
    resumed = run(4, tmp_path / "part", resume=tmp_path / "part")
    for k, v in params_of(full).items():
        assert torch.equal(v, params_of(resumed)[k]), k
    a = [line for line in (tmp_path / "full/metrics.jsonl").read_text().splitlines()]
    b = [line for line in (tmp_path / "part/metrics.jsonl").read_text().splitlines()]
    assert len(a) == len(b) == 4
    # Loading the checkpoint into a fresh model gives identical parameters and loss.
    fresh = small_vae()
    state = load_checkpoint(tmp_path / "full" / CHECKPOINT_NAME)
    fresh.load_state_dict(state["modules"][0])
    xb = binarize(xg[:64], seed=9)
    pyro.set_rng_seed(1)
    la = elbo_terms(full.model, full.guide, xb)["elbo"]
    pyro.set_rng_seed(1)
    lb = elbo_terms(fresh.model, fresh.guide, xb)["elbo"]
    assert torch.equal(la, lb)


def test_sigint_mid_epoch_checkpoints_and_resumes_exactly(binary, tmp_path):
    """Ctrl-C in the middle of epoch 2: fit finishes the step, checkpoints mid-epoch and
    returns; resuming gives bit-identical parameters to an uninterrupted run."""
    x = binary[0]
    handler = signal.getsignal(signal.SIGINT)

    class InterruptAt:
        def __init__(self, call):
            self.call, self.calls = call, 0

        def __call__(self, xb):
            self.calls += 1
            if self.calls == self.call:
                signal.raise_signal(signal.SIGINT)
            return xb

    def run(run_dir, transform, resume=None):
        pyro.clear_param_store()
        torch.manual_seed(7)
        vae = small_vae()
        h = fit(
            vae.model,
            vae.guide,
            x,
            epochs=3,
            batch_size=100,
            transform=transform,
            run_dir=run_dir,
            resume=resume,
            progress=False,
        )
        return vae, h

    full, h_full = run(tmp_path / "full", lambda xb: xb)
    _, h_cut = run(tmp_path / "cut", InterruptAt(11 + 3))  # 11 batches/epoch + eval subset
    assert h_cut.interrupted and len(h_cut) == 1
    state = load_checkpoint(tmp_path / "cut" / CHECKPOINT_NAME)
    assert state["epoch"] == 1 and state["batch_in_epoch"] == 2
    resumed, h_res = run(tmp_path / "cut", lambda xb: xb, resume=tmp_path / "cut")
    assert not h_res.interrupted and len(h_res) == 3
    for k, v in params_of(full).items():
        assert torch.equal(v, params_of(resumed)[k]), k
    assert h_res["train_elbo"] == h_full["train_elbo"]
    assert signal.getsignal(signal.SIGINT) is handler


class NaNAfter:
    """A model that behaves until its n-th call with gradients (the probe, then one per
    step; evaluations and reading the program run without), then adds a NaN factor to
    every other training loss."""

    def __init__(self, vae, n):
        self.vae, self.n, self.calls = vae, n, 0

    def __call__(self, x):
        self.calls += torch.is_grad_enabled()
        if torch.is_grad_enabled() and self.calls > self.n and self.calls % 2 == 0:
            pyro.factor("poison", torch.tensor(float("nan")))
        return self.vae.model(x)


@pytest.mark.filterwarnings("ignore:Encountered")
def test_nan_loss_stops_with_step_and_keeps_last_checkpoint(binary, tmp_path):
    x = binary[0]
    vae = small_vae()
    model = NaNAfter(vae, n=10)  # probe + 8 steps of epoch 1 pass, epoch 2 breaks
    with pytest.raises(TrainingDivergedError, match=r"at step 11\b.*--resume") as err:
        fit(model, vae.guide, x, epochs=3, run_dir=tmp_path, progress=False)
    assert "learning rate" in str(err.value)
    state = load_checkpoint(tmp_path / CHECKPOINT_NAME)
    assert state["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in state["modules"][0].values())
    # the kept checkpoint resumes: the same modules, with the healthy model, finish the run
    history = fit(vae.model, vae.guide, x, epochs=3, resume=tmp_path, progress=False)
    assert [r["epoch"] for r in history.records] == [1, 2, 3]
    assert all(math.isfinite(r["train_elbo"]) for r in history.records)


def test_full_disk_is_refused_before_training(binary, tmp_path, monkeypatch):
    import shutil

    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage._replace(free=1 << 20))
    vae = small_vae()
    with pytest.raises(ValueError, match=r"MiB free in .*free some space"):
        fit(vae.model, vae.guide, binary[0], epochs=1, run_dir=tmp_path, progress=False)
    assert not (tmp_path / CHECKPOINT_NAME).exists()


@pytest.mark.filterwarnings("ignore:Encountered")
@pytest.mark.parametrize("mode", ["skip", "reduce_lr"])
def test_nan_opt_in_skips_bad_batches(binary, mode):
    x = binary[0]
    vae = small_vae()
    model = NaNAfter(vae, n=4)  # every other step from then on is poisoned
    history = fit(model, vae.guide, x, epochs=1, lr=1e-3, on_nan=mode, progress=False)
    rec = history.last
    assert rec["skipped_steps"] == 2
    assert all(torch.isfinite(p).all() for p in vae.parameters())
    assert rec["lr"] == (1e-3 if mode == "skip" else 1e-3 / 4)


@pytest.mark.filterwarnings("ignore:Encountered")
def test_persistent_nan_gives_up_when_skipping(binary):
    vae = small_vae()

    def model(x):
        pyro.factor("poison", torch.tensor(float("inf")))
        return vae.model(x)

    with pytest.raises(TrainingDivergedError, match="NaN or infinite"):
        fit(model, vae.guide, binary[0], epochs=1, batch_size=64, on_nan="skip", progress=False)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"data": torch.full((8, 1, 28, 28), float("nan"))}, "NaN or inf"),
        ({"data": torch.zeros(0, 1, 28, 28)}, "empty"),
        ({"data": torch.zeros(8, 1, 28, 28, dtype=torch.uint8)}, "x.float"),
        ({"batch_size": 5000}, "batch_size=5000 is larger"),
        ({"data": torch.zeros(8, 784)}, r"reshape\(-1, \*\(1, 28, 28\)\)"),
        ({"data": torch.full((8, 1, 28, 28), 0.5)}, "Binarize"),
        ({"objective": "iwea"}, "Unknown objective"),
        ({"device": "cuda:7"} if not torch.cuda.is_available() else {"device": "nope"}, "cpu"),
        ({"epochs": -1}, "epochs must be"),
        ({"lr": float("nan")}, "lr must be"),
        ({"on_nan": "ignore"}, "on_nan must be"),
        ({"validation_data": torch.zeros(0, 1, 28, 28)}, "validation data is empty"),
    ],
)
def test_bad_input_is_refused_with_the_fix(binary, kwargs, match):
    vae = small_vae()
    args = {"data": binary[0][:256], "epochs": 1, "batch_size": 4, "progress": False}
    args.update(kwargs)
    data = args.pop("data")
    with pytest.raises(ValueError, match=match):
        fit(vae.model, vae.guide, data, **args)


def test_unwritable_run_dir_fails_before_training(binary, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    vae = small_vae()
    with pytest.raises(ValueError, match="not writable"):
        fit(vae.model, vae.guide, binary[0], epochs=1, run_dir=blocker / "run", progress=False)


# ----------------------------------------------------------------------------- run-dir truth


def test_checkpoint_precedes_metrics_and_resume_rewrites_them(binary, tmp_path, monkeypatch):
    """A crash between epoch 3's checkpoint and its metrics line (and a stale duplicate
    line) leaves metrics that the resume rewrites from the checkpoint: epochs 1..4 once."""
    from pyro_vae.train import records

    x = binary[0][:256]
    vae = small_vae()
    append = records.RunFiles.append

    def crash_on_3(self, record):
        if record["epoch"] == 3:
            raise RuntimeError("crash")
        append(self, record)

    monkeypatch.setattr(records.RunFiles, "append", crash_on_3)
    with pytest.raises(RuntimeError, match="crash"):
        fit(vae.model, vae.guide, x, epochs=4, batch_size=64, run_dir=tmp_path, progress=False)
    monkeypatch.setattr(records.RunFiles, "append", append)
    assert load_checkpoint(tmp_path / CHECKPOINT_NAME)["epoch"] == 3
    metrics = tmp_path / "metrics.jsonl"
    assert [json.loads(r)["epoch"] for r in metrics.read_text().splitlines()] == [1, 2]
    metrics.write_text(metrics.read_text() + '{"epoch": 2}\n')  # a stale duplicate
    fit(vae.model, vae.guide, x, epochs=4, batch_size=64, run_dir=tmp_path, resume=tmp_path)
    epochs = [json.loads(r)["epoch"] for r in metrics.read_text().splitlines()]
    assert epochs == [1, 2, 3, 4]


def test_new_lr_is_applied_on_resume_and_recorded(binary, tmp_path):
    x = binary[0][:256]
    vae = small_vae()
    args = {"batch_size": 64, "run_dir": tmp_path, "progress": False}
    fit(vae.model, vae.guide, x, epochs=1, lr=1e-3, **args)
    h = fit(vae.model, vae.guide, x, epochs=2, lr=1e-4, resume=tmp_path, **args)
    assert h["lr"] == [1e-3, 1e-4]
    state = load_checkpoint(tmp_path / CHECKPOINT_NAME)
    assert [g["lr"] for g in state["optimizer"]["param_groups"]] == [1e-4]
    h = fit(vae.model, vae.guide, x, epochs=3, resume=tmp_path, **args)  # lr=None: kept
    assert h["lr"] == [1e-3, 1e-4, 1e-4]


class Recorder:
    """A transform that records its batches and sends SIGINT on its n-th call."""

    def __init__(self, interrupt_at=None):
        self.interrupt_at, self.batches = interrupt_at, []

    def __call__(self, xb):
        self.batches.append(xb.clone())
        if len(self.batches) == self.interrupt_at:
            signal.raise_signal(signal.SIGINT)
        return xb


def test_batch_size_change_mid_epoch_resumes_by_examples(binary, tmp_path):
    """Stopped after 1 batch of 100, resumed with batches of 40: the epoch sees the rest
    of its saved order, each example exactly once."""
    x = binary[0][:300]
    ids = torch.arange(300.0).view(300, 1, 1, 1).expand(300, 1, 28, 28)
    vae = small_vae()

    def model(xb):  # train on the images; the transform sees which examples came
        return vae.model(x[xb[:, 0, 0, 0].long()])

    def guide(xb):
        return vae.guide(x[xb[:, 0, 0, 0].long()])

    first = Recorder(interrupt_at=2)  # the eval subset, then batch 1 of epoch 1
    args = {"epochs": 1, "run_dir": tmp_path, "progress": False, "capture": False}
    h = fit(model, guide, ids, batch_size=100, transform=first, **args)
    assert h.interrupted and load_checkpoint(tmp_path / CHECKPOINT_NAME)["batch_in_epoch"] == 1
    rest = Recorder()
    h = fit(model, guide, ids, batch_size=40, transform=rest, resume=tmp_path, **args)
    sizes = [len(b) for b in rest.batches[1:]]
    assert sizes == [40, 40, 40, 40, 40] and h.last["step"] == 6
    seen = torch.cat([first.batches[1], *rest.batches[1:]])[:, 0, 0, 0].long()
    assert sorted(seen.tolist()) == list(range(300))


def test_dataloader_batch_size_change_mid_epoch_is_refused(binary, tmp_path):
    x = binary[0][:300]
    vae = small_vae()
    args = {"epochs": 1, "run_dir": tmp_path, "progress": False}
    loader = DataLoader(TensorDataset(x), batch_size=100, shuffle=True)
    h = fit(vae.model, vae.guide, loader, transform=Recorder(interrupt_at=2), **args)
    assert h.interrupted
    loader = DataLoader(TensorDataset(x), batch_size=50, shuffle=True)
    with pytest.raises(ValueError, match="resume with batch_size=100"):
        fit(vae.model, vae.guide, loader, resume=tmp_path, **args)


# ----------------------------------------------------------------------------- M2 through fit


@pytest.fixture(scope="module")
def m2_data(bundled):
    x, y = bundled["train"].tensors
    xb = binarize(x[:400], seed=0)
    lab = torch.cat([(y[:400] == c).nonzero().flatten()[:5] for c in range(10)])
    unlab = torch.ones(400, dtype=torch.bool)
    unlab[lab] = False
    return (xb[lab], y[lab]), xb[unlab][:300]


def small_m2():
    from pyro_vae import SemiSupervisedVAE

    torch.manual_seed(11)
    return SemiSupervisedVAE.mlp(10, 4, (1, 28, 28), (32,))


def test_m2_resumes_exactly_after_an_interrupted_epoch(m2_data, tmp_path):
    """M2 stopped by Ctrl-C in the middle of epoch 2 and resumed equals an uninterrupted
    run, bit for bit: the unlabelled and the labelled orders are in the checkpoint."""
    from pyro_vae import fit_semisupervised

    labelled, unlabelled = m2_data

    def run(run_dir, transform=None, resume=None):
        m2 = small_m2()
        args = {"epochs": 2, "batch_size": 40, "lr": 2e-3, "run_dir": run_dir}
        h = fit_semisupervised(m2, labelled, unlabelled, transform=transform, resume=resume, **args)
        return m2, h

    full, h_full = run(tmp_path / "full")
    # 2 probe calls, then 2 calls (unlabelled, labelled) per step, 8 steps per epoch
    _, h_cut = run(tmp_path / "cut", transform=Recorder(interrupt_at=2 + 2 * (8 + 3)))
    assert h_cut.interrupted and len(h_cut) == 1
    state = load_checkpoint(tmp_path / "cut" / CHECKPOINT_NAME)
    assert state["epoch"] == 1 and state["batch_in_epoch"] == 3
    resumed, h_res = run(tmp_path / "cut", transform=lambda t: t, resume=tmp_path / "cut")
    assert len(h_res) == 2 and not h_res.interrupted
    for k, v in params_of(full).items():
        assert torch.equal(v, params_of(resumed)[k]), k
    assert h_res["loss"] == h_full["loss"]
    lines = (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["epoch"] for r in lines] == [1, 2]


@pytest.mark.filterwarnings("ignore:Encountered")
def test_m2_nan_policy(m2_data, tmp_path):
    """A poisoned batch: ``on_nan="skip"`` drops that step; ``"raise"`` stops with the step
    and keeps the last checkpoint."""
    from pyro_vae import fit_semisupervised

    labelled, unlabelled = m2_data

    class PoisonAt:
        def __init__(self, call):
            self.call, self.calls = call, 0

        def __call__(self, xb):
            self.calls += 1
            return xb * float("nan") if self.calls == self.call else xb

    m2 = small_m2()
    args = {"batch_size": 40, "lr": 2e-3}
    h = fit_semisupervised(
        m2, labelled, unlabelled, epochs=1, transform=PoisonAt(7), on_nan="skip", **args
    )
    assert h.last["skipped_steps"] == 1 and h.last["step"] == 8
    assert all(torch.isfinite(p).all() for p in m2.parameters())
    # step 11's poisoned pixels give NaN gradients; its update makes step 12's loss NaN
    with pytest.raises(TrainingDivergedError, match=r"at step 12\b.*--resume"):
        fit_semisupervised(
            small_m2(),
            labelled,
            unlabelled,
            epochs=2,
            transform=PoisonAt(2 + 2 * 10 + 1),
            run_dir=tmp_path,
            **args,
        )
    assert load_checkpoint(tmp_path / CHECKPOINT_NAME)["epoch"] == 1
