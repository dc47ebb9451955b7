"""Logging training to TensorBoard and MLflow, as :func:`~pyro_vae.train.loop.fit` callbacks.

- :class:`TensorBoardLogger` writes every number of each epoch's record as a scalar (step:
  the epoch), the grids of prior samples and of reconstructions as images each epoch (for
  image data) and the run's configuration as hyperparameters (TensorBoard's HParams
  plugin), through :class:`torch.utils.tensorboard.SummaryWriter`.
- :class:`MLflowLogger` logs the configuration as the parameters of an MLflow run, each
  epoch's numbers as metrics (step: the epoch) and, when it finishes, the files of the run
  directory as artifacts. By default the store is the local folder ``RUN_DIR/mlruns``
  (a ``file:`` URI; no server).

Both are context managers that finish the log on exit, and write nothing on the ranks other
than 0 under ``torchrun``. They need the ``tracking`` extra (``pip install -e
".[tracking]"``); without it they raise :class:`MissingExtraError` naming that command.
Drawing the image grids does not touch the global random state, so a run with loggers
trains exactly as one without.

::

    with TensorBoardLogger(run_dir / "tensorboard", config=cfg, model=vae.model,
                           guide=vae.guide, images=x_valid[:32]) as tb:
        fit(vae.model, vae.guide, x, callbacks=[tb], run_dir=run_dir)
"""

from __future__ import annotations

import importlib
import json
import os
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from types import ModuleType, TracebackType
from typing import Any

import torch
from torchvision.utils import make_grid

from pyro_vae import distributed
from pyro_vae.check.viz import as_images, is_image, prior_means, reconstruction_means

__all__ = [
    "INSTALL",
    "TRACKERS",
    "MLflowLogger",
    "MissingExtraError",
    "TensorBoardLogger",
    "Trackers",
    "flat_config",
    "open_trackers",
    "require",
]

#: Names of the tools (``pyro-vae train --log ...``).
TRACKERS = ("tensorboard", "mlflow")
#: The command that installs them.
INSTALL = 'pip install -e ".[tracking]"'
#: The MLflow tag that ties an MLflow run to its run directory (a resumed run continues it).
RUN_DIR_TAG = "pyro_vae.run_dir"
#: MLflow statuses of :meth:`Trackers.finish`.
FINISHED, FAILED, KILLED = "FINISHED", "FAILED", "KILLED"


class MissingExtraError(ImportError, ValueError):
    """A tracking tool is not installed; the message names the install command. It is a
    :class:`ValueError` too, so that the command line reports it in one line."""


def require(tool: str) -> ModuleType:
    """Import the package of ``tool`` (one of :data:`TRACKERS`).

    :raises ValueError: for an unknown tool.
    :raises MissingExtraError: when its package is not installed.
    """
    if tool not in TRACKERS:
        raise ValueError(f"Unknown tracking tool {tool!r}; use one of {', '.join(TRACKERS)}.")
    try:
        return importlib.import_module(tool)
    except ImportError:
        raise MissingExtraError(
            f"Logging to {tool} needs the {tool} package, which is not installed; install "
            f"the tracking extra: {INSTALL}"
        ) from None


def flat_config(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """A configuration as flat ``name: value`` pairs with values that tracking tools take
    (``bool``, ``int``, ``float``, ``str``): nested dicts become dotted names, lists and
    ``None`` become their JSON text."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flat_config(value, name + "."))
        elif isinstance(value, (bool, int, float, str)):
            out[name] = value
        else:
            out[name] = json.dumps(value)
    return out


def numbers(record: Mapping[str, Any]) -> dict[str, float]:
    """The numbers of an epoch's record, less the epoch itself (the step)."""
    return {
        k: float(v)
        for k, v in record.items()
        if k != "epoch" and isinstance(v, (int, float)) and not isinstance(v, bool)
    }


def _is_writer() -> bool:
    ctx = distributed.context()
    return ctx is None or ctx.is_main


class _Logger:
    """A callback with ``finish`` and the context-manager protocol."""

    finished = False

    def __call__(self, record: dict[str, float]) -> None:
        raise NotImplementedError

    def finish(self, status: str = FINISHED) -> None:
        """End the log (``status``: ``"FINISHED"``, ``"FAILED"`` or ``"KILLED"``); later
        calls do nothing."""
        if not self.finished:
            self.finished = True
            self._finish(status)

    def _finish(self, status: str) -> None:
        raise NotImplementedError

    def __enter__(self) -> _Logger:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.finish(FAILED if kind is not None else FINISHED)


class TensorBoardLogger(_Logger):
    """Log each epoch to TensorBoard: every number of the record as a scalar, and for
    image data the prior samples and reconstructions of ``images`` as image grids.

    :param log_dir: the folder of the event files (``RUN_DIR/tensorboard`` for runs).
    :param config: the run's configuration, written once as hyperparameters (flattened
        by :func:`flat_config`), with ``metrics`` as the metrics of the HParams view.
    :param model: the model, for the sample grid.
    :param guide: the guide, for the reconstruction grid.
    :param images: examples on the model's device; their number sets the size of the
        grids. No images are written when they are not images (see
        :func:`~pyro_vae.check.viz.is_image`).
    :param labels: their labels, for a conditional model.
    :param seed: seed of the draws behind the grids (the global random state is kept).
    :param metrics: record entries shown as metrics in the HParams view.
    """

    def __init__(
        self,
        log_dir: str | os.PathLike,
        *,
        config: Mapping[str, Any] | None = None,
        model: Callable | None = None,
        guide: Callable | None = None,
        images: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        seed: int = 0,
        metrics: Iterable[str] = ("train_elbo", "val_elbo"),
    ) -> None:
        require("tensorboard")
        from torch.utils.tensorboard import SummaryWriter
        from torch.utils.tensorboard.summary import hparams

        self.log_dir = Path(log_dir)
        self.model, self.guide, self.labels, self.seed = model, guide, labels, seed
        shown = images is not None and model is not None and is_image(images.shape[1:])
        self.images = images if shown else None
        self.writer = SummaryWriter(str(self.log_dir)) if _is_writer() else None
        if self.writer is not None and config is not None:
            summaries = hparams(flat_config(config), dict.fromkeys(metrics, 0.0))
            file_writer = self.writer._get_file_writer()
            for summary in summaries:
                file_writer.add_summary(summary)
            self.writer.flush()

    def __call__(self, record: dict[str, float]) -> None:
        if self.writer is None:
            return
        epoch = int(record["epoch"])
        for key, value in numbers(record).items():
            self.writer.add_scalar(key, value, epoch)
        if self.images is not None:
            for tag, grid in self.grids().items():
                self.writer.add_image(tag, grid, epoch)
        self.writer.flush()

    def grids(self) -> dict[str, torch.Tensor]:
        r"""The image grids of the current parameters: ``samples`` (means of
        :math:`p(x \mid z)`, :math:`z \sim p(z)`) and ``reconstructions`` (rows of
        examples above their reconstructions)."""
        x, y = self.images, self.labels
        assert x is not None and self.model is not None
        devices = [x.device.index or 0] if x.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(self.seed)
            samples = prior_means(self.model, x, y)
            recon = None
            if self.guide is not None:
                recon = reconstruction_means(self.model, self.guide, x, y)
        grids = {"samples": make_grid(as_images(samples.detach().cpu()), nrow=8)}
        if recon is not None:
            x, recon = as_images(x.detach().cpu()), as_images(recon.detach().cpu())
            rows = []
            for start in range(0, x.shape[0], 8):
                rows += [x[start : start + 8], recon[start : start + 8]]
            grids["reconstructions"] = make_grid(torch.cat(rows), nrow=8)
        return grids

    def _finish(self, status: str) -> None:
        if self.writer is not None:
            self.writer.close()


class MLflowLogger(_Logger):
    """Log a run to MLflow: the configuration as parameters, each epoch's numbers as
    metrics (step: the epoch) and, when it finishes, the run directory as artifacts.

    A run directory keeps one MLflow run: a resumed run finds it (by the tag
    ``pyro_vae.run_dir``) and goes on logging to it; parameters already logged are kept.

    :param tracking_uri: where MLflow keeps runs: a folder or ``file:`` URI (a local store
        read by ``mlflow ui --backend-store-uri``), or any MLflow tracking URI
        (``sqlite:///...``, ``http://...``). Default: ``RUN_DIR/mlruns``.
    :param run_dir: the run directory, whose files become artifacts at the end.
    :param config: the run's configuration, logged as parameters (see
        :func:`flat_config`).
    :param experiment: the MLflow experiment (created when missing).
    :param run_name: the MLflow run's name; default: the run directory's name.

    MLflow 3 keeps a ``file:`` store only when ``MLFLOW_ALLOW_FILE_STORE`` is true; for
    such a store this logger sets it in the environment where it is not set.
    """

    def __init__(
        self,
        tracking_uri: str | os.PathLike | None = None,
        *,
        run_dir: str | os.PathLike | None = None,
        config: Mapping[str, Any] | None = None,
        experiment: str = "pyro-vae",
        run_name: str | None = None,
    ) -> None:
        require("mlflow")
        from mlflow.tracking import MlflowClient

        if tracking_uri is None and run_dir is None:
            raise ValueError("MLflowLogger needs a tracking_uri or a run_dir (its store).")
        self.run_dir = None if run_dir is None else Path(run_dir).resolve()
        where = tracking_uri if tracking_uri is not None else Path(run_dir) / "mlruns"  # type: ignore[arg-type]
        self.uri = tracking_uri_of(where)
        self.store = _local_store(self.uri)
        self.client = self.run_id = None
        if not _is_writer():
            return
        if self.store is not None:
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.client = MlflowClient(tracking_uri=self.uri)
        found = self.client.get_experiment_by_name(experiment)
        experiment_id = found.experiment_id if found else self.client.create_experiment(experiment)
        run = self._existing_run(experiment_id)
        if run is None:
            name = run_name or (self.run_dir.name if self.run_dir else None)
            tags = {RUN_DIR_TAG: str(self.run_dir)} if self.run_dir else {}
            run = self.client.create_run(experiment_id, run_name=name, tags=tags)
            logged: dict[str, str] = {}
        else:
            self.client.update_run(run.info.run_id, status="RUNNING")
            logged = run.data.params
        self.run_id = run.info.run_id
        if config is not None:
            self._log_params({k: v for k, v in flat_config(config).items() if k not in logged})

    def _existing_run(self, experiment_id: str) -> Any:
        if self.run_dir is None:
            return None
        for run in self.client.search_runs([experiment_id], max_results=1000):  # type: ignore[union-attr]
            if run.data.tags.get(RUN_DIR_TAG) == str(self.run_dir):
                return run
        return None

    def _log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)) for k, v in params.items()]
        for start in range(0, len(items), 100):  # MLflow takes 100 per batch
            self.client.log_batch(self.run_id, params=items[start : start + 100])  # type: ignore[arg-type, union-attr]

    def __call__(self, record: dict[str, float]) -> None:
        if self.client is None:
            return
        from mlflow.entities import Metric

        epoch, now = int(record["epoch"]), int(time.time() * 1000)
        metrics = [Metric(k, v, now, epoch) for k, v in numbers(record).items()]
        self.client.log_batch(self.run_id, metrics=metrics)  # type: ignore[arg-type]

    def _finish(self, status: str) -> None:
        if self.client is None:
            return
        if self.run_dir is not None and self.run_dir.is_dir():
            for entry in sorted(self.run_dir.iterdir()):
                if entry.name.startswith(".") or (self.store and entry == self.store):
                    continue  # the lock file, and the store itself
                if entry.is_dir():
                    self.client.log_artifacts(self.run_id, str(entry), artifact_path=entry.name)  # type: ignore[arg-type]
                else:
                    self.client.log_artifact(self.run_id, str(entry))
        self.client.set_terminated(self.run_id, status)  # type: ignore[arg-type]


def tracking_uri_of(where: str | os.PathLike) -> str:
    """A tracking URI: a URI as it is, a folder as its ``file:`` URI."""
    text = os.fspath(where)
    if "://" in text or text.startswith("file:"):
        return text
    return Path(text).resolve().as_uri()


def _local_store(uri: str) -> Path | None:
    """The folder of a ``file:`` URI."""
    if not uri.startswith("file:"):
        return None
    from urllib.parse import unquote, urlparse

    return Path(unquote(urlparse(uri).path)).resolve()


class Trackers(list):
    """The loggers of one run: callbacks for :func:`~pyro_vae.train.loop.fit`, and a
    context manager that finishes them all (``"FAILED"`` on an exception)."""

    def finish(self, status: str = FINISHED) -> None:
        for tracker in self:
            tracker.finish(status)

    def __enter__(self) -> Trackers:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.finish(FAILED if kind is not None else FINISHED)


def open_trackers(
    names: Iterable[str],
    run_dir: str | os.PathLike,
    *,
    config: Mapping[str, Any] | None = None,
    model: Callable | None = None,
    guide: Callable | None = None,
    images: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
    mlflow_uri: str | None = None,
    seed: int = 0,
) -> Trackers:
    """The loggers named in ``names`` for the run directory ``run_dir``: TensorBoard in
    ``RUN_DIR/tensorboard``, MLflow in ``mlflow_uri`` (default ``RUN_DIR/mlruns``)."""
    run_dir = Path(run_dir)
    names = list(dict.fromkeys(names))
    for name in names:
        require(name)  # all are there before any is opened
    trackers = Trackers()
    try:
        for name in names:
            if name == "tensorboard":
                tracker: _Logger = TensorBoardLogger(
                    run_dir / "tensorboard",
                    config=config,
                    model=model,
                    guide=guide,
                    images=images,
                    labels=labels,
                    seed=seed,
                )
            else:
                tracker = MLflowLogger(mlflow_uri, run_dir=run_dir, config=config)
            trackers.append(tracker)
    except BaseException:
        trackers.finish(FAILED)
        raise
    return trackers
