r"""Every part through the CLI on the bundled MNIST subset, with one fixed short budget.

Each configuration is exactly a ``pyro-vae train`` command line (the flags below) followed
by ``pyro-vae evaluate`` on the 1,000 bundled test images: test ELBO, importance-sampled
NLL :math:`-\log p(x)` with ``--num-samples`` samples and its standard error, KL and active
units. Same budget for all: ``--epochs`` epochs (default 10) of 8,000 dynamically binarized
images, latent dim 20, MLP 784-400-20, batch 128, Adam 1e-3, seed 0. The numbers show that
each part trains and how the parts compare on a small budget; they are not converged
results (see ``benchmarks/nll.py`` for the NLL benchmark).

Writes ``benchmarks/results/parts-<date>.json``; ``benchmarks/make_table.py`` renders the
README's table from it. Usage::

    python benchmarks/parts.py [--epochs 10] [--num-samples 1000] [--only vamp-prior iaf-guide]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

from pyro_vae.cli import main as cli

ROOT = Path(__file__).resolve().parents[1]

#: name -> extra ``pyro-vae train`` flags (on top of the shared budget).
CONFIGS: dict[str, list[str]] = {
    "standard": [],
    "meanfield": ["--objective", "meanfield"],
    "learned-prior": ["--prior", "learned"],
    "mog-prior": ["--prior", "mog", "--components", "10"],
    "vamp-prior": ["--prior", "vamp", "--components", "100"],
    "flow-prior": ["--prior", "flow", "--flow-layers", "2"],
    "sphere": ["--prior", "sphere", "--guide", "powerspherical"],
    "fullcov-guide": ["--guide", "fullcov"],
    "iaf-guide": ["--guide", "iaf", "--flow-layers", "2"],
    "iwae-k5": ["--objective", "iwae", "--num-particles", "5"],
    "beta-0.5": ["--beta", "0.5"],
    "warmup": ["--warmup-steps", "2000"],
    "free-bits": ["--objective", "meanfield", "--free-bits", "0.1"],
    "score-function": ["--score-function"],
    "conditional": ["--conditional"],
    "conv": ["--network", "conv"],
    "cbernoulli": ["--likelihood", "cbernoulli"],
    "normal-learned-scale": ["--likelihood", "normal", "--learn-scale"],
    "dlogistic": ["--likelihood", "dlogistic"],
}


def run_one(name: str, flags: list[str], epochs: int, num_samples: int, work: Path) -> dict:
    out = work / name
    train = ["train", "--epochs", str(epochs), "--no-progress", "--out", str(out), *flags]
    started = time.perf_counter()
    if cli(train) != 0:
        raise SystemExit(f"{name}: pyro-vae {' '.join(train)} failed")
    train_seconds = time.perf_counter() - started
    if cli(["evaluate", str(out), "--num-samples", str(num_samples)]) != 0:
        raise SystemExit(f"{name}: pyro-vae evaluate failed")
    report = json.loads((out / "evaluation.json").read_text())
    return {
        "name": name,
        "flags": flags,
        "train_seconds": train_seconds,
        **{k: report[k] for k in ("elbo", "nll", "nll_stderr", "kl", "active_units")},
        "latent_dim": report["latent_dim"],
        "bits_per_dim": report.get("bits_per_dim"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--num-samples", type=int, default=1000)
    parser.add_argument("--only", nargs="+", choices=sorted(CONFIGS), default=None)
    parser.add_argument("--results", default=str(ROOT / "benchmarks" / "results"))
    args = parser.parse_args(argv)
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    names = args.only or list(CONFIGS)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            row = run_one(name, CONFIGS[name], args.epochs, args.num_samples, Path(tmp))
            rows.append(row)
            print(
                f"{name}: test ELBO {row['elbo']:.2f}, NLL {row['nll']:.2f} ± "
                f"{row['nll_stderr']:.2f}, {row['train_seconds']:.0f} s",
                flush=True,
            )
    date = datetime.date.today().isoformat()
    result = {
        "kind": "parts",
        "date": date,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "epochs": args.epochs,
        "num_samples": args.num_samples,
        "data": "bundled MNIST: 8,000 train (dynamic binarization), 1,000 test",
        "rows": rows,
    }
    path = Path(args.results) / f"parts-{date}.json"
    if args.only and path.exists():  # a partial rerun replaces its rows in today's file
        kept = [r for r in json.loads(path.read_text())["rows"] if r["name"] not in names]
        rows = sorted(kept + rows, key=lambda r: list(CONFIGS).index(r["name"]))
        result["rows"] = rows
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
