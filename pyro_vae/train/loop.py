r"""``fit``: stochastic variational inference for any model/guide pair.

The loss is Pyro's ELBO used as an ``nn.Module`` (``elbo(model, guide)``), minimised by one
multi-tensor ``torch.optim`` optimizer over every trainable parameter of the pair. The
default path avoids per-step overhead that does not change the result:

- Pyro's argument validation runs on the first step only (it then catches bad data and
  shape errors), not on every step;
- data held as tensors is moved to the device once and batched by index;
- the running loss stays on the device and is read every ``sync_every`` steps.

The pieces live next to this loop: :mod:`~pyro_vae.train.batches` (data and batching
policies), :mod:`~pyro_vae.train.params` (parameters, device, optimizer),
:mod:`~pyro_vae.train.step` (one step, reductions over ranks, the NaN policy),
:mod:`~pyro_vae.train.state` (what a checkpoint saves and restores),
:mod:`~pyro_vae.train.records` (history, run directory, messages),
:mod:`~pyro_vae.train.schedule` (learning-rate schedules and early stopping, once per
epoch) and :mod:`~pyro_vae.train.interrupt` (Ctrl-C and SIGTERM).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pyro
import torch
from pyro.infer import ELBO
from torch import nn
from tqdm.auto import tqdm

from pyro_vae import distributed
from pyro_vae._checks import check_count, check_number
from pyro_vae.inference.program import read_program
from pyro_vae.objectives import make_objective
from pyro_vae.train.batches import (
    Batches,
    Data,
    SemiSupervisedBatches,
    first_batch,
    make_batches,
    validation_tensors,
)
from pyro_vae.train.capture import CapturedStep
from pyro_vae.train.checkpoint import load_checkpoint
from pyro_vae.train.interrupt import InterruptFlag
from pyro_vae.train.params import default_optimizer, owner_modules, resolve_device, trainable_params
from pyro_vae.train.records import (
    CHECKPOINT_NAME,
    CONFIG_NAME,
    METRICS_NAME,
    History,
    RunFiles,
    TrainingDivergedError,
    format_record,
    interrupted_message,
    mean_terms,
    writable_dir,
)
from pyro_vae.train.schedule import (
    EarlyStopping,
    EpochEnd,
    SchedulerFactory,
    check_scheduler,
    make_schedule,
)
from pyro_vae.train.state import TrainingState
from pyro_vae.train.step import NAN_POLICIES, EpochMeter, Stepper

__all__ = [
    "CHECKPOINT_NAME",
    "CONFIG_NAME",
    "METRICS_NAME",
    "EarlyStopping",
    "History",
    "TrainingDivergedError",
    "fit",
    "resolve_device",
]

_writable_dir = writable_dir  # imported from here before the split

Callback = Callable[[dict[str, float]], bool | None]


def fit(
    model: Callable,
    guide: Callable,
    data: Data,
    *,
    objective: str | ELBO = "elbo",
    num_particles: int = 1,
    optimizer: Callable[[list[torch.Tensor]], torch.optim.Optimizer] | None = None,
    lr: float | None = None,
    epochs: int = 10,
    batch_size: int = 128,
    validation_data: Data | None = None,
    device: str | torch.device | None = None,
    seed: int = 0,
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    callbacks: Sequence[Callback] = (),
    run_dir: str | os.PathLike | None = None,
    resume: str | os.PathLike | None = None,
    config: dict[str, Any] | None = None,
    progress: bool = True,
    sync_every: int = 50,
    eval_examples: int = 2000,
    on_nan: str = "raise",
    capture: bool | None = None,
    compile: bool = False,
    scheduler: str | SchedulerFactory | None = None,
    early_stopping: EarlyStopping | None = None,
    clip_grad_norm: float | None = None,
) -> History:
    r"""Train a model/guide pair by stochastic variational inference, maximising

    .. math:: \mathrm{ELBO} = \sum_{n} \mathbb{E}_{q(z_n \mid x_n)}
        \left[\log p(x_n, z_n) - \log q(z_n \mid x_n)\right].

    Works for any Pyro model/guide pair, not only :class:`~pyro_vae.models.vae.VAE`: its
    sites are read from one trace (:func:`~pyro_vae.inference.program.read_program`), and
    a batch is passed as :meth:`pyro.infer.SVI.step` passes its arguments, ``model(x)`` and
    ``guide(x)``, or ``model(x, y)`` and ``guide(x, y)`` when the data are ``(x, y)`` (a
    function whose only way to take ``y`` is a keyword-only ``y`` gets ``y=y``; a guide
    that takes one argument gets ``x``). Floating data are converted to the parameters'
    dtype. A program whose trace has no observed site (its ELBO would be exactly 0), or
    data whose ``y`` the model cannot take, are refused with a :class:`ValueError`.

    :param model: Pyro model, e.g. ``vae.model``.
    :param guide: Pyro guide, e.g. ``vae.guide``.
    :param data: training data: a tensor ``x``, a tuple ``(x, y)``, a ``TensorDataset``,
        any ``Dataset`` of ``x`` or ``(x, y)`` items, a ``DataLoader`` (used as is), or
        :class:`~pyro_vae.train.batches.SemiSupervisedData` (each step pairs an
        unlabelled batch with a labelled one, passed to the loss as ``x`` and
        ``x_labelled=``, ``y_labelled=``; use it with
        :class:`~pyro_vae.objectives.semisupervised.SemiSupervisedELBO`).
    :param objective: ``"elbo"`` (:class:`~pyro.infer.Trace_ELBO`), ``"meanfield"``
        (:class:`~pyro.infer.TraceMeanField_ELBO`) or an :class:`~pyro.infer.ELBO`.
    :param num_particles: samples of ``z`` per example, with a named objective.
    :param optimizer: a factory ``params -> torch.optim.Optimizer``, e.g.
        ``functools.partial(torch.optim.Adam, lr=1e-3)``; default Adam with ``lr``.
    :param lr: learning rate of the default optimizer (``None``: ``1e-3``). On resume, a
        given ``lr`` replaces the learning rate of every parameter group of the restored
        optimizer (any optimizer); ``None`` keeps the checkpoint's. Each epoch's record
        holds the learning rate as ``lr``.
    :param epochs: total number of epochs (a resumed run continues up to this number).
    :param batch_size: examples per step.
    :param validation_data: data for the per-epoch validation ELBO and its terms.
    :param device: where to train (``"cpu"``, ``"cuda"``, ...); default: where the
        parameters are.
    :param seed: seeds Pyro/torch/numpy/random and the data order.
    :param transform: applied to each training batch on the device, e.g.
        :class:`~pyro_vae.data.DynamicBinarization`; its ``state_dict`` (if any) is
        checkpointed.
    :param callbacks: functions called with each epoch's record before it is saved; they
        may add entries to it (e.g. ``record["val_accuracy"] = ...``), and returning
        ``True`` stops training after that epoch (once its checkpoint is written).
    :param run_dir: if given, ``config.json``, ``metrics.jsonl`` and ``checkpoint.pt``
        (model, optimizer, RNG and data-order state) are written there every epoch.
    :param resume: a checkpoint file (or run directory) to continue from.
    :param config: JSON-serialisable description of the run, saved in ``config.json``
        and in the checkpoint.
    :param progress: show a tqdm progress bar.
    :param sync_every: read the loss back to the host every this many steps.
    :param eval_examples: training examples used for the per-epoch train KL and
        reconstruction terms.
    :param on_nan: what to do when a step's loss or gradient is NaN or infinite:
        ``"raise"`` (default) stops with :class:`TrainingDivergedError`; ``"skip"`` drops
        that batch; ``"reduce_lr"`` drops it and halves the learning rate. The last two
        check every step (one host sync per step) and give up after 10 bad steps in a row.
    :param capture: replay each step's loss and gradient as a recorded graph
        (:class:`~pyro_vae.train.capture.CapturedStep`) for every batch shape where recording is
        safe and verified to match the Pyro path; other steps run the Pyro path. ``None``
        (default) captures when model and guide are ``nn.Module`` methods (e.g.
        ``vae.model``), whose structure is fixed by their modules; ``True`` also tries
        other callables; ``False`` always runs the Pyro path. Objectives with a schedule
        (``set_step``, e.g. KL warm-up) always run the Pyro path.
    :param compile: also compile each captured graph with TorchInductor (fused kernels for
        the elementwise work; random draws stay those of the Pyro path), verified against the
        Pyro path to rounding (``rtol=1e-4``) before it is used; a graph whose compilation
        fails is replayed uncompiled. Off by default: compiling takes seconds to minutes per
        batch shape, which only a long run earns back (``benchmarks/throughput.py --compile``
        measures the step's speed-up). It applies only where the step is captured.
    :param scheduler: a learning-rate schedule stepped once per epoch: ``"step"``,
        ``"cosine"`` (over ``epochs``) or ``"plateau"`` (on the validation ELBO), see
        :func:`~pyro_vae.train.schedule.lr_scheduler` for their settings; or a factory
        ``optimizer -> scheduler`` of ``torch.optim.lr_scheduler``, e.g.
        ``functools.partial(StepLR, step_size=5, gamma=0.5)``. Its state is checkpointed.
        With a schedule, ``lr`` on resume is the schedule's initial learning rate: a
        different one scales the whole schedule, the same one changes nothing.
    :param early_stopping: an :class:`~pyro_vae.train.schedule.EarlyStopping`: stop after
        its ``patience`` epochs without a better validation ELBO (needs
        ``validation_data``), and put the best epoch's parameters (modules and param
        store) back when training ends; ``history.restored_epoch`` names that epoch. Its
        state, best parameters included, is checkpointed, and the final checkpoint holds
        the restored parameters.
    :param clip_grad_norm: scale the gradient of all parameters together down to this
        norm when it is larger (:func:`torch.nn.utils.clip_grad_norm_`), after it is
        complete (summed over ranks) and before the optimizer step. Each epoch's record
        holds the mean norm before clipping as ``grad_norm``.

    Ctrl-C (SIGINT) finishes the current step, writes a checkpoint to ``run_dir`` (also in
    the middle of an epoch) and returns the history with ``history.interrupted = True``;
    ``resume=run_dir`` continues exactly where it stopped. A second Ctrl-C aborts at once.
    :returns: the :class:`History` of per-epoch records.
    :raises ValueError: for bad data, arguments or an incompatible checkpoint.
    :raises TrainingDivergedError: when the loss becomes NaN or infinite.
    """
    check_count("epochs", epochs, 0)
    check_count("batch_size", batch_size)
    check_count("sync_every", sync_every)
    if on_nan not in NAN_POLICIES:
        raise ValueError(f"on_nan must be 'raise', 'skip' or 'reduce_lr', got {on_nan!r}.")
    if lr is not None:
        check_number("lr", lr, positive=True)
    if clip_grad_norm is not None:
        check_number("clip_grad_norm", clip_grad_norm, positive=True)
    check_scheduler(scheduler)
    _check_early_stopping(early_stopping, validation_data)
    modules = owner_modules(model, guide)
    ctx = distributed.context()
    writer = ctx is None or ctx.is_main  # only rank 0 writes files and progress
    progress = progress and writer
    device = resolve_device(device, modules)
    for m in modules:
        m.to(device)
    check_data = getattr(modules[0], "check_data", None) if modules else None

    batches = make_batches(data, batch_size, device, ctx, seed, None if transform else check_data)
    val = (
        None if validation_data is None else validation_tensors(validation_data, device, check_data)
    )
    pyro.set_rng_seed(seed + (ctx.rank if ctx is not None else 0))
    if hasattr(batches, "generator"):  # else the order is a function of the epoch
        batches.generator.manual_seed(seed)
    train_eval = first_batch(batches, eval_examples)
    if train_eval is not None and transform is not None:
        train_eval = (transform(train_eval[0]), train_eval[1])

    elbo = make_objective(objective, num_particles)
    set_step = getattr(elbo, "set_step", None)  # schedules, e.g. BetaELBO's KL warm-up
    probe_x, probe_kw = _probe(batches, train_eval, batch_size, transform)
    if check_data is not None:
        check_data(probe_x)
    # The contract, read from one trace: the program must observe data, and a second
    # tensor of the data reaches model and guide as SVI passes it (model(x, y)).
    probe_xy = _probe_xy(probe_x, probe_kw)
    program = read_program(model, guide, *probe_xy, num_examples=len(probe_xy[0]))
    loss_fn = elbo(program.call_model, program.call_guide)  # type: ignore[arg-type]
    with pyro.validation_enabled(True):  # the first evaluation is fully validated
        params, param_names = trainable_params(loss_fn, modules, probe_x, probe_kw)
    if not params:
        raise ValueError(
            "The model and guide have no trainable parameters: make them nn.Modules (e.g. "
            "PyroModule) or register networks with pyro.module / pyro.param."
        )
    optim = optimizer(params) if optimizer else default_optimizer(params, lr or 1e-3, device)
    schedule = make_schedule(scheduler, optim, epochs=epochs, has_validation=val is not None)
    # Replays the loss and gradient as one recorded graph where that is verified to equal
    # the Pyro path (capture.py); a schedule (set_step) changes the program between steps.
    if capture is None:
        capture = all(isinstance(getattr(f, "__self__", f), nn.Module) for f in (model, guide))
    capture = capture and set_step is None and getattr(elbo, "capturable", True)
    if compile and not capture:
        warnings.warn(
            "compile=True has no effect here: only a captured step is compiled, and this one "
            "runs the Pyro path (an objective with a schedule such as KL warm-up, one that "
            "cannot be captured, capture=False, or a model or guide that is not an "
            "nn.Module method). Drop compile, or train without the schedule.",
            UserWarning,
            stacklevel=2,
        )
    files = RunFiles(run_dir, writer, params)
    state = TrainingState(
        modules,
        optim,
        batches,
        param_names=param_names,
        transform=transform,
        ctx=ctx,
        config=config,
    )
    epoch_end = EpochEnd(schedule, early_stopping, state.weights, state.load_weights)
    state.stateful = epoch_end.stateful
    if resume is not None:
        resume = Path(resume)
        ckpt = load_checkpoint(resume / CHECKPOINT_NAME if resume.is_dir() else resume)
        state.load(ckpt, lr if schedule is None else None)
        if schedule is not None and lr is not None:
            schedule.set_initial_lr(lr)
    if ctx is not None:
        distributed.broadcast_from_main([p.detach() for p in params])
    files.start(config, state.history.records)
    stepper = Stepper(
        loss_fn,
        params,
        optim,
        captured=CapturedStep(loss_fn, params, modules, compile=compile) if capture else None,
        set_step=set_step,
        ctx=ctx,
        on_nan=on_nan,
        run_path=files.path,
        clip_grad_norm=clip_grad_norm,
    )
    history = state.history

    def evaluate() -> dict[str, float]:
        """The epoch's ELBO terms on the training subset and the validation data."""
        terms = {} if train_eval is None else mean_terms("train", model, guide, *train_eval)
        if val is not None:
            terms.update(mean_terms("val", model, guide, *val, ctx=ctx))
        if hasattr(elbo, "weight"):
            terms["kl_weight"] = elbo.weight
        return terms

    interrupt = InterruptFlag()
    with interrupt, pyro.validation_enabled(False):
        # a resumed run that early stopping had already ended trains no further
        for epoch in range(state.epoch, state.epoch if epoch_end.stopped else epochs):
            meter = _begin_epoch(state, epoch, device)
            bar = tqdm(
                total=len(batches),
                initial=batches.batches_done,
                desc=f"epoch {epoch + 1}/{epochs}",
                disable=not progress,
                leave=False,
                unit="step",
            )
            for x, kwargs in batches:
                x, kwargs, n = _prepare(x, kwargs, batches.x_keys, transform)
                stepper(x, kwargs, n, state.step, meter, interrupt)
                state.step += 1
                if (
                    batches.batches_done % sync_every == 0
                    or batches.exhausted
                    or interrupt.requested
                ):
                    total = meter.check_finite(files.path)
                    rate = meter.seen_now / meter.seconds
                    bar.set_postfix(elbo=f"{-total / max(meter.seen, 1):.2f}", ex_s=f"{rate:.0f}")
                bar.update(1)
                if interrupt.requested and not batches.exhausted:
                    bar.close()
                    history.interrupted = True
                    files.save(state.state_dict(epoch, meter))  # collective: on every rank
                    if writer:
                        where = (epoch, batches.batches_done, len(batches), files.path)
                        tqdm.write(interrupted_message(*where))
                    return history
            bar.close()
            record = _epoch_record(epoch, state.step, meter, evaluate, optim, on_nan)
            if clip_grad_norm is not None:
                record["grad_norm"] = meter.mean_grad_norm
            stop = any([bool(cb(record)) for cb in callbacks])  # they may add entries
            stop = epoch_end(record) or stop  # early stopping, then the schedule steps
            history.records.append(record)
            state.epoch = epoch + 1
            # the checkpoint first: a crash before the metrics line is repaired on resume
            files.save(state.state_dict(epoch + 1))  # collective: on every rank
            files.append(record)
            if progress:
                tqdm.write(format_record(record))
            if interrupt.requested:
                history.interrupted = epoch + 1 < epochs
                if history.interrupted and writer:
                    tqdm.write(interrupted_message(epoch + 1, 0, len(batches), files.path))
                break
            if stop:
                break
    if not history.interrupted:
        _restore_best(epoch_end, state, files, progress)
    return history


def _check_early_stopping(early_stopping: Any, validation_data: Any) -> None:
    if early_stopping is None:
        return
    if not isinstance(early_stopping, EarlyStopping):
        raise ValueError(
            f"early_stopping must be an EarlyStopping(patience, min_delta) or None, got "
            f"{early_stopping!r}."
        )
    if validation_data is None:
        raise ValueError(
            "Early stopping watches the validation ELBO; pass validation_data (held-out "
            "examples), or drop early_stopping."
        )


def _epoch_record(
    epoch: int,
    step: int,
    meter: EpochMeter,
    evaluate: Callable[[], dict[str, float]],
    optim: torch.optim.Optimizer,
    on_nan: str,
) -> dict[str, float]:
    """The record of epoch ``epoch`` (0-based) that just ended; ``lr`` is the learning
    rate it trained with."""
    seconds = meter.seconds
    record: dict[str, float] = {"epoch": epoch + 1, "step": step}
    record["train_elbo"] = -meter.loss_sum.item() / max(meter.seen, 1)
    record.update(evaluate())
    record["lr"] = optim.param_groups[0]["lr"]
    record.update(seconds=seconds, examples_per_s=meter.seen_now / seconds)
    if on_nan != "raise":
        record["skipped_steps"] = meter.skipped
    return record


def _restore_best(
    epoch_end: EpochEnd, state: TrainingState, files: RunFiles, progress: bool
) -> None:
    """At the end of training, put early stopping's best parameters back, and write them
    as the checkpoint's parameters (the last epoch's go under ``trained_weights``)."""
    trained = epoch_end.restore_best(state.epoch)
    if trained is None:
        return
    best = epoch_end.early_stopping
    state.history.restored_epoch = best.best_epoch  # type: ignore[union-attr]
    ckpt = state.state_dict(state.epoch)
    ckpt["trained_weights"] = trained
    files.save(ckpt)  # collective: on every rank
    if progress:
        tqdm.write(
            f"early stopping: restored the parameters of epoch {best.best_epoch} "  # type: ignore[union-attr]
            f"(val ELBO {best.best:.2f})"  # type: ignore[union-attr]
        )


def _begin_epoch(state: TrainingState, epoch: int, device: torch.device) -> EpochMeter:
    """Start epoch ``epoch``, or continue the one a mid-epoch checkpoint stopped in."""
    if epoch == state.epoch and state.partial is not None:
        meter = EpochMeter.new(device, **state.partial)
        state.partial = None
        return meter
    state.batches.start_epoch(epoch)
    return EpochMeter.new(device)


def _prepare(
    x: torch.Tensor,
    kwargs: dict[str, torch.Tensor],
    x_keys: tuple[str, ...],
    transform: Callable[[torch.Tensor], torch.Tensor] | None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor], int]:
    """Apply the transform to every data tensor of a batch and count the examples."""
    if transform is not None:
        x = transform(x)
        kwargs = {k: transform(v) if k in x_keys else v for k, v in kwargs.items()}
    return x, kwargs, x.shape[0] + sum(kwargs[k].shape[0] for k in x_keys if k in kwargs)


def _probe(
    batches: Batches,
    train_eval: tuple[torch.Tensor, torch.Tensor | None] | None,
    batch_size: int,
    transform: Callable[[torch.Tensor], torch.Tensor] | None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """A batch for the validated first evaluation that finds the parameters; it draws no
    examples from the data order."""
    if isinstance(batches, SemiSupervisedBatches):
        n_l = min(batch_size, batches.x_l.shape[0])
        x_l, y_l = batches.x_l[:n_l], batches.y_l[:n_l]
        kwargs = {"x_labelled": x_l, "y_labelled": y_l}
        x = batches.unlabelled.x[:batch_size]
        return _prepare(x, kwargs, batches.x_keys, transform)[:2]
    assert train_eval is not None
    x, y = train_eval
    x = x[: min(batch_size, len(x))]
    return x, ({"y": y[: len(x)]} if y is not None else {})


def _probe_xy(
    x: torch.Tensor, kwargs: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The probe batch as the program's arguments ``(x, y)``: the labelled half of a
    semi-supervised batch, whose labels the program must take."""
    if "x_labelled" in kwargs:
        return kwargs["x_labelled"], kwargs["y_labelled"]
    return x, kwargs.get("y")
