r"""Render the README's benchmark tables from ``benchmarks/results/*.json``.

Nothing is typed by hand: the NLL table lists every ``nll-*.json`` beside the published
anchors (same data and protocol: static binarized MNIST, single stochastic layer), and the
throughput table lists the newest ``throughput-*.json``. Prints markdown to stdout.

Usage::

    python benchmarks/make_table.py [--results benchmarks/results]   # print
    python benchmarks/make_table.py --write-readme   # rewrite README.md's generated blocks
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
        "| model | test NLL (nats) | K | training | evaluation | source |",
        "|---|---|---|---|---|---|",
    ]
    for r in sorted(results, key=lambda r: r["test_nll"]):
        evaluation = f"{r['eval_seconds'] / 60:.1f} min" if "eval_seconds" in r else ""
        if "peak_rss_mb" in r:
            evaluation += f", peak RSS {r['peak_rss_mb'] / 1024:.2f} GB"
        lines.append(
            f"| pyro-vae `{r['config']}` | {r['test_nll']:.2f} ± {r['test_nll_stderr']:.3f} | "
            f"{r['num_samples']} | {r['epochs_trained']} epochs (best {r['best_epoch']}), "
            f"{r['train_seconds'] / 60:.0f} min, {r['threads']} thread(s) | {evaluation} | "
            f"this repo, {r['date']}, {r['machine']} ({r['test_examples']} test images) |"
        )
    for name, value in ANCHORS:
        lines.append(f"| {name} | {value:.2f} | | | | published |")
    return "\n".join(lines)


def papers_table(results: list[dict]) -> str:
    """The published protocols (``benchmarks/papers.py``): finished runs with their test NLL,
    runs still training with their learning curve so far."""
    lines = [
        "| protocol | status | epochs (best) | best validation ELBO | test NLL (nats) | "
        "published | target | curve: validation ELBO at epochs 1, 10, 25, 50, 100, last |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(results, key=lambda r: r["protocol"]):
        curve = {c["epoch"]: c["val_elbo"] for c in r["curve"]}
        marks = [e for e in (1, 10, 25, 50, 100) if e in curve and e < r["epochs"]]
        points = ", ".join(f"{e}: {curve[e]:.1f}" for e in [*marks, r["epochs"]] if e in curve)
        nll = ""
        if "evaluation" in r:
            ev = r["evaluation"]
            nll = f"{ev['nll']:.2f} ± {ev['nll_stderr']:.3f}"
        best = "" if r["best_val_elbo"] is None else f"{r['best_val_elbo']:.2f}"
        lines.append(
            f"| `{r['protocol']}` | {r['status']} | {r['epochs']} ({r['best_epoch']}) | {best} | "
            f"{nll} | {r['published_nll']:.2f} | ≤ {r['target_nll']} | {points} |"
        )
    return "\n".join(lines)


def throughput_table(result: dict) -> str:
    """One throughput results file; the strong-loop and matmul-floor columns where the file
    has them (runs since those references were added)."""
    fit = "`fit(..., compile=True)`" if result.get("fit_compile") else "`fit`'s default"
    load = (
        f", load average {result['load_average_start']:.1f} at the start and "
        f"{result['load_average_end']:.1f} at the end"
        if "load_average_start" in result
        else ""
    )
    floor = any("fit/matmul_floor" in r["ratios"] for r in result["results"])
    references = (
        ", to the strong plain loop and to the matmul floor (the step's matrix products alone)"
        if floor
        else ""
    )
    header = (
        "| batch | objective | fit / hand-written | Pyro SVI / hand-written | "
        "fit, Pyro path / hand-written | hand-written, fused Adam / hand-written | "
    )
    if floor:
        header += "fit / strong loop | fit / matmul floor | strong loop / matmul floor | "
    lines = [
        f"Date {result['date']}, {result['threads']} thread(s){load}, torch {result['torch']}, "
        f"pyro {result['pyro']}; {result['data']}; fit is {fit}. Speed ratios to the "
        f"hand-written PyTorch step{references}, median [min, max] over interleaved rounds.",
        "",
        header + "hand-written steps/s |",
        "|---|---|---|---|---|---|" + ("---|" * 3 if floor else "") + "---|",
    ]

    def cell(r: dict, name: str, against: str = "handwritten") -> str:
        v = r["ratios"].get(f"{name}/{against}")
        return f"{v['median']:.2f} [{v['min']:.2f}, {v['max']:.2f}]" if v else "–"

    for r in result["results"]:
        objective = r["objective"] + (f" K={r['num_particles']}" if r["num_particles"] > 1 else "")
        row = (
            f"| {r['batch_size']} | {objective} | {cell(r, 'fit')} | {cell(r, 'pyro_svi')} | "
            f"{cell(r, 'fit_pyro_path')} | {cell(r, 'handwritten_fused_adam')} | "
        )
        if floor:
            row += (
                f"{cell(r, 'fit', 'strong_loop')} | {cell(r, 'fit', 'matmul_floor')} | "
                f"{cell(r, 'strong_loop', 'matmul_floor')} | "
            )
        lines.append(row + f"{r['steps_per_s']['handwritten']['median']:.1f} |")
    return "\n".join(lines)


def parts_table(result: dict) -> str:
    lines = [
        f"Date {result['date']}, {result['machine']}, {result['threads']} thread(s), torch "
        f"{result['torch']}; {result['data']}; {result['epochs']} epochs each, "
        f"IS NLL with K={result['num_samples']}.",
        "",
        "| configuration | `pyro-vae train` flags | test ELBO | test NLL (nats) | KL | "
        "active units | train s |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        flags = " ".join(r["flags"]) or "(defaults)"
        lines.append(
            f"| {r['name']} | `{flags}` | {r['elbo']:.2f} | {r['nll']:.2f} ± "
            f"{r['nll_stderr']:.2f} | {r['kl']:.2f} | {r['active_units']} / {r['latent_dim']} | "
            f"{r['train_seconds']:.0f} |"
        )
    return "\n".join(lines)


def counts_table(result: dict) -> str:
    lines = [
        f"Date {result['date']}, {result['machine']}, {result['threads']} thread(s), torch "
        f"{result['torch']}; {result['data']}; {result['epochs']} epochs each, "
        f"IS NLL with K={result['num_samples']}."
        + (f" Note: {result['note']}." if result.get("note") else ""),
        "",
        "| likelihood | `pyro-vae train --dataset digits` flags | test ELBO | test NLL (nats) | "
        "nats per feature | KL | active units | train s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['name']} | `{' '.join(r['flags'])}` | {r['elbo']:.2f} | {r['nll']:.2f} ± "
            f"{r['nll_stderr']:.2f} | {r['nats_per_feature']:.3f} | {r['kl']:.2f} | "
            f"{r['active_units']} / {r['latent_dim']} | {r['train_seconds']:.0f} |"
        )
    return "\n".join(lines)


#: Published M2 test accuracies on MNIST (labels -> accuracy).
M2_ANCHORS = [
    ("M2, Kingma et al. (2014)", 100, 0.880),
    ("SS-VAE tutorial, Pyro (anchor of issue 3)", 100, 0.93),
    ("SS-VAE tutorial, Pyro (anchor of issue 3)", 1000, 0.95),
]


def m2_table(results: list[dict]) -> str:
    lines = [
        "| model | labels | test accuracy | training | source |",
        "|---|---|---|---|---|",
    ]
    for r in sorted(results, key=lambda r: (r["labels"], r.get("recipe", "default"))):
        model = "pyro-vae `semisupervised`"
        if r.get("recipe") == "pyro":
            model += " at Pyro's SS-VAE recipe (`--recipe pyro`: its schedule, lr, β1, α)"
        lines.append(
            f"| {model} | {r['labels']} | {r['test_accuracy']:.4f} | "
            f"{r['epochs']} epochs, {r['wall_seconds'] / 60:.0f} min, {r['threads']} "
            f"thread(s) | this repo, {r['date']}, {r['machine']} ({r['num_test']} test "
            "images) |"
        )
    for name, labels, acc in M2_ANCHORS:
        lines.append(f"| {name} | {labels} | {acc:.3f} | | published |")
    return "\n".join(lines)


def eval_speed_table(results: list[dict]) -> str:
    lines = [
        "| code | examples × K per s | full test set (10,000 × 5000) | ratio to matmul-bound "
        "| peak RSS | date, machine, threads |",
        "|---|---|---|---|---|---|",
    ]
    for r in sorted(results, key=lambda r: r["examples_k_per_s"]):
        lines.append(
            f"| {r['label']} | {r['examples_k_per_s']:,.0f} | "
            f"{r['full_test_set_minutes']:.1f} min | {r['ratio_to_matmul_bound']:.2f} | "
            f"{r['peak_rss_mb'] / 1024:.2f} GB | {r['date']}, {r['machine']}, {r['threads']} |"
        )
    return "\n".join(lines)


def scale_table(result: dict) -> str:
    lines = [
        f"Date {result['date']}, {result['threads']} thread(s); slope "
        f"{result['seconds_per_1000_examples']:.2f} s per 1,000 examples, largest / smallest "
        f"time per example {result['time_per_example_max_over_min']:.2f}, peak RSS growth "
        f"{result['peak_rss_growth_mib']:.0f} MiB from the smallest to the largest N.",
        "",
        "| N | epoch s | peak RSS during fit (MiB) |",
        "|---|---|---|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['n']} | {r['epoch_seconds_mean']:.1f} | {r['peak_rss_during_fit_mib']:.0f} |"
        )
    return "\n".join(lines)


def _budget_label(seconds: float) -> str:
    return f"{seconds / 60:g} min" if seconds >= 60 else f"{seconds:g} s"


def _spread_cell(s: dict) -> str:
    return f"{s['median']:.1f} [{s['q1']:.1f}, {s['q3']:.1f}]" if s["n"] else "–"


def _rate_cell(rate: float | None) -> str:
    return f"{rate:.0f}" if rate else "–"


def peers_table(result: dict) -> str:
    """pyro-vae beside pythae (``benchmarks/peers.py``): epoch time and NLL at equal budgets."""
    names = {
        "pyro-vae": f"pyro-vae {result['pyro_vae']} `fit`",
        "pythae": f"pythae {result['pythae']} `BaseTrainer`",
    }
    budgets = result["budgets"]
    ratio = result["ratio_pythae_over_pyro_vae"]
    lines = [
        f"Date {result['date']}, {result['machine']}, {result['threads']} thread, load "
        f"average {result['load_average_start']:.1f} at the start and "
        f"{result['load_average_end']:.1f} at the end of training; torch {result['torch']}, "
        f"pyro {result['pyro']}. {result['data']}. {result['architecture']}; "
        f"{result['objective']}; batch {result['batch_size']}, Adam lr {result['lr']:g}, "
        f"fused on both. Epochs alternate between the two trainers; the NLL is "
        f"`pyro_vae.check.loglik.log_likelihood` with K = {result['num_samples']} for both "
        "models, ± its Monte Carlo standard error; the CPU time is the process's, in which "
        "one trainer runs at a time.",
        "",
        "| library | epoch s, median [q1, q3] | CPU s per epoch | first epoch s | examples/s | "
        + " | ".join(f"test NLL after {_budget_label(b['seconds'])} (epochs)" for b in budgets)
        + " |",
        "|---|---|---|---|---|" + "---|" * len(budgets),
    ]
    for key, name in names.items():
        side = result["sides"][key]
        t, cpu = side["epoch_seconds_after_first"], side["epoch_cpu_seconds_after_first"]
        cells = [
            f"{b[key]['nll']:.2f} ± {b[key]['nll_stderr']:.2f} ({b[key]['epochs']})"
            for b in budgets
        ]
        lines.append(
            f"| {name} | {_spread_cell(t)} | {_spread_cell(cpu)} | "
            f"{side['first_epoch_seconds']:.1f} | {_rate_cell(side['examples_per_s_median'])} | "
            + " | ".join(cells)
            + " |"
        )
    lines.append("")
    for what, r in (("Wall time", ratio), ("CPU time", result["cpu_ratio_pythae_over_pyro_vae"])):
        lines.append(
            f"{what} per epoch, pythae / pyro-vae: {r['median']:.2f} (95% interval "
            f"{r['ci95'][0]:.2f}–{r['ci95'][1]:.2f}, range {r['min']:.2f}–{r['max']:.2f}) "
            f"over {r['rounds']} paired rounds after the first epoch."
            if r["rounds"]
            else f"{what} per epoch, pythae / pyro-vae: no paired rounds after the first epoch."
        )
    return "\n".join(lines)


def render(results_dir: Path) -> dict[str, str]:
    """The generated blocks of the README: ``parts``, ``counts``, ``peers`` and
    ``benchmarks``."""
    loaded = [(f, json.loads(f.read_text())) for f in sorted(results_dir.glob("*.json"))]

    def newest(kind: str) -> tuple[Path, dict] | None:
        found = [(f, r) for f, r in loaded if r.get("kind") == kind]
        return max(found, key=lambda fr: fr[1]["date"]) if found else None

    blocks = {"parts": "", "counts": "", "peers": "", "benchmarks": ""}
    counts = newest("counts")
    if counts is not None:
        blocks["counts"] = f"Results file `{counts[0].name}`.\n\n" + counts_table(counts[1])
    parts = newest("parts")
    if parts is not None:
        blocks["parts"] = f"Results file `{parts[0].name}`.\n\n" + parts_table(parts[1])
    peers = newest("peers")
    if peers is not None:
        blocks["peers"] = f"Results file `{peers[0].name}`.\n\n" + peers_table(peers[1])
    out = [
        "### Test NLL, binarized MNIST",
        "",
        nll_table([r for _, r in loaded if r.get("kind") == "nll"]),
    ]
    papers = [r for _, r in loaded if r.get("kind") == "papers"]
    if papers:
        out += ["", "### Tomczak & Welling (2018) protocols (`benchmarks/papers.py`)", ""]
        out.append(
            "Gated MLP 2×300, latent 40, batch 100, Adam 5e-4, KL warm-up over 100 epochs, "
            "early stopping with patience 50; the test NLL (K = 5000, 10,000 test images) "
            "is filled in when a run has finished. Runs resume across sessions; each "
            "results file holds its resume command, its deviations from the paper and the "
            "whole curve."
        )
        out += ["", papers_table(papers)]
    speed = [r for _, r in loaded if r.get("kind") == "eval-speed"]
    if speed:
        out += ["", "### IS evaluation speed (`benchmarks/eval_speed.py`)", ""]
        out.append(
            "784-400-50 VAE, the first 2,000 test images of binarized MNIST, K = 5000; the "
            "matmul-bound time is that of the matrix products the estimator cannot avoid "
            "(the decoder's for every sample, the encoder's once per example), alone."
        )
        out += ["", eval_speed_table(speed)]
    m2 = [r for _, r in loaded if r.get("kind") == "m2"]
    if m2:
        out += ["", "### Semi-supervised M2, MNIST (`benchmarks/m2.py`)", "", m2_table(m2)]
    scale = newest("scale")
    if scale is not None:
        out += ["", f"### Epoch time and memory against N ({scale[0].name})", ""]
        out.append(scale_table(scale[1]))
    ddp = newest("ddp")
    if ddp is not None:
        r = ddp[1]
        out += ["", f"### One process against torchrun ({ddp[0].name})", ""]
        out.append(
            f"Date {r['date']}, {r['machine']}, {r['threads']} threads in all, default "
            f"`pyro-vae train`, median over epochs 2-{r['epochs']}: 1 process "
            f"{r['one_process']['examples_per_s_median']:.0f} examples/s, {r['nproc']} "
            f"processes {r['torchrun']['examples_per_s_median']:.0f} examples/s "
            f"(ratio {r['ratio']:.2f})."
        )
    # the newest throughput measurement for each thread count, with fit's default and with
    # fit(compile=True); older files stay as history
    throughput = [(f, r) for f, r in loaded if r.get("kind") == "throughput"]
    kinds = {(r["threads"], bool(r.get("fit_compile"))) for _, r in throughput}
    for threads, compiled in sorted(kinds, key=lambda k: (-k[0], k[1])):
        f, r = max(
            (
                (f, r)
                for f, r in throughput
                if r["threads"] == threads and bool(r.get("fit_compile")) == compiled
            ),
            key=lambda fr: (fr[1]["date"], fr[0].name),
        )
        out += ["", f"### Training throughput ({f.name})", "", throughput_table(r)]
    blocks["benchmarks"] = "\n".join(out)
    return blocks


def write_readme(readme: Path, blocks: dict[str, str]) -> None:
    """Replace the text between ``<!-- NAME:start -->`` and ``<!-- NAME:end -->``."""
    text = readme.read_text()
    for name, block in blocks.items():
        start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
        if start not in text or end not in text:
            raise SystemExit(f"{readme} has no {start} ... {end} markers.")
        head, rest = text.split(start, 1)
        _, tail = rest.split(end, 1)
        text = f"{head}{start}\n{block}\n{end}{tail}"
    readme.write_text(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--results", default=str(ROOT / "benchmarks" / "results"))
    parser.add_argument(
        "--write-readme", action="store_true", help="rewrite the generated blocks of README.md"
    )
    args = parser.parse_args(argv)
    blocks = render(Path(args.results))
    if args.write_readme:
        write_readme(ROOT / "README.md", blocks)
    else:
        print("\n\n".join(blocks[name] for name in ("parts", "peers", "benchmarks")))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
