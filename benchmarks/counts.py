r"""The count likelihoods through the CLI on the bundled UCI digits (64 counts 0..16 each).

Each configuration is a ``pyro-vae train --dataset digits`` command line followed by
``pyro-vae evaluate`` on the 180 test examples: test ELBO, importance-sampled NLL
:math:`-\log p(x)` (a probability mass, so comparable across the discrete likelihoods) and
its standard error, nats per feature, KL and active units. The ``--library-size`` rows
score :math:`-\log p(x \mid \ell)`, conditional on each example's total count, which does
not compare with the others. Same budget for all:
``--epochs`` epochs of the 1,437 training examples, latent dim 8, MLP 64-128-8, batch 64,
Adam 1e-3, seed 0.

Writes ``benchmarks/results/counts-<date>.json``; ``benchmarks/make_table.py`` renders the
README's table from it. Usage::

    OMP_NUM_THREADS=1 python benchmarks/counts.py [--epochs 100] [--num-samples 1000]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import tempfile
from pathlib import Path

import parts  # benchmarks/parts.py: the same train-then-evaluate row
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = ["--dataset", "digits", "--latent-dim", "8", "--hidden-dims", "128", "--batch-size"]
SHARED += ["64"]

#: name -> extra ``pyro-vae train`` flags (on top of the shared budget). The rows with
#: ``--library-size`` report -log p(x | l), conditional on each example's total count l:
#: their NLL is not comparable with the other rows' -log p(x).
CONFIGS: dict[str, list[str]] = {
    "binomial-16": ["--likelihood", "binomial", "--trials", "16"],
    "poisson": ["--likelihood", "poisson"],
    "negbin": ["--likelihood", "negbin"],
    "zinb": ["--likelihood", "zinb"],
    "poisson, library size (NLL given l)": ["--likelihood", "poisson", "--library-size"],
    "negbin, library size (NLL given l)": ["--likelihood", "negbin", "--library-size"],
    "zinb, library size (NLL given l)": ["--likelihood", "zinb", "--library-size"],
}
LIBRARY_NOTE = (
    "the library-size rows score -log p(x | l), conditional on each example's total count "
    "l (an observed offset), so their NLL does not compare with the other rows' -log p(x)"
)


def run_one(name: str, flags: list[str], epochs: int, num_samples: int, work: Path) -> dict:
    """``parts.py``'s train-then-evaluate row on the digits, with nats per feature."""
    folder = name.split(",")[0] + ("-library" if "--library-size" in flags else "")
    row = parts.run_one(folder, [*SHARED, *flags], epochs, num_samples, work)
    return {**row, "name": name, "flags": flags, "nats_per_feature": row["nll"] / 64}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--num-samples", type=int, default=1000)
    parser.add_argument("--results", default=str(ROOT / "benchmarks" / "results"))
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--note", default="", help="a note on the conditions of the run")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, flags in CONFIGS.items():
            rows.append(run_one(name, flags, args.epochs, args.num_samples, Path(tmp)))
            r = rows[-1]
            print(f"{name}: NLL {r['nll']:.2f} ± {r['nll_stderr']:.2f}", flush=True)
    date = datetime.date.today().isoformat()
    result = {
        "kind": "counts",
        "date": date,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "epochs": args.epochs,
        "num_samples": args.num_samples,
        "data": "bundled UCI digits: 1,437 train, 180 test, 64 counts 0..16 each",
        "note": "; ".join(n for n in (args.note, LIBRARY_NOTE) if n),
        "rows": rows,
    }
    path = Path(args.results) / f"counts-{date}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
