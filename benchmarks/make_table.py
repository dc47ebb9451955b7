r"""Render the README's benchmark tables from ``benchmarks/results/*.json``.

Nothing is typed by hand: the NLL table lists every ``nll-*.json`` beside the published
anchors (same data and protocol: static binarized MNIST, single stochastic layer), and the
throughput table lists the newest ``throughput-*.json``. Prints markdown to stdout.

Usage::

    python benchmarks/make_table.py [--results benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: Published test NLLs (nats) on static binarized MNIST.
ANCHORS = [
    ("VAE, IWAE paper (Burda et al., 2016), k=1", 88.71),
    ("IWAE k=50, IWAE paper", 87.10),
    ("VampPrior (Tomczak & Welling, 2018)", 85.57),
    ("VAE, pythae rerun (Chadebec et al., 2022)", 89.78),
]


def nll_table(results: list[dict]) -> str:
    lines = [
        "| model | test NLL (nats) | K | training | source |",
        "|---|---|---|---|---|",
    ]
    for r in sorted(results, key=lambda r: r["test_nll"]):
        lines.append(
            f"| pyro-vae `{r['config']}` | {r['test_nll']:.2f} ± {r['test_nll_stderr']:.2f} | "
            f"{r['num_samples']} | {r['epochs_trained']} epochs, {r['train_seconds'] / 60:.0f} "
            f"min, {r['threads']} threads | this repo, {r['date']} "
            f"({r['test_examples']} test images) |"
        )
    for name, value in ANCHORS:
        lines.append(f"| {name} | {value:.2f} | | | published |")
    return "\n".join(lines)


def throughput_table(result: dict) -> str:
    lines = [
        f"Date {result['date']}, {result['threads']} thread(s), torch {result['torch']}, "
        f"pyro {result['pyro']}; {result['data']}. Ratios to the hand-written PyTorch step, "
        "median [min, max] over interleaved rounds.",
        "",
        "| batch | objective | fit / hand-written | Pyro SVI / hand-written | "
        "fit, Pyro path / hand-written | hand-written, fused Adam / hand-written | "
        "hand-written steps/s |",
        "|---|---|---|---|---|---|---|",
    ]

    def cell(r: dict, name: str) -> str:
        v = r["ratios"].get(f"{name}/handwritten")
        return f"{v['median']:.2f} [{v['min']:.2f}, {v['max']:.2f}]" if v else "–"

    for r in result["results"]:
        objective = r["objective"] + (f" K={r['num_particles']}" if r["num_particles"] > 1 else "")
        lines.append(
            f"| {r['batch_size']} | {objective} | {cell(r, 'fit')} | {cell(r, 'pyro_svi')} | "
            f"{cell(r, 'fit_pyro_path')} | {cell(r, 'handwritten_fused_adam')} | "
            f"{r['steps_per_s']['handwritten']['median']:.1f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--results", default=str(ROOT / "benchmarks" / "results"))
    args = parser.parse_args(argv)
    files = sorted(Path(args.results).glob("*.json"))
    loaded = [(f, json.loads(f.read_text())) for f in files]
    nll = [r for _, r in loaded if r.get("kind") == "nll"]
    throughput = [(f, r) for f, r in loaded if r.get("kind") == "throughput"]
    print("### Test NLL, binarized MNIST\n")
    print(nll_table(nll))
    for f, r in throughput:
        print(f"\n### Training throughput ({f.name})\n")
        print(throughput_table(r))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
