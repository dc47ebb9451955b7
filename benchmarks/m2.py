r"""Semi-supervised M2 on the full MNIST with 100 or 1000 labels, one run per invocation.

Runs exactly ``pyro-vae semisupervised --dataset mnist --labels N`` (training images
50,000, of which N keep their labels, the same number per class; validation 10,000;
test 10,000; dynamic binarization; MLP 500, latent 50, batch 200, Adam, alpha 50) and
writes ``benchmarks/results/m2-labels<N>.json`` with the test accuracy of
:math:`q(y \mid x)`, the epochs and the wall time. Pyro's SS-VAE tutorial anchors: about
0.93 (100 labels) and 0.95 (1000 labels); Kingma et al. (2014) report 0.880 for M2 with
100 labels. Long runs belong in the background::

    nohup python benchmarks/m2.py --labels 100 --time-budget 1800 &
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import tempfile
from pathlib import Path

import pyro
import torch

from pyro_vae.cli import main as cli

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--labels", type=int, required=True)
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--time-budget", type=float, default=1800.0, help="training seconds")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data" / "mnist"))
    parser.add_argument("--results", default=str(ROOT / "benchmarks" / "results"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        flags = [
            "--dataset", "mnist", "--data-dir", args.data_dir, "--labels", str(args.labels),
            "--epochs", str(args.epochs), "--time-budget", str(args.time_budget),
            "--seed", str(args.seed),
        ]  # fmt: skip
        if cli(["semisupervised", *flags, "--out", tmp, "--no-progress"]) != 0:
            raise SystemExit("pyro-vae semisupervised failed")
        test = json.loads((Path(tmp) / "test.json").read_text())
        records = [json.loads(line) for line in (Path(tmp) / "metrics.jsonl").open()]
    result = {
        "kind": "m2",
        "flags": [f for i, f in enumerate(flags) if i not in (2, 3)],  # not --data-dir
        **test,
        "val_accuracy_by_epoch": [r["val_accuracy"] for r in records],
        "time_budget_s": args.time_budget,
        "threads": args.threads,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "date": datetime.date.today().isoformat(),
        "torch": torch.__version__,
        "pyro": pyro.__version__,
    }
    out = Path(args.results) / f"m2-labels{args.labels}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"M2, {args.labels} labels: test accuracy {test['test_accuracy']:.4f}; wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
