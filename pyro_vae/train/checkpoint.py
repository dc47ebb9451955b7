"""Safe checkpoint files.

Writes are atomic: the state goes to a temporary file in the same folder, is flushed and
fsynced, then renamed over the old file, so a crash mid-write leaves the previous checkpoint
intact. Reads use ``torch.load(weights_only=True)``: a checkpoint holds tensors and plain
Python containers only, and nothing in the file can execute code.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

__all__ = ["load_checkpoint", "load_module_states", "save_checkpoint"]

FORMAT = "pyro-vae-checkpoint"
VERSION = 1


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Atomically write ``state`` (tensors, numbers, strings, lists, dicts) to ``path``."""
    path = Path(path)
    payload = {"format": FORMAT, "version": VERSION, **state}
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o644)
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        cause = _os_error(e)
        if cause is not None and cause is not e:
            # torch's zip writer turns a failed write (disk full, file size limit) into a
            # RuntimeError; the OSError behind it names the cause
            raise cause from None
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return path


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint`.

    :raises ValueError: if the file is missing, truncated, not a pyro-vae checkpoint, or
        holds anything but tensors and plain containers (e.g. a crafted pickle).
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"No checkpoint at {path}; check the run directory.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(
            f"{path} could not be loaded safely ({type(e).__name__}: {str(e)[:200]}). It is "
            "truncated, corrupted, or not a pyro-vae checkpoint; checkpoints are only loaded "
            "with weights_only=True."
        ) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"{path} is not a pyro-vae checkpoint.")
    if state.get("version") != VERSION:
        raise ValueError(
            f"{path} has checkpoint format version {state.get('version')}, this pyro-vae "
            f"reads version {VERSION}."
        )
    return state


def load_module_states(
    modules: list[torch.nn.Module], states: list[dict[str, torch.Tensor]]
) -> None:
    """Load checkpointed state dicts into modules; a mismatch raises a ValueError that
    names the first differing parameter and its shapes."""
    if len(states) != len(modules):
        raise ValueError(
            f"The checkpoint holds {len(states)} module(s) but this model/guide pair has "
            f"{len(modules)}; it was written for a different model."
        )
    for module, state in zip(modules, states, strict=True):
        own = module.state_dict()
        missing = sorted(set(own) - set(state))
        extra = sorted(set(state) - set(own))
        if missing or extra:
            raise ValueError(
                "The checkpoint does not match this model: "
                f"missing {missing[:5]}, unexpected {extra[:5]}. Build the model with the "
                "config the checkpoint was written with (config.json)."
            )
        for key, value in state.items():
            if own[key].shape != value.shape:
                raise ValueError(
                    f"The checkpoint does not match this model at {key!r}: the checkpoint "
                    f"has shape {tuple(value.shape)}, the model {tuple(own[key].shape)}. "
                    "Check latent_dim, hidden dims and the parts in config.json."
                )
        module.load_state_dict(state)


def _os_error(exc: BaseException) -> OSError | None:
    """The ``OSError`` that ``exc`` is or was raised while handling, if any."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, OSError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None
