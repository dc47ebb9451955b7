r"""Training time and memory as the data set doubles: N = 12.5k, 25k, 50k binarized MNIST.

Each size runs in its own process (so each peak is its own): the training images are loaded
and held as one tensor, then ``pyro_vae.fit`` trains the MLP 784-400-50 Bernoulli VAE with
its defaults (batch 128, Adam 1e-3) for ``--epochs`` epochs. Reported per size: the epoch
time that fit records (its training loop only, mean over the epochs after the first), the
resident set size before training and its peak during ``fit`` (sampled every 5 ms from
``/proc/self/status``), and the least-squares slope of epoch time against N (seconds per
1,000 examples) with the ratio of the largest to the smallest time per example, which is 1
for perfectly linear growth.

Usage::

    python benchmarks/scale.py                 # N = 12500, 25000, 50000
    python benchmarks/scale.py --sizes 12500,25000 --epochs 2
"""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def child(n: int, epochs: int, threads: int, data_dir: str) -> dict:
    import pyro
    import torch

    from pyro_vae import (
        VAE,
        BernoulliLikelihood,
        DiagonalNormalGuide,
        StandardNormalPrior,
        fit,
        load_binarized_mnist,
    )

    torch.set_num_threads(threads)
    x = load_binarized_mnist(data_dir, "train").tensors[0][:n].clone()
    if x.shape[0] < n:
        raise SystemExit(f"only {x.shape[0]} training images, {n} asked")
    pyro.set_rng_seed(0)
    vae = VAE(
        StandardNormalPrior(50),
        BernoulliLikelihood.mlp(50, (1, 28, 28), (400,)),
        DiagonalNormalGuide.mlp((1, 28, 28), 50, (400,)),
    )
    import gc

    gc.collect()
    before = rss_mib()
    peak = [before]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], rss_mib())
            time.sleep(0.005)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    history = fit(vae.model, vae.guide, x, epochs=epochs, progress=False)
    done.set()
    sampler.join()
    seconds = history["seconds"]
    counted = seconds[1:] if len(seconds) > 1 else seconds
    return {
        "n": n,
        "epochs": epochs,
        "epoch_seconds": seconds,
        "epoch_seconds_mean": sum(counted) / len(counted),
        "rss_before_fit_mib": before,
        "peak_rss_during_fit_mib": max(peak[0], rss_mib()),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="12500,25000,50000")
    parser.add_argument("--epochs", type=int, default=2, help="the first one is not counted")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--data-dir", default=str(ROOT.parent / "shared" / "data" / "binarized-mnist")
    )
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    if args.child is not None:
        print(json.dumps(child(args.child, args.epochs, args.threads, args.data_dir)))
        return 0

    rows = []
    for n in (int(s) for s in args.sizes.split(",")):
        cmd = [sys.executable, __file__, "--child", str(n), "--epochs", str(args.epochs)]
        cmd += ["--threads", str(args.threads), "--data-dir", args.data_dir]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        row = json.loads(out.strip().splitlines()[-1])
        rows.append(row)
        print(
            f"N={n:6d}  epoch {row['epoch_seconds_mean']:.2f} s  "
            f"RSS {row['rss_before_fit_mib']:.0f} MiB before fit, "
            f"peak {row['peak_rss_during_fit_mib']:.0f} MiB during fit",
            flush=True,
        )
    ns = [r["n"] for r in rows]
    ts = [r["epoch_seconds_mean"] for r in rows]
    mean_n, mean_t = sum(ns) / len(ns), sum(ts) / len(ts)
    var = sum((n - mean_n) ** 2 for n in ns)
    slope = sum((n - mean_n) * (t - mean_t) for n, t in zip(ns, ts, strict=True)) / var
    per_example = [t / n for n, t in zip(ns, ts, strict=True)]
    growth = {
        "seconds_per_1000_examples": 1000 * slope,
        "time_per_example_max_over_min": max(per_example) / min(per_example),
        "peak_rss_growth_mib": rows[-1]["peak_rss_during_fit_mib"]
        - rows[0]["peak_rss_during_fit_mib"],
        "fit_rss_overhead_mib": [
            r["peak_rss_during_fit_mib"] - r["rss_before_fit_mib"] for r in rows
        ],
    }
    print(
        f"slope {growth['seconds_per_1000_examples']:.3f} s per 1000 examples; time per example "
        f"max/min {growth['time_per_example_max_over_min']:.2f}; fit's RSS overhead "
        f"{[round(v) for v in growth['fit_rss_overhead_mib']]} MiB"
    )
    date = datetime.date.today().isoformat()
    out = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / f"scale-{date}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {"kind": "scale", "date": date, "threads": args.threads, "rows": rows, **growth}
    out.write_text(json.dumps(payload, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
