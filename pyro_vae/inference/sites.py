"""Helpers for site names and per-example reductions. Internal.

Our own parts name their sites ``"x"``, ``"z"``, ``"y"`` and their plate ``"data"``; user
programs may use any names, which :mod:`pyro_vae.inference.program` reads from a trace."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

DATA_PLATE = "data"


def batch_device(
    module: torch.nn.Module, x: torch.Tensor | None, y: torch.Tensor | None
) -> torch.device:
    """Where a batch's plate lives: the data's device, else the module's parameters' (when
    a model generates from ``num_samples`` alone)."""
    for t in (x, y):
        if t is not None:
            return t.device
    for t in (*module.parameters(), *module.buffers()):
        return t.device
    return torch.device("cpu")


def per_example(
    value: torch.Tensor, site: Mapping[str, Any], num_examples: int, plate: str = DATA_PLATE
) -> torch.Tensor:
    """Reduce a site's log-density (batch-shaped) to one number per example.

    Dimensions other than the plate over examples (``plate``) are summed. A site outside
    that plate (a global latent) is shared by the batch, so its total is split evenly over
    the examples.
    """
    frame = next((f for f in site["cond_indep_stack"] if f.name == plate), None)
    if frame is None or value.dim() < -frame.dim:
        return value.sum().expand(num_examples) / num_examples
    value = value.movedim(frame.dim, 0)
    value = value.reshape(value.shape[0], -1).sum(-1)
    return value.expand(num_examples) if value.shape[0] == 1 else value
