r"""Multi-process training and evaluation with :mod:`torch.distributed` (DDP-style).

Launch with ``torchrun``; :func:`init_from_env` starts the process group (gloo on the CPU,
nccl on CUDA) from the variables ``torchrun`` sets. Inside :func:`pyro_vae.fit` every rank
trains on its shard of the data (a :class:`~torch.utils.data.DistributedSampler`) and the
gradients are **summed** over the ranks with one ``all_reduce`` per step.

Why a sum: Pyro's ELBO sums over the examples of a batch, so the gradient of one process
with batch :math:`N B` is the sum of the gradients of :math:`N` processes with batch
:math:`B` each. DDP's default *averaging* would shrink every step by :math:`1/N` (invisible
with Adam up to its :math:`\epsilon`, visible with SGD). The summed step is the one a
single process takes with the whole batch.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as torch_dist
from torch.utils.data import DistributedSampler

__all__ = [
    "Context",
    "ShardedBatches",
    "all_reduce_sum",
    "broadcast_from_main",
    "context",
    "gather_rows",
    "init_from_env",
    "rank_device",
    "shard",
]


@dataclass(frozen=True)
class Context:
    """The process group as seen by one rank."""

    rank: int
    world_size: int

    @property
    def is_main(self) -> bool:
        """Rank 0 alone writes logs, checkpoints and figures."""
        return self.rank == 0


def context() -> Context | None:
    """The current process group, or ``None`` when :mod:`torch.distributed` is not
    initialised (plain single-process use)."""
    if torch_dist.is_available() and torch_dist.is_initialized():
        return Context(torch_dist.get_rank(), torch_dist.get_world_size())
    return None


def init_from_env(device: str | torch.device = "cpu") -> Context | None:
    """Join the process group described by ``torchrun``'s environment (``RANK``,
    ``WORLD_SIZE``, ``MASTER_ADDR``, ...). Returns ``None`` outside ``torchrun``.

    :param device: ``"cpu"`` uses the gloo backend; ``"cuda"`` uses nccl and pins this
        rank to GPU ``LOCAL_RANK``.
    :returns: the :class:`Context`, and for CUDA the rank's device is made current.
    """
    if "WORLD_SIZE" not in os.environ or int(os.environ["WORLD_SIZE"]) < 2:
        return None
    if not torch_dist.is_available():
        raise ValueError("torch.distributed is not available in this torch build.")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"Device {device} was requested but CUDA is not available here; use --device cpu."
        )
    if not torch_dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        torch_dist.init_process_group(backend=backend)
    return context()


def rank_device(device: str | torch.device) -> torch.device:
    """``cuda`` becomes ``cuda:LOCAL_RANK`` under ``torchrun``; other devices are kept."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None and "LOCAL_RANK" in os.environ:
        return torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    return device


class ShardedBatches:
    """Batches of this rank's shard of tensors already on the device.

    The order comes from a :class:`~torch.utils.data.DistributedSampler` (shuffled with
    ``seed + epoch``, padded so every rank takes the same number of steps), so it depends
    only on the seed and the epoch: every rank agrees without communication, and a resumed
    run sees the same order.
    """

    def __init__(
        self,
        x: torch.Tensor,
        y: torch.Tensor | None,
        batch_size: int,
        ctx: Context,
        seed: int,
    ) -> None:
        self.x, self.y, self.batch_size = x, y, batch_size
        self.sampler: DistributedSampler[int] = DistributedSampler(
            range(x.shape[0]),  # type: ignore[arg-type]
            num_replicas=ctx.world_size,
            rank=ctx.rank,
            shuffle=True,
            seed=seed,
        )

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return math.ceil(len(self.sampler) / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
        order = torch.tensor(list(self.sampler), device=self.x.device)
        for idx in order.split(self.batch_size):
            yield self.x[idx], (None if self.y is None else self.y[idx])


def all_reduce_sum(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """Sum tensors over the ranks in place with **one** collective (flattened)."""
    if not tensors:
        return tensors
    flat = torch.cat([t.reshape(-1) for t in tensors])
    torch_dist.all_reduce(flat, op=torch_dist.ReduceOp.SUM)
    offset = 0
    for t in tensors:
        t.copy_(flat[offset : offset + t.numel()].view_as(t))
        offset += t.numel()
    return tensors


def shard(n: int, ctx: Context) -> slice:
    """The contiguous slice of ``range(n)`` evaluated by this rank."""
    per_rank = math.ceil(n / ctx.world_size)
    return slice(min(n, ctx.rank * per_rank), min(n, (ctx.rank + 1) * per_rank))


def gather_rows(local: torch.Tensor, n: int, ctx: Context) -> torch.Tensor:
    """Concatenate the per-rank results of :func:`shard` back into ``n`` rows, in order,
    on every rank."""
    per_rank = math.ceil(n / ctx.world_size)
    padded = local.new_zeros((per_rank, *local.shape[1:]))
    padded[: local.shape[0]] = local
    pieces = [torch.empty_like(padded) for _ in range(ctx.world_size)]
    torch_dist.all_gather(pieces, padded)
    return torch.cat(pieces)[:n]


def broadcast_from_main(tensors: list[torch.Tensor]) -> None:
    """Copy rank 0's values into every rank's tensors (the start of training, as DDP does),
    so ranks whose models were initialised differently still train one model."""
    with torch.no_grad():
        for t in tensors:
            torch_dist.broadcast(t, src=0)
