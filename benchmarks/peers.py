r"""pyro-vae side by side with a peer library, pythae, on the same machine and budget.

Both libraries train the same VAE on the same data with the same batch size and optimizer;
the script reports the wall time per epoch of each trainer and the test NLL of each model,
estimated by the same function, after equal wall-clock training budgets.

What is compared
----------------

- Data: Larochelle's static binarized MNIST, the 50,000 training images
  (``pyro_vae.load_binarized_mnist``); no validation set on either side.
- Model, identical on both sides: :math:`z \sim \mathcal{N}(0, I_{50})`,
  :math:`x \sim \mathrm{Bernoulli}(\mathrm{logits} = f(z))` with the decoder
  ``Linear(50, 400) -> Softplus -> Linear(400, 784)``, and the guide
  :math:`q(z \mid x) = \mathcal{N}(\mu(x), \mathrm{diag}\,\sigma(x)^2)` with the encoder
  ``Linear(784, 400) -> Softplus -> Linear(400, 100)`` split into :math:`\mu` and a raw
  scale, :math:`\sigma = \mathrm{softplus}(\cdot) + 10^{-5}` (pyro-vae's
  ``DiagonalNormalGuide``; pythae's encoder returns ``log_covariance = 2 log sigma``, so
  its ``exp(0.5 * log_var)`` is the same :math:`\sigma`). pythae's networks are a custom
  ``BaseEncoder``/``BaseDecoder`` (the decoder returns ``sigmoid(logits)``, as its
  ``reconstruction_loss="bce"`` wants) and start from a copy of pyro-vae's initial
  weights, so both trainings start at the same point.
- Objective: the ELBO with the closed-form Gaussian KL on both sides (pythae's ``VAE``;
  pyro-vae's ``objective="meanfield"``, ``TraceMeanField_ELBO``), one sample of
  :math:`z` per example. pythae averages the loss over the batch, Pyro sums it; Adam is
  invariant to that scale up to its ``eps``.
- Optimizer: Adam, learning rate 1e-3, default betas and eps, the fused CPU kernel on both
  sides (pyro-vae's default; pythae gets ``optimizer_params={"fused": True}``), batch 100
  (500 steps per epoch), seed 0 on both. The data order cannot be the same: pythae shuffles
  with a ``torch.utils.data.DataLoader`` over its ``BaseDataset``, pyro-vae by index.
- Trainers, each as a user gets it: pyro-vae's ``fit`` with its defaults otherwise (the
  captured step, a progress bar, the per-epoch train ELBO terms on 2,000 examples, no run
  directory); pythae's ``BaseTrainer`` with ``BaseTrainerConfig`` and no evaluation set,
  so it keeps the best model on the training loss (a ``deepcopy`` of the model whenever
  the epoch's mean training loss improves, i.e. nearly every epoch), reads the loss with
  ``.item()`` every step and always runs its progress-bar and console-logging callbacks.
  No checkpoints are saved (``steps_saving=None``); pythae's final ``save_model`` at the end
  of ``train()`` is skipped because training is stopped from its ``on_epoch_end`` callback.

How time is measured
--------------------

Both trainings run in one process with one torch thread, pyro-vae's ``fit`` in the main
thread and pythae's ``BaseTrainer.train`` in a second thread, but never at the same time: a
baton passes between them at every epoch end (fit's epoch callback; a pythae
``TrainingCallback.on_epoch_end``), so epochs alternate (pyro-vae's first) and the load of
a shared machine falls on both alike. An epoch's time is the time from receiving the baton
to handing it back, everything the trainer does in between; the first epoch also holds the
trainer's setup (pythae's ``BaseTrainer`` construction with its sanity-check forward pass,
fit's reading of the program and recording of the captured step). Epoch 1 is left out of
the per-epoch statistics. The ratio (pythae time / pyro-vae time) is taken per round (the
i-th epoch of each, adjacent in time) and summarised by its median, with a 95% bootstrap
interval over rounds. The same is reported for the CPU time of each epoch
(``time.process_time`` of the process, in which only one trainer runs at a time), which a
busy machine disturbs less than the wall time.

Each side's clock is the sum of its own epoch times. For a budget of :math:`B` seconds,
the model evaluated is the one at the last epoch end at or before :math:`B` on that
side's clock (the initial networks when no epoch fitted): neither side trains past the
budget, and each leaves up to one epoch of it unused. Training stops once both clocks
pass the largest budget. The parameters at every epoch end are copied outside the clocks.

How NLL is estimated
--------------------

For both models the same function, :func:`pyro_vae.check.loglik.log_likelihood`, with
``num_samples=K`` importance samples from the model's own guide: pyro-vae's ``vae.model``
and ``vae.guide``, and for pythae a Pyro model/guide pair that wraps its trained networks
(:math:`z \sim \mathcal{N}(0, I)`, :math:`x \sim \mathrm{Bernoulli}(\mathrm{logits})` from
its decoder's pre-sigmoid output; :math:`z \sim \mathcal{N}(\mu, \exp(\log\sigma^2/2))`
from its encoder). The test images are a strided subset (every ``10000 / n``-th image;
Larochelle's test file is not shuffled, so its first images are not representative). The
± is the Monte Carlo standard error of the mean given those images.

Environment
-----------

pythae is never a dependency of pyro-vae; make a separate benchmark environment::

    python -m venv .venv-bench
    .venv-bench/bin/pip install -e . pythae==0.1.2

Usage::

    .venv-bench/bin/python benchmarks/peers.py                       # 10 and 30 min budgets
    .venv-bench/bin/python benchmarks/peers.py --budgets 30 --train-examples 5000 \
        --num-samples 50 --test-examples 200 --out /tmp/peers-try.json   # a quick try

The results go to ``benchmarks/results/peers-<date>.json``; ``benchmarks/make_table.py``
renders the README's table from them.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from torch import nn
from torch.nn import functional as F

import pyro_vae
from pyro_vae import (
    VAE,
    BernoulliLikelihood,
    DiagonalNormalGuide,
    StandardNormalPrior,
    fit,
    load_binarized_mnist,
)
from pyro_vae.check.loglik import log_likelihood

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "binarized-mnist"
LATENT, HIDDEN, X_SHAPE = 50, 400, (1, 28, 28)
PYRO_VAE, PYTHAE = "pyro-vae", "pythae"


# --------------------------------------------------------------------------- alternation


class Baton:
    """Lets one of several threads run at a time; handed over at epoch ends."""

    def __init__(self, order: list[str]) -> None:
        self.cond = threading.Condition()
        self.turn = order[0]
        self.active = list(order)

    def wait(self, name: str) -> None:
        with self.cond:
            self.cond.wait_for(lambda: self.turn == name)

    def hand_over(self, name: str, finished: bool) -> None:
        with self.cond:
            if finished and name in self.active:
                self.active.remove(name)
            others = [n for n in self.active if n != name]
            if others:
                self.turn = others[0]
            elif self.active:
                self.turn = name
            self.cond.notify_all()
        if not finished:
            self.wait(name)


class Clock:
    """One side's own training time, its epoch times and the parameters at each budget."""

    def __init__(self, name: str, budgets: list[float], baton: Baton) -> None:
        self.name, self.budgets, self.baton = name, sorted(budgets), baton
        self.epoch_seconds: list[float] = []
        self.epoch_cpu_seconds: list[float] = []
        self.elapsed = 0.0
        self.started = self.cpu_started = 0.0
        self.at_budget: dict[float, tuple[int, float, dict]] = {}
        self.last: tuple[int, float, dict] | None = None
        self.finished = False

    def start(self, initial_state: dict) -> None:
        self.last = (0, 0.0, initial_state)
        self.started, self.cpu_started = time.perf_counter(), time.process_time()

    def epoch_end(self, state: Callable[[], dict]) -> bool:
        """Stop the clock, keep the parameters, hand the baton over; True to stop training."""
        seconds = time.perf_counter() - self.started
        self.epoch_seconds.append(seconds)
        self.epoch_cpu_seconds.append(time.process_time() - self.cpu_started)
        self.elapsed += seconds
        for b in self.budgets:
            if b not in self.at_budget and self.elapsed > b:
                assert self.last is not None
                self.at_budget[b] = self.last
        self.last = (len(self.epoch_seconds), self.elapsed, state())
        self.finished = len(self.at_budget) == len(self.budgets)
        print(
            f"[{self.name}] epoch {len(self.epoch_seconds)}: {seconds:.1f} s, "
            f"clock {self.elapsed:.0f} s",
            file=sys.stderr,
            flush=True,
        )
        self.baton.hand_over(self.name, self.finished)
        self.started, self.cpu_started = time.perf_counter(), time.process_time()
        return self.finished

    def close(self) -> None:
        """Hand the baton over for good (also after an error)."""
        if not self.finished:
            self.finished = True
            self.baton.hand_over(self.name, True)


# --------------------------------------------------------------------------- the two sides


def make_vae() -> VAE:
    return VAE(
        StandardNormalPrior(LATENT),
        BernoulliLikelihood.mlp(LATENT, X_SHAPE, (HIDDEN,)),
        DiagonalNormalGuide.mlp(X_SHAPE, LATENT, (HIDDEN,)),
    )


def snapshot(module: nn.Module) -> dict:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def train_pyro_vae(vae: VAE, x: torch.Tensor, clock: Clock, args: argparse.Namespace) -> None:
    clock.baton.wait(PYRO_VAE)
    clock.start(snapshot(vae))
    try:
        fit(
            vae.model,
            vae.guide,
            x,
            objective="meanfield",
            epochs=10**6,  # stopped by the clock
            batch_size=args.batch_size,
            lr=args.lr,
            seed=args.seed,
            callbacks=[lambda record: clock.epoch_end(lambda: snapshot(vae))],
        )
    finally:
        clock.close()


def pythae_networks(vae: VAE):
    """pythae's encoder and decoder: the same layers as ``vae``'s, from its initial weights."""
    from pythae.models.base.base_utils import ModelOutput
    from pythae.models.nn import BaseDecoder, BaseEncoder

    min_scale = vae.posterior.min_scale

    class Encoder(BaseEncoder):
        def __init__(self) -> None:
            BaseEncoder.__init__(self)
            self.net = nn.Sequential(
                nn.Linear(784, HIDDEN), nn.Softplus(), nn.Linear(HIDDEN, 2 * LATENT)
            )

        def forward(self, x: torch.Tensor) -> ModelOutput:
            mu, raw = self.net(x.reshape(*x.shape[:-3], 784)).split(LATENT, dim=-1)
            sigma = F.softplus(raw) + min_scale
            return ModelOutput(embedding=mu, log_covariance=2 * sigma.log())

    class Decoder(BaseDecoder):
        def __init__(self) -> None:
            BaseDecoder.__init__(self)
            self.net = nn.Sequential(
                nn.Linear(LATENT, HIDDEN), nn.Softplus(), nn.Linear(HIDDEN, 784)
            )

        def logits(self, z: torch.Tensor) -> torch.Tensor:
            return self.net(z)

        def forward(self, z: torch.Tensor) -> ModelOutput:
            return ModelOutput(reconstruction=torch.sigmoid(self.net(z)))

    encoder, decoder = Encoder(), Decoder()
    encoder.load_state_dict(vae.posterior.encoder.state_dict())
    decoder.load_state_dict(vae.likelihood.decoder.state_dict())
    return encoder, decoder


def train_pythae(
    networks: tuple[nn.Module, nn.Module],
    x: torch.Tensor,
    clock: Clock,
    args: argparse.Namespace,
    out: dict,
) -> None:
    from pythae.data.datasets import BaseDataset
    from pythae.models import VAE, VAEConfig
    from pythae.trainers import BaseTrainer, BaseTrainerConfig
    from pythae.trainers.training_callbacks import TrainingCallback

    class BudgetReachedError(Exception):
        pass

    class ClockCallback(TrainingCallback):
        trainer: BaseTrainer | None = None

        def on_epoch_end(self, training_config, **kwargs) -> None:
            best = self.trainer._best_model  # what pythae hands its user
            if clock.epoch_end(lambda: snapshot(best)):
                raise BudgetReachedError

    clock.baton.wait(PYTHAE)
    try:
        encoder, decoder = networks
        model = VAE(
            VAEConfig(input_dim=X_SHAPE, latent_dim=LATENT, reconstruction_loss="bce"),
            encoder=encoder,
            decoder=decoder,
        )
        out["model"] = model
        clock.start(snapshot(model))
        dataset = BaseDataset(x, torch.zeros(len(x)))
        with tempfile.TemporaryDirectory() as tmp:
            config = BaseTrainerConfig(
                output_dir=tmp,
                per_device_train_batch_size=args.batch_size,
                num_epochs=10**6,  # stopped by the clock
                learning_rate=args.lr,
                optimizer_cls="Adam",
                optimizer_params={"fused": True},
                seed=args.seed,
                no_cuda=True,
                steps_saving=None,
            )
            callback = ClockCallback()
            trainer = BaseTrainer(model, dataset, training_config=config, callbacks=[callback])
            callback.trainer = trainer
            with contextlib.suppress(BudgetReachedError):
                trainer.train()
    except BaseException as error:  # reported by the main thread
        out["error"] = error
    finally:
        clock.close()


def pyro_program(model) -> tuple[Callable, Callable]:
    """A Pyro model/guide pair of pythae's trained VAE, for the shared estimator."""
    encoder, decoder = model.encoder, model.decoder

    def p(x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(x.shape[0], -1)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(LATENT), 1.0).to_event(1))
            return pyro.sample("x", dist.Bernoulli(logits=decoder.logits(z)).to_event(1), obs=x)

    def q(x: torch.Tensor) -> torch.Tensor:
        out = encoder(x)
        scale = (0.5 * out.log_covariance).exp()
        with pyro.plate("data", x.shape[0]):
            return pyro.sample("z", dist.Normal(out.embedding, scale).to_event(1))

    return p, q


# --------------------------------------------------------------------------- summaries


def spread(values: list[float]) -> dict:
    a = np.asarray(values, dtype=float)
    if a.size == 0:
        return {"n": 0}
    q1, med, q3 = np.percentile(a, [25, 50, 75])
    return {
        "n": int(a.size),
        "median": float(med),
        "q1": float(q1),
        "q3": float(q3),
        "min": float(a.min()),
        "max": float(a.max()),
    }


def ratio_summary(num: list[float], den: list[float], seed: int) -> dict:
    """pythae / pyro-vae per paired round (epochs 2..), median and 95% bootstrap interval."""
    n = min(len(num), len(den))
    r = np.asarray(num[1:n], dtype=float) / np.asarray(den[1:n], dtype=float)
    if r.size == 0:
        return {"rounds": 0}
    rng = np.random.default_rng(seed)
    boot = np.median(rng.choice(r, size=(10_000, r.size), replace=True), axis=1)
    lo, hi = np.percentile(boot, [2.5, 97.5])
    return {
        "rounds": int(r.size),
        "median": float(np.median(r)),
        "ci95": [float(lo), float(hi)],
        "min": float(r.min()),
        "max": float(r.max()),
        "per_round": [float(v) for v in r],
    }


def nll(model: Callable, guide: Callable, x: torch.Tensor, k: int, seed: int) -> dict:
    pyro.set_rng_seed(seed)
    start = time.perf_counter()
    with torch.no_grad():
        ll = log_likelihood(model, guide, x, num_samples=k)
    return {
        "nll": -ll.mean,
        "nll_stderr": ll.mean_stderr,
        "pareto_k_max": ll.pareto_k_max,
        "eval_seconds": time.perf_counter() - start,
    }


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--budgets",
        type=float,
        nargs="+",
        default=[600.0, 1800.0],
        help="training budgets in seconds of each side's own clock (default 600 1800)",
    )
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--train-examples", type=int, default=50_000)
    parser.add_argument("--test-examples", type=int, default=2000)
    parser.add_argument("--num-samples", type=int, default=1000, help="K of the IS estimate")
    parser.add_argument("--data-dir", default=str(DATA))
    parser.add_argument("--out", default=None, help="results file (default: dated name)")
    args = parser.parse_args(argv)

    import pythae

    torch.set_num_threads(args.threads)
    date = datetime.date.today().isoformat()
    out_path = Path(args.out or ROOT / "benchmarks" / "results" / f"peers-{date}.json")
    load_start = os.getloadavg()

    x_train = load_binarized_mnist(args.data_dir, "train").tensors[0][: args.train_examples]
    x_test_all = load_binarized_mnist(args.data_dir, "test").tensors[0]
    stride = max(1, len(x_test_all) // args.test_examples)
    x_test = x_test_all[::stride][: args.test_examples]

    pyro.clear_param_store()
    pyro.set_rng_seed(args.seed)
    vae = make_vae()
    baton = Baton([PYRO_VAE, PYTHAE])
    clocks = {name: Clock(name, args.budgets, baton) for name in (PYRO_VAE, PYTHAE)}
    peer: dict = {}
    networks = pythae_networks(vae)  # before pyro-vae trains: the same initial weights
    thread = threading.Thread(
        target=train_pythae, args=(networks, x_train, clocks[PYTHAE], args, peer), daemon=True
    )
    thread.start()  # it waits for the baton, which pyro-vae holds first
    wall_start = time.perf_counter()
    train_pyro_vae(vae, x_train, clocks[PYRO_VAE], args)
    thread.join()
    wall = time.perf_counter() - wall_start
    if "error" in peer:
        raise peer["error"]
    load_end = os.getloadavg()

    p_model, p_guide = pyro_program(peer["model"])
    sides: dict[str, dict] = {}
    for name, clock in clocks.items():
        times = clock.epoch_seconds
        sides[name] = {
            "epochs": len(times),
            "epoch_seconds": times,
            "first_epoch_seconds": times[0] if times else None,
            "epoch_seconds_after_first": spread(times[1:]),
            "epoch_cpu_seconds": clock.epoch_cpu_seconds,
            "epoch_cpu_seconds_after_first": spread(clock.epoch_cpu_seconds[1:]),
            "examples_per_s_median": (
                len(x_train) / statistics.median(times[1:]) if len(times) > 1 else None
            ),
        }
    budgets = []
    for b in clocks[PYRO_VAE].budgets:
        row: dict = {"seconds": b}
        for name, clock in clocks.items():
            epochs, seconds, state = clock.at_budget[b]
            if name == PYRO_VAE:
                vae.load_state_dict(state)
                model, guide = vae.model, vae.guide
            else:
                peer["model"].load_state_dict(state)
                model, guide = p_model, p_guide
            row[name] = {"epochs": epochs, "train_seconds": seconds}
            row[name] |= nll(model, guide, x_test, args.num_samples, args.seed)
            print(f"budget {b:.0f} s, {name}: {row[name]}", file=sys.stderr, flush=True)
        budgets.append(row)

    result = {
        "kind": "peers",
        "date": date,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "threads": torch.get_num_threads(),
        "load_average_start": load_start[0],
        "load_average_end": load_end[0],
        "python": platform.python_version(),
        "torch": torch.__version__,
        "pyro": pyro.__version__,
        "pyro_vae": pyro_vae.__version__,
        "pythae": getattr(pythae, "__version__", None) or _dist_version("pythae"),
        "data": (
            f"Larochelle's binarized MNIST, the first {len(x_train)} training images; "
            f"test NLL on every {stride}th of the 10,000 test images ({len(x_test)})"
        ),
        "train_examples": len(x_train),
        "test_examples": len(x_test),
        "test_stride": stride,
        "num_samples": args.num_samples,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "seed": args.seed,
        "optimizer": "Adam(lr, fused=True) on both",
        "architecture": (
            "MLP 784-400-50 encoder and 50-400-784 decoder, softplus, Bernoulli logits, "
            "sigma = softplus(raw) + 1e-5, same initial weights"
        ),
        "objective": "ELBO with closed-form KL, 1 sample (pythae VAE; pyro-vae meanfield)",
        "trainers": {
            PYRO_VAE: "pyro_vae.fit(objective='meanfield'), other arguments default",
            PYTHAE: (
                "pythae.trainers.BaseTrainer, BaseTrainerConfig(no eval set, "
                "steps_saving=None, optimizer_params={'fused': True})"
            ),
        },
        "budget_rule": (
            "each side's model at its last epoch end within the budget on its own clock "
            "(sum of its epoch times); epochs alternate between the two trainers"
        ),
        "wall_seconds": wall,
        "sides": sides,
        "ratio_pythae_over_pyro_vae": ratio_summary(
            clocks[PYTHAE].epoch_seconds, clocks[PYRO_VAE].epoch_seconds, args.seed
        ),
        "cpu_ratio_pythae_over_pyro_vae": ratio_summary(
            clocks[PYTHAE].epoch_cpu_seconds, clocks[PYRO_VAE].epoch_cpu_seconds, args.seed
        ),
        "budgets": budgets,
    }
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out_path}", file=sys.stderr)
    return 0


def _dist_version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


if __name__ == "__main__":
    raise SystemExit(main())
