"""From a :class:`~pyro_vae.runs.config.RunConfig` to objects: the data splits, the model
built from registered parts, and :func:`load_run` for a finished (or interrupted) run."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import TensorDataset

from pyro_vae import data as data_mod
from pyro_vae.models.hvae import HierarchicalVAE
from pyro_vae.models.semisupervised import SemiSupervisedVAE
from pyro_vae.models.vae import VAE
from pyro_vae.parts import BuildSpec, get_part
from pyro_vae.parts.conditional import ConditionalNormalPrior, condition_on_labels
from pyro_vae.rundir import bundled_data_files, data_fingerprint
from pyro_vae.runs.config import RunConfig
from pyro_vae.train.checkpoint import load_checkpoint, load_module_states

__all__ = ["Run", "build_model", "load_run", "load_splits", "num_classes", "prepare"]

CHECKPOINT_NAME = "checkpoint.pt"
CONFIG_NAME = "config.json"


# --------------------------------------------------------------------------- data


def load_splits(config: RunConfig) -> dict[str, TensorDataset]:
    """Train/valid/test splits of the configured dataset."""
    name = config.dataset
    if name == "bundled":
        return data_mod.load_bundled_mnist()
    if name == "digits":
        return data_mod.load_digits()
    if name in ("mnist", "fashion-mnist"):
        folder = _data_dir(config)
        train = data_mod.load_mnist(folder, "train", kind=name, download=config.download)
        test = data_mod.load_mnist(folder, "test", kind=name, download=config.download)
        x, y = train.tensors
        return {
            "train": TensorDataset(x[:50000], y[:50000]),
            "valid": TensorDataset(x[50000:], y[50000:]),
            "test": test,
        }
    if name == "binarized-mnist":
        folder = _data_dir(config)
        return {s: data_mod.load_binarized_mnist(folder, s) for s in data_mod.SPLITS}
    if not config.data_file:
        raise ValueError("--dataset file needs --data-file PATH (.npy, .npz or .pt).")
    tensors = data_mod.load_tensor_file(config.data_file).tensors
    n = tensors[0].shape[0]
    if n < 3:
        raise ValueError(f"{config.data_file} has {n} examples; at least 3 are needed.")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(config.seed))
    n_valid = n_test = max(1, n // 10)
    parts = {
        "valid": order[:n_valid],
        "test": order[n_valid : n_valid + n_test],
        "train": order[n_valid + n_test :],
    }
    return {k: TensorDataset(*(t[idx] for t in tensors)) for k, idx in parts.items()}


def _data_dir(config: RunConfig) -> Path:
    if config.data_dir is None:
        raise ValueError(
            f"--dataset {config.dataset} needs --data-dir DIR (a folder with the files, "
            "or an empty folder together with --download)."
        )
    folder = Path(config.data_dir)
    if not folder.is_dir() and not config.download:
        raise ValueError(
            f"The data directory {folder} does not exist. Point --data-dir at the folder "
            "with the dataset files, or add --download to fetch them."
        )
    return folder


def prepare(
    splits: dict[str, TensorDataset], config: RunConfig
) -> tuple[TensorDataset, data_mod.DynamicBinarization | None, TensorDataset, TensorDataset]:
    """Apply the configured binarization: dynamic (training batches resampled every time,
    validation and test binarized once with fixed seeds), static (all binarized once) or
    none. Returns ``(train, transform, valid, test)``."""
    mode, seed = config.resolve_binarize().binarize, config.seed
    if mode == "none":
        return splits["train"], None, splits["valid"], splits["test"]

    def fixed(ds: TensorDataset, offset: int) -> TensorDataset:
        x, *rest = ds.tensors
        return TensorDataset(data_mod.binarize(x, seed=seed + offset), *rest)

    transform = data_mod.DynamicBinarization(seed) if mode == "dynamic" else None
    train = splits["train"] if mode == "dynamic" else fixed(splits["train"], 0)
    return train, transform, fixed(splits["valid"], 1), fixed(splits["test"], 2)


def fingerprint(config: RunConfig, splits: dict[str, TensorDataset]) -> dict[str, Any]:
    """The data fingerprint of a run: the files it reads (by content), the split sizes,
    the split seed and the binarization (:func:`pyro_vae.rundir.data_fingerprint`)."""
    if config.dataset == "bundled":
        files: Any = bundled_data_files()
    elif config.dataset == "digits":
        files = [Path(data_mod.__file__).parent / "datasets" / "uci-digits.csv.gz"]
    elif config.dataset == "file":
        files = config.data_file
    else:
        files = config.data_dir
    return data_fingerprint(
        files,
        dataset=config.dataset,
        split_sizes={k: len(v) for k, v in splits.items()},
        split_seed=config.seed,
        binarize=config.binarize,
    )


def num_classes(train: TensorDataset, what: str = "--conditional") -> int:
    """The number of classes of a labelled dataset (labels ``0 .. C-1``)."""
    if len(train.tensors) < 2:
        raise ValueError(
            f"{what} needs labels, but this dataset has none; use --dataset bundled, "
            "mnist or fashion-mnist (or a --data-file with labels y)."
        )
    y = train.tensors[1]
    if y.dim() != 1 or y.dtype.is_floating_point or y.dtype == torch.bool:
        raise ValueError(
            f"{what} needs integer class labels, one per example (shape (N,)), got labels "
            f"of shape {tuple(y.shape)} and dtype {y.dtype}; convert one-hot labels with "
            "y.argmax(1)."
        )
    if y.numel() == 0 or int(y.min()) < 0:
        raise ValueError(f"{what} needs integer class labels 0, 1, ..., C-1.")
    count = int(y.max()) + 1
    used = int(torch.unique(y).numel())
    if count > 2 * used and count > 100:
        raise ValueError(
            f"The labels reach {count - 1} but only {used} distinct values occur: a model "
            f"with {count} classes would be mostly unused; relabel the classes as 0..{used - 1}."
        )
    return count


# --------------------------------------------------------------------------- model


def build_model(config: RunConfig) -> VAE | SemiSupervisedVAE | HierarchicalVAE:
    """The model a run configuration describes, built from the registered parts.

    ``config.x_shape`` (and ``num_classes`` for conditional and semi-supervised models)
    must be set.
    """
    if config.x_shape is None:
        raise ValueError("The configuration has no x_shape; it is filled from the data.")
    spec = BuildSpec(
        x_shape=tuple(config.x_shape),
        latent_dim=config.latent_dim,
        hidden_dims=tuple(config.hidden_dims),
        network=config.network,
        options=config.resolved_options(),
    )
    likelihood_cls = get_part("likelihood", config.likelihood)
    if config.model == "m2":
        return SemiSupervisedVAE.mlp(
            _classes(config),
            config.latent_dim,
            spec.x_shape,
            hidden_dims=spec.hidden_dims,
            likelihood_cls=likelihood_cls,
        )
    guide_cls = get_part("guide", config.guide)
    guide = guide_cls.from_config(spec)
    likelihood = likelihood_cls.from_config(spec, input_scale=guide.input_scale)
    if config.conditional:  # CVAE: p(z|y), p(x|z,y), q(z|x,y)
        classes = _classes(config)
        prior = ConditionalNormalPrior(classes, config.latent_dim)
        return VAE(
            prior,
            condition_on_labels(likelihood, classes),  # type: ignore[arg-type]
            condition_on_labels(guide, classes),  # type: ignore[arg-type]
        )
    prior_cls = get_part("prior", config.prior)
    prior_cls.check_guide(guide_cls)
    if config.levels == 2:  # p(z2) p(z1|z2) p(x|z1), q(z2|x) q(z1|x,z2)
        return HierarchicalVAE.mlp(
            prior_cls.from_config(spec, guide),
            likelihood,
            guide,
            spec.x_shape,
            bottom_dim=config.latent_dim,
            hidden_dims=spec.hidden_dims,
            gated=config.network == "gated",
        )
    return VAE(prior_cls.from_config(spec, guide), likelihood, guide)


def _classes(config: RunConfig) -> int:
    if config.num_classes is None:
        raise ValueError("The configuration has no num_classes; it is filled from the labels.")
    return config.num_classes


# --------------------------------------------------------------------------- runs


@dataclass
class Run:
    """A trained run, as :func:`load_run` returns it.

    ``run.model`` and ``run.guide`` are the Pyro callables (``run.module.model`` and
    ``run.module.guide``) that :func:`~pyro_vae.fit`, :func:`~pyro_vae.evaluate` and the
    checks take.
    """

    path: Path
    config: RunConfig
    module: VAE | SemiSupervisedVAE | HierarchicalVAE
    history: list[dict[str, Any]] = field(default_factory=list)
    epoch: int = 0

    @property
    def model(self) -> Any:
        return self.module.model

    @property
    def guide(self) -> Any:
        return self.module.guide

    def split(self, name: str = "test") -> TensorDataset:
        """One split of the run's data (``"train"``, ``"valid"`` or ``"test"``), binarized
        as in training; the training split with one fixed draw of the dynamic
        binarization, made only when that split is asked for."""
        if name not in data_mod.SPLITS:
            raise ValueError(f"--split must be one of {', '.join(data_mod.SPLITS)}; got {name!r}.")
        train, transform, valid, test = prepare(load_splits(self.config), self.config)
        if name == "train" and transform is not None:
            x, *rest = train.tensors
            train = TensorDataset(data_mod.binarize(x, seed=self.config.seed), *rest)
        return {"train": train, "valid": valid, "test": test}[name]


def load_run(run_dir: str | Path, *, device: str | torch.device | None = None) -> Run:
    """Rebuild the model of a run directory and load its last checkpoint.

    :param run_dir: a directory written by ``pyro-vae train`` / ``semisupervised`` or by
        :func:`~pyro_vae.fit` with a ``config``.
    :param device: where to put the model (default: where the checkpoint loads, the CPU).
    :returns: a :class:`Run` with the model, guide, configuration and history.
    :raises ValueError: if the directory is missing, damaged or not a pyro-vae run.
    """
    path = Path(run_dir)
    if not path.is_dir():
        raise ValueError(f"Run directory {path} does not exist.")
    if not (path / CONFIG_NAME).exists():
        raise ValueError(f"{path} has no {CONFIG_NAME}: it is not a pyro-vae run directory.")
    config = RunConfig.read(path / CONFIG_NAME)
    try:
        config.validate()
        module = build_model(config)
    except ValueError as e:
        raise ValueError(f"{path / CONFIG_NAME} describes no valid model: {e}") from None
    state = load_checkpoint(path / CHECKPOINT_NAME)
    try:
        load_module_states([module], state["modules"])
    except (KeyError, TypeError) as e:
        raise ValueError(
            f"{path / CHECKPOINT_NAME} does not hold this model's weights ({e})."
        ) from None
    if device is not None:
        module.to(device)
    history = list(state.get("history", []))
    return Run(path, config, module, history, int(state.get("epoch", len(history))))
