r"""Data for :func:`~pyro_vae.train.loop.fit`: checks, and batching policies that know their
place in the data.

A batching policy yields ``(x, kwargs)`` pairs: ``x`` is the batch passed first to the loss,
``kwargs`` the keyword tensors passed with it (``y`` for labelled data, which reaches the
model as its second argument, ``model(x, y)``; ``x_labelled`` and ``y_labelled`` for
:class:`SemiSupervisedBatches`). Its position inside the epoch is part
of its ``state_dict`` (the epoch's order and the number of examples already handed out),
so a checkpoint taken in the middle of an epoch resumes exactly, even with another batch
size for tensor data: the rest of the saved order is split into batches of the new size.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, TensorDataset

from pyro_vae import distributed

__all__ = [
    "Batch",
    "Data",
    "LoaderBatches",
    "SemiSupervisedBatches",
    "SemiSupervisedData",
    "ShardedBatches",
    "TensorBatches",
    "as_xy",
    "check_x",
    "eval_subset",
    "first_batch",
    "make_batches",
    "validation_tensors",
]

Batch = tuple[torch.Tensor, dict[str, torch.Tensor]]


#: How a semi-supervised epoch mixes labelled and unlabelled batches
#: (:class:`SemiSupervisedBatches`).
LABELLED_SCHEDULES = ("paired", "interleaved")


@dataclass(frozen=True)
class SemiSupervisedData:
    """Training data of a semi-supervised model: ``labelled = (x, y)`` and the unlabelled
    ``x``. Passed to :func:`~pyro_vae.train.loop.fit` it is batched by
    :class:`SemiSupervisedBatches` with the ``schedule`` of :data:`LABELLED_SCHEDULES`
    (``"paired"``: every step pairs an unlabelled batch with a labelled one;
    ``"interleaved"``: Pyro's SS-VAE example, a labelled batch every so many unlabelled
    ones, each labelled example once per epoch)."""

    labelled: tuple[torch.Tensor, torch.Tensor]
    unlabelled: torch.Tensor
    schedule: str = "paired"

    def __post_init__(self) -> None:
        if self.schedule not in LABELLED_SCHEDULES:
            raise ValueError(
                f"schedule={self.schedule!r} is not one of {LABELLED_SCHEDULES}; "
                "use 'paired' or 'interleaved'."
            )


Data = torch.Tensor | Sequence[torch.Tensor] | Dataset | DataLoader | SemiSupervisedData


def as_xy(data: Any) -> tuple[torch.Tensor, torch.Tensor | None] | None:
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


def check_x(x: torch.Tensor, what: str) -> None:
    """Refuse empty, non-numeric or non-finite data with a message naming the fix.

    Integer data pass: whether a model accepts them (counts) is the likelihood's decision
    (its ``check_data``), not the training loop's."""
    if x.shape[0] == 0:
        raise ValueError(f"The {what} is empty; pass at least one example.")
    if x.dtype == torch.bool or x.is_complex():
        raise ValueError(
            f"The {what} has dtype {x.dtype}; pass real numbers (e.g. x.float() for 0/1 data)."
        )
    finite = torch.isfinite(x)
    if not finite.all():
        bad = (~finite).reshape(x.shape[0], -1).any(1).nonzero().flatten()
        raise ValueError(
            f"The {what} contains NaN or inf in {bad.numel()} examples (first at index "
            f"{bad[0].item()}); clean or drop them before training."
        )


def eval_subset(
    x: torch.Tensor, y: torch.Tensor | None, n: int
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``n`` examples drawn with a fixed generator, independent of the seed and of any
    checkpoint, so resumed and uninterrupted runs evaluate the same subset."""
    idx = torch.randperm(x.shape[0], generator=torch.Generator()).to(x.device)[:n]
    return x[idx], (None if y is None else y[idx])


def _kwargs(y: torch.Tensor | None) -> dict[str, torch.Tensor]:
    return {} if y is None else {"y": y}


class TensorBatches:
    """Shuffled index batches over tensors already on the device.

    :param x: the examples.
    :param y: their labels, passed as ``y=`` (``None``: none).
    :param batch_size: examples per batch; the last batch of an epoch may be smaller.
    """

    #: keyword tensors that hold data (transformed like ``x``).
    x_keys: tuple[str, ...] = ()

    def __init__(self, x: torch.Tensor, y: torch.Tensor | None, batch_size: int) -> None:
        self.x, self.y, self.batch_size = x, y, batch_size
        self.generator = torch.Generator()
        self.order = torch.arange(0)
        self.position = 0

    def __len__(self) -> int:
        return math.ceil(self.x.shape[0] / self.batch_size)

    @property
    def batches_done(self) -> int:
        return math.ceil(self.position / self.batch_size)

    @property
    def exhausted(self) -> bool:
        return self.position >= self.order.numel()

    def start_epoch(self, epoch: int) -> None:
        self.order = torch.randperm(self.x.shape[0], generator=self.generator)
        self.position = 0

    def __iter__(self) -> Iterator[Batch]:
        order = self.order.to(self.x.device)
        while not self.exhausted:
            idx = order[self.position : self.position + self.batch_size]
            self.position += idx.numel()
            yield self.x[idx], _kwargs(None if self.y is None else self.y[idx])

    def state_dict(self) -> dict[str, Any]:
        return {
            "generator": self.generator.get_state(),
            "order": self.order,
            "position": self.position,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])
        self.order, self.position = state["order"], int(state["position"])


class ShardedBatches(distributed.ShardedBatches):
    """This rank's shard under ``torchrun``: the order is a function of the seed and the
    epoch (:class:`~pyro_vae.distributed.ShardedBatches`), the position is saved."""

    x_keys: tuple[str, ...] = ()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.epoch, self.position = 0, 0
        self.order = torch.arange(0)

    @property
    def batches_done(self) -> int:
        return math.ceil(self.position / self.batch_size)

    @property
    def exhausted(self) -> bool:
        return self.position >= self.order.numel()

    def start_epoch(self, epoch: int) -> None:
        self.set_epoch(epoch)
        self.epoch, self.position = epoch, 0
        self.order = torch.tensor(list(self.sampler), device=self.x.device)

    def __iter__(self) -> Iterator[Batch]:  # type: ignore[override]
        while not self.exhausted:
            idx = self.order[self.position : self.position + self.batch_size]
            self.position += idx.numel()
            yield self.x[idx], _kwargs(None if self.y is None else self.y[idx])

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.start_epoch(int(state["epoch"]))
        self.position = int(state["position"])


class LoaderBatches:
    """Batches from a DataLoader, moved to the device. The position inside an epoch is a
    number of batches, so a mid-epoch checkpoint resumes only with the same batch size."""

    x_keys: tuple[str, ...] = ()

    def __init__(self, loader: DataLoader, device: torch.device) -> None:
        self.loader, self.device = loader, device
        self.generator = loader.generator if loader.generator is not None else torch.Generator()
        self.epoch_generator = self.generator.get_state()
        self.epoch, self.batches_done, self.skip = 0, 0, 0
        self.exhausted = False

    def __len__(self) -> int:
        return len(self.loader)

    def start_epoch(self, epoch: int) -> None:
        if isinstance(self.loader.sampler, DistributedSampler):
            self.loader.sampler.set_epoch(epoch)
        self.epoch = epoch
        self.epoch_generator = self.generator.get_state()
        self.batches_done, self.skip, self.exhausted = 0, 0, False

    def __iter__(self) -> Iterator[Batch]:
        for i, batch in enumerate(self.loader):
            if i < self.skip:
                continue
            self.batches_done = i + 1
            self.exhausted = i + 1 == len(self.loader)
            x = batch if isinstance(batch, torch.Tensor) else batch[0]
            # a Dataset is not checked up front: name bad values here, before they turn
            # into a NaN loss that looks like a learning-rate problem
            _check_batch(x, self.epoch, i)
            if isinstance(batch, torch.Tensor):
                yield batch.to(self.device), {}
            else:
                if len(batch) > 2:
                    raise ValueError(
                        f"The DataLoader yields {len(batch)} tensors per batch, but a batch "
                        "reaches the model as model(x) or model(x, y): make its items x or "
                        "(x, y), so that no tensor is dropped."
                    )
                y = batch[1].to(self.device) if len(batch) > 1 else None
                yield batch[0].to(self.device), _kwargs(y)

    def state_dict(self) -> dict[str, Any]:
        return {
            "generator": self.generator.get_state(),
            "epoch_generator": self.epoch_generator,
            "epoch": self.epoch,
            "batches": self.batches_done,
            "batch_size": self.loader.batch_size,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        done = int(state["batches"])
        mid_epoch = 0 < done < len(self.loader)
        if mid_epoch and state["batch_size"] != self.loader.batch_size:
            raise ValueError(
                f"The checkpoint stopped after {done} batches of {state['batch_size']} examples "
                f"inside an epoch, but this DataLoader has batch_size={self.loader.batch_size}; "
                f"resume with batch_size={state['batch_size']} (or pass tensor data, which "
                "resumes by examples)."
            )
        if mid_epoch:
            self.start_epoch(int(state["epoch"]))
            self.generator.set_state(state["epoch_generator"])
            self.epoch_generator = state["epoch_generator"]
            self.skip, self.batches_done = done, done
        else:
            self.generator.set_state(state["generator"])


def _check_batch(x: torch.Tensor, epoch: int, index: int) -> None:
    """Raise :class:`ValueError` naming the batch if a Dataset yields NaN or inf."""
    if x.is_floating_point() and not bool(torch.isfinite(x).all()):
        rows = (~torch.isfinite(x)).reshape(x.shape[0], -1).any(1).nonzero().flatten()
        raise ValueError(
            f"Batch {index + 1} of epoch {epoch + 1} from the Dataset contains NaN or inf in "
            f"{rows.numel()} of its examples (first at row {rows[0].item()} of the batch): "
            "the data, not the learning rate; clean the Dataset or drop those examples."
        )


class SemiSupervisedBatches:
    r"""Batches of a semi-supervised epoch (one pass over the unlabelled examples), by the
    data's ``schedule``:

    - ``"paired"``: each step pairs a batch of unlabelled examples with a batch of labelled
      examples drawn in turn from a labelled set reshuffled whenever it is used up; yields
      ``(x_u, {"x_labelled": x_l, "y_labelled": y_l})``.
    - ``"interleaved"`` (the schedule of Pyro's SS-VAE example): a step takes either an
      unlabelled batch, ``(x_u, {})``, or a labelled one, ``(x_u[:0], {"x_labelled": x_l,
      "y_labelled": y_l})`` (no unlabelled examples). The epoch has
      :math:`B_u + B_l` steps, :math:`B_l = \lceil N_l / b \rceil` of them labelled: step
      :math:`i` (from 0) is labelled when :math:`i \bmod P = 1` with the period
      :math:`P = \lfloor (N_u + N_l) / N_l \rfloor`, until the :math:`B_l` labelled
      batches of the epoch are taken (the last ones come at the end if the period leaves
      them over). Each labelled example is then seen once per epoch.

    Orders, positions and the step within the epoch are in the ``state_dict``, so a
    resumed run draws the same batches as an uninterrupted one. Labelled batches hold at
    most all labelled examples.

    Under ``torchrun`` every rank draws the same pairs of batches (the orders depend on
    the seed alone) and takes its share of each, ``[rank::world_size]``: the summed
    gradients are those of one process taking the whole pair.

    :param data: the labelled and unlabelled examples, on the device.
    :param batch_size: unlabelled (and labelled) examples per step.
    :param ctx: the process group under ``torchrun``, else ``None``.
    """

    x_keys: tuple[str, ...] = ("x_labelled",)

    def __init__(
        self,
        data: SemiSupervisedData,
        batch_size: int,
        ctx: distributed.Context | None = None,
    ) -> None:
        self.shard = slice(None) if ctx is None else slice(ctx.rank, None, ctx.world_size)
        self.unlabelled = TensorBatches(data.unlabelled, None, batch_size)
        self.generator = self.unlabelled.generator  # one generator for both orders
        self.x_l, self.y_l = data.labelled
        self.labelled_order = torch.arange(0)
        self.labelled_position = 0
        self.interleaved = data.schedule == "interleaved"
        n_l, n_u = self.x_l.shape[0], data.unlabelled.shape[0]
        #: labelled steps per epoch (interleaved) and the period between them
        self.labelled_steps = math.ceil(n_l / min(batch_size, n_l)) if self.interleaved else 0
        self.period = max(1, (n_u + n_l) // n_l)
        self.labelled_done = 0

    def __len__(self) -> int:
        return len(self.unlabelled) + self.labelled_steps

    @property
    def batch_size(self) -> int:
        return self.unlabelled.batch_size

    @property
    def batches_done(self) -> int:
        return self.unlabelled.batches_done + self.labelled_done

    @property
    def exhausted(self) -> bool:
        return self.unlabelled.exhausted and self.labelled_done >= self.labelled_steps

    def start_epoch(self, epoch: int) -> None:
        self.unlabelled.start_epoch(epoch)
        self.labelled_done = 0

    def _labelled_batch(self) -> torch.Tensor:
        n = self.x_l.shape[0]
        if self.labelled_position >= self.labelled_order.numel():
            self.labelled_order = torch.randperm(n, generator=self.generator)
            self.labelled_position = 0
        start = self.labelled_position
        idx = self.labelled_order[start : start + min(self.batch_size, n)]
        self.labelled_position += idx.numel()
        return idx.to(self.x_l.device)

    def _labelled(self) -> dict[str, torch.Tensor]:
        idx = self._labelled_batch()[self.shard]
        return {"x_labelled": self.x_l[idx], "y_labelled": self.y_l[idx]}

    def __iter__(self) -> Iterator[Batch]:
        if not self.interleaved:
            for xu, _ in self.unlabelled:
                yield xu[self.shard], self._labelled()
            return
        empty = self.unlabelled.x[:0]
        unlabelled = iter(self.unlabelled)  # continues from the saved position
        while not self.exhausted:
            left = self.labelled_steps - self.labelled_done
            step = self.batches_done
            if left > 0 and (step % self.period == 1 % self.period or self.unlabelled.exhausted):
                self.labelled_done += 1
                yield empty, self._labelled()
            else:
                xu, _ = next(unlabelled)
                yield xu[self.shard], {}

    def state_dict(self) -> dict[str, Any]:
        return {
            **self.unlabelled.state_dict(),
            "labelled_order": self.labelled_order,
            "labelled_position": self.labelled_position,
            "labelled_done": self.labelled_done,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.unlabelled.load_state_dict(state)
        self.labelled_order = state["labelled_order"]
        self.labelled_position = int(state["labelled_position"])
        self.labelled_done = int(state.get("labelled_done", 0))


Batches = TensorBatches | ShardedBatches | LoaderBatches | SemiSupervisedBatches


def _check_batch_size(batch_size: int, n: int, what: str) -> None:
    if batch_size > n:
        raise ValueError(
            f"batch_size={batch_size} is larger than the {n} {what}; use batch_size <= {n}."
        )


def make_batches(
    data: Data,
    batch_size: int,
    device: torch.device,
    ctx: distributed.Context | None,
    seed: int,
    check_data: Callable[[torch.Tensor], None] | None = None,
) -> Batches:
    """The batching policy for ``data``, with its tensors moved to ``device`` once.

    :param check_data: the model's own data check, applied to tensor data (pass ``None``
        when a transform will change the data first).
    :raises ValueError: for empty, integer or non-finite data, a batch size larger than
        the data, or a DataLoader that does not shard its data under ``torchrun``.
    """
    if isinstance(data, SemiSupervisedData):
        (x_l, y_l), x_u = data.labelled, data.unlabelled
        world = 1 if ctx is None else ctx.world_size
        lab = min(batch_size, x_l.shape[0])
        sizes = (
            batch_size,
            x_u.shape[0] % batch_size or batch_size,
            lab,
            x_l.shape[0] % lab or lab,
        )
        if min(sizes) < world:
            raise ValueError(
                f"Under torchrun with {world} processes every batch must hold at least "
                f"{world} unlabelled and {world} labelled examples; raise the batch size or "
                "the number of labels, or use fewer processes."
            )
        check_x(x_u, "unlabelled data")
        check_x(x_l, "labelled data")
        if y_l.shape[0] != x_l.shape[0]:
            raise ValueError(
                f"The labelled data has {x_l.shape[0]} examples but {y_l.shape[0]} labels; "
                "pass one label per example."
            )
        _check_batch_size(batch_size, x_u.shape[0], "unlabelled examples")
        if check_data is not None:
            check_data(x_u)
            check_data(x_l)
        moved = SemiSupervisedData(
            (x_l.to(device), y_l.to(device)), x_u.to(device), schedule=data.schedule
        )
        return SemiSupervisedBatches(moved, batch_size, ctx)
    xy = as_xy(data)
    if xy is not None:
        x, y = xy
        check_x(x, "training data")
        _check_batch_size(batch_size, x.shape[0], "training examples")
        if check_data is not None:
            check_data(x)
        x, y = x.to(device), (None if y is None else y.to(device))
        if ctx is None:
            return TensorBatches(x, y, batch_size)
        return ShardedBatches(x, y, batch_size, ctx, seed)
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
            gen = torch.Generator()
            loader = DataLoader(data, batch_size=batch_size, shuffle=True, generator=gen)
        else:
            sampler: DistributedSampler[Any] = DistributedSampler(data, shuffle=True, seed=seed)
            loader = DataLoader(data, batch_size=batch_size, sampler=sampler)
    else:
        raise ValueError(
            f"Unsupported data type {type(data).__name__}: pass a tensor, (x, y), a "
            "Dataset, a DataLoader or SemiSupervisedData."
        )
    return LoaderBatches(loader, device)


def validation_tensors(
    data: Any, device: torch.device, check_data: Callable[[torch.Tensor], None] | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Validation data as checked tensors ``(x, y)`` on ``device``."""
    xy = as_xy(data)
    if xy is None:
        raise ValueError("validation_data must be a tensor, (x, y) or a TensorDataset.")
    check_x(xy[0], "validation data")
    if check_data is not None:
        check_data(xy[0])
    return xy[0].to(device), (None if xy[1] is None else xy[1].to(device))


def first_batch(
    batches: Batches, eval_examples: int
) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    """The fixed training subset for the per-epoch train KL and reconstruction terms, or
    ``None`` for semi-supervised data (its objective is not an ELBO of ``x`` alone). Drawn
    before any checkpoint is restored, so resumed and uninterrupted runs agree."""
    if isinstance(batches, SemiSupervisedBatches):
        return None
    if isinstance(batches, LoaderBatches):
        x, kwargs = next(iter(batches))
        return x, kwargs.get("y")
    return eval_subset(batches.x, batches.y, min(eval_examples, batches.x.shape[0]))
