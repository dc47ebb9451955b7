"""What :func:`~pyro_vae.train.loop.fit` reports: the per-epoch records, the run directory's
files and the messages on divergence and interruption.

The run directory holds ``config.json``, ``metrics.jsonl`` (one record per epoch) and
``checkpoint.pt``. Each epoch's checkpoint is written *before* its metrics line, and a
resumed run rewrites ``metrics.jsonl`` from the checkpoint's history, so the two never
disagree: a crash between the writes leaves a checkpoint one epoch ahead of the metrics,
which the resume repairs.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from pyro_vae import distributed
from pyro_vae.check.evaluate import elbo_terms
from pyro_vae.train.checkpoint import save_checkpoint

__all__ = [
    "CHECKPOINT_NAME",
    "CONFIG_NAME",
    "METRICS_NAME",
    "History",
    "RunFiles",
    "TrainingDivergedError",
    "diverged_message",
    "format_record",
    "interrupted_message",
    "mean_terms",
    "writable_dir",
]

CHECKPOINT_NAME = "checkpoint.pt"
METRICS_NAME = "metrics.jsonl"
CONFIG_NAME = "config.json"


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or infinite. The message names the step and the likely causes;
    the last checkpoint written before it (if any) is intact and resumable."""


@dataclass
class History:
    """Per-epoch training records returned by :func:`~pyro_vae.train.loop.fit`.

    ``history.records`` is a list of dicts (one per epoch, the same lines as
    ``metrics.jsonl``); ``history["val_elbo"]`` gives one column as a list.
    """

    records: list[dict[str, float]] = field(default_factory=list)
    #: True when training stopped early on Ctrl-C (SIGINT); the run is resumable.
    interrupted: bool = False
    #: the epoch (1-based) whose parameters early stopping put back at the end; ``None``
    #: when the last epoch's were kept
    restored_epoch: int | None = None

    def __getitem__(self, key: str) -> list[float]:
        return [r[key] for r in self.records if key in r]

    def __len__(self) -> int:
        return len(self.records)

    @property
    def last(self) -> dict[str, float]:
        if not self.records:
            raise ValueError("The history is empty: no epoch has finished.")
        return self.records[-1]


def writable_dir(path: Path) -> Path:
    """Create ``path`` and check that a file can be written there."""
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


class RunFiles:
    """The run directory of one :func:`~pyro_vae.train.loop.fit` call; every method does
    nothing when there is no directory or this process is not the writer (rank 0).

    :param run_dir: the directory, or ``None``.
    :param writer: whether this process writes files.
    :param params: the trainable parameters (to check the free space).
    """

    def __init__(self, run_dir: Any, writer: bool, params: list[torch.Tensor]) -> None:
        self.path = Path(run_dir) if run_dir is not None else None
        self.active = self.path is not None and writer
        if self.active:
            writable_dir(self.path)  # type: ignore[arg-type]
            _check_free_space(self.path, params)  # type: ignore[arg-type]

    @property
    def checkpoint(self) -> Path | None:
        return None if self.path is None else self.path / CHECKPOINT_NAME

    def start(self, config: dict[str, Any] | None, records: list[dict[str, float]]) -> None:
        """Write ``config.json`` and ``metrics.jsonl`` holding exactly ``records`` (the
        history of the checkpoint resumed from, or nothing)."""
        if self.active:
            (self.path / CONFIG_NAME).write_text(json.dumps(config or {}, indent=2) + "\n")  # type: ignore[operator]
            lines = "".join(json.dumps(r) + "\n" for r in records)
            (self.path / METRICS_NAME).write_text(lines)  # type: ignore[operator]

    def save(self, state: dict[str, Any]) -> None:
        if self.active:
            save_checkpoint(self.path / CHECKPOINT_NAME, state)  # type: ignore[operator]

    def append(self, record: dict[str, float]) -> None:
        if self.active:
            with open(self.path / METRICS_NAME, "a") as f:  # type: ignore[operator]
                f.write(json.dumps(record) + "\n")


def mean_terms(
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


def format_record(r: dict[str, float]) -> str:
    parts = [f"epoch {int(r['epoch'])}", f"train ELBO {r['train_elbo']:.2f}"]
    if "val_elbo" in r:
        parts.append(f"val ELBO {r['val_elbo']:.2f} (KL {r['val_kl']:.2f})")
    if "val_accuracy" in r:
        parts.append(f"val accuracy {r['val_accuracy']:.4f}")
    parts.append(f"{r['examples_per_s']:.0f} ex/s")
    return " | ".join(parts)


def interrupted_message(epoch: int, batch: int, num_batches: int, run_path: Path | None) -> str:
    where = f"epoch {epoch + 1}, batch {batch}/{num_batches}" if batch else f"epoch {epoch}"
    if run_path is None:
        return f"Stopped after {where}; no run_dir was given, so nothing was saved."
    return (
        f"Stopped after {where}; checkpoint written to {run_path / CHECKPOINT_NAME}. "
        f"Resume with: pyro-vae train --resume {run_path}  (or fit(..., resume={str(run_path)!r}))"
    )


def diverged_message(bad_step: int, run_path: Path | None) -> str:
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
