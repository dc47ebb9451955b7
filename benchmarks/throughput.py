r"""Training throughput: pyro-vae's ``fit`` against hand-written PyTorch and Pyro's default SVI.

One process, interleaved rounds, the same networks (MLP 784-400-50, softplus, Bernoulli
likelihood, default ``nn.Linear`` initialisation), the same batch size, Adam with learning
rate 1e-3 and the same number of threads, on real binarized MNIST held as tensors:

(a) ``handwritten``: the usual eager PyTorch step, as in pytorch/examples ``vae/main.py``:
    encode, reparameterize, decode, binary cross-entropy plus the closed-form KL (Kingma &
    Welling, 2014, appendix B), ``backward``, ``torch.optim.Adam`` step, ``loss.item()``
    every step. For IWAE the loss is the usual K-sample bound (Burda et al., 2016).
(b) ``pyro_svi``: Pyro's default, ``SVI`` + ``Trace_ELBO`` (``RenyiELBO(alpha=0)`` for
    IWAE) + ``pyro.optim.Adam``, validation on, ``svi.step`` every step.
(c) ``fit``: ``pyro_vae.fit`` with its defaults. Its speed is the ``examples_per_s`` that
    fit records for each epoch, which times the epoch's training loop only (batching,
    steps, periodic loss reads), not the per-epoch evaluation that follows it. One epoch
    is one round; the other variants run from fit's epoch callback, so the rounds
    interleave. Epoch 1 (which also records the captured graph) and the first round of
    the other variants are warm-up and are not counted.
    With ``--compile``, (c) is ``fit(..., compile=True)``: the captured graphs are compiled
    by TorchInductor during epoch 1 (warm-up, not counted); the seconds spent compiling are
    reported as ``fit_compile_seconds``.
(c0) ``fit_pyro_path``: the same with ``fit(..., capture=False)``, the Pyro path.
(a') ``handwritten_fused_adam``: (a) with ``torch.optim.Adam(fused=True)``, fit's default
    optimizer, to show how much of fit's speed comes from the optimizer alone.
(d) ``strong_loop``: the plain loop a strong engineer writes: fused Adam,
    ``binary_cross_entropy_with_logits`` (no sigmoid pass), the closed-form KL, gradients
    set to ``None``, batches gathered by index from one tensor, and the loss read only every
    50 steps (no synchronisation in between). The targets are stated against this loop.
(e) ``matmul_floor``: the forward and backward matrix products of the same networks alone
    (each ``Linear``'s forward product, and its two backward products, the input gradient
    omitted for the first layer), on preallocated tensors with ``out=``: no elementwise
    work, no allocation, no optimizer. A step cannot be faster than this; ``fit``'s speed
    as a fraction of it says how much room is left.

Ratios are taken within each round and summarised by their median, min and max, because
absolute speeds drift with the load of the machine.

Usage::

    python benchmarks/throughput.py                       # batch 128, 32, 512 and IWAE K=5
    python benchmarks/throughput.py --rounds 3 --steps 20 --configs 128
    python benchmarks/throughput.py --configs 128 --threads 1 --compile   # fit(compile=True)
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import pyro
import torch
from pyro.infer import SVI, RenyiELBO, Trace_ELBO
from torch import nn
from torch.nn import functional as F

import pyro_vae.train.loop as train_module
from pyro_vae import (
    VAE,
    BernoulliLikelihood,
    DiagonalNormalGuide,
    StandardNormalPrior,
    fit,
    load_binarized_mnist,
)
from pyro_vae.train.capture import CapturedStep

ROOT = Path(__file__).resolve().parents[1]
LATENT, HIDDEN, PIXELS = 50, 400, 784


# --------------------------------------------------------------------------- (a)


class HandwrittenVAE(nn.Module):
    """The VAE of pytorch/examples ``vae/main.py``, with softplus and a 50-d latent."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(PIXELS, HIDDEN)
        self.fc21 = nn.Linear(HIDDEN, LATENT)
        self.fc22 = nn.Linear(HIDDEN, LATENT)
        self.fc3 = nn.Linear(LATENT, HIDDEN)
        self.fc4 = nn.Linear(HIDDEN, PIXELS)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h1 = F.softplus(self.fc1(x))
        return self.fc21(h1), self.fc22(h1)

    def reparameterize(self, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        std = torch.exp(0.5 * logvar)
        eps = torch.randn_like(std)
        return mu + eps * std

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.fc4(F.softplus(self.fc3(z)))  # logits

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        mu, logvar = self.encode(x.view(-1, PIXELS))
        z = self.reparameterize(mu, logvar)
        return torch.sigmoid(self.decode(z)), mu, logvar


def vae_loss(recon_x, x, mu, logvar):
    # Reconstruction + KL divergence losses summed over all elements and batch; the KL is
    # in closed form, see Appendix B of Kingma & Welling, https://arxiv.org/abs/1312.6114
    bce = F.binary_cross_entropy(recon_x, x.view(-1, PIXELS), reduction="sum")
    kld = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
    return bce + kld


def iwae_loss(model: HandwrittenVAE, x: torch.Tensor, k: int) -> torch.Tensor:
    # The K-sample importance weighted bound (Burda et al., https://arxiv.org/abs/1509.00519)
    x = x.view(-1, PIXELS)
    mu, logvar = model.encode(x)
    std = torch.exp(0.5 * logvar)
    z = mu + torch.randn(k, *mu.shape) * std
    logits = model.decode(z)
    log_px = -F.binary_cross_entropy_with_logits(logits, x.expand_as(logits), reduction="none")
    log_pz = -0.5 * (z.pow(2) + math.log(2 * math.pi))
    log_qz = -0.5 * (((z - mu) / std).pow(2) + logvar + math.log(2 * math.pi))
    log_w = log_px.sum(-1) + (log_pz - log_qz).sum(-1)
    return -(torch.logsumexp(log_w, 0) - math.log(k)).sum()


def run_handwritten(state, batches, k):
    model, optimizer = state
    for xb in batches:
        optimizer.zero_grad()
        if k == 1:
            recon, mu, logvar = model(xb)
            loss = vae_loss(recon, xb, mu, logvar)
        else:
            loss = iwae_loss(model, xb, k)
        loss.backward()
        optimizer.step()
        loss.item()


class StrongLoop:
    """(d): the step of :class:`HandwrittenVAE` written for speed (see the module docstring)."""

    def __init__(self, x: torch.Tensor, batch: int, k: int) -> None:
        self.model = HandwrittenVAE()
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=1e-3, fused=True)
        self.x, self.batch, self.k = x.reshape(x.shape[0], PIXELS), batch, k
        self.read_every = 50

    def loss(self, xb: torch.Tensor) -> torch.Tensor:
        if self.k > 1:
            return iwae_loss(self.model, xb, self.k)
        mu, logvar = self.model.encode(xb)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        logits = self.model.decode(z)
        bce = F.binary_cross_entropy_with_logits(logits, xb, reduction="sum")
        return bce - 0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())

    def run(self, steps: int) -> None:
        order = torch.randperm(self.x.shape[0])[: self.batch * steps]
        for i, index in enumerate(order.split(self.batch)):
            self.optimizer.zero_grad(set_to_none=True)
            loss = self.loss(self.x.index_select(0, index))
            loss.backward()
            self.optimizer.step()
            if (i + 1) % self.read_every == 0:
                loss.item()


class MatmulFloor:
    """(e): the matrix products of one training step of the 784-400-50-400-784 VAE."""

    def __init__(self, batch: int, k: int) -> None:
        rows_enc, rows_dec = batch, batch * k
        layers = [  # (rows, in, out, needs input gradient)
            (rows_enc, PIXELS, HIDDEN, False),
            (rows_enc, HIDDEN, 2 * LATENT, True),
            (rows_dec, LATENT, HIDDEN, True),
            (rows_dec, HIDDEN, PIXELS, True),
        ]
        self.ops = []
        for rows, n_in, n_out, input_grad in layers:
            x, w = torch.randn(rows, n_in), torch.randn(n_out, n_in)
            y, g = torch.empty(rows, n_out), torch.randn(rows, n_out)
            gx, gw = torch.empty(rows, n_in), torch.empty(n_out, n_in)
            self.ops.append((x, w, y, g, gx if input_grad else None, gw))

    def run(self, steps: int) -> None:
        for _ in range(steps):
            for x, w, y, _g, _gx, _gw in self.ops:
                torch.mm(x, w.t(), out=y)
            for x, w, _y, g, gx, gw in reversed(self.ops):
                if gx is not None:
                    torch.mm(g, w, out=gx)
                torch.mm(g.t(), x, out=gw)


# --------------------------------------------------------------------------- (b), (c)


def make_vae() -> VAE:
    return VAE(
        StandardNormalPrior(LATENT),
        BernoulliLikelihood.mlp(LATENT, (1, 28, 28), (HIDDEN,)),
        DiagonalNormalGuide.mlp((1, 28, 28), LATENT, (HIDDEN,)),
    )


def run_svi(svi, batches):
    with pyro.validation_enabled(True):
        for xb in batches:
            svi.step(xb)


def fixed_batches(x: torch.Tensor, batch: int, steps: int) -> list[torch.Tensor]:
    order = torch.randperm(x.shape[0])[: batch * steps]
    return [x[i] for i in order.split(batch)]


def timed(fn, *args) -> float:
    t0 = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t0


def summary(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def benchmark(
    x: torch.Tensor, batch: int, k: int, rounds: int, steps: int, compile: bool = False
) -> dict:
    """One configuration: ``rounds`` counted rounds after one warm-up round; ``compile``:
    variant (c) is ``fit(..., compile=True)``."""
    pyro.clear_param_store()
    made: list[CapturedStep] = []

    class Recorded(CapturedStep):  # to report which path fit's steps took
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

    train_module.CapturedStep = Recorded
    hand = HandwrittenVAE()
    hand_state = (hand, torch.optim.Adam(hand.parameters(), lr=1e-3))
    hand_fused = HandwrittenVAE()
    hand_fused_state = (hand_fused, torch.optim.Adam(hand_fused.parameters(), lr=1e-3, fused=True))
    svi_vae = make_vae()
    elbo = Trace_ELBO() if k == 1 else RenyiELBO(alpha=0, num_particles=k, vectorize_particles=True)
    svi = SVI(svi_vae.model, svi_vae.guide, pyro.optim.Adam({"lr": 1e-3}), elbo)
    fit_kwargs = {"objective": "iwae", "num_particles": k} if k > 1 else {}
    subset = x[: batch * steps]
    before = [p.detach().clone() for p in (*hand.parameters(), *svi_vae.parameters())]
    strong = StrongLoop(x, batch, k)
    floor = MatmulFloor(batch, k)
    before += [p.detach().clone() for p in strong.model.parameters()]
    times: dict[str, list[float]] = {
        "handwritten": [],
        "handwritten_fused_adam": [],
        "strong_loop": [],
        "matmul_floor": [],
        "pyro_svi": [],
        "fit_pyro_path": [],
    }
    fit_rates: list[float] = []

    def one_round(record: dict) -> None:
        fit_rates.append(record["examples_per_s"] / batch)
        batches = fixed_batches(x, batch, steps)
        times["handwritten"].append(timed(run_handwritten, hand_state, batches, k))
        times["handwritten_fused_adam"].append(timed(run_handwritten, hand_fused_state, batches, k))
        times["strong_loop"].append(timed(strong.run, steps))
        times["matmul_floor"].append(timed(floor.run, steps))
        times["pyro_svi"].append(timed(run_svi, svi, batches))
        plain = make_vae()
        history = fit(
            plain.model,
            plain.guide,
            subset,
            epochs=1,
            batch_size=batch,
            eval_examples=batch,
            progress=False,
            capture=False,
            **fit_kwargs,
        )
        times["fit_pyro_path"].append(history.last["seconds"])
        print(
            f"  round {len(fit_rates) - 1}: steps/s"
            f"  handwritten {steps / times['handwritten'][-1]:.1f}"
            f"  pyro_svi {steps / times['pyro_svi'][-1]:.1f}"
            f"  handwritten_fused_adam {steps / times['handwritten_fused_adam'][-1]:.1f}"
            f"  strong_loop {steps / times['strong_loop'][-1]:.1f}"
            f"  matmul_floor {steps / times['matmul_floor'][-1]:.1f}"
            f"  fit {fit_rates[-1]:.1f}  fit_pyro_path {steps / times['fit_pyro_path'][-1]:.1f}",
            flush=True,
        )

    vae = make_vae()
    fit(
        vae.model,
        vae.guide,
        subset,
        epochs=rounds + 1,
        batch_size=batch,
        eval_examples=batch,
        progress=False,
        callbacks=[one_round],
        compile=compile,
        **fit_kwargs,
    )
    train_module.CapturedStep = CapturedStep
    after = [p.detach() for p in (*hand.parameters(), *svi_vae.parameters())]
    after += [p.detach() for p in strong.model.parameters()]
    trained = all(not torch.equal(a, b) for a, b in zip(before, after, strict=True))

    rates = {name: [steps / t for t in ts[1:]] for name, ts in times.items()}  # drop warm-up
    rates["fit"] = fit_rates[1:]
    ref = rates["handwritten"]
    ratio = {
        f"{name}/handwritten": summary([r / a for r, a in zip(rates[name], ref, strict=True)])
        for name in ("fit", "pyro_svi", "fit_pyro_path", "handwritten_fused_adam", "strong_loop")
    }
    for name in ("fit", "strong_loop"):  # speed ratios within each round (targets: 1.10, 0.70)
        for against in ("strong_loop", "matmul_floor"):
            if name != against:
                pairs = zip(rates[name], rates[against], strict=True)
                ratio[f"{name}/{against}"] = summary([r / a for r, a in pairs])
    stepper = made[0] if made else None
    return {
        "batch_size": batch,
        "num_particles": k,
        "objective": "iwae" if k > 1 else "elbo",
        "steps_per_round": steps,
        "rounds": rounds,
        "steps_per_s": {name: summary(v) for name, v in rates.items()},
        "ratios": ratio,
        "every_variant_trained": trained,
        "fit_compile": compile,
        "fit_compiled_graphs": len(stepper.compiled) if stepper else 0,
        "fit_compile_seconds": stepper.compile_seconds if stepper else 0.0,
        "fit_compile_refused": dict(
            (str(key), why) for key, why in (stepper.compile_reasons.items() if stepper else [])
        ),
        "fit_captured_steps": stepper.num_captured_steps if stepper else 0,
        "fit_pyro_steps": stepper.num_pyro_steps if stepper else None,
        "fit_capture_refused": dict(
            (str(key), why) for key, why in (stepper.reasons.items() if stepper else [])
        ),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="counted rounds per config")
    parser.add_argument("--steps", type=int, default=50, help="training steps per round")
    parser.add_argument(
        "--configs",
        default="128,32,512,iwae5",
        help="comma-separated: a batch size, or iwaeK (batch 128, K particles)",
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--compile", action="store_true", help="variant (c) is fit(..., compile=True)"
    )
    parser.add_argument("--examples", type=int, default=20000, help="MNIST training subset")
    parser.add_argument(
        "--data-dir", default=str(ROOT.parent / "shared" / "data" / "binarized-mnist")
    )
    parser.add_argument("--out", default=None, help="results JSON (default: benchmarks/results)")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    load_start = os.getloadavg()[0]
    pyro.set_rng_seed(0)
    x = load_binarized_mnist(args.data_dir, "train").tensors[0][: args.examples]
    results = []
    for config in args.configs.split(","):
        k = int(config[4:]) if config.startswith("iwae") else 1
        batch = 128 if k > 1 else int(config)
        steps = min(args.steps, x.shape[0] // batch)
        print(f"batch {batch}, K={k}: {args.rounds} rounds of {steps} steps", flush=True)
        res = benchmark(x, batch, k, args.rounds, steps, compile=args.compile)
        results.append(res)
        for name, r in res["ratios"].items():
            print(f"  {name:26s} median {r['median']:.2f}  [{r['min']:.2f}, {r['max']:.2f}]")
        print(f"  fit: {res['fit_captured_steps']} captured steps, {res['fit_pyro_steps']} Pyro")
        if args.compile:
            print(
                f"  fit: {res['fit_compiled_graphs']} compiled graphs in "
                f"{res['fit_compile_seconds']:.1f} s, refused: {res['fit_compile_refused']}"
            )

    date = datetime.date.today().isoformat()
    out = (
        Path(args.out) if args.out else ROOT / "benchmarks" / "results" / f"throughput-{date}.json"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "date": date,
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "cpu_count": os.cpu_count(),
        "load_average_start": load_start,
        "load_average_end": os.getloadavg()[0],
        "threads": args.threads,
        "fit_compile": args.compile,
        "torch": torch.__version__,
        "pyro": pyro.__version__,
        "python": sys.version.split()[0],
        "data": f"binarized MNIST train, first {x.shape[0]} images",
        "model": "MLP 784-400-50 softplus, Bernoulli likelihood, diagonal Normal guide",
    }
    out.write_text(json.dumps({"kind": "throughput", **meta, "results": results}, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
