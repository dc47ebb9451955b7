"""Command line: ``pyro-vae train`` (also ``python -m pyro_vae train``).

This module only turns strings into objects and calls the library; the logic lives in
:mod:`pyro_vae.train.loop`, :mod:`pyro_vae.data`, :mod:`pyro_vae.check.evaluate` and
:mod:`pyro_vae.check.viz`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import TensorDataset

from pyro_vae import data as data_mod
from pyro_vae import distributed
from pyro_vae.check import ppc as ppc_mod
from pyro_vae.check import viz as viz_mod
from pyro_vae.check.evaluate import elbo_terms, evaluate
from pyro_vae.check.viz import prior_means, reconstruction_means, save_images, save_reconstructions
from pyro_vae.models.vae import VAE
from pyro_vae.objectives import OBJECTIVES, make_objective
from pyro_vae.parts.conditional import ConditionalNormalPrior, condition_on_labels
from pyro_vae.parts.guides import (
    DiagonalNormalGuide,
    FullCovarianceNormalGuide,
    IAFGuide,
    PowerSphericalGuide,
)
from pyro_vae.parts.likelihoods import (
    BernoulliLikelihood,
    ContinuousBernoulliLikelihood,
    DiscretizedLogisticLikelihood,
    NormalLikelihood,
    bits_per_dim,
)
from pyro_vae.parts.nn import latent_input_scale
from pyro_vae.parts.priors import (
    FlowPrior,
    LearnedNormalPrior,
    MixtureOfGaussiansPrior,
    StandardNormalPrior,
    UniformSpherePrior,
    VampPrior,
)
from pyro_vae.train.checkpoint import load_checkpoint, load_module_states
from pyro_vae.train.loop import CHECKPOINT_NAME, CONFIG_NAME, TrainingDivergedError, fit

LIKELIHOODS = {
    "bernoulli": BernoulliLikelihood,
    "cbernoulli": ContinuousBernoulliLikelihood,
    "dlogistic": DiscretizedLogisticLikelihood,
    "normal": NormalLikelihood,
}
PRIORS = ("normal", "learned", "mog", "vamp", "flow", "sphere")
GUIDES = {
    "diagonal": DiagonalNormalGuide,
    "fullcov": FullCovarianceNormalGuide,
    "iaf": IAFGuide,
    "powerspherical": PowerSphericalGuide,
}
DATASETS = ("bundled", "mnist", "fashion-mnist", "binarized-mnist", "file")
NETWORKS = ("mlp", "conv")
BINARIZATIONS = ("dynamic", "static", "none")
# Options that define the model; on --resume they must match the run's config.json.
MODEL_FIELDS = (
    "dataset",
    "likelihood",
    "scale",
    "learn_scale",
    "binarize",
    "network",
    "latent_dim",
    "hidden_dims",
    "prior",
    "components",
    "flow_layers",
    "guide",
    "conditional",
)


# --------------------------------------------------------------------------- data


def load_splits(config: dict[str, Any]) -> dict[str, TensorDataset]:
    """Train/valid/test splits for the configured dataset."""
    name = config["dataset"]
    if name == "bundled":
        return data_mod.load_bundled_mnist()
    if name in ("mnist", "fashion-mnist"):
        folder = _data_dir(config)
        train = data_mod.load_mnist(folder, "train", kind=name, download=config["download"])
        test = data_mod.load_mnist(folder, "test", kind=name, download=config["download"])
        x, y = train.tensors
        return {
            "train": TensorDataset(x[:50000], y[:50000]),
            "valid": TensorDataset(x[50000:], y[50000:]),
            "test": test,
        }
    if name == "binarized-mnist":
        folder = _data_dir(config)
        return {s: data_mod.load_binarized_mnist(folder, s) for s in data_mod.SPLITS}
    if config.get("data_file") is None:
        raise ValueError("--dataset file needs --data-file PATH (.npy, .npz or .pt).")
    tensors = data_mod.load_tensor_file(config["data_file"]).tensors
    n = tensors[0].shape[0]
    if n < 3:
        raise ValueError(f"{config['data_file']} has {n} examples; at least 3 are needed.")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(config["seed"]))
    n_valid = n_test = max(1, n // 10)
    parts = {
        "valid": order[:n_valid],
        "test": order[n_valid : n_valid + n_test],
        "train": order[n_valid + n_test :],
    }
    return {k: TensorDataset(*(t[idx] for t in tensors)) for k, idx in parts.items()}


def _data_dir(config: dict[str, Any]) -> Path:
    if config.get("data_dir") is None:
        raise ValueError(
            f"--dataset {config['dataset']} needs --data-dir DIR (a folder with the files, "
            "or an empty folder together with --download)."
        )
    folder = Path(config["data_dir"])
    if not folder.is_dir() and not config.get("download"):
        raise ValueError(
            f"The data directory {folder} does not exist. Point --data-dir at the folder "
            "with the dataset files, or add --download to fetch them."
        )
    return folder


def prepare(
    splits: dict[str, TensorDataset], config: dict[str, Any]
) -> tuple[TensorDataset, data_mod.DynamicBinarization | None, TensorDataset, TensorDataset]:
    """Apply the configured binarization: dynamic (training batches resampled every time,
    validation and test binarized once with fixed seeds), static (all binarized once) or
    none. Returns ``(train, transform, valid, test)``."""
    mode, seed = config["binarize"], config["seed"]
    if mode == "none":
        return splits["train"], None, splits["valid"], splits["test"]

    def fixed(ds: TensorDataset, offset: int) -> TensorDataset:
        x, *rest = ds.tensors
        return TensorDataset(data_mod.binarize(x, seed=seed + offset), *rest)

    transform = data_mod.DynamicBinarization(seed) if mode == "dynamic" else None
    train = splits["train"] if mode == "dynamic" else fixed(splits["train"], 0)
    return train, transform, fixed(splits["valid"], 1), fixed(splits["test"], 2)


# --------------------------------------------------------------------------- model


def build_vae(config: dict[str, Any]) -> VAE:
    """The VAE described by a run config (as written to ``config.json``)."""
    x_shape = tuple(config["x_shape"])
    latent_dim, hidden = config["latent_dim"], tuple(config["hidden_dims"])
    likelihood_cls = LIKELIHOODS[config["likelihood"]]
    kwargs = (
        {"scale": config["scale"], "learn_scale": config["learn_scale"]}
        if likelihood_cls is NormalLikelihood
        else {}
    )
    check_parts(config)
    guide_cls = GUIDES[config.get("guide", "diagonal")]
    guide_kwargs = {"num_flows": config.get("flow_layers", 2)} if guide_cls is IAFGuide else {}
    # z on the unit sphere has coordinates of variance 1/d: the decoder scales it back
    kwargs["input_scale"] = latent_input_scale(latent_dim, guide_cls is PowerSphericalGuide)
    if config["network"] == "conv":
        likelihood = likelihood_cls.conv(latent_dim, x_shape, **kwargs)
        guide = guide_cls.conv(latent_dim, channels=x_shape[0], **guide_kwargs)
    else:
        likelihood = likelihood_cls.mlp(latent_dim, x_shape, tuple(reversed(hidden)), **kwargs)
        guide = guide_cls.mlp(x_shape, latent_dim, hidden, **guide_kwargs)
    if config.get("conditional"):  # CVAE: p(z|y), p(x|z,y), q(z|x,y)
        classes = config["num_classes"]
        guide = condition_on_labels(guide, classes)
        likelihood = condition_on_labels(likelihood, classes)
        return VAE(ConditionalNormalPrior(classes, latent_dim), likelihood, guide)
    return VAE(build_prior(config, guide), likelihood, guide)


def build_prior(config: dict[str, Any], guide: torch.nn.Module) -> torch.nn.Module:
    """The prior named by ``config["prior"]`` (the VampPrior shares ``guide``)."""
    name, latent_dim = config.get("prior", "normal"), config["latent_dim"]
    if name == "learned":
        return LearnedNormalPrior(latent_dim)
    if name == "mog":
        return MixtureOfGaussiansPrior(latent_dim, config.get("components", 10))
    if name == "vamp":
        return VampPrior(guide, config.get("components", 10), tuple(config["x_shape"]))
    if name == "flow":
        return FlowPrior.mlp(latent_dim, config.get("flow_layers", 2))
    if name == "sphere":
        return UniformSpherePrior(latent_dim)
    return StandardNormalPrior(latent_dim)


def check_parts(config: dict[str, Any]) -> None:
    """Refuse prior x guide pairs whose ELBO is not a bound, naming the fix."""
    prior, guide = config.get("prior", "normal"), config.get("guide", "diagonal")
    if prior == "sphere" and guide != "powerspherical":
        raise ValueError(
            f"--prior sphere needs --guide powerspherical: a {guide} guide puts z in R^d, "
            "where the uniform sphere prior has no density."
        )
    if guide == "powerspherical" and prior not in ("sphere", "vamp"):
        raise ValueError(
            f"--guide powerspherical needs --prior sphere (or vamp): its samples lie on the "
            f"unit sphere, where the {prior} prior's density in R^d does not give an ELBO."
        )
    if config.get("conditional") and (prior != "normal" or config.get("network") == "conv"):
        raise ValueError(
            "--conditional uses its own learned class-conditional Gaussian prior and MLP "
            "networks; drop --prior and use --network mlp."
        )
    if prior == "vamp" and guide == "iaf":
        raise ValueError(
            "--prior vamp cannot use --guide iaf (a mixture of flow posteriors is not "
            "supported); use --guide diagonal or fullcov with the VampPrior."
        )


def _num_classes(train_ds: TensorDataset) -> int:
    """The number of classes of a labelled dataset, for ``--conditional``."""
    if len(train_ds.tensors) < 2:
        raise ValueError(
            "--conditional needs labels, but this dataset has none; use --dataset bundled, "
            "mnist or fashion-mnist (or a --data-file with labels y)."
        )
    y = train_ds.tensors[1]
    if y.dtype.is_floating_point or y.numel() == 0 or int(y.min()) < 0:
        raise ValueError("--conditional needs integer class labels 0, 1, ..., C-1.")
    return int(y.max()) + 1


def read_config(run_dir: str | Path) -> dict[str, Any]:
    """The ``config.json`` of a run directory, with a clear error if it is missing."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ValueError(f"Run directory {run_dir} does not exist.")
    path = run_dir / CONFIG_NAME
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(
            f"{run_dir} has no {CONFIG_NAME}: it is not a pyro-vae run directory, or the "
            "run was interrupted before it started."
        ) from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); the run is half-written.") from None


def load_run(run_dir: str | Path) -> tuple[VAE, dict[str, Any]]:
    """Rebuild the VAE of a run directory and load its checkpoint."""
    config = read_config(run_dir)
    vae = build_vae(config)
    state = load_checkpoint(Path(run_dir) / CHECKPOINT_NAME)
    load_module_states([vae], state["modules"])
    return vae, config


# --------------------------------------------------------------------------- train


def _parser(suppress: bool = False) -> argparse.ArgumentParser:
    default = {"argument_default": argparse.SUPPRESS} if suppress else {}
    parser = argparse.ArgumentParser(
        prog="pyro-vae", description="Variational autoencoders as Pyro programs.", **default
    )
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser(
        "train",
        help="train a VAE and write a run directory",
        description="Train a VAE by SVI. Writes config.json, checkpoint.pt, metrics.jsonl, "
        "test.json, samples.png and reconstructions.png to the run directory.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        **default,
    )

    def opt(*names: str, **kw: Any) -> None:
        if suppress:
            kw.pop("default", None)
        t.add_argument(*names, **kw)

    opt(
        "--dataset",
        choices=DATASETS,
        default="bundled",
        help="bundled: MNIST-10k shipped with the package (offline); mnist / fashion-mnist: "
        "IDX files in --data-dir; binarized-mnist: Larochelle's .amat files; file: --data-file",
    )
    opt("--data-dir", default=None, help="folder holding the dataset files")
    opt("--data-file", default=None, help=".npy/.npz/.pt file for --dataset file")
    opt(
        "--download",
        action="store_true",
        default=False,
        help="download MNIST / Fashion-MNIST with torchvision if missing",
    )
    opt(
        "--likelihood",
        choices=sorted(LIKELIHOODS),
        default="bernoulli",
        help="p(x|z): bernoulli (binary data), cbernoulli (continuous Bernoulli, grayscale "
        "in [0,1]), dlogistic (discretized logistic, 8-bit data scaled to [0,1]; also reports "
        "bits/dim), normal (Gaussian)",
    )
    opt("--scale", type=float, default=0.1, help="standard deviation of --likelihood normal")
    opt(
        "--learn-scale",
        action="store_true",
        default=False,
        help="learn a per-pixel scale for --likelihood normal",
    )
    opt(
        "--binarize",
        choices=BINARIZATIONS,
        default=None,
        help="binarization of the data; default: dynamic for bernoulli on grayscale data, "
        "none otherwise",
    )
    opt("--network", choices=NETWORKS, default="mlp", help="encoder/decoder networks")
    opt("--latent-dim", type=int, default=20, help="dimension of z")
    opt(
        "--hidden-dims",
        type=int,
        nargs="+",
        default=[400],
        help="hidden widths of the MLP encoder (the decoder mirrors them)",
    )
    opt(
        "--prior",
        choices=PRIORS,
        default="normal",
        help="p(z): normal (standard), learned (learned Gaussian), mog (mixture of "
        "--components Gaussians), vamp (VampPrior with --components pseudo-inputs), flow "
        "(normal through --flow-layers autoregressive layers), sphere (uniform on the unit "
        "sphere; needs --guide powerspherical)",
    )
    opt(
        "--components",
        type=int,
        default=10,
        help="mixture components of --prior mog, pseudo-inputs of --prior vamp",
    )
    opt(
        "--flow-layers",
        type=int,
        default=2,
        help="autoregressive layers of --prior flow and of --guide iaf",
    )
    opt(
        "--guide",
        choices=sorted(GUIDES),
        default="diagonal",
        help="q(z|x): diagonal (Gaussian), fullcov (Gaussian with a Cholesky factor), iaf "
        "(Gaussian through --flow-layers IAF layers conditioned on x), powerspherical (on the "
        "unit sphere, for --prior sphere)",
    )
    opt(
        "--objective",
        choices=sorted(OBJECTIVES),
        default="elbo",
        help="elbo: Trace_ELBO (Monte Carlo KL); meanfield: TraceMeanField_ELBO (analytic KL); "
        "iwae: importance weighted bound with --num-particles K",
    )
    opt("--num-particles", type=int, default=1, help="samples of z per example (K of iwae)")
    opt("--beta", type=float, default=1.0, help="KL weight (beta-VAE); not with iwae")
    opt(
        "--warmup-steps",
        type=int,
        default=0,
        help="linear KL warm-up from 1e-3 to --beta over this many steps; not with iwae",
    )
    opt(
        "--free-bits",
        type=float,
        default=0.0,
        help="per-dimension KL floor in nats (batch-averaged KL); 0: off; not with iwae",
    )
    opt(
        "--score-function",
        action="store_true",
        default=False,
        help="score-function gradients for the guide (TraceGraph_ELBO); --objective elbo only",
    )
    opt(
        "--conditional",
        action="store_true",
        default=False,
        help="conditional VAE on the dataset's labels: p(z|y), p(x|z,y), q(z|x,y)",
    )
    opt("--epochs", type=int, default=40, help="total number of epochs")
    opt("--batch-size", type=int, default=128, help="examples per step")
    opt("--lr", type=float, default=1e-3, help="Adam learning rate")
    opt("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    opt("--seed", type=int, default=0, help="random seed")
    opt("--out", default=None, help="run directory (default: runs/<dataset>-<time>)")
    opt(
        "--resume",
        default=None,
        metavar="RUN_DIR",
        help="continue the run in RUN_DIR (its saved options are reused; give --epochs to "
        "train longer)",
    )
    opt("--no-progress", action="store_true", default=False, help="hide the progress bar")
    _add_eval_parsers(sub, default)
    from pyro_vae.cli import semisupervised as cli_semisupervised  # imports this module

    cli_semisupervised.add_parser(sub)
    return parser


def _train_config(args: argparse.Namespace, explicit: dict[str, Any]) -> dict[str, Any]:
    config = {k: v for k, v in vars(args).items() if k not in ("command", "no_progress")}
    if args.resume is not None:
        saved = read_config(args.resume)
        for key in MODEL_FIELDS:
            if key in explicit and explicit[key] != saved.get(key):
                raise ValueError(
                    f"--{key.replace('_', '-')} {explicit[key]} does not match the run being "
                    f"resumed, which has {key}={saved.get(key)!r}; drop the option or start "
                    "a new run."
                )
        # Everything not given explicitly continues as saved (epochs, lr, seed, ...);
        # the run directory is the one named by --resume, never a path from the file.
        for key, value in saved.items():
            if key in config and key not in explicit and key not in ("resume", "out"):
                config[key] = value
        for key in (*MODEL_FIELDS, "x_shape"):
            if key in saved:
                config[key] = saved[key]
        config["out"] = str(args.resume)
    if config["binarize"] is None:
        binary = config["dataset"] == "binarized-mnist"
        config["binarize"] = (
            "dynamic" if config["likelihood"] == "bernoulli" and not binary else "none"
        )
    if config["out"] is None:
        config["out"] = str(Path("runs") / f"{config['dataset']}-{time.strftime('%Y%m%d-%H%M%S')}")
    return config


def train(config: dict[str, Any], progress: bool = True) -> dict[str, float] | None:
    """Run ``pyro-vae train`` for a config; returns the test metrics, or ``None`` when
    training was interrupted with Ctrl-C (the checkpoint is then resumable)."""
    started = time.perf_counter()
    objective = make_objective(
        config["objective"],
        config["num_particles"],
        beta=config.get("beta", 1.0),
        warmup_steps=config.get("warmup_steps", 0),
        free_bits=config.get("free_bits", 0.0),
        score_function=config.get("score_function", False),
    )
    splits = load_splits(config)
    train_ds, transform, valid, test = prepare(splits, config)
    config["x_shape"] = list(train_ds.tensors[0].shape[1:])
    if config.get("conditional"):
        config["num_classes"] = _num_classes(train_ds)
    vae = build_vae(config)
    run_dir = Path(config["out"])
    ctx = distributed.context()
    main_rank = ctx is None or ctx.is_main
    if main_rank:
        print(
            f"Training on {config['dataset']} ({len(train_ds)} train / {len(valid)} valid / "
            f"{len(test)} test), run directory {run_dir}"
            + (f", {ctx.world_size} processes" if ctx is not None else "")
        )
    history = fit(
        vae.model,
        vae.guide,
        train_ds,
        objective=objective,
        num_particles=config["num_particles"],
        lr=config["lr"],
        epochs=config["epochs"],
        batch_size=config["batch_size"],
        validation_data=valid,
        device=config["device"],
        seed=config["seed"],
        transform=transform,
        run_dir=run_dir,
        resume=run_dir / CHECKPOINT_NAME if config.get("resume") else None,
        config=config,
        progress=progress,
    )
    if history.interrupted:
        return None
    if not main_rank:
        return {}  # rank 0 alone evaluates and writes the figures
    device = torch.device(config["device"])
    x_test, *rest = test.tensors
    x_test = x_test.to(device)
    y_test = rest[0].to(device) if rest else None
    vae.check_data(x_test)
    terms = {
        k: v.mean().item() for k, v in elbo_terms(vae.model, vae.guide, x_test, y_test).items()
    }
    metrics = {
        "test_elbo": terms["elbo"],
        "test_reconstruction": terms["reconstruction"],
        "test_kl": terms["kl"],
        "num_test": len(test),
        "epochs": len(history),
        "wall_seconds": time.perf_counter() - started,
    }
    if isinstance(vae.likelihood, DiscretizedLogisticLikelihood):
        # a discrete likelihood of 8-bit data: the negative ELBO bounds the code length
        metrics["test_bits_per_dim"] = bits_per_dim(terms["elbo"], config["x_shape"])
    (run_dir / "test.json").write_text(json.dumps(metrics, indent=2) + "\n")
    if len(config["x_shape"]) == 3 or config["x_shape"] == [784]:
        torch.manual_seed(config["seed"])
        labels = None if y_test is None else y_test[:64]  # a conditional model needs them
        save_images(prior_means(vae.model, x_test[:64], labels), run_dir / "samples.png")
        recon = reconstruction_means(
            vae.model, vae.guide, x_test[:32], None if y_test is None else y_test[:32]
        )
        save_reconstructions(x_test[:32], recon, run_dir / "reconstructions.png")
    print(
        f"test ELBO {terms['elbo']:.2f} nats per example "
        f"(reconstruction {terms['reconstruction']:.2f}, KL {terms['kl']:.2f}) "
        f"on {len(test)} test examples; {metrics['wall_seconds']:.0f} s in all"
    )
    if "test_bits_per_dim" in metrics:
        print(f"test NLL bound {metrics['test_bits_per_dim']:.3f} bits/dim")
    print(f"wrote {run_dir}")
    return metrics


# --------------------------------------------------------------------------- evaluate, ppc, sample


def _add_eval_parsers(sub: Any, default: dict[str, Any]) -> None:
    """The ``evaluate``, ``ppc`` and ``sample`` commands, which read a run directory."""
    fmt = {"formatter_class": argparse.ArgumentDefaultsHelpFormatter, **default}
    e = sub.add_parser(
        "evaluate",
        help="importance-sampled log-likelihood, ELBO and latent diagnostics of a run",
        description="Evaluate a trained run: test ELBO, IS NLL ± s.e. (Burda et al., 2015), "
        "KL, active units and bits/dim (discrete likelihoods). Writes evaluation.json.",
        **fmt,
    )
    p = sub.add_parser(
        "ppc",
        help="posterior and prior predictive checks of a run (ArviZ)",
        description="Posterior and prior predictive checks. Writes ppc.nc (ArviZ "
        "InferenceData, netCDF), ppc.json (Bayesian p-values) and ArviZ plots as PNG.",
        **fmt,
    )
    s = sub.add_parser(
        "sample",
        help="figures of a run: samples, reconstructions, interpolations, traversals",
        description="Write samples.png (or samples_by_label.png / samples_label<L>.png for a "
        "conditional model), reconstructions.png, interpolation_linear.png, "
        "interpolation_spherical.png, traversals.png and latent_scatter.png.",
        **fmt,
    )
    for q in (e, p, s):
        q.add_argument("run_dir", metavar="RUN_DIR", help="a directory written by pyro-vae train")
        q.add_argument("--split", choices=data_mod.SPLITS, default="test", help="data split")
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


def check_counts(values: dict[str, int | None]) -> None:
    """Raise a :class:`ValueError` naming the option for a count below 1 (``None`` means
    the option was not given)."""
    for name, value in values.items():
        if value is not None and value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {value}.")


def _eval_data(
    args: argparse.Namespace, num_examples: int | None
) -> tuple[VAE, dict[str, Any], torch.Tensor, torch.Tensor | None]:
    """The run's VAE and its (binarized as in training) split, on the device."""
    names = ("num_samples", "num_examples", "batch_size", "particle_chunk")
    check_counts({name: getattr(args, name, None) for name in names})
    vae, config = load_run(args.run_dir)
    train, transform, valid, test = prepare(load_splits(config), config)
    x, *rest = {"train": train, "valid": valid, "test": test}[args.split].tensors
    if args.split == "train" and transform is not None:
        x = data_mod.binarize(x, seed=config["seed"])  # one fixed dynamic-binarization draw
    y = rest[0] if rest else None
    if num_examples is not None:
        x, y = x[:num_examples], None if y is None else y[:num_examples]
    device = torch.device(args.device)
    vae.to(device)
    x, y = x.to(device), None if y is None else y.to(device)
    vae.check_data(x)
    ctx = distributed.context()
    seed = args.seed + (ctx.rank if ctx is not None else 0)  # independent draws per rank
    import pyro

    pyro.set_rng_seed(seed)
    return vae, config, x, y


def run_evaluate(args: argparse.Namespace) -> dict[str, Any]:
    """``pyro-vae evaluate``: print the table and write ``evaluation.json``."""
    import resource
    import warnings

    started = time.perf_counter()
    vae, _, x, y = _eval_data(args, args.num_examples)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = evaluate(
            vae.model,
            vae.guide,
            x,
            y,
            num_samples=args.num_samples,
            batch_size=args.batch_size,
            particle_chunk=args.particle_chunk,
        )
    report["split"] = args.split
    report["seed"] = args.seed
    report["wall_seconds"] = time.perf_counter() - started
    report["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    report["warnings"] = [str(w.message) for w in caught]
    ctx = distributed.context()
    report["world_size"] = 1 if ctx is None else ctx.world_size
    if ctx is not None and not ctx.is_main:
        return report  # rank 0 alone writes and prints; the estimates are gathered
    out = Path(args.run_dir) / "evaluation.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    bpd = report["bits_per_dim"]
    rows = [
        ("examples", f"{report['num_examples']} ({args.split})"),
        ("ELBO", f"{report['elbo']:.2f} nats"),
        ("  reconstruction", f"{report['reconstruction']:.2f} nats"),
        ("  KL", f"{report['kl']:.2f} nats"),
        (
            f"IS NLL (K={report['num_samples']})",
            f"{report['nll']:.2f} ± {report['nll_stderr']:.2f} nats",
        ),
        ("bits/dim", "n/a (continuous likelihood)" if bpd is None else f"{bpd:.4f}"),
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
    return report


def run_ppc(args: argparse.Namespace) -> dict[str, Any]:
    """``pyro-vae ppc``: write ``ppc.nc``, ``ppc.json`` and the ArviZ plots."""
    vae, _, x, y = _eval_data(args, args.num_examples)
    kw = {"num_samples": args.num_samples, "batch_size": args.batch_size}
    idata = ppc_mod.posterior_predictive(vae.model, vae.guide, x, y, **kw)
    idata.extend(ppc_mod.prior_predictive(vae.model, x, y, **kw))
    run_dir = Path(args.run_dir)
    idata.to_netcdf(str(run_dir / "ppc.nc"))
    paths = ppc_mod.save_ppc_plots(idata, run_dir)
    summary: dict[str, Any] = {"num_examples": int(x.shape[0]), "num_samples": args.num_samples}
    for group in ("posterior_predictive", "prior_predictive"):
        mean_p = ppc_mod.bayesian_p_values(idata, ppc_mod.mean_intensity, group=group)
        ink_p = ppc_mod.bayesian_p_values(idata, ppc_mod.image_ink, group=group)
        pix_p = ppc_mod.bayesian_p_values(idata, ppc_mod.pixel_marginals, group=group)
        summary[group] = {
            "p_mean_intensity": float(mean_p),
            "ink_extreme_fraction": float(((ink_p < 0.025) | (ink_p > 0.975)).mean()),
            "ink_p_median": float(ink_p.median()),
            "pixel_extreme_fraction": float(((pix_p < 0.025) | (pix_p > 0.975)).mean()),
        }
        print(
            f"{group}: p(mean intensity) = {float(mean_p):.3f}; per-image ink p-values "
            f"outside [0.025, 0.975]: {summary[group]['ink_extreme_fraction']:.1%}; pixel "
            f"marginals outside: {summary[group]['pixel_extreme_fraction']:.1%}"
        )
    (run_dir / "ppc.json").write_text(json.dumps(summary, indent=2) + "\n")
    names = ", ".join(p.name for p in paths)
    print(f"wrote {run_dir / 'ppc.nc'}, {run_dir / 'ppc.json'}, {names}")
    return summary


def run_sample(args: argparse.Namespace) -> list[Path]:
    """``pyro-vae sample``: write the figures of :mod:`pyro_vae.check.viz`."""
    vae, _, x, y = _eval_data(args, None)
    run_dir = Path(args.run_dir)
    paths = viz_mod.save_figures(
        vae.model,
        vae.guide,
        x,
        y,
        run_dir,
        num_samples=args.num_samples,
        label=args.label,
    )
    print("wrote " + ", ".join(str(p) for p in paths))
    return paths


EVAL_COMMANDS = {"evaluate": run_evaluate, "ppc": run_ppc, "sample": run_sample}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``pyro-vae`` command."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    explicit = vars(_parser(suppress=True).parse_args(argv))
    try:
        if args.command in EVAL_COMMANDS:
            # under torchrun, evaluate shards the importance sampling over the ranks;
            # ppc and sample are not sharded, so rank 0 alone runs them
            ctx = distributed.init_from_env(args.device)
            try:
                if ctx is not None:
                    args.device = str(distributed.rank_device(args.device))
                if ctx is None or ctx.is_main or args.command == "evaluate":
                    EVAL_COMMANDS[args.command](args)
            finally:
                if ctx is not None:
                    torch.distributed.destroy_process_group()
            return 0
        if args.command == "semisupervised":
            from pyro_vae.cli import semisupervised as cli_semisupervised

            try:
                cli_semisupervised.run(args)
            except KeyboardInterrupt:
                print(
                    "pyro-vae: interrupted; the weights of the last finished epoch are in "
                    "the run directory's model.pt (M2 runs cannot be resumed).",
                    file=sys.stderr,
                )
                return 130
            return 0
        if args.command == "train":
            config = _train_config(args, explicit)
            ctx = distributed.init_from_env(config["device"])  # under torchrun
            if ctx is not None:
                config["device"] = str(distributed.rank_device(config["device"]))
                config["world_size"] = ctx.world_size
                shared = [config["out"]]  # one run directory: rank 0's
                torch.distributed.broadcast_object_list(shared, src=0)
                config["out"] = shared[0]
            try:
                if train(config, progress=not args.no_progress) is None:
                    return 130  # interrupted by Ctrl-C; the checkpoint is resumable
            finally:
                if ctx is not None:
                    torch.distributed.destroy_process_group()
    except (ValueError, TrainingDivergedError) as e:
        print(f"pyro-vae: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
