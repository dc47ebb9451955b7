"""Carry out a run: validate, load the data, build the model, train with
:func:`~pyro_vae.fit`, score the test split and write the figures.

The command line calls :func:`train_run`; Python users can too::

    from pyro_vae.runs import RunConfig, train_run
    metrics = train_run(RunConfig(epochs=5, out="runs/demo"))
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import torch

from pyro_vae import distributed
from pyro_vae.check.evaluate import elbo_terms
from pyro_vae.check.viz import (
    is_image,
    prior_means,
    reconstruction_means,
    save_feature_histograms,
    save_images,
    save_reconstructions,
    save_rows,
)
from pyro_vae.models.semisupervised import classification_accuracy, split_labelled
from pyro_vae.parts import get_part
from pyro_vae.parts.likelihoods import bits_per_dim
from pyro_vae.rundir import RunDirectory, check_fingerprint
from pyro_vae.runs.build import (
    CHECKPOINT_NAME,
    CONFIG_NAME,
    build_model,
    fingerprint,
    load_splits,
    num_classes,
    prepare,
)
from pyro_vae.runs.config import MODEL_FIELDS, RunConfig
from pyro_vae.train.loop import fit
from pyro_vae.train.params import default_optimizer
from pyro_vae.train.schedule import EarlyStopping, lr_scheduler
from pyro_vae.train.tracking import KILLED, Trackers, open_trackers, require

__all__ = ["resume_config", "train_run"]

Log = Callable[[str], None]


def resume_config(run_dir: str | Path, given: dict[str, Any]) -> RunConfig:
    """The configuration to resume ``run_dir`` with: the saved one, with the options the
    user gave again (``given``) applied where that cannot corrupt the run.

    :raises ValueError: naming the option when it would change the model or its data.
    """
    path = Path(run_dir)
    if not path.is_dir():
        raise ValueError(f"Run directory {path} does not exist; check the --resume path.")
    writer = RunDirectory.writer_pid(path)
    if writer is not None and writer != os.getpid():
        raise ValueError(
            f"Run directory {path} is being written by process {writer}; wait for it to "
            "finish (or stop it with Ctrl-C) before resuming."
        )
    if not (path / CONFIG_NAME).exists():
        raise ValueError(
            f"{path} has no {CONFIG_NAME}: it is not a run directory; start a new run with "
            "--out instead."
        )
    saved = RunConfig.read(path / CONFIG_NAME)
    if not (path / CHECKPOINT_NAME).exists():
        raise ValueError(
            f"{path} has no {CHECKPOINT_NAME}: the run stopped before its first checkpoint; "
            f"start it again with --out {path} --overwrite."
        )
    saved_dict = saved.to_dict()
    for key, value in given.items():
        if key in MODEL_FIELDS and value != saved_dict.get(key):
            raise ValueError(
                f"--{key.replace('_', '-')} {value} does not match the run being resumed, "
                f"which has {key}={saved_dict.get(key)!r}; drop the option or start a new run."
            )
        if key in FIXED_ON_RESUME and value != saved_dict.get(key):
            raise ValueError(
                f"--{key.replace('_', '-')} {value} cannot change when a run resumes (the "
                f"optimizer's saved state keeps {key}={saved_dict.get(key)!r}); drop the "
                "option or start a new run."
            )
        if key in saved.resolved_options() and value != saved_dict.get(key):
            raise ValueError(
                f"--{key.replace('_', '-')} {value} would change the model of the run "
                f"being resumed ({key}={saved_dict.get(key)!r}); start a new run."
            )
    changes = {k: v for k, v in given.items() if k not in ("out", "resume")}
    return saved.replace(**changes, out=str(path))


#: options of the optimizer and the batching that a resumed run cannot change: the
#: checkpoint's optimizer state and batch order carry them
FIXED_ON_RESUME = ("adam_beta1", "labelled_schedule")


def train_run(
    config: RunConfig,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    log: Log = print,
) -> dict[str, Any] | None:
    """Train the run ``config`` describes and write its run directory.

    Everything is validated, and the data loaded and checked, before the first file is
    written.

    :param config: the run; ``config.out`` is the run directory.
    :param resume: continue the checkpoint in ``config.out``.
    :param overwrite: replace a run already in ``config.out`` (it is moved aside to
        ``OUT.old-<time>``, not deleted); without it a non-empty directory is refused.
    :param progress: show the progress bar and per-epoch lines.
    :param log: where the summary lines go.
    :returns: the test metrics (also written to ``test.json``), or ``None`` when training
        was interrupted (the checkpoint is then resumable).
    """
    started = time.perf_counter()
    config.resolve_binarize()
    config.validate()
    for tool in config.log:  # installed? (before anything is written)
        require(tool)
    if resume and overwrite:
        raise ValueError("--resume continues a run and --overwrite replaces it; give one.")
    if config.epochs == 0 and not resume:
        raise ValueError("--epochs 0 trains nothing; give --epochs >= 1 for a new run.")
    ctx = distributed.context()
    if config.out is None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        config.out = str(Path("runs") / f"{config.model}-{config.dataset}-{stamp}")
    if ctx is not None:  # one run directory, rank 0's; the world size is part of the run
        shared = [config.out]
        torch.distributed.broadcast_object_list(shared, src=0)
        config.out, config.world_size = shared[0], ctx.world_size
    splits = load_splits(config)
    current = fingerprint(config, splits)
    if resume and config.data_fingerprint is not None:
        check_fingerprint(config.data_fingerprint, current)
    config.data_fingerprint = current
    train_ds, transform, valid, test = prepare(splits, config)
    x_shape = list(train_ds.tensors[0].shape[1:])
    if config.x_shape is not None and config.x_shape != x_shape:
        raise ValueError(
            f"The data items have shape {x_shape} but the run was trained on {config.x_shape}; "
            "resume with the original data."
        )
    config.x_shape = x_shape
    if config.conditional or config.model == "m2":
        what = "--conditional" if config.conditional else "semisupervised"
        config.num_classes = num_classes(train_ds, what)
    module = build_model(config)
    check = getattr(module, "check_data", None)
    if check is not None and transform is None:
        check(train_ds.tensors[0])
    main_rank = ctx is None or ctx.is_main
    data, validation, callbacks = _training_data(config, train_ds, valid, module)
    # Everything is checked: only now is the run directory opened (locked) and written.
    mode: Literal["new", "resume", "overwrite"] = (
        "resume" if resume else "overwrite" if overwrite else "new"
    )
    owner = RunDirectory.open(config.out, mode) if main_rank else None
    try:
        # a full disk or a file-size limit while the run writes: one error naming the last
        # good checkpoint and the resume command, not an OSError
        guard = owner.guard(CHECKPOINT_NAME) if owner is not None else contextlib.nullcontext()
        with guard:
            return _train(
                config,
                module,
                owner,
                data,
                validation,
                callbacks,
                transform,
                test,
                resume,
                progress,
                log,
                started,
            )
    finally:
        if owner is not None:
            owner.close()


def _train(
    config: RunConfig,
    module: Any,
    owner: RunDirectory | None,
    data: Any,
    validation: Any,
    callbacks: list[Any],
    transform: Any,
    test: Any,
    resume: bool,
    progress: bool,
    log: Log,
    started: float,
) -> dict[str, Any] | None:
    ctx = distributed.context()
    main_rank = owner is not None
    if hasattr(data, "unlabelled"):  # semi-supervised: labelled + unlabelled examples
        train_n = f"{len(data.labelled[0])} labelled + {len(data.unlabelled)} unlabelled"
    else:
        train_n = str(len(data))
    if owner is not None:
        owner.start(config.to_dict())
        if owner.message:
            log(owner.message)
    if main_rank:
        log(
            f"Training {config.model} on {config.dataset} ({train_n} train / "
            f"{len(test)} test), run directory {config.out}"
            + (f", {ctx.world_size} processes" if ctx is not None else "")
        )
    run_dir = Path(config.out)  # type: ignore[arg-type]
    # the loggers finish after test.json and the figures, which become MLflow artifacts
    with _trackers(config, module, validation, main_rank) as trackers:
        history = fit(
            module.model,
            module.guide,
            data,
            objective=_objective(config),
            num_particles=config.num_particles,
            lr=config.lr,
            epochs=config.epochs,
            batch_size=config.batch_size,
            validation_data=validation,
            device=config.device,
            seed=config.seed,
            transform=transform,
            callbacks=[*callbacks, *trackers],
            run_dir=run_dir,
            resume=run_dir / CHECKPOINT_NAME if resume else None,
            config=config.to_dict(),
            progress=progress,
            scheduler=_scheduler(config),
            early_stopping=_early_stopping(config),
            clip_grad_norm=config.clip_grad_norm,
            compile=config.compile,
            optimizer=_optimizer(config),
        )
        if history.interrupted:
            trackers.finish(KILLED)
            return None
        if not main_rank:
            return {}  # rank 0 alone evaluates and writes the figures
        metrics = _test_metrics(config, module, test, history, log)
        metrics["wall_seconds"] = time.perf_counter() - started
        owner.write_json("test.json", metrics)  # type: ignore[union-attr]
    log(f"wrote {run_dir}")
    return metrics


def _optimizer(config: RunConfig) -> Callable[[list[torch.Tensor]], torch.optim.Optimizer]:
    """``fit``'s default Adam with ``--adam-beta1``, on the device the parameters are on
    when ``fit`` builds it (which decides the fused kernel)."""

    def adam(params: list[torch.Tensor]) -> torch.optim.Optimizer:
        betas = (config.adam_beta1, 0.999)
        return default_optimizer(params, config.lr, params[0].device, betas=betas)

    return adam


def _scheduler(config: RunConfig) -> Any:
    """The learning-rate schedule of ``--lr-schedule`` (a factory for ``fit``), or None."""
    if config.lr_schedule is None:
        return None
    return lr_scheduler(
        config.lr_schedule,
        epochs=config.epochs,
        step_size=config.lr_step_size,
        gamma=config.lr_gamma,
        patience=config.lr_patience,
    )


def _early_stopping(config: RunConfig) -> EarlyStopping | None:
    """The early stopping of ``--patience``, or None."""
    if config.patience is None:
        return None
    return EarlyStopping(config.patience, config.min_delta)


def _trackers(config: RunConfig, module: Any, validation: Any, main_rank: bool) -> Trackers:
    """The loggers of ``--log`` (on rank 0 alone), with image grids of the first 32
    validation examples for image data."""
    if not main_rank or not config.log:
        return Trackers()
    images = labels = None
    if config.model != "m2" and validation is not None:
        x, *rest = validation.tensors
        images = x[:32].to(config.device)
        labels = rest[0][:32].to(config.device) if rest and config.conditional else None
    return open_trackers(
        config.log,
        config.out,  # type: ignore[arg-type]
        config=config.to_dict(),
        model=module.model,
        guide=module.guide,
        images=images,
        labels=labels,
        mlflow_uri=config.mlflow_uri,
        seed=config.seed,
    )


def _objective(config: RunConfig) -> Any:
    if config.model == "m2":
        from pyro_vae.objectives import SemiSupervisedELBO

        return SemiSupervisedELBO(aux_weight=config.aux_weight)
    return config.make_objective()


def _training_data(
    config: RunConfig, train_ds: Any, valid: Any, module: Any
) -> tuple[Any, Any, list[Any]]:
    """The data ``fit`` trains on, its validation data and the callbacks of the run."""
    callbacks: list[Any] = []
    if config.time_budget is not None:
        deadline = time.perf_counter() + config.time_budget
        callbacks.append(lambda record: time.perf_counter() > deadline)
    if config.model != "m2":
        return train_ds, valid, callbacks
    from pyro_vae.train.batches import SemiSupervisedData

    x, y = train_ds.tensors
    labelled, unlabelled = split_labelled(x, y, config.labels, config.num_classes, config.seed)  # type: ignore[arg-type]
    x_valid, y_valid = valid.tensors

    def accuracy(record: dict[str, float]) -> None:
        record["val_accuracy"] = classification_accuracy(module, x_valid, y_valid)

    callbacks.insert(0, accuracy)
    data = SemiSupervisedData(labelled, unlabelled, schedule=config.labelled_schedule)
    return data, None, callbacks


def _test_metrics(
    config: RunConfig, module: Any, test: Any, history: Any, log: Log
) -> dict[str, Any]:
    """Score the test split, write the figures and log one summary line."""
    device = torch.device(config.device)
    x_test, *rest = test.tensors
    x_test = x_test.to(device)
    y_test = rest[0].to(device) if rest else None
    metrics: dict[str, Any] = {"num_test": len(test), "epochs": len(history)}
    if config.model == "m2":
        metrics["test_accuracy"] = classification_accuracy(module, x_test, y_test)  # type: ignore[arg-type]
        metrics["labels"] = config.labels
        log(f"test accuracy {metrics['test_accuracy']:.4f} with {config.labels} labels")
        return metrics
    module.check_data(x_test)
    terms = {
        k: v.mean().item()
        for k, v in elbo_terms(module.model, module.guide, x_test, y_test).items()
    }
    metrics.update(
        test_elbo=terms["elbo"], test_reconstruction=terms["reconstruction"], test_kl=terms["kl"]
    )
    if get_part("likelihood", config.likelihood).discrete:
        # a discrete likelihood: the negative ELBO bounds the code length
        metrics["test_bits_per_dim"] = bits_per_dim(terms["elbo"], config.x_shape)  # type: ignore[arg-type]
    _figures(config, module, x_test, y_test)
    log(
        f"test ELBO {terms['elbo']:.2f} nats per example (reconstruction "
        f"{terms['reconstruction']:.2f}, KL {terms['kl']:.2f}) on {len(test)} test examples"
    )
    if "test_bits_per_dim" in metrics:
        log(f"test NLL bound {metrics['test_bits_per_dim']:.3f} bits/dim")
    return metrics


def _figures(config: RunConfig, module: Any, x: torch.Tensor, y: torch.Tensor | None) -> None:
    """Samples and reconstructions: image grids for images, per-feature histograms of
    generated rows otherwise."""
    run_dir = Path(config.out)  # type: ignore[arg-type]
    torch.manual_seed(config.seed)
    labels = None if y is None else y[:64]  # a conditional model needs them
    samples = prior_means(module.model, x[:64], labels)
    if is_image(config.x_shape):  # type: ignore[arg-type]
        save_images(samples, run_dir / "samples.png")
        recon = reconstruction_means(
            module.model, module.guide, x[:32], None if y is None else y[:32]
        )
        save_reconstructions(x[:32], recon, run_dir / "reconstructions.png")
    else:
        names = config.feature_names
        save_rows(samples, run_dir / "samples", names)
        save_feature_histograms(x, samples, run_dir / "samples_histograms.png", feature_names=names)
