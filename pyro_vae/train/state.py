"""The training state that a checkpoint saves and restores: random generators, modules, the
param store, the optimizer, the data order with the position inside the epoch, the
transform's generator and the history.

A checkpoint is the dict of :meth:`TrainingState.state_dict`, written with
:func:`~pyro_vae.train.checkpoint.save_checkpoint`. Keys: ``epoch`` (epochs finished, or
the current epoch for a mid-epoch checkpoint), ``step``, ``modules``, ``param_store``,
``optimizer``, ``rng``, ``rng_per_rank``, ``data`` (the batching policy's ``state_dict``),
``transform``, ``history``, ``config``; a mid-epoch checkpoint adds ``batch_in_epoch``,
``loss_sum`` and ``seen`` (and ``grad_norm_sum``, ``grad_norm_steps`` with gradient
clipping). With a learning-rate schedule or early stopping, ``scheduler`` and
``early_stopping`` hold their states (:mod:`~pyro_vae.train.schedule`). When early stopping
has put the best epoch's parameters back at the end, ``modules`` and ``param_store`` hold
those (what the run produced) and ``trained_weights`` the parameters of the last epoch,
from which a resumed run continues training.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch
from torch import nn

from pyro_vae import distributed
from pyro_vae.train import batches as batching
from pyro_vae.train.checkpoint import load_module_states
from pyro_vae.train.params import load_param_store, param_store_state
from pyro_vae.train.records import History
from pyro_vae.train.step import EpochMeter

__all__ = ["TrainingState", "gather_rng_states", "rng_state", "set_rng_state"]


def rng_state() -> dict[str, Any]:
    """The states of torch's, Python's and numpy's global generators (and CUDA's)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "random": random.getstate(),
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],  # type: ignore[attr-defined]
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` saved."""
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["random"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def gather_rng_states(ctx: distributed.Context | None) -> list[dict[str, Any]] | None:
    """Every rank's RNG state (a collective), so each rank resumes its own stream."""
    if ctx is None:
        return None
    states: list[Any] = [None] * ctx.world_size
    torch.distributed.all_gather_object(states, rng_state())
    return states


class TrainingState:
    """Where training stands, and everything needed to continue it exactly.

    :param modules: the modules of model and guide.
    :param optim: the optimizer.
    :param batches: the batching policy (``state_dict``/``load_state_dict``).
    :param param_names: param-store sites outside the modules.
    :param transform: the batch transform, whose ``state_dict`` (if any) is saved.
    :param ctx: the ``torchrun`` process group, or ``None``.
    :param config: the run's description, saved as is.
    """

    def __init__(
        self,
        modules: list[nn.Module],
        optim: torch.optim.Optimizer,
        batches: Any,
        *,
        param_names: list[str],
        transform: Any,
        ctx: distributed.Context | None,
        config: dict[str, Any] | None,
        stateful: dict[str, Any] | None = None,
    ) -> None:
        self.modules, self.optim, self.batches = modules, optim, batches
        self.param_names, self.transform = param_names, transform
        self.ctx, self.config = ctx, config or {}
        #: more pieces with ``state_dict``/``load_state_dict``, saved under their keys
        self.stateful = stateful or {}
        self.epoch, self.step = 0, 0
        self.history = History()
        #: the running totals (:meth:`EpochMeter.new` arguments) of the epoch a mid-epoch
        #: checkpoint stopped in
        self.partial: dict[str, Any] | None = None

    def weights(self) -> dict[str, Any]:
        """Copies of the parameters: the modules' state dicts and the param-store sites."""
        return {
            "modules": [
                {k: v.detach().clone() for k, v in m.state_dict().items()} for m in self.modules
            ],
            "param_store": param_store_state(self.param_names),
        }

    def load_weights(self, weights: dict[str, Any]) -> None:
        """Put back parameters copied by :meth:`weights` (in place)."""
        load_module_states(self.modules, weights["modules"])
        load_param_store(weights.get("param_store", {}))

    def state_dict(self, epoch: int, meter: EpochMeter | None = None) -> dict[str, Any]:
        """The checkpoint after ``epoch`` epochs, or inside epoch ``epoch`` (0-based) when
        ``meter`` holds its running totals. A collective under ``torchrun``: call it on
        every rank."""
        partial_epoch = (
            {
                "batch_in_epoch": self.batches.batches_done,
                "loss_sum": meter.loss_sum.detach().cpu(),
                "seen": meter.seen,
                "grad_norm_sum": meter.grad_norm_sum.detach().cpu(),
                "grad_norm_steps": meter.grad_norm_steps,
            }
            if meter is not None
            else {}
        )
        return {
            "epoch": epoch,
            "step": self.step,
            **partial_epoch,
            "modules": [m.state_dict() for m in self.modules],
            "param_store": param_store_state(self.param_names),
            "optimizer": self.optim.state_dict(),
            "rng": rng_state(),
            "rng_per_rank": gather_rng_states(self.ctx),
            "data": self.batches.state_dict(),
            "transform": getattr(self.transform, "state_dict", lambda: None)(),
            "history": self.history.records,
            "config": self.config,
            **{key: piece.state_dict() for key, piece in self.stateful.items()},
        }

    def load(self, ckpt: dict[str, Any], lr: float | None = None) -> None:
        """Continue from a checkpoint; ``lr`` (if given) replaces the learning rate of
        every parameter group of the restored optimizer."""
        # where early stopping put the best parameters back, training goes on from the last
        self.load_weights(ckpt.get("trained_weights") or ckpt)
        try:
            self.optim.load_state_dict(ckpt["optimizer"])
        except (ValueError, KeyError) as e:
            raise ValueError(f"The checkpoint's optimizer state does not fit: {e}") from None
        if lr is not None:
            for group in self.optim.param_groups:
                group["lr"] = lr
        ctx, per_rank = self.ctx, ckpt.get("rng_per_rank")
        if ctx is not None and per_rank is not None and len(per_rank) == ctx.world_size:
            set_rng_state(per_rank[ctx.rank])
        elif ctx is None or ctx.is_main:
            set_rng_state(ckpt["rng"])
        if "data" in ckpt:
            self.batches.load_state_dict(ckpt["data"])
        else:
            _load_legacy_order(self.batches, ckpt)
        if self.transform is not None and ckpt.get("transform") is not None:
            self.transform.load_state_dict(ckpt["transform"])
        for key, piece in self.stateful.items():
            if ckpt.get(key) is not None:  # else it starts now, as it would in a new run
                piece.load_state_dict(ckpt[key])
        self.history.records = list(ckpt["history"])
        self.epoch, self.step = int(ckpt["epoch"]), int(ckpt["step"])
        if int(ckpt.get("batch_in_epoch", 0)):
            self.partial = {"loss_sum": ckpt["loss_sum"], "seen": int(ckpt["seen"])}
            if "grad_norm_sum" in ckpt:
                self.partial["grad_norm_sum"] = ckpt["grad_norm_sum"]
                self.partial["grad_norm_steps"] = int(ckpt["grad_norm_steps"])


def _load_legacy_order(batches: Any, ckpt: dict[str, Any]) -> None:
    """The data order of a checkpoint written before the batching policies kept their
    position (``data_generator``, ``epoch_generator``, ``batch_in_epoch``)."""
    epoch, done = int(ckpt["epoch"]), int(ckpt.get("batch_in_epoch", 0))
    gen, epoch_gen = ckpt.get("data_generator"), ckpt.get("epoch_generator")
    if isinstance(batches, batching.ShardedBatches):
        batches.load_state_dict({"epoch": epoch, "position": done * batches.batch_size})
    elif isinstance(batches, batching.LoaderBatches) and gen is not None:
        size = batches.loader.batch_size
        state = {"generator": gen, "epoch_generator": epoch_gen, "epoch": epoch}
        batches.load_state_dict({**state, "batches": done, "batch_size": size})
    elif isinstance(batches, batching.TensorBatches) and gen is not None:
        batches.generator.set_state(epoch_gen if done else gen)  # type: ignore[arg-type]
        if done:
            batches.start_epoch(epoch)
            batches.position = min(done * batches.batch_size, batches.order.numel())
