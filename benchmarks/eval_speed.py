r"""Importance-sampling evaluation speed: examples x K per second and peak RSS.

Evaluates :func:`pyro_vae.check.loglik.log_likelihood` of a trained run (``pyro-vae train``
on binarized MNIST; the default model is the NLL benchmark's 784-400-50 MLP VAE) on the
first ``--examples`` test images with ``--num-samples`` importance samples, and reports
the throughput in examples x K per second, the wall time extrapolated to the full 10,000
test images and the peak RSS. The matmul-bound time is measured too: the same number of
matrix products the estimator cannot avoid (``torch.addmm`` on tensors of the model's
shapes: the decoder for every sample, the encoder once per example) with nothing else, so
the ratio says how close the evaluator is to the hardware bound.
Writes ``benchmarks/results/eval-speed-<date>.json``. Usage::

    pyro-vae train --dataset binarized-mnist --data-dir ../shared/data/binarized-mnist \
        --latent-dim 50 --epochs 5 --out runs/eval-speed
    python benchmarks/eval_speed.py runs/eval-speed [--examples 2000]
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

from pyro_vae import binarize, load_binarized_mnist
from pyro_vae.check.loglik import log_likelihood
from pyro_vae.runs import load_run

ROOT = Path(__file__).resolve().parents[1]


def _timed_linears(layers: list[torch.nn.Linear], rows: int, chunk: int) -> float:
    inputs = [torch.randn(min(chunk, rows), m.in_features) for m in layers]
    with torch.no_grad():
        for m, a in zip(layers, inputs, strict=True):  # warm-up
            torch.addmm(m.bias, a, m.weight.T)
        start = time.perf_counter()
        for _ in range(max(1, rows // chunk)):
            for m, a in zip(layers, inputs, strict=True):
                torch.addmm(m.bias, a, m.weight.T)
        return time.perf_counter() - start


def matmul_bound_seconds(vae: torch.nn.Module, examples: int, num_samples: int) -> float:
    """Time of the Linear layers alone, as little as the estimator needs: the decoder on
    every one of the ``examples * num_samples`` samples, the encoder once per example."""

    def linears(part: torch.nn.Module) -> list[torch.nn.Linear]:
        return [m for m in part.modules() if isinstance(m, torch.nn.Linear)]

    decoder = _timed_linears(linears(vae.likelihood), examples * num_samples, 10_000)
    return decoder + _timed_linears(linears(vae.posterior), examples, 100)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run_dir")
    parser.add_argument("--examples", type=int, default=2000)
    parser.add_argument("--num-samples", type=int, default=5000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--data-dir", default=str(ROOT.parent / "shared" / "data" / "binarized-mnist")
    )
    parser.add_argument("--out", default=None)
    parser.add_argument("--label", default="current", help="which code was measured")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    run = load_run(args.run_dir)
    vae, config = run.module, run.config
    x = load_binarized_mnist(args.data_dir, "test").tensors[0][: args.examples]
    x = binarize(x, seed=0)  # already binary: a no-op that checks it
    pyro.set_rng_seed(0)
    start = time.perf_counter()
    ll = log_likelihood(vae.model, vae.guide, x, num_samples=args.num_samples)
    seconds = time.perf_counter() - start
    samples = args.examples * args.num_samples
    bound = matmul_bound_seconds(vae, args.examples, args.num_samples)
    result = {
        "kind": "eval-speed",
        "label": args.label,
        "model": {k: config[k] for k in ("latent_dim", "hidden_dims", "prior", "guide")},
        "examples": args.examples,
        "num_samples": args.num_samples,
        "seconds": seconds,
        "examples_k_per_s": samples / seconds,
        "full_test_set_minutes": seconds * 10_000 / args.examples / 60,
        "matmul_bound_seconds": bound,
        "ratio_to_matmul_bound": seconds / bound,
        "nll": -ll.mean,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "threads": args.threads,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "date": datetime.date.today().isoformat(),
        "torch": torch.__version__,
    }
    date = result["date"]
    out = (
        Path(args.out) if args.out else ROOT / "benchmarks" / "results" / f"eval-speed-{date}.json"
    )
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"{samples / seconds:,.0f} examples x K per second ({seconds:.1f} s for "
        f"{args.examples} x {args.num_samples}; full test set {result['full_test_set_minutes']:.1f}"
        f" min); matmul-bound {bound:.1f} s, ratio {seconds / bound:.2f}; peak RSS "
        f"{result['peak_rss_mb']:.0f} MB; wrote {out}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
