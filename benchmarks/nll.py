r"""Test negative log-likelihood on Larochelle's binarized MNIST, one configuration per run.

Protocol (as in the IWAE and VampPrior papers): train on the 50,000 training images with
the 10,000 validation images for early stopping (the parameters of the epoch with the best
validation ELBO are kept), then estimate :math:`-\log p(x)` on the 10,000 test images by
importance sampling with :math:`K = 5000` samples (:func:`pyro_vae.check.loglik.log_likelihood`),
with its Monte Carlo standard error. Single stochastic layer, MLP 784-400-50 networks.

Configurations (``--config``):

- ``vae``: standard normal prior, diagonal Gaussian guide, ELBO;
- ``vamp``: VampPrior with 500 pseudo-inputs;
- ``iaf``: IAF guide with 2 autoregressive layers;
- ``iwae``: the IWAE bound with K=5 particles;
- ``best``: VampPrior trained with the IWAE bound (K=5).

Training stops at ``--time-budget`` seconds (checked after each epoch), at ``--epochs``, or
after ``--patience`` epochs without a better validation ELBO; ``fit``'s early stopping
(:class:`~pyro_vae.train.schedule.EarlyStopping`) then puts the parameters of the best
epoch back. The result goes to
``benchmarks/results/nll-<config>.json``. Long runs belong in the background::

    nohup python benchmarks/nll.py --config vae --time-budget 7200 &
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import time
from pathlib import Path

import pyro
import torch

from pyro_vae import fit, load_binarized_mnist
from pyro_vae.check.loglik import log_likelihood
from pyro_vae.runs import RunConfig, build_model
from pyro_vae.train.schedule import EarlyStopping

ROOT = Path(__file__).resolve().parents[1]

CONFIGS: dict[str, dict] = {
    "vae": {"prior": "normal", "guide": "diagonal", "objective": "elbo", "particles": 1},
    "vamp": {"prior": "vamp", "components": 500, "objective": "elbo", "particles": 1},
    "iaf": {"guide": "iaf", "flow_layers": 2, "objective": "elbo", "particles": 1},
    "iwae": {"objective": "iwae", "particles": 5},
    "best": {"prior": "vamp", "components": 500, "objective": "iwae", "particles": 5},
}


def model_config(name: str) -> RunConfig:
    base = {
        "x_shape": [1, 28, 28],
        "latent_dim": 50,
        "hidden_dims": [400],
        "likelihood": "bernoulli",
        "network": "mlp",
        "prior": "normal",
        "guide": "diagonal",
    }
    changes = {k: v for k, v in CONFIGS[name].items() if k not in ("objective", "particles")}
    return RunConfig().replace(**{**base, **changes}).validate()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", choices=sorted(CONFIGS), required=True)
    parser.add_argument("--time-budget", type=float, default=7200.0, help="training seconds")
    parser.add_argument("--epochs", type=int, default=10_000)
    parser.add_argument("--patience", type=int, default=50)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--num-samples", type=int, default=5000, help="K of the IS estimate")
    parser.add_argument("--test-examples", type=int, default=10_000)
    parser.add_argument("--train-examples", type=int, default=50_000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--data-dir", default=str(ROOT.parent / "shared" / "data" / "binarized-mnist")
    )
    parser.add_argument("--out", default=None)
    parser.add_argument("--save", default=None, help="also save the kept state_dict here")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    pyro.set_rng_seed(args.seed)
    train = load_binarized_mnist(args.data_dir, "train").tensors[0][: args.train_examples]
    valid = load_binarized_mnist(args.data_dir, "valid").tensors[0]
    test = load_binarized_mnist(args.data_dir, "test").tensors[0][: args.test_examples]
    spec = CONFIGS[args.config]
    config = model_config(args.config)
    vae = build_model(config)

    early_stopping = EarlyStopping(patience=args.patience)
    start = time.perf_counter()

    def out_of_time(record: dict) -> bool:
        return time.perf_counter() - start >= args.time_budget

    history = fit(
        vae.model,
        vae.guide,
        train,
        objective=spec["objective"],
        num_particles=spec["particles"],
        lr=args.lr,
        epochs=args.epochs,
        batch_size=args.batch_size,
        validation_data=valid,
        seed=args.seed,
        callbacks=[out_of_time],
        early_stopping=early_stopping,  # puts the best epoch's parameters back at the end
        progress=False,
    )
    train_seconds = time.perf_counter() - start
    if args.save:
        torch.save(vae.state_dict(), args.save)
    t0 = time.perf_counter()
    ll = log_likelihood(vae.model, vae.guide, test, num_samples=args.num_samples)
    eval_seconds = time.perf_counter() - t0
    result = {
        "kind": "nll",
        "config": args.config,
        "model": {
            **config.to_dict(),
            "objective": spec["objective"],
            "num_particles": spec["particles"],
        },
        "test_nll": -ll.mean,
        "test_nll_stderr": ll.mean_stderr,
        "num_samples": args.num_samples,
        "test_examples": test.shape[0],
        "train_examples": train.shape[0],
        "epochs_trained": len(history),
        "best_epoch": early_stopping.best_epoch,
        "best_val_elbo": early_stopping.best,
        "train_seconds": train_seconds,
        "time_budget_s": args.time_budget,
        "eval_seconds": eval_seconds,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "threads": args.threads,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "date": datetime.date.today().isoformat(),
        "torch": torch.__version__,
        "pyro": pyro.__version__,
    }
    out = (
        Path(args.out) if args.out else ROOT / "benchmarks" / "results" / f"nll-{args.config}.json"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(
        f"{args.config}: test NLL {result['test_nll']:.2f} ± {result['test_nll_stderr']:.2f} "
        f"(K={args.num_samples}, {test.shape[0]} images) after {len(history)} epochs, "
        f"{train_seconds:.0f} s; evaluation {eval_seconds:.0f} s, peak RSS "
        f"{result['peak_rss_mb']:.0f} MB; wrote {out}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
