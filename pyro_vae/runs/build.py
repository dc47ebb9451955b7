"""From a :class:`~pyro_vae.runs.config.RunConfig` to objects: the data splits, the model
built from registered parts, and :func:`load_run` for a finished (or interrupted) run."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import TensorDataset

from pyro_vae import data as data_mod
from pyro_vae.check.viz import is_image
from pyro_vae.models.hvae import HierarchicalVAE
from pyro_vae.models.semisupervised import SemiSupervisedVAE
from pyro_vae.models.vae import VAE
from pyro_vae.parts import BuildSpec, get_part
from pyro_vae.parts.conditional import ConditionalNormalPrior, condition_on_labels
from pyro_vae.parts.likelihoods import NormalLikelihood, library_size_percentiles
from pyro_vae.rundir import bundled_data_files, data_fingerprint
from pyro_vae.runs.config import RunConfig
from pyro_vae.train.checkpoint import load_checkpoint, load_module_states

__all__ = [
    "Run",
    "StandardizedInput",
    "build_model",
    "load_run",
    "load_splits",
    "num_classes",
    "prepare",
    "resolve_from_data",
]

CHECKPOINT_NAME = "checkpoint.pt"
CONFIG_NAME = "config.json"


# --------------------------------------------------------------------------- data


def load_splits(config: RunConfig) -> dict[str, TensorDataset]:
    """Train/valid/test splits of the configured dataset (tables as
    :class:`~pyro_vae.data.TableDataset`, with their feature names)."""
    name = config.dataset
    if name == "bundled":
        return data_mod.load_bundled_mnist()
    if name == "digits":
        return dict(data_mod.load_digits())
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
        raise ValueError("--dataset file needs --data-file PATH (.npy, .npz, .pt or .csv).")
    table = data_mod.load_tensor_file(config.data_file)
    n = len(table)
    if n < 3:
        raise ValueError(f"{config.data_file} has {n} examples; at least 3 are needed.")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(config.seed))
    n_valid = n_test = max(1, n // 10)
    parts = {
        "valid": order[:n_valid],
        "test": order[n_valid : n_valid + n_test],
        "train": order[n_valid + n_test :],
    }
    return {k: table.subset(idx) for k, idx in parts.items()}


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
    none; then fill what the configuration derives from the training split
    (:func:`resolve_from_data`). Returns ``(train, transform, valid, test)``."""
    mode, seed = config.resolve_binarize().binarize, config.seed
    if mode == "none":
        resolve_from_data(config, splits["train"])
        return splits["train"], None, splits["valid"], splits["test"]

    def fixed(ds: TensorDataset, offset: int) -> TensorDataset:
        x, *rest = ds.tensors
        return TensorDataset(data_mod.binarize(x, seed=seed + offset), *rest)

    transform = data_mod.DynamicBinarization(seed) if mode == "dynamic" else None
    train = splits["train"] if mode == "dynamic" else fixed(splits["train"], 0)
    resolve_from_data(config, train)
    return train, transform, fixed(splits["valid"], 1), fixed(splits["test"], 2)


def resolve_from_data(config: RunConfig, train: TensorDataset) -> RunConfig:
    """Fill the settings a run takes from its training split, where they are not set yet
    (a resumed or loaded run keeps its own):

    - ``feature_names``: the names of the data's columns, when the dataset has them
      (:class:`~pyro_vae.data.TableDataset`: a ``.npz``/``.pt`` file's ``feature_names``,
      a ``.csv`` header, the digits' ``r{row}c{col}``).
    - For the normal likelihood on data that are not images
      (:func:`~pyro_vae.check.viz.is_image`): ``standardize`` on, and, unless ``--scale``
      was given, a learned scale per feature starting at 1 (``learn_scale``, ``scale``);
      on images the scale stays the fixed ``--scale`` (0.1). ``standardize`` is off
      otherwise.
    - ``data_loc`` and ``data_scale``: the training split's per-feature mean and standard
      deviation (:class:`~pyro_vae.data.Standardization`), when ``standardize`` is on.
    - ``library_percentiles``: the percentiles of the training library sizes
      (:func:`~pyro_vae.parts.likelihoods.library_size_percentiles`), with
      ``--library-size``.

    :raises ValueError: for data that cannot be standardised (NaN, fewer than 2 rows) or
        examples without counts under ``--library-size``; nothing is written before.
    """
    x = train.tensors[0]
    item_shape = tuple(x.shape[1:])
    names = data_mod.feature_names_of(train)
    if config.feature_names is None and names is not None:
        config.feature_names = list(names)
    table = not is_image(item_shape)
    normal = config.likelihood == "normal"
    if normal and table and "scale" not in config.options:
        config.options.setdefault("learn_scale", True)
        config.options["scale"] = 1.0
    if config.standardize is None:
        config.standardize = normal and table and config.model == "vae" and config.levels == 1
    if config.standardize and config.data_loc is None:
        standardization = data_mod.Standardization.fit(x)
        config.data_loc = standardization.loc.flatten().tolist()
        config.data_scale = standardization.scale.flatten().tolist()
    if config.resolved_options().get("library_size") and config.library_percentiles is None:
        percentiles = library_size_percentiles(x, len(item_shape))
        config.library_percentiles = percentiles.tolist()
    return config


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
    must be set. With ``standardize`` the guide's encoder reads standardised data
    (:class:`StandardizedInput`) and the normal likelihood maps back to the data's units
    (:meth:`~pyro_vae.parts.likelihoods.NormalLikelihood.standardize`), both with the
    configuration's ``data_loc`` and ``data_scale``; with ``--library-size`` the
    likelihood stores the configuration's ``library_percentiles``.
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
    module = _build(config, spec)
    if config.standardize:
        _standardize(module, config)
    percentiles = config.library_percentiles
    if percentiles is not None and getattr(module.likelihood, "library_size", False):
        module.likelihood.set_library_percentiles(percentiles)
    return module


def _build(config: RunConfig, spec: BuildSpec) -> VAE | SemiSupervisedVAE | HierarchicalVAE:
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


class StandardizedInput(nn.Module):
    """A network that standardises its input first: the guide's encoder of a run with
    ``--standardize`` sees :math:`(x - m) / s`. Labels (a conditional encoder) pass
    through.

    :param net: the encoder.
    :param standardization: the run's :class:`~pyro_vae.data.Standardization` (the one
        the likelihood holds).
    """

    def __init__(self, net: nn.Module, standardization: data_mod.Standardization) -> None:
        super().__init__()
        self.net = net
        self.standardization = standardization
        self.conditional = bool(getattr(net, "conditional", False))

    def forward(self, inputs: torch.Tensor, *args: Any) -> torch.Tensor:
        return self.net(self.standardization(inputs), *args)


def _standardize(module: Any, config: RunConfig) -> None:
    """Make the networks of ``module`` work in the standardised units of the configuration
    (``data_loc``, ``data_scale``): the guide's encoder standardises its input, the normal
    likelihood maps its mean and scale back to the data's units."""
    if config.data_loc is None or config.data_scale is None:
        raise ValueError(
            "The configuration has standardize on but no data_loc/data_scale; they are "
            "filled from the training split (pyro_vae.runs.prepare)."
        )
    shape = tuple(config.x_shape)  # type: ignore[arg-type]
    standardization = data_mod.Standardization(
        torch.tensor(config.data_loc).reshape(shape),
        torch.tensor(config.data_scale).reshape(shape),
    )
    likelihood = module.likelihood
    if not isinstance(likelihood, NormalLikelihood):
        raise ValueError("--standardize needs the normal likelihood.")
    likelihood.standardize(standardization)
    guide = module.posterior
    guide.encoder = StandardizedInput(guide.encoder, standardization)


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
    def feature_names(self) -> list[str] | None:
        """The names of the data's columns, kept in ``config.json`` (``None`` when the
        data have none): for the headers and titles of per-feature outputs."""
        return self.config.feature_names

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
