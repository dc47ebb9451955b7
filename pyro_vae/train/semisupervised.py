"""``fit_semisupervised``: the M2 model trained by :func:`~pyro_vae.fit` with the
semi-supervised batching policy and objective (checkpoints, exact resume, Ctrl-C and NaN
handling included)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import torch

from pyro_vae.models.semisupervised import SemiSupervisedVAE, classification_accuracy
from pyro_vae.objectives.semisupervised import SemiSupervisedELBO
from pyro_vae.parts.conditional import check_labels
from pyro_vae.train.batches import SemiSupervisedData
from pyro_vae.train.loop import History, fit

__all__ = ["fit_semisupervised"]


def fit_semisupervised(
    ssvae: SemiSupervisedVAE,
    labelled: tuple[torch.Tensor, torch.Tensor],
    unlabelled: torch.Tensor,
    *,
    epochs: int = 10,
    batch_size: int = 200,
    lr: float | None = None,
    aux_weight: float = 50.0,
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    validation_data: tuple[torch.Tensor, torch.Tensor] | None = None,
    seed: int = 0,
    max_seconds: float | None = None,
    log: Callable[[dict[str, float]], None] | None = None,
    run_dir: str | os.PathLike | None = None,
    resume: str | os.PathLike | None = None,
    config: dict[str, Any] | None = None,
    on_nan: str = "raise",
    progress: bool = False,
) -> History:
    r"""Train M2 by minimising :math:`\mathcal{J}^\alpha` with Adam, through
    :func:`~pyro_vae.fit` with
    :class:`~pyro_vae.train.batches.SemiSupervisedData` and
    :class:`~pyro_vae.objectives.semisupervised.SemiSupervisedELBO`.

    Each step pairs one batch of unlabelled examples (one pass over ``unlabelled`` is an
    epoch) with one batch of labelled examples, drawn in turn from a reshuffled
    ``labelled`` set; the loss of the step is

    .. math:: -\sum_{\mathrm{unlab.\ batch}} \mathcal{U}(x)
        - \sum_{\mathrm{lab.\ batch}} \big[\mathcal{L}(x, y) + \alpha \log q(y \mid x)\big],

    with :class:`~pyro.infer.TraceEnum_ELBO` for :math:`\mathcal{U}` and
    :class:`~pyro.infer.Trace_ELBO` for :math:`\mathcal{L}`. With few labels this
    revisits each labelled example many times per epoch, i.e. it weights the labelled
    part more than a plain sum over the dataset would (Pyro's tutorial instead interleaves
    one labelled batch every so many unlabelled ones); it is a schedule choice, not a
    different objective per example. Like :func:`~pyro_vae.fit`, it checkpoints into
    ``run_dir`` every epoch (and on Ctrl-C or SIGTERM), resumes exactly with ``resume``
    and applies the ``on_nan`` policy.

    :param ssvae: the model.
    :param labelled: ``(x, y)`` of the labelled examples.
    :param unlabelled: ``x`` of the unlabelled examples.
    :param epochs: passes over the unlabelled data.
    :param batch_size: examples per batch; unlabelled batches hold at most all unlabelled
        examples and labelled batches at most all labels.
    :param lr: Adam learning rate (``None``: ``1e-3``, or the checkpoint's on resume).
    :param aux_weight: :math:`\alpha`, the weight of the classification loss per labelled
        example.
    :param transform: applied to every batch of ``x`` (e.g.
        :class:`~pyro_vae.data.DynamicBinarization`).
    :param validation_data: ``(x, y)`` for the per-epoch ``val_accuracy``.
    :param seed: seeds Pyro/torch and the batch order.
    :param max_seconds: stop after the first epoch that ends past this wall-clock budget.
    :param log: called with each epoch's record.
    :param run_dir: where to write ``config.json``, ``metrics.jsonl`` and
        ``checkpoint.pt``, as :func:`~pyro_vae.fit` does.
    :param resume: a checkpoint (or run directory) to continue from.
    :param config: the run's description, saved in ``config.json`` and the checkpoint.
    :param on_nan: ``"raise"``, ``"skip"`` or ``"reduce_lr"``, as in :func:`~pyro_vae.fit`.
    :param progress: show a progress bar and one line per epoch.
    :returns: a :class:`~pyro_vae.train.loop.History` whose records hold ``loss`` (the
        objective per example, labelled and unlabelled together), ``train_elbo``
        (its negative), ``val_accuracy``, ``lr`` and ``seconds``.
    :raises KeyboardInterrupt: on Ctrl-C or SIGTERM without ``run_dir`` (nothing could be
        saved); with ``run_dir`` the history returns with ``interrupted = True``.
    """
    x_l, y_l = labelled
    check_labels(y_l, ssvae.num_classes)
    if x_l.shape[0] == 0 or x_l.shape[0] != y_l.shape[0]:
        raise ValueError(
            f"labelled must be (x, y) with as many labels as examples and at least one; got "
            f"{x_l.shape[0]} examples and {y_l.shape[0]} labels."
        )
    if unlabelled.shape[0] == 0:
        raise ValueError("unlabelled is empty; pass the unlabelled examples (x only).")
    started = time.perf_counter()

    def metrics(record: dict[str, float]) -> None:
        record["loss"] = -record["train_elbo"]
        if validation_data is not None:
            record["val_accuracy"] = classification_accuracy(ssvae, *validation_data)

    def out_of_time(record: dict[str, float]) -> bool:
        return max_seconds is not None and time.perf_counter() - started > max_seconds

    history = fit(
        ssvae.model,
        ssvae.guide,
        SemiSupervisedData(labelled=(x_l, y_l), unlabelled=unlabelled),
        objective=SemiSupervisedELBO(aux_weight),
        lr=lr,
        epochs=epochs,
        batch_size=min(batch_size, len(unlabelled)) if len(unlabelled) else batch_size,
        seed=seed,
        transform=transform,
        callbacks=[metrics, out_of_time] if log is None else [metrics, log, out_of_time],
        run_dir=run_dir,
        resume=resume,
        config=config,
        on_nan=on_nan,
        progress=progress,
    )
    if history.interrupted and run_dir is None:
        raise KeyboardInterrupt
    return history
