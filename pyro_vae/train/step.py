"""One optimisation step of :func:`~pyro_vae.train.loop.fit`: the loss and its gradient
(Pyro path or a captured graph), the sum over ranks under ``torchrun``, the NaN policy,
gradient clipping and the optimizer update, accumulated into the epoch's running totals."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from pyro_vae import distributed
from pyro_vae.train.capture import CapturedStep
from pyro_vae.train.interrupt import InterruptFlag
from pyro_vae.train.records import TrainingDivergedError, diverged_message

__all__ = ["NAN_POLICIES", "EpochMeter", "Stepper"]

#: Values of ``fit(on_nan=...)``.
NAN_POLICIES = ("raise", "skip", "reduce_lr")
#: Bad steps in a row after which ``"skip"`` and ``"reduce_lr"`` give up.
MAX_BAD_RUN = 10


@dataclass
class EpochMeter:
    """Running totals of one epoch; ``loss_sum`` stays on the device. ``seen`` counts the
    examples of the whole epoch (restored on a mid-epoch resume), ``seen_now`` those of
    this call, for the throughput. With gradient clipping, ``grad_norm_sum`` adds up the
    gradient norms before clipping (on the device) over ``grad_norm_steps`` steps."""

    loss_sum: torch.Tensor
    grad_norm_sum: torch.Tensor
    seen: int = 0
    seen_now: int = 0
    skipped: int = 0
    bad_run: int = 0
    grad_norm_steps: int = 0
    bad_step: torch.Tensor = field(default_factory=lambda: torch.tensor(-1))
    started: float = field(default_factory=time.perf_counter)

    @classmethod
    def new(
        cls,
        device: torch.device,
        loss_sum: torch.Tensor | None = None,
        seen: int = 0,
        grad_norm_sum: torch.Tensor | None = None,
        grad_norm_steps: int = 0,
    ) -> EpochMeter:
        """Totals of a new epoch, or of one continued from a mid-epoch checkpoint."""
        total, norms = torch.zeros((), device=device), torch.zeros((), device=device)
        if loss_sum is not None:
            total += loss_sum.to(device)
        if grad_norm_sum is not None:
            norms += grad_norm_sum.to(device)
        bad = torch.full((), -1, dtype=torch.long, device=device)
        return cls(total, norms, seen=seen, grad_norm_steps=grad_norm_steps, bad_step=bad)

    @property
    def mean_grad_norm(self) -> float:
        """The mean gradient norm before clipping over the steps so far (a host sync)."""
        return self.grad_norm_sum.item() / max(self.grad_norm_steps, 1)

    def check_finite(self, run_path: Path | None) -> float:
        """The running loss as a float (one host sync); raises if it is not finite."""
        total = self.loss_sum.item()
        if not math.isfinite(total):
            raise TrainingDivergedError(diverged_message(int(self.bad_step), run_path))
        return total

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.started


class Stepper:
    r"""Runs one step on a batch and updates an :class:`EpochMeter`.

    :param loss_fn: the objective as a module, ``elbo(model, guide)``.
    :param params: the trainable parameters.
    :param optim: the optimizer over ``params``.
    :param captured: a :class:`~pyro_vae.train.capture.CapturedStep`, or ``None`` for
        the Pyro path.
    :param set_step: an objective's schedule hook (``BetaELBO.set_step``), or ``None``.
    :param ctx: the ``torchrun`` process group, or ``None``.
    :param on_nan: one of :data:`NAN_POLICIES`.
    :param run_path: the run directory, named in the divergence message.
    :param clip_grad_norm: the largest norm of the gradient (of all parameters together)
        the optimizer is given; a larger one is scaled down to it
        (:func:`torch.nn.utils.clip_grad_norm_`) once it is complete, i.e. summed over the
        ranks under ``torchrun``. ``None``: no clipping.
    """

    def __init__(
        self,
        loss_fn: Callable[..., torch.Tensor],
        params: list[torch.Tensor],
        optim: torch.optim.Optimizer,
        *,
        captured: CapturedStep | None,
        set_step: Callable[[int], None] | None,
        ctx: distributed.Context | None,
        on_nan: str,
        run_path: Path | None,
        clip_grad_norm: float | None = None,
    ) -> None:
        self.loss_fn, self.params, self.optim = loss_fn, params, optim
        self.captured, self.set_step, self.ctx = captured, set_step, ctx
        self.guard, self.on_nan, self.run_path = on_nan != "raise", on_nan, run_path
        self.clip_grad_norm = clip_grad_norm

    def __call__(
        self,
        x: torch.Tensor,
        kwargs: dict[str, torch.Tensor],
        n: int,
        step: int,
        meter: EpochMeter,
        interrupt: InterruptFlag,
    ) -> None:
        """Step number ``step + 1`` on ``x`` (``n`` examples); under ``torchrun`` it also
        shares ``interrupt`` across the ranks."""
        if self.set_step is not None:
            self.set_step(step)  # the checkpointed global step: exact on resume
        if self.captured is not None:
            loss = self.captured.step(x, **kwargs)  # sets every p.grad, like backward()
        else:
            loss = self.loss_fn(x, **kwargs)
            self.optim.zero_grad(set_to_none=True)
            loss.backward()
        loss = loss.detach()
        if self.ctx is not None:  # sum gradients, loss, batch size and Ctrl-C over ranks
            loss, n, interrupt.requested = all_reduce_step(self.params, loss, n, interrupt)
        step += 1
        if self.guard and not all_finite(loss, self.params):
            meter.skipped, meter.bad_run = meter.skipped + 1, meter.bad_run + 1
            self.optim.zero_grad(set_to_none=True)
            if meter.bad_run >= MAX_BAD_RUN:
                raise TrainingDivergedError(diverged_message(step, self.run_path))
            if self.on_nan == "reduce_lr":
                for group in self.optim.param_groups:
                    group["lr"] *= 0.5
            return
        meter.bad_run = 0
        if self.clip_grad_norm is not None:  # the gradient is complete (summed over ranks)
            norm = torch.nn.utils.clip_grad_norm_(self.params, self.clip_grad_norm)
            meter.grad_norm_sum += norm.detach()
            meter.grad_norm_steps += 1
        self.optim.step()
        meter.loss_sum += loss
        if not self.guard:  # the first bad step, found without a host sync
            first_bad = (meter.bad_step < 0) & ~torch.isfinite(loss)
            meter.bad_step = torch.where(first_bad, step, meter.bad_step)
        meter.seen += n
        meter.seen_now += n


def all_finite(loss: torch.Tensor, params: list[torch.Tensor]) -> bool:
    """Whether the loss and every gradient are finite (one host sync)."""
    flags = [torch.isfinite(loss).all()]
    flags += [torch.isfinite(p.grad).all() for p in params if p.grad is not None]
    return bool(torch.stack(flags).all())


def all_reduce_step(
    params: list[torch.Tensor], loss: torch.Tensor, batch_n: int, interrupt: InterruptFlag
) -> tuple[torch.Tensor, int, bool]:
    """One collective per step: the summed gradients (the ELBO sums over examples, so the
    update equals one process taking the union of the batches), the summed loss and batch
    size, and whether any rank was interrupted."""
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    grads = [p.grad for p in params]
    flags = [loss, loss.new_tensor(float(batch_n)), loss.new_tensor(float(interrupt.requested))]
    extra = torch.stack(flags).to(grads[0].dtype if grads else loss.dtype)  # type: ignore[union-attr]
    distributed.all_reduce_sum([*grads, extra])  # type: ignore[list-item]
    total, n, stop = extra.tolist()
    return loss.new_tensor(total), int(n), stop > 0
