r"""What happens at the end of each epoch of :func:`~pyro_vae.train.loop.fit` besides the
record: a learning-rate schedule steps, and early stopping decides whether to go on.

- :func:`lr_scheduler` makes the factory of a ``torch.optim.lr_scheduler`` schedule by name:
  ``"step"`` (:class:`~torch.optim.lr_scheduler.StepLR`), ``"cosine"``
  (:class:`~torch.optim.lr_scheduler.CosineAnnealingLR` over the epochs of the run) or
  ``"plateau"`` (:class:`~torch.optim.lr_scheduler.ReduceLROnPlateau` on the validation
  ELBO, which rises, so ``mode="max"``). :class:`EpochSchedule` steps it once per epoch.
- :class:`EarlyStopping` stops after ``patience`` epochs without a better validation ELBO
  and keeps the best epoch's parameters, which :class:`EpochEnd` puts back when training
  ends.

Every piece has ``state_dict`` / ``load_state_dict``; the training state checkpoints them
(keys ``scheduler`` and ``early_stopping``), so a resumed run follows the same schedule and
stops at the same epoch with the same parameters as an uninterrupted one.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from functools import partial
from typing import Any

import torch
from torch.optim import lr_scheduler as schedulers

from pyro_vae._checks import check_count, check_number

__all__ = [
    "MONITOR",
    "SCHEDULES",
    "EarlyStopping",
    "EpochEnd",
    "EpochSchedule",
    "check_scheduler",
    "lr_scheduler",
    "make_schedule",
]

#: Names of :func:`lr_scheduler` (and of ``fit(scheduler=...)``, ``--lr-schedule``).
SCHEDULES = ("step", "cosine", "plateau")
#: The record entry that early stopping and the plateau schedule watch (higher is better).
MONITOR = "val_elbo"

Scheduler = Any  # an LRScheduler or ReduceLROnPlateau
SchedulerFactory = Callable[[torch.optim.Optimizer], Scheduler]
Weights = dict[str, Any]

#: Entries of a scheduler's ``state_dict`` that are progress, not settings.
_PROGRESS = {"base_lrs", "last_epoch", "best", "num_bad_epochs", "cooldown_counter", "mode_worse"}


def lr_scheduler(
    name: str,
    *,
    epochs: int | None = None,
    step_size: int = 10,
    gamma: float = 0.1,
    patience: int = 5,
) -> SchedulerFactory:
    r"""The factory ``optimizer -> scheduler`` of a named schedule, stepped once per epoch.

    - ``"step"``: :math:`\eta_e = \eta_0 \gamma^{\lfloor e / s \rfloor}` after ``e``
      epochs, with ``s = step_size``;
    - ``"cosine"``: :math:`\eta_e = \tfrac{1}{2} \eta_0 (1 + \cos(\pi e / E))` over the
      ``E = epochs`` of the run;
    - ``"plateau"``: :math:`\eta \leftarrow \gamma \eta` after ``patience`` epochs without
      a better validation ELBO.

    :param name: one of :data:`SCHEDULES`.
    :param epochs: the epochs of the run (needed by ``"cosine"``).
    :param step_size: epochs between two decays of ``"step"``.
    :param gamma: the decay factor of ``"step"`` and ``"plateau"``, in ``(0, 1)``.
    :param patience: epochs without improvement before ``"plateau"`` decays.
    :raises ValueError: for an unknown name or a bad setting.
    """
    if name not in SCHEDULES:
        raise ValueError(
            f"Unknown learning-rate schedule {name!r}; use one of {', '.join(SCHEDULES)}, or "
            "pass a function optimizer -> torch.optim.lr_scheduler scheduler."
        )
    if name == "cosine":
        if epochs is None:
            raise ValueError("The cosine schedule anneals over the epochs; pass epochs=N.")
        check_count("epochs", epochs, 0)
        return partial(lr_scheduler_cls("cosine"), T_max=max(epochs, 1))
    check_number("gamma (--lr-gamma)", gamma, positive=True)
    if gamma >= 1:
        raise ValueError(f"gamma (--lr-gamma) must be below 1 to decay, got {gamma!r}.")
    if name == "step":
        check_count("step_size (--lr-step-size)", step_size)
        return partial(lr_scheduler_cls("step"), step_size=step_size, gamma=gamma)
    check_count("patience (--lr-patience)", patience, 0)
    return partial(lr_scheduler_cls("plateau"), mode="max", factor=gamma, patience=patience)


def lr_scheduler_cls(name: str) -> type:
    """The torch class of a named schedule."""
    return {
        "step": schedulers.StepLR,
        "cosine": schedulers.CosineAnnealingLR,
        "plateau": schedulers.ReduceLROnPlateau,
    }[name]


def check_scheduler(spec: Any) -> None:
    """Refuse what ``fit(scheduler=...)`` cannot take, before any work is done."""
    if spec is None or callable(spec):
        return
    if isinstance(spec, str) and spec in SCHEDULES:
        return
    raise ValueError(
        f"scheduler must be one of {', '.join(map(repr, SCHEDULES))}, a function optimizer -> "
        f"scheduler (e.g. functools.partial(StepLR, step_size=5)) or None; got {spec!r}."
    )


def make_schedule(
    spec: str | SchedulerFactory | None,
    optimizer: torch.optim.Optimizer,
    *,
    epochs: int,
    has_validation: bool,
) -> EpochSchedule | None:
    """The schedule ``fit(scheduler=spec)`` asks for, over ``optimizer``.

    :raises ValueError: for a bad ``spec``, or a plateau schedule without validation data
        or watching for a decrease.
    """
    check_scheduler(spec)
    if spec is None:
        return None
    if isinstance(spec, str):
        spec = lr_scheduler(spec, epochs=epochs)
    initial = [group["lr"] for group in optimizer.param_groups]
    scheduler = spec(optimizer)
    if not hasattr(scheduler, "step") or not hasattr(scheduler, "state_dict"):
        raise ValueError(
            f"The scheduler factory returned {type(scheduler).__name__}, not a "
            "torch.optim.lr_scheduler scheduler over the optimizer it was given."
        )
    if isinstance(scheduler, schedulers.ReduceLROnPlateau):
        if not has_validation:
            raise ValueError(
                "The plateau schedule watches the validation ELBO; pass validation_data "
                "(or --lr-schedule step / cosine)."
            )
        if scheduler.mode != "max":
            raise ValueError(
                "ReduceLROnPlateau is given the validation ELBO, which rises as the model "
                "improves; create it with mode='max'."
            )
    return EpochSchedule(scheduler, optimizer, initial)


class EpochSchedule:
    """A ``torch.optim.lr_scheduler`` scheduler stepped once per epoch: with the epoch's
    validation ELBO for :class:`~torch.optim.lr_scheduler.ReduceLROnPlateau`, without
    argument otherwise.

    :param scheduler: the scheduler.
    :param optimizer: the optimizer it drives.
    :param initial_lrs: the learning rates of the parameter groups before the schedule.
    """

    def __init__(
        self, scheduler: Scheduler, optimizer: torch.optim.Optimizer, initial_lrs: list[float]
    ) -> None:
        self.scheduler, self.optimizer = scheduler, optimizer
        self.initial_lrs = list(initial_lrs)
        self.watches = isinstance(scheduler, schedulers.ReduceLROnPlateau)

    def step(self, record: dict[str, float]) -> None:
        """Step after the epoch whose record is ``record``."""
        if self.watches:
            self.scheduler.step(record[MONITOR])
        else:
            self.scheduler.step()

    def settings(self) -> dict[str, Any]:
        """The scheduler's settings (its ``state_dict`` less the progress)."""
        state = self.scheduler.state_dict()
        return {k: v for k, v in state.items() if not k.startswith("_") and k not in _PROGRESS}

    def state_dict(self) -> dict[str, Any]:
        return {
            "kind": type(self.scheduler).__name__,
            "scheduler": self.scheduler.state_dict(),
            "initial_lrs": self.initial_lrs,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue a checkpointed schedule: its progress (epochs counted, the plateau's
        best value and counters) comes from ``state``, its settings are this schedule's,
        so settings given again on resume apply from there on: a cosine schedule given more
        epochs before its end anneals from the current learning rate to zero at the new
        last epoch; one that has ended stays at zero (with a warning). A checkpoint of
        another kind of schedule has no progress to continue: this one then starts at the
        resumed epoch, from the current learning rate (with a warning)."""
        kind = type(self.scheduler).__name__
        if state["kind"] != kind:
            warnings.warn(
                f"The checkpoint was trained with the {state['kind']} learning-rate "
                f"schedule; the {kind} schedule starts now, from the current learning rate.",
                stacklevel=2,
            )
            return
        saved = state["scheduler"]
        ended = "T_max" in saved and saved["last_epoch"] >= saved["T_max"]
        if ended and self.settings().get("T_max", 0) > saved["T_max"]:
            warnings.warn(
                f"The cosine schedule ended at epoch {saved['T_max']} with the learning rate "
                "at its minimum, where the added epochs stay; start a new run to anneal over "
                "more epochs.",
                stacklevel=2,
            )
        self.scheduler.load_state_dict({**saved, **self.settings()})
        self.initial_lrs = list(state.get("initial_lrs", self.initial_lrs))

    def set_initial_lr(self, lr: float) -> None:
        """Make ``lr`` the initial learning rate of the schedule: where it differs from the
        one the schedule started with, every learning rate of the schedule (current and
        base) is scaled by their ratio; where it is the same, nothing changes."""
        for j, group in enumerate(self.optimizer.param_groups):
            initial = self.initial_lrs[j] if j < len(self.initial_lrs) else group["lr"]
            if initial == lr:
                continue
            group["lr"] *= lr / initial
            if "initial_lr" in group:
                group["initial_lr"] = lr
            base = getattr(self.scheduler, "base_lrs", None)
            if base is not None and j < len(base):
                base[j] = lr
        self.initial_lrs = [lr] * len(self.optimizer.param_groups)


class EarlyStopping:
    r"""Stop when the validation ELBO has not improved for ``patience`` epochs.

    Epoch :math:`e` improves on the best so far when
    :math:`\mathrm{ELBO}_e > \mathrm{ELBO}_\mathrm{best} + \delta` (``min_delta``); the
    parameters of the best epoch are kept, and put back when training ends (also when it
    ends by ``epochs`` or a callback rather than by patience).

    :param patience: epochs without improvement after which training stops.
    :param min_delta: the least increase, in nats per example, that counts as improvement.
    :param restore_best: put the best epoch's parameters back when training ends.
    """

    def __init__(self, patience: int, min_delta: float = 0.0, restore_best: bool = True) -> None:
        self.patience = check_count("patience", patience)
        self.min_delta = float(check_number("min_delta", min_delta, minimum=0))
        self.restore_best = restore_best
        #: best validation ELBO so far, its epoch (1-based; 0: none yet) and parameters
        self.best, self.best_epoch = -math.inf, 0
        self.best_weights: Weights | None = None
        #: epochs in a row without improvement
        self.bad_epochs = 0

    @property
    def should_stop(self) -> bool:
        return self.bad_epochs >= self.patience

    def update(self, epoch: int, value: float, weights: Callable[[], Weights]) -> bool:
        """Take the validation ELBO ``value`` of epoch ``epoch`` (1-based); ``weights``
        copies the current parameters. Returns whether to stop."""
        if value > self.best + self.min_delta:
            self.best, self.best_epoch, self.bad_epochs = value, epoch, 0
            self.best_weights = weights() if self.restore_best else None
        else:
            self.bad_epochs += 1
        return self.should_stop

    def state_dict(self) -> dict[str, Any]:
        return {
            "best": self.best,
            "best_epoch": self.best_epoch,
            "bad_epochs": self.bad_epochs,
            "best_weights": self.best_weights,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.best_epoch = float(state["best"]), int(state["best_epoch"])
        self.bad_epochs = int(state["bad_epochs"])
        self.best_weights = state.get("best_weights")


class EpochEnd:
    """The end of each epoch: early stopping decides, then the schedule steps; and the
    end of training, where the best parameters are put back.

    :param schedule: the learning-rate schedule, or ``None``.
    :param early_stopping: the early stopping, or ``None``.
    :param weights: copies the current parameters (modules and param store).
    :param load_weights: puts parameters copied by ``weights`` back.
    """

    def __init__(
        self,
        schedule: EpochSchedule | None,
        early_stopping: EarlyStopping | None,
        weights: Callable[[], Weights],
        load_weights: Callable[[Weights], None],
    ) -> None:
        self.schedule, self.early_stopping = schedule, early_stopping
        self.weights, self.load_weights = weights, load_weights

    @property
    def stateful(self) -> dict[str, Any]:
        """The pieces a checkpoint saves, by checkpoint key."""
        pieces = {"scheduler": self.schedule, "early_stopping": self.early_stopping}
        return {k: v for k, v in pieces.items() if v is not None}

    @property
    def stopped(self) -> bool:
        """Whether early stopping has already ended the run (e.g. in a resumed checkpoint)."""
        return self.early_stopping is not None and self.early_stopping.should_stop

    def __call__(self, record: dict[str, float]) -> bool:
        """After the epoch of ``record`` (callbacks done): returns whether to stop."""
        stop = False
        if self.early_stopping is not None:
            epoch = int(record["epoch"])
            stop = self.early_stopping.update(epoch, record[MONITOR], self.weights)
        if self.schedule is not None:
            self.schedule.step(record)
        return stop

    def restore_best(self, last_epoch: int) -> Weights | None:
        """Put the best epoch's parameters back when they are not those of ``last_epoch``
        (the epoch training ended with); returns the parameters they replace, or ``None``
        when nothing changes."""
        es = self.early_stopping
        if es is None or es.best_weights is None or es.best_epoch == last_epoch:
            return None
        trained = self.weights()
        self.load_weights(es.best_weights)
        return trained
