r"""``fit``: stochastic variational inference for any model/guide pair.

The loss is Pyro's ELBO used as an ``nn.Module`` (``elbo(model, guide)``), minimised by one
multi-tensor ``torch.optim`` optimizer over every trainable parameter of the pair. The
default path avoids per-step overhead that does not change the result:

- Pyro's argument validation runs on the first step only (it then catches bad data and
  shape errors), not on every step;
- data held as tensors is moved to the device once and batched by index;
- the running loss stays on the device and is read every ``sync_every`` steps.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pyro
import torch
from pyro import poutine
from pyro.infer import ELBO
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, TensorDataset
from tqdm.auto import tqdm

from pyro_vae import distributed
from pyro_vae.check.evaluate import elbo_terms
from pyro_vae.inference.sites import accepts_y
from pyro_vae.objectives import make_objective
from pyro_vae.train.capture import CapturedStep
from pyro_vae.train.checkpoint import load_checkpoint, load_module_states, save_checkpoint

__all__ = ["CHECKPOINT_NAME", "History", "TrainingDivergedError", "fit"]

CHECKPOINT_NAME = "checkpoint.pt"
METRICS_NAME = "metrics.jsonl"
CONFIG_NAME = "config.json"

Data = torch.Tensor | Sequence[torch.Tensor] | Dataset | DataLoader
Callback = Callable[[dict[str, float]], bool | None]


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or infinite. The message names the step and the likely causes;
    the last checkpoint written before it (if any) is intact and resumable."""


@dataclass
class History:
    """Per-epoch training records returned by :func:`fit`.

    ``history.records`` is a list of dicts (one per epoch, the same lines as
    ``metrics.jsonl``); ``history["val_elbo"]`` gives one column as a list.
    """

    records: list[dict[str, float]] = field(default_factory=list)
    #: True when training stopped early on Ctrl-C (SIGINT); the run is resumable.
    interrupted: bool = False

    def __getitem__(self, key: str) -> list[float]:
        return [r[key] for r in self.records if key in r]

    def __len__(self) -> int:
        return len(self.records)

    @property
    def last(self) -> dict[str, float]:
        if not self.records:
            raise ValueError("The history is empty: no epoch has finished.")
        return self.records[-1]


# --------------------------------------------------------------------------- data


def _as_xy(data: Data) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    """Tensors behind ``data`` when it is tensor-backed, else ``None``."""
    if isinstance(data, torch.Tensor):
        return data, None
    if isinstance(data, TensorDataset):
        data = data.tensors
    if isinstance(data, (tuple, list)) and all(isinstance(t, torch.Tensor) for t in data):
        if len(data) not in (1, 2):
            raise ValueError(f"Pass data as x or (x, y); got a sequence of {len(data)} tensors.")
        x, y = data[0], (data[1] if len(data) == 2 else None)
        if y is not None and y.shape[0] != x.shape[0]:
            raise ValueError(f"x has {x.shape[0]} examples but y has {y.shape[0]} labels.")
        return x, y
    return None


def _check_x(x: torch.Tensor, what: str) -> None:
    if x.shape[0] == 0:
        raise ValueError(f"The {what} is empty; pass at least one example.")
    if not torch.is_floating_point(x):
        raise ValueError(
            f"The {what} has integer dtype {x.dtype}; convert it with x.float() (and scale "
            "8-bit pixels to [0, 1] with x / 255)."
        )
    finite = torch.isfinite(x)
    if not finite.all():
        bad = (~finite).reshape(x.shape[0], -1).any(1).nonzero().flatten()
        raise ValueError(
            f"The {what} contains NaN or inf in {bad.numel()} examples (first at index "
            f"{bad[0].item()}); clean or drop them before training."
        )


class _TensorBatches:
    """Shuffled index batches over tensors already on the device."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor | None, batch_size: int) -> None:
        self.x, self.y, self.batch_size = x, y, batch_size
        self.generator = torch.Generator()

    def __len__(self) -> int:
        return math.ceil(self.x.shape[0] / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
        order = torch.randperm(self.x.shape[0], generator=self.generator).to(self.x.device)
        for idx in order.split(self.batch_size):
            yield self.x[idx], (None if self.y is None else self.y[idx])


class _LoaderBatches:
    """Batches from a DataLoader, moved to the device."""

    def __init__(self, loader: DataLoader, device: torch.device) -> None:
        self.loader, self.device = loader, device
        self.generator = loader.generator if loader.generator is not None else torch.Generator()

    def __len__(self) -> int:
        return len(self.loader)

    def set_epoch(self, epoch: int) -> None:
        if isinstance(self.loader.sampler, DistributedSampler):
            self.loader.sampler.set_epoch(epoch)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
        for batch in self.loader:
            if isinstance(batch, torch.Tensor):
                yield batch.to(self.device), None
            else:
                yield (
                    batch[0].to(self.device),
                    (batch[1].to(self.device) if len(batch) > 1 else None),
                )


# --------------------------------------------------------------------------- parameters


def _owner_modules(*fns: Callable) -> list[nn.Module]:
    """The nn.Modules behind model and guide (a module, or a bound method of one)."""
    modules: list[nn.Module] = []
    for fn in fns:
        owner = fn if isinstance(fn, nn.Module) else getattr(fn, "__self__", None)
        if isinstance(owner, nn.Module) and all(owner is not m for m in modules):
            modules.append(owner)
    return modules


def _trainable_params(
    loss_fn: nn.Module, modules: list[nn.Module], x: torch.Tensor, kwargs: dict[str, Any]
) -> tuple[list[torch.Tensor], list[str]]:
    """Module parameters plus every ``pyro.param`` site (``pyro.module`` included) that one
    evaluation of the loss touches, deduplicated; and the names of the param-store sites
    that do not belong to the modules (saved separately in checkpoints)."""
    params: dict[int, torch.Tensor] = {}
    for m in modules:
        for p in m.parameters():
            if p.requires_grad:
                params[id(p)] = p
    module_params = set(params)
    with poutine.trace(param_only=True) as capture:
        loss_fn(x, **kwargs)
    store_names = []
    for name, site in capture.trace.nodes.items():
        value = site["value"]
        value = value.unconstrained() if hasattr(value, "unconstrained") else value
        if isinstance(value, torch.Tensor) and value.requires_grad:
            params.setdefault(id(value), value)
            if id(value) not in module_params and name in pyro.get_param_store():
                store_names.append(name)
    return list(params.values()), store_names


def _param_store_state(names: list[str]) -> dict[str, torch.Tensor]:
    store = pyro.get_param_store()
    return {n: store._params[n].detach().clone() for n in names if n in store._params}


# --------------------------------------------------------------------------- rng


def _rng_state() -> dict[str, Any]:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "random": random.getstate(),
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["random"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# --------------------------------------------------------------------------- helpers


def resolve_device(device: str | torch.device | None, modules: list[nn.Module]) -> torch.device:
    """The device to train on; ``None`` keeps the device of the parameters (CPU if none)."""
    if device is None:
        for m in modules:
            for t in (*m.parameters(), *m.buffers()):
                return t.device
        return torch.device("cpu")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"Unknown device {device!r}; use e.g. 'cpu' or 'cuda'.") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"Device {device} was requested but CUDA is not available here; use --device cpu."
        )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"Device {device} was requested but MPS is not available; use cpu.")
    return device


def _check_positive_int(name: str, value: int, minimum: int = 1) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}.")


def _writable_dir(path: Path) -> Path:
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write-test"
        probe.write_bytes(b"0" * 4096)
        probe.unlink()
    except OSError as e:
        raise ValueError(
            f"The run directory {path} is not writable ({e.strerror}); choose another "
            "output directory or free some space."
        ) from None
    return path


# --------------------------------------------------------------------------- fit


def fit(
    model: Callable,
    guide: Callable,
    data: Data,
    *,
    objective: str | ELBO = "elbo",
    num_particles: int = 1,
    optimizer: Callable[[list[torch.Tensor]], torch.optim.Optimizer] | None = None,
    lr: float = 1e-3,
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
) -> History:
    r"""Train a model/guide pair by stochastic variational inference, maximising

    .. math:: \mathrm{ELBO} = \sum_{n} \mathbb{E}_{q(z_n \mid x_n)}
        \left[\log p(x_n, z_n) - \log q(z_n \mid x_n)\right].

    Works for any pair that follows the site conventions (observed ``"x"``, plate
    ``"data"``), not only :class:`~pyro_vae.models.vae.VAE`: ``model(x)`` / ``guide(x)``, with
    ``y=labels`` passed too when the data has labels and both functions take ``y`` (Pyro
    gives model and guide the same arguments).

    :param model: Pyro model, e.g. ``vae.model``.
    :param guide: Pyro guide, e.g. ``vae.guide``.
    :param data: training data: a tensor ``x``, a tuple ``(x, y)``, a ``TensorDataset``,
        any ``Dataset`` of ``x`` or ``(x, y)`` items, or a ``DataLoader`` (used as is).
    :param objective: ``"elbo"`` (:class:`~pyro.infer.Trace_ELBO`), ``"meanfield"``
        (:class:`~pyro.infer.TraceMeanField_ELBO`) or an :class:`~pyro.infer.ELBO`.
    :param num_particles: samples of ``z`` per example, with a named objective.
    :param optimizer: a factory ``params -> torch.optim.Optimizer``, e.g.
        ``functools.partial(torch.optim.Adam, lr=1e-3)``; default Adam with ``lr``.
    :param lr: learning rate of the default optimizer.
    :param epochs: total number of epochs (a resumed run continues up to this number).
    :param batch_size: examples per step.
    :param validation_data: data for the per-epoch validation ELBO and its terms.
    :param device: where to train (``"cpu"``, ``"cuda"``, ...); default: where the
        parameters are.
    :param seed: seeds Pyro/torch/numpy/random and the data order.
    :param transform: applied to each training batch on the device, e.g.
        :class:`~pyro_vae.data.DynamicBinarization`; its ``state_dict`` (if any) is
        checkpointed.
    :param callbacks: functions called with each epoch's record; returning ``True`` stops
        training after that epoch.
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

    Ctrl-C (SIGINT) finishes the current step, writes a checkpoint to ``run_dir`` (also in
    the middle of an epoch) and returns the history with ``history.interrupted = True``;
    ``resume=run_dir`` continues exactly where it stopped. A second Ctrl-C aborts at once.
    :returns: the :class:`History` of per-epoch records.
    :raises ValueError: for bad data, arguments or an incompatible checkpoint.
    :raises TrainingDivergedError: when the loss becomes NaN or infinite.
    """
    _check_positive_int("epochs", epochs, 0)
    _check_positive_int("batch_size", batch_size)
    _check_positive_int("sync_every", sync_every)
    if on_nan not in ("raise", "skip", "reduce_lr"):
        raise ValueError(f"on_nan must be 'raise', 'skip' or 'reduce_lr', got {on_nan!r}.")
    if not (isinstance(lr, (int, float)) and lr > 0 and math.isfinite(lr)):
        raise ValueError(f"lr must be a positive number, got {lr!r}.")
    modules = _owner_modules(model, guide)
    ctx = distributed.context()
    writer = ctx is None or ctx.is_main  # only rank 0 writes files and progress
    progress = progress and writer
    device = resolve_device(device, modules)
    for m in modules:
        m.to(device)
    check_data = getattr(modules[0], "check_data", None) if modules else None

    # Data: tensors go to the device once; other datasets through a DataLoader.
    xy = _as_xy(data)
    if xy is not None:
        x, y = xy
        _check_x(x, "training data")
        if batch_size > x.shape[0]:
            raise ValueError(
                f"batch_size={batch_size} is larger than the {x.shape[0]} training examples; "
                f"use batch_size <= {x.shape[0]}."
            )
        if check_data is not None and transform is None:
            check_data(x)
        x = x.to(device)
        y = None if y is None else y.to(device)
        batches: _TensorBatches | _LoaderBatches | distributed.ShardedBatches
        if ctx is None:
            batches = _TensorBatches(x, y, batch_size)
        else:
            batches = distributed.ShardedBatches(x, y, batch_size, ctx, seed)
        num_examples = x.shape[0]
    else:
        if isinstance(data, DataLoader):
            loader = data
            if ctx is not None and not isinstance(loader.sampler, DistributedSampler):
                raise ValueError(
                    "In multi-process training a DataLoader must shard its data: build it "
                    "with sampler=DistributedSampler(dataset), or pass the Dataset itself."
                )
        elif isinstance(data, Dataset):
            if len(data) == 0:  # type: ignore[arg-type]
                raise ValueError("The training data is empty; pass at least one example.")
            if ctx is None:
                loader = DataLoader(
                    data, batch_size=batch_size, shuffle=True, generator=torch.Generator()
                )
            else:
                sampler = DistributedSampler(data, shuffle=True, seed=seed)
                loader = DataLoader(data, batch_size=batch_size, sampler=sampler)
        else:
            raise ValueError(
                f"Unsupported data type {type(data).__name__}: pass a tensor, (x, y), a "
                "Dataset or a DataLoader."
            )
        batches = _LoaderBatches(loader, device)
        num_examples = len(loader.dataset)  # type: ignore[arg-type]
        x = y = None
    val = None
    if validation_data is not None:
        val = _as_xy(validation_data)
        if val is None:
            raise ValueError("validation_data must be a tensor, (x, y) or a TensorDataset.")
        _check_x(val[0], "validation data")
        if check_data is not None:
            check_data(val[0])
        val = (val[0].to(device), None if val[1] is None else val[1].to(device))

    pyro.set_rng_seed(seed + (ctx.rank if ctx is not None else 0))
    order = getattr(batches, "generator", None)  # None: the order is a function of the epoch
    if order is not None:
        order.manual_seed(seed)

    # A fixed training subset for the per-epoch train KL / reconstruction terms. It is drawn
    # before any checkpoint state is restored, so resumed and uninterrupted runs agree.
    first_x, first_y = next(
        iter(_TensorBatches(x, y, min(eval_examples, num_examples)) if x is not None else batches)
    )
    if transform is not None:
        first_x = transform(first_x)
    train_eval = (first_x, first_y)

    elbo = make_objective(objective, num_particles)
    set_step = getattr(elbo, "set_step", None)  # schedules, e.g. BetaELBO's KL warm-up
    loss_fn = elbo(model, guide)
    kw_ok = accepts_y(model) and accepts_y(guide)
    kw_model = {"y": train_eval[1]} if kw_ok and train_eval[1] is not None else {}
    probe_x = train_eval[0][: min(batch_size, len(train_eval[0]))]
    probe_kw = {k: v[: len(probe_x)] for k, v in kw_model.items()}
    if check_data is not None:
        check_data(probe_x)
    with pyro.validation_enabled(True):  # the first evaluation is fully validated
        params, param_names = _trainable_params(loss_fn, modules, probe_x, probe_kw)
    if not params:
        raise ValueError(
            "The model and guide have no trainable parameters: make them nn.Modules (e.g. "
            "PyroModule) or register networks with pyro.module / pyro.param."
        )
    # One fused Adam kernel for all parameters where torch has one, else foreach (measured
    # for the 784-400-50 VAE on one CPU thread: 2.8 ms per Adam step fused, 9.1 foreach).
    fused = device.type in ("cpu", "cuda") and all(p.is_floating_point() for p in params)
    adam_kind = {"fused": True} if fused else {"foreach": True}
    make_opt = optimizer or partial(torch.optim.Adam, lr=lr, **adam_kind)
    optim = make_opt(params)
    # Replays the loss and gradient as one recorded graph where that is verified to equal
    # the Pyro path (capture.py); a schedule (set_step) changes the program between steps.
    if capture is None:
        capture = all(isinstance(getattr(f, "__self__", f), nn.Module) for f in (model, guide))
    stepper = CapturedStep(loss_fn, params, modules) if capture and set_step is None else None

    history = History()
    start_epoch, step = 0, 0
    run_path = Path(run_dir) if run_dir is not None else None
    if run_path is not None and writer:
        _writable_dir(run_path)
        _check_free_space(run_path, params)
    resume_batch, resume_loss, resume_seen, epoch_generator = 0, 0.0, 0, None
    if resume is not None:
        resume = Path(resume)
        ckpt = load_checkpoint(resume / CHECKPOINT_NAME if resume.is_dir() else resume)
        load_module_states(modules, ckpt["modules"])
        store = pyro.get_param_store()
        for name, value in ckpt.get("param_store", {}).items():
            if name in store._params:
                with torch.no_grad():
                    store._params[name].copy_(value)
        try:
            optim.load_state_dict(ckpt["optimizer"])
        except (ValueError, KeyError) as e:
            raise ValueError(f"The checkpoint's optimizer state does not fit: {e}") from None
        per_rank = ckpt.get("rng_per_rank")
        if ctx is not None and per_rank is not None and len(per_rank) == ctx.world_size:
            _set_rng_state(per_rank[ctx.rank])
        elif ctx is None or ctx.is_main:
            _set_rng_state(ckpt["rng"])
        if order is not None and ckpt.get("data_generator") is not None:
            order.set_state(ckpt["data_generator"])
        if transform is not None and ckpt.get("transform") is not None:
            transform.load_state_dict(ckpt["transform"])  # type: ignore[attr-defined]
        history.records = list(ckpt["history"])
        start_epoch, step = int(ckpt["epoch"]), int(ckpt["step"])
        resume_batch = int(ckpt.get("batch_in_epoch", 0))
        if resume_batch:
            epoch_generator = ckpt["epoch_generator"]
            resume_loss, resume_seen = ckpt["loss_sum"], int(ckpt["seen"])
    if ctx is not None:
        distributed.broadcast_from_main([p.detach() for p in params])
    if run_path is not None and writer:
        (run_path / CONFIG_NAME).write_text(json.dumps(config or {}, indent=2) + "\n")
        if resume is None:
            (run_path / METRICS_NAME).write_text("")

    def checkpoint_state(epoch: int, batch_in_epoch: int = 0) -> dict[str, Any]:
        partial_epoch = (
            {
                "batch_in_epoch": batch_in_epoch,
                "epoch_generator": epoch_start_generator,
                "loss_sum": loss_sum.detach().cpu(),
                "seen": seen,
            }
            if batch_in_epoch
            else {}
        )
        return {
            "epoch": epoch,
            "step": step,
            **partial_epoch,
            "modules": [m.state_dict() for m in modules],
            "param_store": _param_store_state(param_names),
            "optimizer": optim.state_dict(),
            "rng": _rng_state(),
            "rng_per_rank": _gather_rng_states(ctx),
            "data_generator": None if order is None else order.get_state(),
            "transform": getattr(transform, "state_dict", lambda: None)(),
            "history": history.records,
            "config": config or {},
        }

    guard = on_nan != "raise"
    interrupt = _InterruptFlag()
    with interrupt, pyro.validation_enabled(False):
        for epoch in range(start_epoch, epochs):
            t0 = time.perf_counter()
            skip = resume_batch if epoch == start_epoch else 0
            if skip and order is not None:
                order.set_state(epoch_generator)
            epoch_start_generator = None if order is None else order.get_state()
            if hasattr(batches, "set_epoch"):
                batches.set_epoch(epoch)
            loss_sum = torch.zeros((), device=device)
            seen, seen_now, skipped, bad_run = 0, 0, 0, 0
            if skip:
                loss_sum += resume_loss.to(device)
                seen = resume_seen
            bad_step = torch.full((), -1, dtype=torch.long, device=device)
            bar = tqdm(
                total=len(batches),
                initial=skip,
                desc=f"epoch {epoch + 1}/{epochs}",
                disable=not progress,
                leave=False,
                unit="step",
            )
            for i, (xb, yb) in enumerate(batches):
                if i < skip:
                    continue
                if transform is not None:
                    xb = transform(xb)
                kwargs = {"y": yb} if kw_ok and yb is not None else {}
                if set_step is not None:
                    set_step(step)  # the checkpointed global step: exact on resume
                if stepper is not None:
                    loss = stepper.step(xb, **kwargs)  # sets every p.grad, like backward()
                else:
                    loss = loss_fn(xb, **kwargs)
                    optim.zero_grad(set_to_none=True)
                    loss.backward()
                loss, batch_n = loss.detach(), xb.shape[0]
                if ctx is not None:  # sum gradients, loss, batch size and Ctrl-C over ranks
                    loss, batch_n, stop = _all_reduce_step(params, loss, batch_n, interrupt)
                    interrupt.requested = stop
                step += 1
                if guard and not _all_finite(loss, params):
                    skipped, bad_run = skipped + 1, bad_run + 1
                    optim.zero_grad(set_to_none=True)
                    if bad_run >= 10:
                        raise TrainingDivergedError(_diverged_message(step, run_path))
                    if on_nan == "reduce_lr":
                        for group in optim.param_groups:
                            group["lr"] *= 0.5
                    bar.update(1)
                    continue
                bad_run = 0
                optim.step()
                loss_sum += loss
                if not guard:
                    bad_step = torch.where(
                        (bad_step < 0) & ~torch.isfinite(loss),
                        torch.tensor(step, device=device),
                        bad_step,
                    )
                seen += batch_n
                seen_now += batch_n
                last = i + 1 == len(batches)
                if (i + 1) % sync_every == 0 or last or interrupt.requested:
                    total = loss_sum.item()
                    if not math.isfinite(total):
                        raise TrainingDivergedError(_diverged_message(int(bad_step), run_path))
                    rate = seen_now / (time.perf_counter() - t0)
                    bar.set_postfix(elbo=f"{-total / max(seen, 1):.2f}", ex_s=f"{rate:.0f}")
                bar.update(1)
                if interrupt.requested and not last:
                    bar.close()
                    history.interrupted = True
                    state = checkpoint_state(epoch, i + 1)  # collective: on every rank
                    if run_path is not None and writer:
                        save_checkpoint(run_path / CHECKPOINT_NAME, state)
                    if writer:
                        tqdm.write(_interrupted_message(epoch, i + 1, len(batches), run_path))
                    return history
            bar.close()
            seconds = time.perf_counter() - t0
            record: dict[str, float] = {
                "epoch": epoch + 1,
                "step": step,
                "train_elbo": -loss_sum.item() / max(seen, 1),
            }
            record.update(_mean_terms("train", model, guide, *train_eval))
            if val is not None:
                record.update(_mean_terms("val", model, guide, *val, ctx=ctx))
            if hasattr(elbo, "weight"):
                record["kl_weight"] = elbo.weight
            record["seconds"] = seconds
            record["examples_per_s"] = seen_now / seconds
            if guard:
                record["skipped_steps"] = skipped
                record["lr"] = optim.param_groups[0]["lr"]
            history.records.append(record)
            if progress:
                tqdm.write(_format_record(record))
            state = checkpoint_state(epoch + 1)  # collective: on every rank
            if run_path is not None and writer:
                with open(run_path / METRICS_NAME, "a") as f:
                    f.write(json.dumps(record) + "\n")
                save_checkpoint(run_path / CHECKPOINT_NAME, state)
            if interrupt.requested:
                history.interrupted = epoch + 1 < epochs
                if history.interrupted and writer:
                    tqdm.write(_interrupted_message(epoch + 1, 0, len(batches), run_path))
                break
            if any([bool(cb(record)) for cb in callbacks]):
                break
    return history


class _InterruptFlag:
    """Context manager turning the first SIGINT (Ctrl-C) or SIGTERM (a scheduler, or
    ``torchrun`` stopping its workers) into a request to stop after the current step; a
    second one raises ``KeyboardInterrupt``. Only installed in the main thread, where Python
    delivers signals."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] | None = None

    def _handler(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        tqdm.write("Interrupted: finishing the current step and writing a checkpoint ...")

    def __enter__(self) -> _InterruptFlag:
        if threading.current_thread() is threading.main_thread():
            self._previous = {sig: signal.signal(sig, self._handler) for sig in self.SIGNALS}
        return self

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            for sig, handler in self._previous.items():
                signal.signal(sig, handler)
            self._previous = None


def _all_finite(loss: torch.Tensor, params: list[torch.Tensor]) -> bool:
    """Whether the loss and every gradient are finite (one host sync)."""
    flags = [torch.isfinite(loss).all()]
    flags += [torch.isfinite(p.grad).all() for p in params if p.grad is not None]
    return bool(torch.stack(flags).all())


def _check_free_space(path: Path, params: list[torch.Tensor]) -> None:
    """Refuse to start when the disk cannot hold a few checkpoints (parameters plus two
    Adam moments, with a wide margin)."""
    need = 4 * sum(p.numel() * p.element_size() for p in params) + (16 << 20)
    free = shutil.disk_usage(path).free
    if free < need:
        raise ValueError(
            f"Only {free / 2**20:.1f} MiB free in {path}, but checkpoints need about "
            f"{need / 2**20:.1f} MiB; free some space or choose another output directory."
        )


def _interrupted_message(epoch: int, batch: int, num_batches: int, run_path: Path | None) -> str:
    where = f"epoch {epoch + 1}, batch {batch}/{num_batches}" if batch else f"epoch {epoch}"
    if run_path is None:
        return f"Stopped after {where}; no run_dir was given, so nothing was saved."
    return (
        f"Stopped after {where}; checkpoint written to {run_path / CHECKPOINT_NAME}. "
        f"Resume with: pyro-vae train --resume {run_path}  (or fit(..., resume={str(run_path)!r}))"
    )


def _mean_terms(
    prefix: str,
    model: Callable,
    guide: Callable,
    x: torch.Tensor,
    y: torch.Tensor | None,
    ctx: distributed.Context | None = None,
) -> dict[str, float]:
    """Mean ELBO terms; for the training subset only KL and reconstruction, since the
    running ``train_elbo`` of the epoch is recorded from the loss itself. In multi-process
    training each rank evaluates its shard and the sums are combined."""
    keys = ("elbo", "reconstruction", "kl") if prefix == "val" else ("reconstruction", "kl")
    if ctx is None:
        terms = elbo_terms(model, guide, x, y)
        return {f"{prefix}_{k}": terms[k].mean().item() for k in keys}
    part = distributed.shard(x.shape[0], ctx)
    sums = x.new_zeros(len(keys) + 1)
    if part.stop > part.start:
        terms = elbo_terms(model, guide, x[part], None if y is None else y[part])
        sums[:-1] = torch.stack([terms[k].sum() for k in keys])
        sums[-1] = part.stop - part.start
    distributed.all_reduce_sum([sums])
    return {f"{prefix}_{k}": (sums[j] / sums[-1]).item() for j, k in enumerate(keys)}


def _all_reduce_step(
    params: list[torch.Tensor], loss: torch.Tensor, batch_n: int, interrupt: _InterruptFlag
) -> tuple[torch.Tensor, int, bool]:
    """One collective per step: the summed gradients (the ELBO sums over examples, so the
    update equals one process taking the union of the batches), the summed loss and batch
    size, and whether any rank was interrupted."""
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    grads = [p.grad for p in params]
    flags = [loss, loss.new_tensor(float(batch_n)), loss.new_tensor(float(interrupt.requested))]
    extra = torch.stack(flags).to(grads[0].dtype if grads else loss.dtype)
    distributed.all_reduce_sum([*grads, extra])
    total, n, stop = extra.tolist()
    return loss.new_tensor(total), int(n), stop > 0


def _gather_rng_states(ctx: distributed.Context | None) -> list[dict[str, Any]] | None:
    """Every rank's RNG state (a collective), so each rank resumes its own stream."""
    if ctx is None:
        return None
    states: list[Any] = [None] * ctx.world_size
    torch.distributed.all_gather_object(states, _rng_state())
    return states


def _format_record(r: dict[str, float]) -> str:
    parts = [f"epoch {int(r['epoch'])}", f"train ELBO {r['train_elbo']:.2f}"]
    if "val_elbo" in r:
        parts.append(f"val ELBO {r['val_elbo']:.2f} (KL {r['val_kl']:.2f})")
    parts.append(f"{r['examples_per_s']:.0f} ex/s")
    return " | ".join(parts)


def _diverged_message(bad_step: int, run_path: Path | None) -> str:
    where = f"at step {bad_step}" if bad_step >= 0 else "during the last steps"
    resume = (
        f" The last good checkpoint is {run_path / CHECKPOINT_NAME}; resume from it with a "
        "lower learning rate (pyro-vae train --resume RUN_DIR --lr ...)."
        if run_path is not None and (run_path / CHECKPOINT_NAME).exists()
        else ""
    )
    return (
        f"The loss became NaN or infinite {where}. Likely causes: a learning rate that is "
        "too high, a likelihood scale collapsing to zero, or extreme values in the data." + resume
    )
