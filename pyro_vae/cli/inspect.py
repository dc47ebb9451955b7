"""``pyro-vae evaluate``, ``ppc`` and ``sample``: commands that read a run directory."""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

from pyro_vae import distributed
from pyro_vae.check.ppc import FEATURE_LABELS
from pyro_vae.data import SPLITS
from pyro_vae.rundir import RunDirectory
from pyro_vae.runs import evaluate_run, load_run, ppc_run, sample_run


def add_parsers(sub: Any) -> None:
    """Register the ``evaluate``, ``ppc`` and ``sample`` commands."""
    fmt = {"formatter_class": argparse.ArgumentDefaultsHelpFormatter}
    e = sub.add_parser(
        "evaluate",
        help="importance-sampled log-likelihood, ELBO and latent diagnostics of a run",
        description="Evaluate a trained run: test ELBO, IS NLL ± s.e. (Burda et al., 2015), "
        "KL, active units, and for discrete likelihoods bits/dim (images) or the NLL per "
        "feature in nats (tables, counts). Writes evaluation.json.",
        **fmt,
    )
    p = sub.add_parser(
        "ppc",
        help="posterior and prior predictive checks of a run (ArviZ)",
        description="Posterior and prior predictive checks. Writes ppc.nc (ArviZ "
        "InferenceData, netCDF), ppc.json (Bayesian p-values) and ArviZ plots as PNG. "
        "Images: mean intensity, ink per image and pixel marginals. Tables and counts: "
        "per-feature mean, variance, fraction of zeros, dispersion index (variance / mean) "
        "and largest value, with ppc_features.csv holding every feature's p-values.",
        **fmt,
    )
    s = sub.add_parser(
        "sample",
        help="figures of a run: samples, reconstructions, interpolations, traversals",
        description="Write samples.png (or samples_by_label.png / samples_label<L>.png for a "
        "conditional model), reconstructions.png, interpolation_linear.png, "
        "interpolation_spherical.png, traversals.png and latent_scatter.png; for data that "
        "are not images, samples.npz, samples.csv, samples_histograms.png and "
        "latent_scatter.png.",
        **fmt,
    )
    for q in (e, p, s):
        q.add_argument("run_dir", metavar="RUN_DIR", help="a directory written by pyro-vae train")
        q.add_argument("--split", choices=SPLITS, default="test", help="data split")
        q.add_argument("--seed", type=int, default=0, help="random seed")
        q.add_argument("--device", default="cpu", help="cpu, cuda, ...")
    e.add_argument("--num-samples", type=int, default=5000, help="importance samples K")
    e.add_argument("--batch-size", type=int, default=100, help="examples per forward pass")
    e.add_argument("--particle-chunk", type=int, default=100, help="samples per forward pass")
    e.add_argument("--num-examples", type=int, default=None, help="first N examples (all)")
    p.add_argument("--num-samples", type=int, default=100, help="draws per example")
    p.add_argument("--num-examples", type=int, default=200, help="first N examples")
    p.add_argument("--batch-size", type=int, default=50, help="examples per forward pass")
    s.add_argument("--label", type=int, default=None, help="only this label (conditional)")
    s.add_argument("--num-samples", type=int, default=64, help="images in the sample grid")
    e.set_defaults(run=run_evaluate, distributed=True)
    p.set_defaults(run=run_ppc, distributed=False)
    s.set_defaults(run=run_sample, distributed=False)


def _common(args: argparse.Namespace) -> dict[str, Any]:
    return {"split": args.split, "device": args.device, "seed": args.seed}


def run_evaluate(args: argparse.Namespace) -> int:
    """Print the evaluation table and write ``evaluation.json``."""
    run = load_run(args.run_dir)
    report = evaluate_run(
        run,
        num_samples=args.num_samples,
        batch_size=args.batch_size,
        particle_chunk=args.particle_chunk,
        num_examples=args.num_examples,
        **_common(args),
    )
    if report["world_size"] > 1 and not _is_main():
        return 0  # rank 0 alone writes and prints; the estimates are gathered
    reasons = {
        "nll_stderr": "one importance sample (K=1) has no standard error; use --num-samples 2 "
        "or more",
        "nll": "the likelihood gave a zero density (e.g. a scale collapsed to 0)",
        "elbo": "the likelihood gave a zero density (e.g. a scale collapsed to 0)",
        "pareto_k_max": "the largest importance weights are tied (k-hat -inf: the guide "
        "matches the posterior) or K < 21 leaves no tail to fit (NaN)",
        "pareto_k_median": "K < 21 leaves no tail to fit",
    }
    out = RunDirectory.open(args.run_dir, "read").write_json(
        "evaluation.json", report, reasons=reasons
    )
    bpd = report.get("bits_per_dim")
    se = report.get("nll_stderr")
    se = se if se is not None and math.isfinite(se) else None
    rows = [
        ("examples", f"{report['num_examples']} ({args.split})"),
        ("ELBO", f"{report['elbo']:.2f} nats"),
        ("  reconstruction", f"{report['reconstruction']:.2f} nats"),
        ("  KL", f"{report['kl']:.2f} nats"),
        (
            f"IS NLL (K={report['num_samples']})",
            f"{report['nll']:.2f} ± " + ("n/a" if se is None else f"{se:.2f}") + " nats",
        ),
        ("bits/dim", "n/a (continuous likelihood)" if bpd is None else f"{bpd:.4f}"),
        *_per_feature_row(report),
        ("active units", f"{report['active_units']} / {report['latent_dim']}"),
        ("IS time", f"{report['seconds_log_likelihood']:.1f} s"),
        ("peak RSS", f"{report['peak_rss_mb']:.0f} MB"),
    ]
    width = max(len(r[0]) for r in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    for message in report["warnings"]:
        print(f"warning: {message}")
    print(f"wrote {out}")
    return 0


def run_ppc(args: argparse.Namespace) -> int:
    """Write ``ppc.nc``, ``ppc.json`` and the ArviZ plots; print the p-values."""
    run = load_run(args.run_dir)
    kw = {"num_samples": args.num_samples, "num_examples": args.num_examples}
    summary, paths = ppc_run(run, args.run_dir, batch_size=args.batch_size, **kw, **_common(args))
    for group in ("posterior_predictive", "prior_predictive"):
        g = summary[group]
        if summary["data"] == "features":
            _print_feature_checks(group, g, summary["num_features"])
            continue
        print(
            f"{group}: p(mean intensity) = {g['p_mean_intensity']:.3f}; per-image ink p-values "
            f"outside [0.025, 0.975]: {g['ink_extreme_fraction']:.1%}; pixel marginals "
            f"outside: {g['pixel_extreme_fraction']:.1%}"
        )
    out = RunDirectory.open(args.run_dir, "read").write_json("ppc.json", summary)
    print(f"wrote {out}, " + ", ".join(Path(p).name for p in paths))
    return 0


def _print_feature_checks(group: str, checks: dict[str, Any], num_features: int) -> None:
    print(f"{group}: features with a p-value outside [0.025, 0.975], per statistic")
    for name, c in checks.items():
        label = FEATURE_LABELS.get(name, name)
        if c["extreme_fraction"] is None:
            print(f"  {label:<18} n/a (undefined for every feature)")
            continue
        defined = c["num_features"]
        note = "" if defined == num_features else f"; defined for {defined} of {num_features}"
        print(
            f"  {label:<18} {c['extreme_fraction']:6.1%} of {defined} features "
            f"(median p {c['p_median']:.3f}{note})"
        )


def _per_feature_row(report: dict[str, Any]) -> list[tuple[str, str]]:
    """The NLL per feature, for discrete data that are not images."""
    per_feature = report.get("nll_per_feature")
    if per_feature is None or report.get("images"):
        return []
    return [("IS NLL per feature", f"{per_feature:.4f} nats ({report['num_features']} features)")]


def run_sample(args: argparse.Namespace) -> int:
    """Write the figures of a run."""
    run = load_run(args.run_dir)
    paths = sample_run(
        run, args.run_dir, num_samples=args.num_samples, label=args.label, **_common(args)
    )
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0


def _is_main() -> bool:
    ctx = distributed.context()
    return ctx is None or ctx.is_main
