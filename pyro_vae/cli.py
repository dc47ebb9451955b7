"""Command line: ``pyro-vae train`` (also ``python -m pyro_vae train``).

This module only turns strings into objects and calls the library; the logic lives in
:mod:`pyro_vae.train`, :mod:`pyro_vae.data`, :mod:`pyro_vae.evaluate` and :mod:`pyro_vae.viz`.
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

from . import data as data_mod
from .checkpoint import load_checkpoint, load_module_states
from .evaluate import elbo_terms
from .guides import DiagonalNormalGuide
from .likelihoods import BernoulliLikelihood, ContinuousBernoulliLikelihood, NormalLikelihood
from .objectives import OBJECTIVES
from .priors import StandardNormalPrior
from .train import CHECKPOINT_NAME, CONFIG_NAME, TrainingDivergedError, fit
from .vae import VAE
from .viz import prior_means, reconstruction_means, save_images, save_reconstructions

LIKELIHOODS = {
    "bernoulli": BernoulliLikelihood,
    "cbernoulli": ContinuousBernoulliLikelihood,
    "normal": NormalLikelihood,
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
    if config["network"] == "conv":
        likelihood = likelihood_cls.conv(latent_dim, x_shape, **kwargs)
        guide = DiagonalNormalGuide.conv(latent_dim, channels=x_shape[0])
    else:
        likelihood = likelihood_cls.mlp(latent_dim, x_shape, tuple(reversed(hidden)), **kwargs)
        guide = DiagonalNormalGuide.mlp(x_shape, latent_dim, hidden)
    return VAE(StandardNormalPrior(latent_dim), likelihood, guide)


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
        "in [0,1]), normal (Gaussian)",
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
        "--objective",
        choices=sorted(OBJECTIVES),
        default="elbo",
        help="elbo: Trace_ELBO (Monte Carlo KL); meanfield: TraceMeanField_ELBO (analytic KL)",
    )
    opt("--num-particles", type=int, default=1, help="samples of z per example")
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
    splits = load_splits(config)
    train_ds, transform, valid, test = prepare(splits, config)
    config["x_shape"] = list(train_ds.tensors[0].shape[1:])
    vae = build_vae(config)
    run_dir = Path(config["out"])
    print(
        f"Training on {config['dataset']} ({len(train_ds)} train / {len(valid)} valid / "
        f"{len(test)} test), run directory {run_dir}"
    )
    history = fit(
        vae.model,
        vae.guide,
        train_ds,
        objective=config["objective"],
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
    (run_dir / "test.json").write_text(json.dumps(metrics, indent=2) + "\n")
    if len(config["x_shape"]) == 3 or config["x_shape"] == [784]:
        torch.manual_seed(config["seed"])
        save_images(prior_means(vae.model, x_test[:64]), run_dir / "samples.png")
        recon = reconstruction_means(
            vae.model, vae.guide, x_test[:32], None if y_test is None else y_test[:32]
        )
        save_reconstructions(x_test[:32], recon, run_dir / "reconstructions.png")
    print(
        f"test ELBO {terms['elbo']:.2f} nats per example "
        f"(reconstruction {terms['reconstruction']:.2f}, KL {terms['kl']:.2f}) "
        f"on {len(test)} test examples; {metrics['wall_seconds']:.0f} s in all"
    )
    print(f"wrote {run_dir}")
    return metrics


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``pyro-vae`` command."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    explicit = vars(_parser(suppress=True).parse_args(argv))
    try:
        if args.command == "train":
            config = _train_config(args, explicit)
            if train(config, progress=not args.no_progress) is None:
                return 130  # interrupted by Ctrl-C; the checkpoint is resumable
    except (ValueError, TrainingDivergedError) as e:
        print(f"pyro-vae: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
